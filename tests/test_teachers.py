"""Distillation from single-task teachers (teachers.py, `teachers:` in a config): the losses against hand
computations, teacher annealing in forward, the targets of every task type from a multitask-encoder teacher and
from a plain `AutoModelFor*` (labels matched by name), the cache, the fast path, a resumed run, refusals, and
the command that trains the teachers, whose student then learns from its teacher rather than its noisy labels.

Real tokenizer and weights (the 2-layer MiniLM), real files, the command in a real subprocess.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from test_pairs import pair_data, pair_tasks  # noqa: F401  (pair_data is a fixture)
from test_training import (
    REPO,
    job_flags,
    mark_unfinished,
    max_difference,
    read_csv,
    subprocess_env,
    toy_data,  # noqa: F401  (a fixture)
    toy_tasks,
    train,
    write_config,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.collator import MultiTaskCollator
from multitask_encoder.data import load_multitask_data
from multitask_encoder.model.tasks_multitask_encoder import parse_task_spec
from multitask_encoder.precompute import PrecomputedCollator, precompute_features
from multitask_encoder.task_types.types import TASK_TYPES
from multitask_encoder.teachers import TeacherError, attach_teachers
from multitask_encoder.train import run_training

NAN = math.nan


# ---------------------------------------------------------------------------------------------- losses
def test_distillation_losses_are_the_hand_computed_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=generator)
    teacher = torch.softmax(torch.randn(4, 3, generator=generator), dim=-1)
    teacher[2] = NAN  # a row without a target
    spec = parse_task_spec("topic", {"type": "sequence_classification", "labels": ["a", "b", "c"]})
    kept = [0, 1, 3]
    expected = -(teacher[kept] * torch.log_softmax(logits[kept], -1)).sum(-1).mean()
    torch.testing.assert_close(spec.task_type.distillation_loss(spec, logits, teacher, None), expected)

    tags = parse_task_spec("ner", {"type": "token_classification", "labels": ["O", "B-X", "I-X"]})
    token_logits = torch.randn(2, 5, 3, generator=generator)
    token_targets = torch.full((2, 5, 3), NAN)
    token_targets[0, 1] = torch.tensor([0.7, 0.2, 0.1])
    token_targets[1, 3] = torch.tensor([0.1, 0.1, 0.8])
    expected = (
        -(token_targets[[0, 1], [1, 3]] * torch.log_softmax(token_logits[[0, 1], [1, 3]], -1)).sum(-1).mean()
    )
    torch.testing.assert_close(
        tags.task_type.distillation_loss(tags, token_logits, token_targets, None), expected
    )

    multi = parse_task_spec("tags", {"type": "multi_label_classification", "labels": ["a", "b"]})
    probabilities = torch.tensor([[0.9, 0.2], [NAN, NAN], [0.4, 0.6]])
    raw = torch.randn(3, 2, generator=generator)
    torch.testing.assert_close(
        multi.task_type.distillation_loss(multi, raw, probabilities, None),
        F.binary_cross_entropy_with_logits(raw[[0, 2]], probabilities[[0, 2]]),
    )
    regression = parse_task_spec("score", {"type": "regression"})
    values = torch.tensor([[1.5], [NAN], [-0.5]])
    predicted = torch.randn(3, 1, generator=generator)
    torch.testing.assert_close(
        regression.task_type.distillation_loss(regression, predicted, values, None),
        F.mse_loss(predicted[[0, 2]], values[[0, 2]]),
    )
    # Similarity: CoSENT in the teacher's order equals the gold CoSENT with the teacher's cosines as labels.
    sts = parse_task_spec("sts", {"type": "similarity"})
    cosines = torch.tensor([[0.9], [0.1], [0.5]])
    teacher_cosines = torch.tensor([[0.2], [0.8], [0.6]])
    torch.testing.assert_close(
        sts.task_type.distillation_loss(sts, cosines, teacher_cosines, None),
        sts.task_type.loss(sts, cosines, teacher_cosines.reshape(-1), None),
    )
    assert TASK_TYPES["contrastive"].distillation_refused


def test_forward_mixes_teacher_and_gold_losses_by_the_annealed_weight(tiny_backbone: str) -> None:
    spec = {"type": "sequence_classification", "labels": ["a", "b", "c"]}
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks={"topic": spec}).eval()
    inputs = model.tokenizer(
        ["one text", "another longer text", "a third"], padding=True, return_tensors="pt"
    )
    labels = torch.tensor([0, 2, 1])
    teacher = torch.softmax(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)), -1)
    with torch.no_grad():
        gold = model(**inputs, labels_topic=labels).loss
        logits = model(**inputs).topic_logits
        distilled = -(teacher * torch.log_softmax(logits, -1)).sum(-1).mean()
        for weight in (0.0, 0.25, 1.0):
            mixed = model(
                **inputs, labels_topic=labels, teacher_targets={"topic": teacher}, teacher_weight=weight
            )
            torch.testing.assert_close(mixed.loss, weight * distilled + (1 - weight) * gold)


# ---------------------------------------------------------------------------------------------- targets
def build_teacher(backbone: str, tasks: dict, folder: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = MultiTaskEncoderModel.from_backbone(backbone, tasks=tasks)
    model.save_pretrained(folder)
    return str(folder)


def test_targets_of_a_multitask_teacher_for_sentence_and_token_tasks(
    toy_data: Path,  # noqa: F811
    tiny_backbone: str,
    tmp_path: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    tasks = toy_tasks(toy_data)
    data = load_multitask_data(tasks, tokenizer, 32, str(toy_data), cache_dir=str(toy_data / "cache"))
    # The teacher's labels in another order than the student's: matched by name.
    teacher_tasks = {
        "topic": {"type": "sequence_classification", "labels": ["sport", "business"]},
        "ner": {"type": "token_classification", "labels": list(reversed(data.task_specs["ner"].labels))},
    }
    source = build_teacher(tiny_backbone, teacher_tasks, tmp_path / "teacher")
    train, fingerprints = attach_teachers(
        data.train,
        {"topic": source, "ner": source},
        data.task_specs,
        tokenizer,
        base_dir=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
    )
    assert set(fingerprints) == {"topic", "ner"}
    assert {"teacher_topic", "teacher_ner"} <= set(train.column_names)
    teacher = MultiTaskEncoderModel.from_pretrained(source).eval()
    student_topic = data.task_specs["topic"].labels
    student_ner = data.task_specs["ner"].labels
    topic_order = [teacher_tasks["topic"]["labels"].index(label) for label in student_topic]
    ner_order = [teacher_tasks["ner"]["labels"].index(label) for label in student_ner]
    checked = {"topic": 0, "ner": 0}
    for index in range(0, len(train), 7):
        row = train[index]
        inputs = {
            "input_ids": torch.tensor([row["input_ids"]]),
            "attention_mask": torch.tensor([row["attention_mask"]]),
        }
        with torch.no_grad():
            output = teacher(**inputs)
        if row["labels_topic"] != -100:
            expected = torch.softmax(output.topic_logits[0, topic_order], -1)
            torch.testing.assert_close(torch.tensor(row["teacher_topic"]), expected, atol=2e-2, rtol=0)
            checked["topic"] += 1
        else:
            assert row["teacher_topic"] == []
        if row["labels_ner"]:
            words = sorted({w for w in row["word_ids"] if w >= 0})
            assert len(row["teacher_ner"]) == len(words) == len(row["labels_ner"])
            firsts = [row["word_ids"].index(w) for w in words]
            expected = torch.softmax(output.ner_logits[0, firsts][:, ner_order], -1)
            torch.testing.assert_close(torch.tensor(row["teacher_ner"]), expected, atol=2e-2, rtol=0)
            checked["ner"] += 1
        else:
            assert row["teacher_ner"] == []
    assert checked["topic"] > 3 and checked["ner"] > 3

    # Collated: the sentence targets per row, the token targets on the labelled (first) pieces only.
    specs = data.task_specs
    rows = [train[i] for i in range(len(train) - 6, len(train))]  # NER rows (the last group)
    batch = MultiTaskCollator(tokenizer, specs)(rows)
    targets = batch["teacher_targets"]
    labelled = batch["labels_ner"] != -100
    assert torch.isfinite(targets["ner"]).all(-1).eq(labelled).all()
    assert torch.isnan(targets["topic"]).all()  # NER rows have no topic label, so no topic target

    # The frozen-encoder fast path carries the same targets.
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=data.task_specs)
    model.optimize_for_inference("exact")
    features = precompute_features(
        model, train.select(range(len(train) - 6, len(train))), MultiTaskCollator(tokenizer, specs)
    )
    fast = PrecomputedCollator(model)([features[i] for i in range(len(features))])["teacher_targets"]
    torch.testing.assert_close(fast["ner"][torch.isfinite(fast["ner"])], targets["ner"][labelled].reshape(-1))
    assert torch.isnan(fast["topic"]).all()

    # Cached: a second call reads the targets back; another teacher recomputes.
    again, same = attach_teachers(
        data.train, {"topic": source}, data.task_specs, tokenizer, str(tmp_path), str(tmp_path / "cache")
    )
    assert same["topic"] == fingerprints["topic"] and again["teacher_topic"] == train["teacher_topic"]
    other = build_teacher(tiny_backbone, teacher_tasks, tmp_path / "other", seed=1)
    changed, refreshed = attach_teachers(
        data.train, {"topic": other}, data.task_specs, tokenizer, str(tmp_path), str(tmp_path / "cache")
    )
    assert refreshed["topic"] != fingerprints["topic"]
    assert changed["teacher_topic"] != train["teacher_topic"]
    assert len(list((tmp_path / "cache").glob("teacher-topic-*"))) == 2


def test_targets_for_pairs_from_cross_and_similarity_teachers(
    pair_data: Path,  # noqa: F811
    tiny_backbone: str,
    tmp_path: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    tasks = pair_tasks(pair_data, ("same_topic", "relatedness"))
    data = load_multitask_data(tasks, tokenizer, 32, str(pair_data), cache_dir=str(pair_data / "cache"))
    cross = build_teacher(
        tiny_backbone,
        {
            "same_topic": {
                "type": "pair_classification",
                "labels": ["different", "same"],
                "pair_encoding": "cross",
            }
        },
        tmp_path / "cross",
    )
    similarity = build_teacher(tiny_backbone, {"relatedness": {"type": "similarity"}}, tmp_path / "sts")
    train, _ = attach_teachers(
        data.train,
        {"same_topic": cross, "relatedness": similarity},
        data.task_specs,
        tokenizer,
        str(tmp_path),
        str(tmp_path / "cache"),
    )
    texts = [line for line in (pair_data / "train.jsonl").read_text().splitlines()]
    rows = [yaml.safe_load(line) for line in texts]
    cross_model = MultiTaskEncoderModel.from_pretrained(cross).eval()
    sts_model = MultiTaskEncoderModel.from_pretrained(similarity).eval()
    firsts = [row["text"] for row in rows[:8]]
    seconds = [row["text_pair"] for row in rows[:8]]
    # A bi-encoded student row taught by a cross teacher: the teacher reads the joint [CLS] a [SEP] b input.
    predicted = cross_model.predict(list(zip(firsts, seconds)))
    cosines = torch.nn.functional.cosine_similarity(
        sts_model.encode(firsts, return_tensors="pt"), sts_model.encode(seconds, return_tensors="pt"), dim=-1
    )
    for i in range(8):
        row = train[i]
        expected = [predicted[i]["same_topic"]["scores"][label] for label in ("different", "same")]
        assert row["teacher_same_topic"] == pytest.approx(expected, abs=2e-2)
        assert row["teacher_relatedness"] == pytest.approx([float(cosines[i])], abs=2e-2)


def test_a_plain_transformers_teacher_with_its_labels_in_another_order(
    toy_data: Path,  # noqa: F811
    tiny_backbone: str,
    tmp_path: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    tasks = {"topic": toy_tasks(toy_data, ner=False)["topic"]}
    data = load_multitask_data(tasks, tokenizer, 32, str(toy_data), cache_dir=str(toy_data / "cache"))
    assert data.task_specs["topic"].labels == ["business", "sport"]
    torch.manual_seed(0)
    plain = AutoModelForSequenceClassification.from_pretrained(
        tiny_backbone,
        num_labels=2,
        id2label={0: "sport", 1: "business"},
        label2id={"sport": 0, "business": 1},
    )
    plain.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    train, _ = attach_teachers(
        data.train, {"topic": "plain"}, data.task_specs, tokenizer, str(tmp_path), str(tmp_path / "cache")
    )
    plain.eval()
    for i in range(0, len(train), 9):
        row = train[i]
        with torch.no_grad():
            logits = plain(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        expected = torch.softmax(logits[[1, 0]], -1)
        torch.testing.assert_close(torch.tensor(row["teacher_topic"]), expected, atol=2e-2, rtol=0)


def test_teachers_that_cannot_teach_are_refused_by_name(
    toy_data: Path,  # noqa: F811
    pair_data: Path,  # noqa: F811
    tiny_backbone: str,
    tmp_path: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    tasks = toy_tasks(toy_data, ner=False)
    data = load_multitask_data(tasks, tokenizer, 32, str(toy_data), cache_dir=str(toy_data / "cache"))

    def attach(sources, task_data=data):
        return attach_teachers(
            task_data.train, sources, task_data.task_specs, tokenizer, str(tmp_path), str(tmp_path / "cache")
        )

    wrong = build_teacher(
        tiny_backbone,
        {"topic": {"type": "sequence_classification", "labels": ["sport", "politics"]}},
        tmp_path / "w",
    )
    with pytest.raises(
        TeacherError, match=r"task 'topic'.*labels \['sport', 'politics'\] are not the task's labels"
    ):
        attach({"topic": wrong})
    with pytest.raises(TeacherError, match=r"no sequence_classification task named 'sentiment'"):
        attach(
            {
                "sentiment": build_teacher(
                    tiny_backbone,
                    {"ner": {"type": "token_classification", "labels": ["O", "B-X"]}},
                    tmp_path / "n",
                )
            }
        )
    with pytest.raises(TeacherError, match=r"\['nope'\] are not tasks of this config"):
        attach({"nope": wrong})
    # Another vocabulary (two word pieces swapped): its targets would belong to other token ids.
    folder = Path(
        build_teacher(
            tiny_backbone,
            {"topic": {"type": "sequence_classification", "labels": ["sport", "business"]}},
            tmp_path / "v",
        )
    )
    tokenizer_file = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer_file["model"]["vocab"]
    first, second = (token for token, index in vocab.items() if index in (2000, 2001))
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_file), encoding="utf-8")
    with pytest.raises(TeacherError, match=r"another tokenizer than the student"):
        attach({"topic": str(folder)})

    pairs = load_multitask_data(
        pair_tasks(pair_data, ("retrieval", "relatedness")),
        tokenizer,
        32,
        str(pair_data),
        cache_dir=str(pair_data / "cache"),
    )
    with pytest.raises(TeacherError, match=r"'retrieval' \(contrastive\) cannot be distilled"):
        attach({"retrieval": wrong}, pairs)
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1)
    plain.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    with pytest.raises(TeacherError, match=r"similarity teacher must be a multitask-encoder model"):
        attach({"relatedness": "plain"}, pairs)
    with pytest.raises(ValueError, match=r"teacher_weight_start must be in \[0, 1\]"):
        run_training(
            [
                write_config(tmp_path / "c.yaml", tasks),
                *job_flags(tiny_backbone, tmp_path / "o", tmp_path),
                "--teacher_weight_start",
                "1.5",
            ]
        )


# ---------------------------------------------------------------------------------------------- training
def noisy_copy(source: Path, target: Path, seed: int = 0) -> str:
    """The train file with every topic label drawn at random: nothing left to learn from the gold labels."""
    rng = random.Random(seed)
    rows = read_csv(source)
    with open(target, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["text", "topic", "sentiment"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "topic": rng.choice(["sport", "business"])})
    return str(target)


@pytest.mark.slow
def test_the_teachers_command_and_a_student_that_learns_from_its_teacher_not_its_noisy_labels(
    toy_data: Path,  # noqa: F811
    tiny_backbone: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = toy_data / "cache"
    clean = {"topic": toy_tasks(toy_data, ner=False)["topic"]}
    config = write_config(tmp_path / "teachers.yaml", clean, head_learning_rate=3e-3)
    flags = ["--backbone", tiny_backbone, "--use_cpu", "--report_to", "none", "--data_cache_dir", str(cache)]
    flags += ["--max_steps", "24", "--eval_strategy", "no"]
    command = [
        sys.executable,
        "-m",
        "multitask_encoder.teachers",
        config,
        "--teachers_dir",
        str(tmp_path / "t"),
        *flags,
    ]
    done = subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    section = yaml.safe_load((tmp_path / "t" / "teachers.yaml").read_text())
    assert section == {"teachers": {"topic": str(tmp_path / "t" / "topic")}}
    teacher_rows = read_csv(tmp_path / "t" / "topic" / "predictions_topic.csv")
    teacher_accuracy = sum(r["gold"] == r["predicted"] for r in teacher_rows) / len(teacher_rows)
    assert teacher_accuracy >= 0.9, teacher_accuracy

    noisy = {"topic": {**clean["topic"], "train": noisy_copy(toy_data / "train.csv", tmp_path / "noisy.csv")}}
    student_flags = ["--max_steps", "24", "--eval_strategy", "no", "--save_steps", "12", "--keep_checkpoints"]
    student_flags += ["--logging_steps", "4"]
    results = {}
    for name, options in (
        ("student", {"teachers": {"topic": str(tmp_path / "t" / "topic")}, "teacher_weight_end": 1.0}),
        ("control", {}),
    ):
        path = write_config(tmp_path / f"{name}.yaml", noisy, head_learning_rate=3e-3, **options)
        with caplog.at_level("INFO", logger="multitask_encoder.teachers"):
            results[name], recorder = train(
                [path, *job_flags(tiny_backbone, tmp_path / name, cache), *student_flags]
            )
        if name == "student":
            logged = [
                entry["teacher_weight"] for entry in recorder.state.log_history if "teacher_weight" in entry
            ]
            assert logged and all(value == 1.0 for value in logged)
    student, control = (results[n]["test"]["topic"]["accuracy"] for n in ("student", "control"))
    # The gold labels are noise: the control learns nothing, the student learns what its teacher knows.
    assert student >= teacher_accuracy - 0.15 and student >= control + 0.2, (
        student,
        control,
        teacher_accuracy,
    )
    student_rows = read_csv(tmp_path / "student" / "predictions_topic.csv")
    agreement = sum(a["predicted"] == b["predicted"] for a, b in zip(student_rows, teacher_rows)) / len(
        teacher_rows
    )
    assert agreement >= 0.85, agreement

    card = (tmp_path / "student" / "README.md").read_text(encoding="utf-8")
    assert "| Distillation |" in card and "`topic` ← `topic (local folder)`" in card
    assert str(tmp_path) not in card  # a local path is never published

    # Resumed with its teacher, bit for bit (the annealed weight is a function of the step).
    expected = load_file(tmp_path / "student" / "model.safetensors")
    mark_unfinished(tmp_path / "student")
    shutil.rmtree(tmp_path / "student" / "checkpoint-24")
    caplog.clear()
    path = str(tmp_path / "student.yaml")
    with caplog.at_level("INFO"):
        _, recorder = train([path, *job_flags(tiny_backbone, tmp_path / "student", cache), *student_flags])
    assert recorder.start_step == 12
    assert "Teacher targets of 'topic' from the cache" in caplog.text
    resumed = load_file(tmp_path / "student" / "model.safetensors")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected), max_difference(expected, resumed)


def test_a_frozen_student_distils_on_the_fast_path(
    toy_data: Path,  # noqa: F811
    tiny_backbone: str,
    tmp_path: Path,
) -> None:
    tasks = toy_tasks(toy_data)
    teacher_tasks = {
        "topic": {"type": "sequence_classification", "labels": ["business", "sport"]},
        "ner": {"type": "token_classification", "labels": ["B-LOC", "B-PER", "I-PER", "O"]},
    }
    source = build_teacher(tiny_backbone, teacher_tasks, tmp_path / "teacher")
    config = write_config(tmp_path / "c.yaml", tasks, teachers={"topic": source, "ner": source})
    flags = ["--freeze_encoder", "--precompute_embeddings", "--max_steps", "6", "--logging_steps", "1"]
    flags += ["--eval_strategy", "no", "--save_strategy", "no"]
    results, recorder = train(
        [config, *job_flags(tiny_backbone, tmp_path / "out", toy_data / "cache"), *flags]
    )
    weights = [e["teacher_weight"] for e in recorder.state.log_history if "teacher_weight" in e]
    assert weights[0] == 1.0 and weights == sorted(weights, reverse=True) and weights[-1] < 0.2
    assert set(results["test"]) == {"topic", "sentiment", "ner"}
