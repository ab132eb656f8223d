"""Nothing of a model folder runs without consent. A saved folder whose tokenizer_config.json names its own
tokenizer code (`tokenization_marker.py`, which creates a marker file when it is imported) and one whose
config.json names a model_type only its own code provides (`configuration_multitask_encoder.py` edited to
create the marker too): loading through the installed package, `multitask-encoder-predict` and
push_to_hub.py refuse them without trust, saying what needs code, and the marker proves nothing ran; with
--trust-remote-code the code runs (the marker appears) and the command does its work. Real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from multitask_encoder.batch_predict import PROG

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Arnold Schwarzenegger visited Paris on Monday.", "Stocks fell.", "Why is the sky blue?"]
# Imported only when the tokenizer's own code runs: the marker file says it did.
MARKER_TOKENIZER = '''"""A tokenizer that leaves a trace: importing this file creates {marker}."""

from pathlib import Path

from transformers import BertTokenizerFast

Path({marker!r}).write_text("tokenization_marker.py ran\\n", encoding="utf-8")


class MarkerTokenizerFast(BertTokenizerFast):
    """BertTokenizerFast under a name only this file provides."""
'''


def copy_checkpoint(source: Path, destination: Path) -> Path:
    """A copy of the saved model folder to edit (the weights hard-linked: nothing here writes them)."""

    def copy(src: str, dst: str) -> None:
        if src.endswith(".safetensors"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    return Path(shutil.copytree(source, destination, copy_function=copy))


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the folders' code writes when it runs (next to them, not in the folders)."""
    return tmp_path_factory.mktemp("marker") / "folder-code-ran"


