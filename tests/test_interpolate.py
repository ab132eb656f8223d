"""Weight interpolation (WiSE-FT, multitask_encoder/interpolate.py) of a real tiny trained model (the 2-layer
MiniLM, two sentence tasks, an embedding evaluation set) with the backbone it started from: the weights at
alpha 0, 0.5 and 1, the saved folder (config.json, card, a fresh-process reload), the curve files, the head
refit on the frozen encoder, and the refusals. The command runs in a real subprocess at least once."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_training import SPLIT_SIZES, job_flags, sentence_rows, write_config
from transformers import BertConfig, BertModel

import multitask_encoder  # noqa: F401  (registers the Auto classes)
from multitask_encoder import MultiTaskEncoderConfig, MultiTaskEncoderModel
from multitask_encoder.interpolate import InterpolationError, interpolate_encoder, main
from multitask_encoder.train import run_training

REPO = Path(__file__).resolve().parents[1]
TASKS = ("topic", "sentiment")
TEXTS = ["The striker was superb today", "The market was awful this week", "Shares fell on Monday"]


def backbone_state(backbone: str) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in load_file(os.path.join(backbone, "model.safetensors")).items() if "pooler" not in k
    }


def encoder_state(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / "model.safetensors"))
    return {k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")}


def heads_state(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith("heads.")}


@pytest.fixture(scope="module")
def trained(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory):
    """(trained folder, its training config): topic + sentiment from one csv per split and an embedding
    evaluation set of pairs scored by how many of the two labels they share; 16 steps that move the encoder."""
    folder = tmp_path_factory.mktemp("interpolate")
    rng = random.Random(0)
    for split, size in SPLIT_SIZES.items():
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["text", *TASKS])
            writer.writeheader()
            writer.writerows(sentence_rows(size, rng))
    rows = sentence_rows(24, rng)
    with open(folder / "sts.jsonl", "w", encoding="utf-8") as f:
        for a, b in zip(rows[::2], rows[1::2]):
            score = sum(a[task] == b[task] for task in TASKS) + rng.random() / 10
            f.write(json.dumps({"text": a["text"], "text_pair": b["text"], "score": score}) + "\n")
    (folder / "cache").mkdir()
    tasks = {
        name: {"type": "sequence_classification", **{s: str(folder / f"{s}.csv") for s in SPLIT_SIZES}}
        for name in TASKS
    }
    config = write_config(
        folder / "config.yaml",
        tasks,
        data_cache_dir=str(folder / "cache"),
        embedding_evaluation={"toy_sts": {"data": str(folder / "sts.jsonl")}},
    )
    output_dir = folder / "trained"
    run_training([config, *job_flags(tiny_backbone, output_dir, folder / "cache"), "--max_steps", "16"])
    return output_dir, config


def test_alpha_one_is_the_trained_model_zero_the_original_half_the_midpoint(trained, tiny_backbone) -> None:
    folder, _ = trained
    model = MultiTaskEncoderModel.from_pretrained(folder).eval()
    trained_encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    original = backbone_state(tiny_backbone)
    assert any(not torch.equal(trained_encoder[k], original[k]) for k in original)  # training moved it

    one = interpolate_encoder(model, tiny_backbone, 1.0)
    assert one is not model and one.config.weight_interpolation["alpha"] == 1.0
    state = one.encoder.state_dict()
    assert state.keys() == trained_encoder.keys()
    assert all(torch.equal(state[k], trained_encoder[k]) for k in state)
    assert all(
        torch.equal(a, b) for a, b in zip(one.heads.state_dict().values(), model.heads.state_dict().values())
    )
    assert np.array_equal(one.encode(TEXTS), model.encode(TEXTS))
    assert one.predict(TEXTS) == model.predict(TEXTS)

    # None: the trained model's base_model_name, the backbone's folder name ("./tiny_minilm0": no local path
    # is saved), which loads from the folder's parent.
    assert model.config.base_model_name == "./" + Path(tiny_backbone).name
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(Path(tiny_backbone).parent)
        zero = interpolate_encoder(model, None, 0.0)
    state = zero.encoder.state_dict()
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in state)
    # ... the same model as the original backbone with the trained heads.
    plain = MultiTaskEncoderModel.from_backbone(
        tiny_backbone,
        tasks={name: spec.to_dict() for name, spec in model.config.tasks.items()},
        max_seq_length=model.config.max_seq_length,
    ).eval()
    plain.heads.load_state_dict(model.heads.state_dict())
    assert np.array_equal(zero.encode(TEXTS), plain.encode(TEXTS))
    assert zero.predict(TEXTS) == plain.predict(TEXTS)
    assert not np.array_equal(zero.encode(TEXTS), model.encode(TEXTS))

    half = interpolate_encoder(model, tiny_backbone, 0.5).encoder.state_dict()
    for key, tensor in half.items():
        torch.testing.assert_close(tensor, (original[key] + trained_encoder[key]) / 2, rtol=1e-6, atol=1e-7)
    # The model handed in is not changed.
    assert all(torch.equal(model.encoder.state_dict()[k], trained_encoder[k]) for k in trained_encoder)
    assert model.config.weight_interpolation is None


def test_the_command_writes_a_folder_that_records_alpha_and_reloads_in_a_fresh_process(
    trained, tiny_backbone, tmp_path, run_without_package
) -> None:
    folder, _ = trained
    out = tmp_path / "wise"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "multitask_encoder.interpolate",
            str(folder),
            tiny_backbone,  # (the recorded base_model_name is the folder's name, not its path)
            "--alpha",
            "0.5",
            "-o",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "config.json").read_text())["weight_interpolation"]
    assert record == {
        "alpha": 0.5,
        "original": os.path.basename(tiny_backbone),
        "trained": folder.name,
        "heads": "trained",
    }
    assert MultiTaskEncoderConfig.from_pretrained(out).weight_interpolation == record
    card = (out / "README.md").read_text()
    assert (
        "WiSE-FT interpolation" in card and "alpha = 0.5" in card and os.path.basename(tiny_backbone) in card
    )
    assert "## Evaluation" in card  # the trained model's card, kept
    # The weights are the in-process interpolation's, and the folder serves in a process without the package.
    expected = interpolate_encoder(MultiTaskEncoderModel.from_pretrained(folder), tiny_backbone, 0.5)
    saved = encoder_state(out)
    assert all(torch.equal(saved[k], v) for k, v in expected.encoder.state_dict().items())
    script = (
        "import json, sys\nfrom transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "print(json.dumps({'record': model.config.weight_interpolation, "
        f"'embedding': model.encode({TEXTS!r}).tolist()}}))\n"
    )
    fresh = run_without_package(script, str(out))
    assert fresh.returncode == 0, fresh.stderr
    reloaded = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert reloaded["record"] == record
    np.testing.assert_allclose(reloaded["embedding"], expected.encode(TEXTS), atol=1e-5)


def test_several_alphas_write_the_curve_and_alpha_one_scores_as_the_trained_model(
    trained, tiny_backbone, tmp_path, capsys
) -> None:
    folder, config = trained
    out = tmp_path / "curve"
    assert (
        main([str(folder), tiny_backbone, "--alpha", "1", "0", "0.5", "--config", config, "-o", str(out)])
        == 0
    )
    curve = json.loads((out / "interpolation_curve.json").read_text())
    assert [row["alpha"] for row in curve["rows"]] == [0.0, 0.5, 1.0]
    for row in curve["rows"]:
        assert set(row["tasks"]) == set(TASKS) and set(row["embedding"]) == {"toy_sts"}
    validation = json.loads((folder / "eval_results.json").read_text())["validation"]
    last = curve["rows"][-1]
    assert last["tasks"] == {task: validation[task]["accuracy"] for task in TASKS}
    table = (out / "interpolation_curve.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == "| alpha | topic (accuracy) | sentiment (accuracy) | embedding toy_sts (spearman) |"
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 0", "| 0.5", "| 1"]
    assert (out / "interpolation_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows[0] in capsys.readouterr().out  # the table is printed
    assert not (out / "config.json").exists()  # no model: the user picks an alpha


def test_refit_heads_changes_the_heads_and_keeps_the_interpolated_encoder(
    trained, tiny_backbone, tmp_path
) -> None:
    folder, config = trained
    out = tmp_path / "refit"
    argv = [
        str(folder),
        tiny_backbone,
        "--alpha",
        "0.5",
        "--config",
        config,
        "--refit_heads",
        "--refit_epochs",
        "1",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    expected = interpolate_encoder(MultiTaskEncoderModel.from_pretrained(folder), tiny_backbone, 0.5)
    saved = encoder_state(out)
    assert saved.keys() == expected.encoder.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in expected.encoder.state_dict().items())
    before, after = heads_state(folder), heads_state(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    record = MultiTaskEncoderConfig.from_pretrained(out).weight_interpolation
    assert record["alpha"] == 0.5 and record["heads"] == "refit"
    assert "refit on this interpolated" in (out / "README.md").read_text()


def test_refusals_name_the_problem_and_write_nothing(trained, tiny_backbone, tmp_path, capsys) -> None:
    folder, _ = trained
    out = tmp_path / "out"

    def refused(*argv: str) -> str:
        assert main([*argv, "-o", str(out)]) == 1
        assert not out.exists()
        return capsys.readouterr().err

    for alpha, why in (("1.5", "outside [0, 1]"), ("-0.1", "outside [0, 1]"), ("nan", "finite")):
        assert why in refused(str(folder), "--alpha", alpha)
    with pytest.raises(InterpolationError, match="outside"):
        interpolate_encoder(MultiTaskEncoderModel.from_pretrained(folder), tiny_backbone, 2)
    assert "--refit_heads needs --config" in refused(str(folder), "--alpha", "0.5", "--refit_heads")
    assert "is not a trained multitask-encoder model" in refused(tiny_backbone, "--alpha", "0.5")
    # An encoder of another shape: the keys are named.
    other = tmp_path / "other_backbone"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(other)
    message = refused(str(folder), str(other), "--alpha", "0.5")
    assert "do not match" in message and "embeddings.word_embeddings.weight" in message
