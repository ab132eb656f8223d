"""label_text_classification: a class's score is the cosine between the text's embedding and its label text's
embedding (no head). Options, the logits against a hand computation from `encode`, labels replaced at prediction
time, training through the job, and every interface serving it: predict, the pipeline (with labels), the
standard text-classification pipeline, the batch command, ONNX, and a fresh process without the package."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from test_training import job_flags
from transformers import AutoModel

import multitask_encoder  # noqa: F401  (the Auto classes: saved folders load without remote code)
from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.model.tasks_multitask_encoder import parse_task_spec
from multitask_encoder.train import run_training

TOPICS = {
    "sport": ["match", "striker", "goal", "league", "race", "final", "coach", "team"],
    "business": ["market", "shares", "profits", "bank", "merger", "stocks", "investors", "earnings"],
}
TASK = {
    "type": "label_text_classification",
    "labels": ["sport", "business"],
    "label_descriptions": {"sport": "A news story about sport."},
}
TEXTS = [
    "The striker scored in the cup final.",
    "Shares of the bank fell after its earnings.",
    "Hello there.",
]


def scores(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=-1).numpy()


@pytest.fixture(scope="module")
def model(tiny_backbone: str) -> MultiTaskEncoderModel:
    tasks = {"topic": TASK, "mood": {"type": "sequence_classification", "labels": ["calm", "angry"]}}
    return MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=tasks).eval()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"label_descriptions": {"politics": "x"}},
            "label_descriptions names ['politics'], which are not labels",
        ),
        ({"label_descriptions": {"sport": ""}}, "label_descriptions must map label names to non-empty texts"),
        ({"label_descriptions": ["sport"]}, "label_descriptions must map label names to non-empty texts"),
        ({"scale": 0}, "scale must be a positive finite number"),
        ({"labels": ["sport"]}, "needs at least 2 labels"),
        ({"head": {"layers": "all"}}, "cannot mix layers"),
    ],
)
def test_options_are_checked(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_task_spec("topic", {**TASK, **change})


def test_logits_are_scaled_cosines_to_the_label_texts_embeddings(model) -> None:
    spec = model.config.tasks["topic"]
    assert spec.task_type.label_texts(spec) == ["A news story about sport.", "business"]
    assert "topic" not in model.heads  # no head: the embedding scores itself
    inputs = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs, tasks=["topic"])["topic_logits"]
    texts = torch.from_numpy(model.encode(TEXTS))
    labels = torch.from_numpy(model.encode(["A news story about sport.", "business"]))
    expected = 20.0 * F.normalize(texts, dim=-1) @ F.normalize(labels, dim=-1).T
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    predicted = model.predict(TEXTS, tasks="topic")
    for row, prediction in zip(scores(expected), predicted):
        assert prediction["topic"]["scores"] == pytest.approx(dict(zip(["sport", "business"], row)), abs=1e-4)


def test_labels_are_replaced_at_prediction_time_without_training(model) -> None:
    new = ["football", "stock market", "cooking"]
    predicted = model.predict(TEXTS, tasks="topic", labels={"topic": new})
    texts = torch.from_numpy(model.encode(TEXTS))
    expected = scores(20.0 * texts @ torch.from_numpy(model.encode(new)).T)
    assert [p["topic"]["label"] for p in predicted] == [new[i] for i in expected.argmax(axis=1)]
    for row, prediction in zip(expected, predicted):
        assert prediction["topic"]["scores"] == pytest.approx(dict(zip(new, row)), abs=1e-4)
    # {name: text}: the names are the labels, the texts are what is embedded.
    described = model.predict(
        TEXTS[0], tasks="topic", labels={"topic": {"a": "football", "b": "stock market"}}
    )
    plain = model.predict(TEXTS[0], tasks="topic", labels={"topic": ["football", "stock market"]})
    assert described["topic"]["scores"]["a"] == pytest.approx(plain["topic"]["scores"]["football"], abs=1e-6)
    # The saved labels are untouched.
    assert model.config.tasks["topic"].labels == ["sport", "business"]


def test_labels_for_other_tasks_are_refused_by_name(model) -> None:
    with pytest.raises(
        ValueError, match="Task 'mood' is a sequence_classification task: its labels are its trained"
    ):
        model.predict(TEXTS, labels={"mood": ["happy", "sad"]})
    with pytest.raises(
        ValueError, match=r"labels were given for task\(s\) \['topic'\], which this call does not run"
    ):
        model.predict(TEXTS, tasks="mood", labels={"topic": ["a", "b"]})
    with pytest.raises(ValueError, match="label names must not be empty"):
        model.predict(TEXTS, labels={"topic": ["a", " "]})


# ---------------------------------------------------------------------------------------------- training
def topic_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topic = "sport" if i % 2 == 0 else "business"
        words = rng.sample(TOPICS[topic], 3)
        rows.append(
            {"text": f"The {words[0]} and the {words[1]} made news with the {words[2]}.", "topic": topic}
        )
    return rows


@pytest.fixture(scope="module")
def trained(tiny_backbone: str, tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("label_text_run")
    for split, count, seed in (("train", 96, 0), ("test", 24, 1)):
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in topic_rows(count, seed))
        )
    config = {
        "max_seq_length": 32,
        "seed": 0,
        "learning_rate": 1e-4,
        "per_device_train_batch_size": 16,
        "dataloader_num_workers": 0,
        "max_steps": 12,
        "eval_strategy": "no",
        "tasks": {
            "topic": {
                "type": "label_text_classification",
                "labels": ["sport", "business"],
                "label_descriptions": {"sport": "sport news", "business": "business news"},
                "train": str(folder / "train.jsonl"),
                "test": str(folder / "test.jsonl"),
            }
        },
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    output_dir = folder / "out"
    results = run_training(
        [str(folder / "config.yaml"), *job_flags(tiny_backbone, output_dir, folder / "cache")]
    )
    return output_dir, results


def test_training_moves_the_encoder_and_saves_no_head(trained, tiny_backbone: str) -> None:
    output_dir, results = trained
    untrained = MultiTaskEncoderModel.from_backbone(
        tiny_backbone,
        tasks={"topic": {**TASK, "label_descriptions": {"sport": "sport news", "business": "business news"}}},
    ).eval()
    rows = topic_rows(24, 1)
    before = np.mean(
        [
            p["topic"]["label"] == r["topic"]
            for p, r in zip(untrained.predict([r["text"] for r in rows]), rows)
        ]
    )
    assert results["test"]["topic"]["accuracy"] >= max(before, 0.9), (before, results["test"]["topic"])
    weights = load_file(output_dir / "model.safetensors")
    assert not [key for key in weights if key.startswith("heads.")]
    config = json.loads((output_dir / "config.json").read_text())
    (topic,) = [task for task in config["tasks"] if task["name"] == "topic"]
    assert topic["label_descriptions"] == {"sport": "sport news", "business": "business news"}


def test_every_interface_serves_it(trained, tmp_path: Path) -> None:
    from transformers import pipeline

    output_dir, _ = trained
    model = AutoModel.from_pretrained(output_dir).eval()
    texts = [row["text"] for row in topic_rows(6, 2)]
    expected = model.predict(texts)
    assert len({p["topic"]["label"] for p in expected}) == 2  # not a constant answer
    new = {"topic": ["football", "finance", "weather"]}
    expected_new = model.predict(texts, labels=new)

    classify = pipeline("multitask-text-classification", model=model)
    assert [p["topic"]["label"] for p in classify(texts)] == [p["topic"]["label"] for p in expected]
    for got, want in zip(classify(texts, labels=new, batch_size=4), expected_new):
        assert got["topic"]["scores"] == pytest.approx(want["topic"]["scores"], abs=1e-5)

    # The standard pipeline reads the task view's logits: the same label as predict.
    standard = pipeline("text-classification", model=str(output_dir))
    assert [p["label"] for p in standard(texts)] == [p["topic"]["label"] for p in expected]

    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        "-m",
        "multitask_encoder.batch_predict",
        str(output_dir),
        str(source),
        "-o",
        str(out),
    ]
    result = subprocess.run(
        [*command, "--labels", "topic=football,finance,weather", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["predictions"]["topic"]["label"] for line in lines] == [
        p["topic"]["label"] for p in expected_new
    ]
    refused = subprocess.run(
        [*command, "--labels", "nope=a,b", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert refused.returncode != 0 and "'nope'" in refused.stderr, refused.stderr


def test_onnx_export_serves_the_saved_labels(trained, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    output_dir, _ = trained
    model = AutoModel.from_pretrained(output_dir).eval()
    path = model.export_onnx(tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    texts = [row["text"] for row in topic_rows(4, 3)]
    inputs = model.tokenizer(texts, padding=True, return_tensors="np")
    names = [i.name for i in session.get_inputs()]
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {n: inputs[n] for n in names}))
    )
    with torch.no_grad():
        expected = model(**model.tokenizer(texts, padding=True, return_tensors="pt"))["topic_logits"]
    np.testing.assert_allclose(outputs["topic_logits"], expected.numpy(), atol=1e-3)


def test_a_fresh_process_without_the_package_takes_new_labels(trained, run_without_package) -> None:
    output_dir, _ = trained
    texts = [row["text"] for row in topic_rows(4, 4)]
    script = (
        "import json, sys\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "texts = json.loads(sys.argv[2])\n"
        "print(json.dumps([model.predict(texts), model.predict(texts, labels={'topic': ['football', 'finance']})]))\n"
    )
    result = run_without_package(script, str(output_dir), json.dumps(texts))
    assert result.returncode == 0, result.stderr[-2000:]
    saved, new = json.loads(result.stdout.strip().splitlines()[-1])
    model = AutoModel.from_pretrained(output_dir).eval()
    for got, want in zip(
        saved + new, model.predict(texts) + model.predict(texts, labels={"topic": ["football", "finance"]})
    ):
        assert got["topic"]["scores"] == pytest.approx(want["topic"]["scores"], abs=1e-5)


def test_a_frozen_encoder_with_only_headless_tasks_is_refused(tiny_backbone: str) -> None:
    from multitask_encoder.optimization import apply_freezing

    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks={"topic": TASK})
    with pytest.raises(
        ValueError, match=r"freeze_encoder leaves nothing to train: the model's tasks \['topic'\]"
    ):
        apply_freezing(model, freeze_encoder=True)