@pytest.fixture(autouse=True)
def no_marker_yet(marker: Path) -> None:
    marker.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def custom_tokenizer_folder(
    tiny_checkpoint: Path, marker: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny checkpoint with tokenizer_config.json naming `tokenization_marker.MarkerTokenizerFast`."""
    folder = copy_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("custom_tokenizer") / "model")
    (folder / "tokenization_marker.py").write_text(
        MARKER_TOKENIZER.format(marker=str(marker)), encoding="utf-8"
    )
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "MarkerTokenizerFast"
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_marker.MarkerTokenizerFast"]}
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def custom_model_type_folder(
    tiny_checkpoint: Path, marker: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny checkpoint with a model_type no installed package provides; its configuration code (named by
    auto_map) creates the marker when imported."""
    folder = copy_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("custom_model_type") / "model")
    code = folder / "configuration_multitask_encoder.py"
    trace = f"from pathlib import Path\nPath({str(marker)!r}).write_text('configuration code ran\\n')\n"
    code.write_text(trace + code.read_text(encoding="utf-8"), encoding="utf-8")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model_type"] = "forked_encoder"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`python ARGS` in a fresh process, offline, with a private remote-code modules cache."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    env.pop("MULTITASK_ENCODER_DEBUG", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def predict_command(model: Path, source: Path, output: Path, *options: str) -> list[str]:
    return ["-m", "multitask_encoder.batch_predict", str(model), str(source), "-o", str(output), *options]


def the_line(stderr: str) -> str:
    """A refusal: exactly one line on stderr, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_loading_through_the_package_does_not_run_the_tokenizer_code(
    custom_tokenizer_folder: Path, marker: Path
) -> None:
    with pytest.raises(ValueError) as refused:
        AutoModel.from_pretrained(custom_tokenizer_folder)
    assert str(refused.value) == (
        f"The tokenizer of {custom_tokenizer_folder} needs code from its folder (tokenizer_config.json names "
        "custom classes), which runs only when you trust it: load the model with trust_remote_code=True after "
        "reading that code, or replace the tokenizer files."
    )
    assert not marker.exists()
    assert not [name for name in sys.modules if name.endswith("tokenization_marker")]


@pytest.mark.slow
def test_predict_refuses_folder_tokenizer_code_without_the_flag_and_runs_it_with(
    custom_tokenizer_folder: Path, tiny_checkpoint: Path, marker: Path, tmp_path: Path
) -> None:
    source, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")

    refused = run(predict_command(custom_tokenizer_folder, source, output, "--no-progress"), tmp_path)
    assert refused.returncode == 1
    assert the_line(refused.stderr) == (
        f"{PROG}: error: {custom_tokenizer_folder} needs its own code to load: its tokenizer_config.json names "
        "tokenizer_class 'MarkerTokenizerFast', whose code is the folder's (auto_map AutoTokenizer: "
        "tokenization_marker.MarkerTokenizerFast). Without --trust-remote-code no code from a model folder or "
        "repo runs; --trust-remote-code runs it on this machine with your permissions: read it first (for a "
        "Hub repo, pin the commit you read with --revision)"
    )
    assert not marker.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.txt"]  # no output, no partial file

    trusted = run(
        predict_command(custom_tokenizer_folder, source, output, "--no-progress", "--trust-remote-code"),
        tmp_path,
    )
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.read_text(encoding="utf-8") == "tokenization_marker.py ran\n"
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    # The marker tokenizer is BertTokenizerFast with the same files: the predictions are the checkpoint's
    # (bit for bit: same batches, same thread count).
    model = AutoModel.from_pretrained(tiny_checkpoint)
    assert [(row["line"], row["text"]) for row in rows] == list(enumerate(TEXTS, start=1))
    assert [row["predictions"] for row in rows] == model.predict(TEXTS)


def test_predict_refuses_a_model_type_only_the_folder_code_provides(
    custom_model_type_folder: Path, marker: Path, tmp_path: Path
) -> None:
    source, output = tmp_path / "in.txt", tmp_path / "out.csv"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    refused = run(predict_command(custom_model_type_folder, source, output, "--no-progress"), tmp_path)
    assert refused.returncode == 1
    assert the_line(refused.stderr) == (
        f"{PROG}: error: {custom_model_type_folder} needs its own code to load: its config.json has model_type "
        "'forked_encoder', which neither transformers nor the installed multitask_encoder package provides "
        "(auto_map: AutoConfig -> configuration_multitask_encoder.MultiTaskEncoderConfig, AutoModel -> "
        "modeling_multitask_encoder.MultiTaskEncoderModel, AutoModelForSequenceClassification -> "
        "task_views_multitask_encoder.MultiTaskEncoderForSequenceClassification, AutoModelForTokenClassification -> "
        "task_views_multitask_encoder.MultiTaskEncoderForTokenClassification). Without --trust-remote-code no code from a model "
        "folder or repo runs; --trust-remote-code runs it on this machine with your permissions: read it "
        "first (for a Hub repo, pin the commit you read with --revision)"
    )
    assert not marker.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.txt"]


@pytest.mark.slow
def test_push_dry_run_runs_the_folder_code_only_with_the_flag(
    custom_tokenizer_folder: Path, marker: Path, tmp_path: Path
) -> None:
    push = [str(REPO_ROOT / "push_to_hub.py"), str(custom_tokenizer_folder), "alice/marker", "--dry-run"]
    refused = run(push, tmp_path)
    assert refused.returncode == 1
    line = the_line(refused.stderr)
    assert line.startswith(
        f"error: the last check before sharing {custom_tokenizer_folder} loads it with trust_remote_code=True "
        "in a fresh Python, as a user of the repo would, and that executes the folder's code ("
    ), line
    assert "tokenization_marker.py" in line and "pass --trust-remote-code to run it" in line
    assert "Checking that" not in refused.stdout
    assert not marker.exists()

    trusted = run([*push, "--trust-remote-code"], tmp_path)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "OK: MultiTaskEncoderModel predicts tasks topic, tags, score, ner." in trusted.stdout
    assert "tokenization_marker.py" in trusted.stdout  # listed for upload, with the code it runs
    assert marker.read_text(encoding="utf-8") == "tokenization_marker.py ran\n"
