"""The task-type contract: for EVERY type registered in the package-side `TASK_TYPES`, a tiny example (a spec and
a real data file of 6-12 rows, as that type reads it) goes through every piece a type plugs into, and the pieces
must fit together (in the spirit of transformers' ModelTesterMixin):

    1. spec       parse_task_spec: type, labels, options filled in; the config.json form round-trips
    2. labels     the real data loader: raw cells -> read_label / infer_labels / encode_label, stored as
                  label_feature says; missing_label, has_label, count_labels agree
    3. collate    MultiTaskCollator: labels_<task> shaped and typed as the type says, aligned to the word pieces,
                  second texts where the type's encoding puts them; rows without the label all -100
    4. forward    a finite loss, finite non-zero gradients on what the task trains (its head, else the
                  encoder), a few optimizer steps lower the loss, an unlabelled row adds nothing to it
    5. decode     model.predict: exactly prediction_fields keys, finite numbers, not one constant answer, one
                  input alone as in a batch; and it decodes what the training forward computes (no train/serve
                  skew between the loader's tokenisation and predict's)
    6. metrics    metrics() on logits/labels gathered as the Trainer gathers them: finite, main_metric in it,
                  unchanged by an unlabelled row; prediction_row for every row
    7. reload     save_pretrained, then a fresh process without the package (trust_remote_code) predicts the same

A new type is not done until it has an entry in EXAMPLES: every test below fails for a registered type without
one (and `test_every_registered_type_has_an_example` says so in one line).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset, Features
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import nested_concat

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.collator import MultiTaskCollator
from multitask_encoder.data import load_multitask_data, parse_task_entry
from multitask_encoder.data.labels import label_feature
from multitask_encoder.model import tasks_multitask_encoder as model_side
from multitask_encoder.model.inputs_multitask_encoder import INPUT_KINDS
from multitask_encoder.model.tasks_multitask_encoder import IGNORE_INDEX, parse_task_spec
from multitask_encoder.task_types import TASK_TYPES, task_type
from multitask_encoder.task_types.types import LabelBatch

MAX_SEQ_LENGTH = 64
TRAIN_STEPS = 8
# Heads start from scratch, the encoder is pretrained: the package's defaults (head_learning_rate) in spirit.
HEAD_LR, ENCODER_LR = 1e-2, 1e-4
RELOAD_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------- the examples
@dataclass(frozen=True)
class Example:
    """One tiny task of a type: its spec (as a training config gives it; `labels` may be left to the data)
    and the raw rows of its data file, written in `file_format` with the type's `data_options`. Every row has
    the task's label, and every label of the spec occurs (check 2 counts them)."""

    task: str  # the task's name
    spec: dict[str, Any]  # type, labels, head, loss_weight, the type's options
    file_format: str  # csv, jsonl or conll
    rows: list[dict[str, Any]]  # conll: {"tokens": [...], "ner_tags": [...]} per sentence
    data_options: dict[str, Any] = field(default_factory=dict)  # text_column, label_map, ...


SPORT = [
    "The striker scored twice in the final.",
    "Our team won the league after extra time.",
    "The goalkeeper saved a late penalty.",
    "The race was won by a young cyclist.",
]
BUSINESS = [
    "Shares fell sharply after the merger.",
    "The bank reported record profits.",
    "Stock markets rallied on Friday.",
    "The company cut its sales forecast.",
]
SCIENCE = [
    "Researchers sequenced the genome of a rare frog.",
    "The telescope observed a distant galaxy.",
    "A new vaccine passed its first clinical trial.",
    "Physicists measured the mass of the neutrino.",
]


def ner_sentence(*words: str) -> dict[str, list[str]]:
    """ner_sentence("Alice/B-PER", "met", "Bob/B-PER", "in", "Paris/B-LOC"): words, untagged ones "O"."""
    tokens, tags = [], []
    for word in words:
        token, _, tag = word.partition("/")
        tokens.append(token)
        tags.append(tag or "O")
    return {"tokens": tokens, "ner_tags": tags}


# type name -> variant -> example. Every registered type needs at least one; variants cover the branches a type
# takes on its options (pair encodings, score ranges, several outputs, negatives, label maps, head shapes).
EXAMPLES: dict[str, dict[str, Example]] = {
    "sequence_classification": {
        "basic": Example(
            task="topic",
            spec={"type": "sequence_classification", "labels": ["sport", "business", "science"]},
            file_format="csv",
            rows=[
                {"text": text, "topic": topic}
                for topic, texts in (("sport", SPORT), ("business", BUSINESS), ("science", SCIENCE))
                for text in texts[:3]
            ],
        ),
        "label_map_mlp_layer_mix": Example(
            task="topic",
            spec={
                "type": "sequence_classification",
                "labels": ["sport", "business"],
                "head": {"type": "mlp", "hidden_size": 16, "layers": "all"},
            },
            file_format="jsonl",
            rows=[{"sentence": text, "y": 0} for text in SPORT] + [{"sentence": t, "y": 1} for t in BUSINESS],
            data_options={
                "text_column": "sentence",
                "label_column": "y",
                "label_map": {0: "sport", 1: "business"},
            },
        ),
    },
    "label_text_classification": {
        "names": Example(
            task="topic",
            spec={"type": "label_text_classification", "labels": ["sport", "business", "science"]},
            file_format="csv",
            rows=[
                {"text": text, "topic": topic}
                for topic, texts in (("sport", SPORT), ("business", BUSINESS), ("science", SCIENCE))
                for text in texts[:3]
            ],
        ),
        "descriptions_label_map": Example(
            task="topic",
            spec={
                "type": "label_text_classification",
                "labels": ["sport", "business"],
                "label_descriptions": {"sport": "a story about a match", "business": "a story about money"},
                "scale": 10.0,
            },
            file_format="jsonl",
            rows=[{"sentence": text, "y": 0} for text in SPORT] + [{"sentence": t, "y": 1} for t in BUSINESS],
            data_options={
                "text_column": "sentence",
                "label_column": "y",
                "label_map": {0: "sport", 1: "business"},
            },
        ),
    },
    "multi_label_classification": {
        "basic": Example(
            task="tags",
            spec={"type": "multi_label_classification", "labels": ["sport", "business", "science"]},
            file_format="csv",
            rows=[
                {"text": SPORT[0], "tags": "sport"},
                {"text": SPORT[1], "tags": "sport,business"},
                {"text": BUSINESS[0], "tags": "business"},
                {"text": BUSINESS[1], "tags": "business,science"},
                {"text": SCIENCE[0], "tags": "science"},
                {"text": SCIENCE[1], "tags": "science,sport"},
                {"text": SPORT[2], "tags": "sport"},
                {"text": BUSINESS[2], "tags": "business"},
            ],
        ),
    },
    "regression": {
        "basic": Example(
            task="score",
            spec={"type": "regression"},
            file_format="csv",
            rows=[
                {"text": text, "score": score}
                for text, score in zip(SPORT + BUSINESS, [4.5, 4.0, 3.5, 5.0, 1.0, 1.5, 2.0, 0.5])
            ],
        ),
        "two_outputs": Example(
            task="affect",
            spec={"type": "regression", "labels": ["valence", "arousal"]},
            file_format="jsonl",
            rows=[
                {"text": text, "affect": [float(i % 3), 2.0 - 0.5 * i]}
                for i, text in enumerate(SPORT[:3] + SCIENCE[:3])
            ],
        ),
    },
    "token_classification": {
        "basic": Example(
            task="ner",
            spec={"type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
            file_format="conll",
            rows=[
                ner_sentence("Alice/B-PER", "met", "Bob/B-PER", "in", "Paris/B-LOC", "."),
                ner_sentence("Mary/B-PER", "Jones/I-PER", "lives", "in", "New/B-LOC", "York/I-LOC", "."),
                ner_sentence("The", "train", "to", "Berlin/B-LOC", "was", "late", "."),
                ner_sentence("Peter/B-PER", "Smith/I-PER", "visited", "Rome/B-LOC", "."),
                ner_sentence("It", "rained", "all", "day", "."),
                ner_sentence("Laura/B-PER", "flew", "to", "Los/B-LOC", "Angeles/I-LOC", "."),
                ner_sentence("David/B-PER", "stayed", "in", "London/B-LOC", "."),
                ner_sentence("Nobody", "came", "."),
            ],
        ),
    },
    "pair_classification": {
        "bi": Example(
            task="same_topic",
            spec={"type": "pair_classification", "labels": ["different", "same"]},
            file_format="jsonl",
            rows=[
                {"text": SPORT[0], "text_pair": SPORT[1], "same_topic": "same"},
                {"text": SPORT[2], "text_pair": BUSINESS[0], "same_topic": "different"},
                {"text": BUSINESS[1], "text_pair": BUSINESS[2], "same_topic": "same"},
                {"text": BUSINESS[3], "text_pair": SCIENCE[0], "same_topic": "different"},
                {"text": SCIENCE[1], "text_pair": SCIENCE[2], "same_topic": "same"},
                {"text": SCIENCE[3], "text_pair": SPORT[3], "same_topic": "different"},
            ],
        ),
        "cross": Example(
            task="same_topic",
            spec={"type": "pair_classification", "labels": ["different", "same"], "pair_encoding": "cross"},
            file_format="csv",
            rows=[
                {"first": SPORT[0], "second": SPORT[1], "same_topic": "same"},
                {"first": SPORT[2], "second": BUSINESS[0], "same_topic": "different"},
                {"first": BUSINESS[1], "second": BUSINESS[2], "same_topic": "same"},
                {"first": BUSINESS[3], "second": SCIENCE[0], "same_topic": "different"},
                {"first": SCIENCE[1], "second": SCIENCE[2], "same_topic": "same"},
                {"first": SCIENCE[3], "second": SPORT[3], "same_topic": "different"},
            ],
            data_options={"text_column": "first", "text_pair_column": "second"},
        ),
    },
    "similarity": {
        "cosent_score_range": Example(
            task="relatedness",
            spec={"type": "similarity", "score_range": [0, 5]},
            file_format="jsonl",
            rows=[
                {"text": SPORT[0], "text_pair": SPORT[1], "relatedness": 4.5},
                {"text": SPORT[2], "text_pair": BUSINESS[0], "relatedness": 1.0},
                {"text": BUSINESS[1], "text_pair": BUSINESS[2], "relatedness": 4.0},
                {"text": BUSINESS[3], "text_pair": SCIENCE[0], "relatedness": 0.5},
                {"text": SCIENCE[1], "text_pair": SCIENCE[2], "relatedness": 3.5},
                {"text": SCIENCE[3], "text_pair": SPORT[3], "relatedness": 1.5},
            ],
        ),
        "cosine_mse": Example(
            task="relatedness",
            spec={"type": "similarity", "loss": "cosine_mse"},
            file_format="csv",
            rows=[
                {"text": SPORT[0], "text_pair": SPORT[3], "relatedness": 0.9},
                {"text": SPORT[1], "text_pair": SCIENCE[0], "relatedness": 0.1},
                {"text": BUSINESS[0], "text_pair": BUSINESS[3], "relatedness": 0.8},
                {"text": BUSINESS[2], "text_pair": SPORT[2], "relatedness": 0.2},
                {"text": SCIENCE[2], "text_pair": SCIENCE[3], "relatedness": 0.7},
                {"text": SCIENCE[1], "text_pair": BUSINESS[1], "relatedness": 0.0},
            ],
        ),
    },
    "contrastive": {
        "basic": Example(
            task="retrieval",
            spec={"type": "contrastive"},
            file_format="jsonl",
            rows=[
                {"text": a, "text_pair": b}
                for a, b in zip(SPORT + BUSINESS, SPORT[1:] + SPORT[:1] + BUSINESS[1:] + BUSINESS[:1])
            ],
        ),
        "negatives": Example(
            task="retrieval",
            spec={"type": "contrastive", "scale": 10},
            file_format="csv",
            rows=[
                {"text": a, "text_pair": b, "hard_negative": n}
                for a, b, n in zip(
                    SPORT[:3] + SCIENCE[:3], SPORT[1:] + SCIENCE[1:], BUSINESS[:3] + BUSINESS[1:]
                )
            ],
            data_options={"negative_column": "hard_negative"},
        ),
    },
}

CASES = [
    pytest.param(type_name, variant, id=f"{type_name}-{variant}")
    for type_name in TASK_TYPES
    for variant in (EXAMPLES.get(type_name) or {"<no example>": None})
]


def test_every_registered_type_has_an_example() -> None:
    registered = set(TASK_TYPES)
    missing = sorted(registered - set(EXAMPLES))
    assert not missing, (
        f"task type(s) {missing} are registered in TASK_TYPES but have no example in EXAMPLES of "
        f"{Path(__file__).name}: add one (a spec and 6-12 rows of its data) so the contract suite checks it."
    )
    stale = sorted(set(EXAMPLES) - registered)
    assert not stale, f"EXAMPLES has entries for {stale}, which are not registered task types."
    # The model side (what a saved model carries) and the package side register the same types.
    assert list(model_side.TASK_TYPES) == list(TASK_TYPES)
    for name, package_side in TASK_TYPES.items():
        assert isinstance(package_side, type(model_side.TASK_TYPES[name])), (
            f"the package side of {name!r} does not extend its model side"
        )
    for type_name, variants in EXAMPLES.items():
        for variant, example in variants.items():
            assert example.spec["type"] == type_name, (
                f"EXAMPLES[{type_name!r}][{variant!r}] is not a {type_name}"
            )
            assert 6 <= len(example.rows) <= 12, f"EXAMPLES[{type_name!r}][{variant!r}]: keep it to 6-12 rows"


# ---------------------------------------------------------------------------------------------- files
def write_rows(path: Path, file_format: str, rows: list[dict[str, Any]]) -> None:
    if file_format == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif file_format == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif file_format == "conll":
        sentences = ["".join(f"{t}\t{g}\n" for t, g in zip(r["tokens"], r["ner_tags"])) for r in rows]
        path.write_text("\n".join(sentences), encoding="utf-8")
    else:
        raise ValueError(f"no writer for {file_format!r}")


def read_rows(path: Path, file_format: str) -> list[dict[str, Any]]:
    """The file's rows as the standard library reads them (not through the package): the raw cells."""
    if file_format == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if file_format == "jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if file_format == "conll":
        rows = []
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            lines = [line.split("\t") for line in block.splitlines() if line.strip()]
            if lines:
                rows.append({"tokens": [t for t, _ in lines], "ner_tags": [g for _, g in lines]})
        return rows
    raise ValueError(f"no reader for {file_format!r}")


# ---------------------------------------------------------------------------------------------- one case
def trained_parameters(model: MultiTaskEncoderModel, task: str) -> dict[str, torch.nn.Parameter]:
    """What the task trains: its head when it has one, else the encoder (the embedding is its output)."""
    if task in model.heads:
        return {f"heads.{task}.{n}": p for n, p in model.heads[task].named_parameters()}
    return {f"encoder.{n}": p for n, p in model.encoder.named_parameters()}


@dataclass
class Training:
    """What `train` saw: the first (eval-mode) forward pass and backward pass, and the loss before and after."""

    loss: torch.Tensor
    task_losses: dict[str, torch.Tensor] | None
    logits: torch.Tensor
    gradients: dict[str, torch.Tensor | None]  # parameter name -> its gradient after the first backward
    loss_before: float
    loss_after: float


def train(model: MultiTaskEncoderModel, task: str, batch: dict[str, Any], steps: int) -> Training:
    """One recorded forward and backward pass (eval mode: no dropout), then a few AdamW steps on the same batch
    (heads at HEAD_LR, the encoder at ENCODER_LR; the 30k-row word-embedding matrix is left out of the steps:
    updating it is most of a step's cost on CPU, and the recorded pass has already checked its gradient)."""
    model.eval()
    output = model(**batch)
    output.loss.backward()
    gradients = {
        name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()
    }
    loss_before = float(output.loss.detach())
    word_embeddings = model.encoder.get_input_embeddings().weight
    stepped = [(n, p) for n, p in model.named_parameters() if p is not word_embeddings]
    heads = [p for n, p in stepped if n.startswith("heads.")]
    others = [p for n, p in stepped if not n.startswith("heads.")]
    groups = [{"params": others, "lr": ENCODER_LR}] + ([{"params": heads, "lr": HEAD_LR}] if heads else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    word_embeddings.requires_grad_(False)
    model.zero_grad()
    model.train()
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
    finally:
        word_embeddings.requires_grad_(True)
        model.zero_grad()
        model.eval()
    with torch.no_grad():
        loss_after = float(model(**batch).loss)
    return Training(
        loss=output.loss.detach(),
        task_losses=output.task_losses,
        logits=output[f"{task}_logits"].detach(),
        gradients=gradients,
        loss_before=loss_before,
        loss_after=loss_after,
    )


class Case:
    """One example of one type, each stage built on first use (and once): data, batch, model, training,
    predictions, saved folder."""

    def __init__(self, type_name: str, example: Example, folder: Path, backbone: str, tokenizer) -> None:
        self.type_name, self.example, self.folder, self.backbone = type_name, example, folder, backbone
        self.tokenizer = tokenizer
        self.name = example.task
        self.path = folder / f"{self.name}.{example.file_format}"
        write_rows(self.path, example.file_format, example.rows)
        self.entry = {
            **example.spec,
            **example.data_options,
            "train": str(self.path),
            "format": example.file_format,
        }

    @cached_property
    def data(self):
        return load_multitask_data(
            {self.name: self.entry},
            self.tokenizer,
            MAX_SEQ_LENGTH,
            str(self.folder),
            cache_dir=str(self.folder / "cache"),
        )

    @cached_property
    def spec(self):
        return parse_task_spec(self.name, self.data.task_specs[self.name])

    @cached_property
    def task_type(self):
        return task_type(self.spec)

    @cached_property
    def raw_rows(self) -> list[dict[str, Any]]:
        return read_rows(self.path, self.example.file_format)

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The loader's train rows, as Python lists (what the Trainer's dataloader hands the collator)."""
        return [self.data.train[i] for i in range(self.data.train.num_rows)]

    @cached_property
    def collator(self) -> MultiTaskCollator:
        return MultiTaskCollator(self.tokenizer, self.data.task_specs)

    @cached_property
    def batch(self) -> dict[str, Any]:
        return self.collator(self.rows)

    @cached_property
    def inputs(self) -> list[str | tuple[str, str]]:
        """What `predict` takes for each raw row: its text (a token task's words joined by spaces), or
        (text, text_pair) for a type that reads pairs."""
        entry = parse_task_entry(self.name, self.entry)
        content = [(role, column) for role, column, required in entry.content_columns if required]
        inputs = []
        for row in self.raw_rows:
            values = [" ".join(row[c]) if role == "tokens" else row[c] for role, c in content]
            inputs.append(values[0] if len(values) == 1 else tuple(values))
        return inputs

    def unlabelled_row(self) -> dict[str, Any]:
        """A row as a row of another task's group reaches this task: the task's label stored as missing, and
        no second text (pair, negative) nor word ids of its own."""
        row = {**self.rows[0], f"labels_{self.name}": self.task_type.missing_label(self.spec), "word_ids": []}
        return {key: [] if key.startswith(("pair_", "negative_")) else value for key, value in row.items()}

    def gather(self, parts: list[list[dict[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
        """The task's logits and labels over evaluation batches `parts`, concatenated (and padded with -100)
        as the Trainer gathers them."""
        logits, labels = [], []
        model = self.model
        with torch.no_grad():
            for part in parts:
                batch = self.collator(part)
                logits.append(model(**batch, tasks=[self.name])[f"{self.name}_logits"])
                labels.append(batch[f"labels_{self.name}"])
        return (
            nested_concat(*logits, padding_index=IGNORE_INDEX).float().numpy(),
            nested_concat(*labels, padding_index=IGNORE_INDEX).numpy(),
        )

    def new_model(self) -> MultiTaskEncoderModel:
        torch.manual_seed(0)
        return MultiTaskEncoderModel.from_backbone(self.backbone, tasks=copy.deepcopy(self.data.task_specs))

    @cached_property
    def trained(self) -> tuple[MultiTaskEncoderModel, Training]:
        with torch.enable_grad():  # whichever test asks first, maybe from inside a no_grad block
            model = self.new_model()
            torch.manual_seed(1)
            return model, train(model, self.name, self.batch, TRAIN_STEPS)

    @property
    def model(self) -> MultiTaskEncoderModel:
        """The model after its few training steps (what predict, metrics and the reload use)."""
        return self.trained[0]

    @property
    def training(self) -> Training:
        return self.trained[1]

    @cached_property
    def predictions(self) -> list[dict[str, Any]]:
        """`predict` on the example's inputs, as JSON gives it back (tuples become lists)."""
        return json.loads(json.dumps(self.model.predict(self.inputs, batch_size=4)))

    @cached_property
    def saved(self) -> Path:
        folder = self.folder / "saved"
        self.model.save_pretrained(folder)
        return folder


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Batches of a dozen short rows gain nothing from intra-op threads, and on a shared 2-core machine two
    OpenMP threads spin-wait for each other: one thread here (the fresh process too), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cases(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory):
    """case id -> Case, built on first use (a run of a single test builds only its own case)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    built: dict[str, Case] = {}

    def get(type_name: str, variant: str) -> Case:
        example = EXAMPLES.get(type_name, {}).get(variant)
        if example is None:
            pytest.fail(
                f"task type {type_name!r} is registered in TASK_TYPES but has no example in EXAMPLES of "
                f"{Path(__file__).name}: every type must pass the contract suite.",
                pytrace=False,
            )
        key = f"{type_name}-{variant}"
        if key not in built:
            built[key] = Case(type_name, example, tmp_path_factory.mktemp(key), tiny_backbone, tokenizer)
        return built[key]

    get.built = built
    return get


# ---------------------------------------------------------------------------------------------- helpers
def numbers_in(value: Any) -> list[float]:
    """Every number in a nested structure (dicts, lists, tuples), bools excluded."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float, np.integer, np.floating)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [n for v in value for n in numbers_in(v)]
    return []


def assert_same(actual: Any, expected: Any, tolerance: float, where: str = "") -> None:
    """Same structure, same strings and keys, numbers within `tolerance` (relative for large values)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), (
            f"{where}: {actual!r} != {expected!r}"
        )
        for key in expected:
            assert_same(actual[key], expected[key], tolerance, f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), (
            f"{where}: {actual!r} != {expected!r}"
        )
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, tolerance, f"{where}[{i}]")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert actual == pytest.approx(expected, abs=tolerance, rel=tolerance), (
            f"{where}: {actual} != {expected}"
        )
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_every_input_kind_has_an_example() -> None:
    """The suite runs every input kind too: a kind added to the registry brings a task type (or variant) whose
    example reads it."""
    used = {
        parse_task_spec("task", example.spec).input_kind.name
        for variants in EXAMPLES.values()
        for example in variants.values()
    }
    missing = sorted(set(INPUT_KINDS) - used)
    assert not missing, f"input kind(s) {missing} have no example in EXAMPLES of {Path(__file__).name}."


# ---------------------------------------------------------------------------------------------- 1. spec
@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_spec_parses_with_the_types_defaults_and_round_trips(cases, type_name: str, variant: str) -> None:
    case = cases(type_name, variant)
    given = case.example.spec
    spec = parse_task_spec(case.name, given)
    assert spec.type == type_name and spec.name == case.name
    package_side = task_type(spec)
    assert package_side is TASK_TYPES[type_name] and isinstance(package_side, type(spec.task_type))
    # Labels: as given, else the type's defaults; options: every option of the type, given or defaulted.
    assert spec.labels == [str(label) for label in given.get("labels") or package_side.default_labels()]
    assert set(spec.options) == set(package_side.options)
    for key, default in package_side.options.items():
        assert spec.options[key] == given.get(key, default), key
    # config.json stores to_dict(): JSON and back gives the same spec.
    stored = json.loads(json.dumps(spec.to_dict()))
    assert parse_task_spec(case.name, stored) == spec
    # Its rows are of a registered input kind, and the kind its options pick encodes rows of that content
    # (the data builds the rows by `input_kind`, the tokenizer and the model read them by `spec.input_kind`).
    rows_kind = INPUT_KINDS[package_side.input_kind]
    assert rows_kind.name == rows_kind.content
    assert spec.input_kind is INPUT_KINDS[package_side.input_encoding(spec.options)]
    assert spec.input_kind.content == rows_kind.content


# ---------------------------------------------------------------------------------------------- 2. labels
@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_label_cells_are_read_inferred_encoded_and_stored_as_the_type_says(
    cases, type_name: str, variant: str
) -> None:
    case = cases(type_name, variant)
    kind, name, spec = case.task_type, case.name, case.spec
    options = parse_task_entry(name, case.entry).options
    column = kind.label_column(name, options)
    raw = [
        kind.read_label(None if column is None else row[column], options, f"{case.path.name}, row {i}")
        for i, row in enumerate(case.raw_rows)
    ]
    # Label set: declared, else inferred from the raw labels (missing ones ignored) exactly as the loader did.
    inferred = kind.infer_labels(raw)
    assert kind.infer_labels([*raw, None]) == inferred, "infer_labels must skip missing labels (None)"
    given = case.example.spec.get("labels")
    assert spec.labels == ([str(label) for label in given] if given else inferred)
    # The inferred set is a valid spec under which every raw label encodes.
    inferred_spec = parse_task_spec(name, {**case.example.spec, "labels": inferred})
    for i, value in enumerate(raw):
        kind.encode_label(inferred_spec, value, f"row {i}")

    # The loader kept every row, in file order, with labels_<task> = encode_label(read_label(cell)).
    stored = list(case.data.train[f"labels_{name}"])
    expected = [kind.encode_label(spec, value, f"row {i}") for i, value in enumerate(raw)]
    assert len(stored) == len(case.example.rows)
    assert_same(stored, expected, 1e-6, f"labels_{name}")
    # Stored as label_feature says; a missing label has the same feature, and only it lacks a label.
    assert case.data.train.features[f"labels_{name}"] == label_feature(spec)
    missing = kind.missing_label(spec)
    features = Features({"labels": label_feature(spec)})
    round_trip = list(Dataset.from_dict({"labels": [expected[0], missing]}, features=features)["labels"])
    assert_same(round_trip, [expected[0], missing], 1e-6, "Arrow round trip")
    assert all(kind.has_label(value) for value in stored)
    assert not kind.has_label(missing)
    # Counts: one per label name, what the loader reported, and every label of the example is used.
    counts = kind.count_labels(spec, stored)
    assert list(counts) == spec.labels
    assert case.data.label_counts[name]["train"] == counts
    assert all(count > 0 for count in counts.values()), counts


# ---------------------------------------------------------------------------------------------- 3. collate
@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_collated_labels_have_the_types_shape_and_missing_rows_are_ignored(
    cases, type_name: str, variant: str
) -> None:
    case = cases(type_name, variant)
    kind, name, spec = case.task_type, case.name, case.spec
    batch = case.batch
    size, length = batch["input_ids"].shape
    labels = batch[f"labels_{name}"]
    dtype, is_list = kind.label_feature(spec)
    if kind.reads_token_states:
        shape = (size, length)  # one label per word piece
    elif is_list:
        shape = (size, spec.num_outputs)
    else:
        shape = (size,)
    assert tuple(labels.shape) == shape, f"labels_{name} is {tuple(labels.shape)}, expected {shape}"
    assert labels.dtype == {"int64": torch.long, "float32": torch.float32}[dtype]

    # The labelled entries are the stored labels (a token task's: one per word, on its first piece).
    for row, collated in zip(case.rows, labels):
        stored = row[f"labels_{name}"]
        if kind.reads_token_states:
            word_ids = row["word_ids"]
            first_pieces = [p for p, w in enumerate(word_ids) if w >= 0 and (p == 0 or word_ids[p - 1] != w)]
            assert (collated != IGNORE_INDEX).nonzero().flatten().tolist() == first_pieces
            assert collated[first_pieces].tolist() == stored
        else:
            assert_same(collated.tolist(), stored, 1e-6, f"labels_{name}")
    # The second texts (and contrastive negatives) go where the type's encoding says, one per row.
    roles = {role for role, _, _ in parse_task_entry(name, case.entry).content_columns}
    if "text_negative" in roles:
        assert batch["negative_inputs"]["rows"].tolist() == list(range(size))
    else:
        assert "negative_inputs" not in batch
    encoding = kind.input_encoding(spec.options)
    if encoding == "pair":
        assert batch["pair_inputs"]["rows"].tolist() == list(range(size))
    else:
        assert "pair_inputs" not in batch
        if encoding == "pair_joint":
            assert (batch["token_type_ids"] == 1).any(dim=1).all(), "a joint pair's second text has segment 1"

    # A row of another group (its label stored as missing_label) and a row without the column: all -100.
    other_group = case.unlabelled_row()
    no_column = {key: value for key, value in case.rows[0].items() if key != f"labels_{name}"}
    mixed = case.collator([case.rows[0], other_group, no_column])[f"labels_{name}"]
    assert mixed.shape[0] == 3 and mixed.dtype == labels.dtype
    assert (mixed[1:] == IGNORE_INDEX).all(), mixed
    assert (mixed[0] != IGNORE_INDEX).any()
    direct = kind.collate_labels(spec, [None], LabelBatch(rows=[{}], length=length))
    assert (direct == IGNORE_INDEX).all()


# ---------------------------------------------------------------------------------------------- 4. forward
@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_forward_gives_a_finite_loss_and_gradients_to_what_the_task_trains(
    cases, type_name: str, variant: str
) -> None:
    case = cases(type_name, variant)
    record = case.training
    assert record.loss.ndim == 0 and torch.isfinite(record.loss), record.loss
    assert record.task_losses is not None and set(record.task_losses) == {case.name}
    assert torch.isfinite(record.task_losses[case.name])
    assert record.logits.shape[0] == case.batch["input_ids"].shape[0]
    assert torch.isfinite(record.logits).all()

    trained = trained_parameters(case.model, case.name)
    assert trained
    for name, gradient in record.gradients.items():
        assert gradient is None or torch.isfinite(gradient).all(), f"{name}: non-finite gradient"
    dead = [name for name in trained if record.gradients[name] is None or not record.gradients[name].any()]
    assert not dead, f"no gradient reaches {dead}"
    # The encoder learns from every type (shared representation), head or not.
    encoder = [g for n, g in record.gradients.items() if n.startswith("encoder.") and g is not None]
    assert any(g.any() for g in encoder), "no gradient reaches the encoder"
    # A row without the task's label (a row of another task's group in a mixed batch) adds nothing to its loss.
    model = case.model
    with torch.no_grad():
        alone = model(**case.collator(case.rows)).task_losses[case.name]
        mixed = model(**case.collator([*case.rows, case.unlabelled_row()])).task_losses[case.name]
    assert float(mixed) == pytest.approx(float(alone), abs=RELOAD_TOLERANCE, rel=RELOAD_TOLERANCE)
    assert record.loss_after < record.loss_before, (
        f"{TRAIN_STEPS} steps on one batch did not lower the loss: {record.loss_before} -> {record.loss_after}"
    )


# ---------------------------------------------------------------------------------------------- 5. decode
@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_predict_returns_the_types_fields_for_every_input(cases, type_name: str, variant: str) -> None:
    case = cases(type_name, variant)
    predictions = case.predictions
    fields = set(case.task_type.prediction_fields(case.spec))
    assert len(predictions) == len(case.inputs)
    for i, prediction in enumerate(predictions):
        assert set(prediction) == {case.name}, prediction
        assert set(prediction[case.name]) == fields, (
            f"input {i}: {prediction[case.name]} lacks/adds to {fields}"
        )
        assert all(math.isfinite(n) for n in numbers_in(prediction)), prediction
        assert isinstance(case.task_type.summarize(prediction[case.name]), str)
    distinct = {json.dumps(p[case.name], sort_keys=True) for p in predictions}
    assert len(distinct) > 1, f"the same prediction for all {len(predictions)} inputs: {predictions[0]}"
    # One input alone gives what it gave in the batch.
    last = case.inputs[-1]
    alone = {"text": last[0], "text_pair": last[1]} if isinstance(last, tuple) else last
    single = json.loads(json.dumps(case.model.predict(alone)))
    assert_same(single, predictions[-1], RELOAD_TOLERANCE, "single input")


@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_predict_decodes_what_the_training_forward_computes(cases, type_name: str, variant: str) -> None:
    """No train/serve skew: the loader's tokenisation of a row (words, pairs apart or joint) and predict's of
    the same input give the model the same thing, so decoding the training batch's logits is predict's answer."""
    case = cases(type_name, variant)
    kind, name, spec = case.task_type, case.name, case.spec
    assert len(case.rows) == len(case.inputs)
    with torch.no_grad():
        logits = case.model(**case.batch, tasks=[name])[f"{name}_logits"].float()
    texts = [item[0] if isinstance(item, tuple) else item for item in case.inputs]
    encodings: list[Any] = [None] * len(texts)
    if kind.reads_token_states:  # decoding reads the character offsets predict's tokenisation gives
        for batch in case.model.preprocess(texts, tasks=[name]):
            for index, encoding in zip(batch.indices, batch.encodings):
                encodings[index] = encoding
    decoded = json.loads(json.dumps(kind.decode(spec, logits, texts, encodings, None)))
    assert_same([p[name] for p in case.predictions], decoded, RELOAD_TOLERANCE, "predict vs training forward")


# ---------------------------------------------------------------------------------------------- 6. metrics
@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_metrics_on_gathered_logits_are_finite_and_hold_the_main_metric(
    cases, type_name: str, variant: str
) -> None:
    case = cases(type_name, variant)
    kind, spec = case.task_type, case.spec
    # Two evaluation batches of different lengths, gathered as the Trainer gathers them.
    half = len(case.rows) // 2
    logits, labels = case.gather([case.rows[:half], case.rows[half:]])
    assert len(logits) == len(labels) == len(case.rows)
    metrics = kind.metrics(spec, logits, labels)
    assert kind.main_metric in metrics, f"main_metric {kind.main_metric!r} not in {sorted(metrics)}"
    main = metrics[kind.main_metric]
    assert isinstance(main, (int, float)) and not isinstance(main, bool) and math.isfinite(main), main
    assert all(math.isfinite(n) for n in numbers_in(metrics)), metrics
    # A gathered row without the task's label (-100) is not scored.
    with_unlabelled = kind.metrics(
        spec, *case.gather([case.rows[:half], [*case.rows[half:], case.unlabelled_row()]])
    )
    assert_same(with_unlabelled, metrics, RELOAD_TOLERANCE, "metrics with an unlabelled row")
    # Each row's line of the prediction file: gold, predicted, score.
    for row_logits, row_labels in zip(logits, labels):
        line = kind.prediction_row(spec, row_logits, row_labels)
        assert len(line) == 3
        assert all(isinstance(v, str) or (isinstance(v, float) and math.isfinite(v)) for v in line), line
        assert str(line[1]).strip(), f"an empty prediction: {line}"
        # A score exactly for the types that declare one (the file has no empty `score` column).
        assert (line[2] != "") == kind.has_prediction_score, line
    # The predicted column shows the whole prediction: each output of a row's logits alone (set far above or
    # far below the others) can change it.
    row_logits, row_labels = logits[0], labels[0]
    predicted = kind.prediction_row(spec, row_logits, row_labels)[1]
    extremes = (float(row_logits.max()) + 50.0, float(row_logits.min()) - 50.0)
    ignored = []
    for output in range(row_logits.shape[-1]):
        changed = []
        for value in extremes:
            perturbed = row_logits.copy()
            perturbed[..., output] = value
            changed.append(kind.prediction_row(spec, perturbed, row_labels)[1] != predicted)
        if not any(changed):
            ignored.append(output)
    assert not ignored, f"the prediction file's predicted column ignores output(s) {ignored} of the logits"


# ---------------------------------------------------------------------------------------------- 7. reload
FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import traceback

    import torch
    from transformers import AutoModel

    jobs_path, out_path, threads = sys.argv[1:4]
    torch.set_num_threads(int(threads))
    results = {}
    for key, job in json.loads(open(jobs_path, encoding="utf-8").read()).items():
        try:
            model = AutoModel.from_pretrained(job["folder"], trust_remote_code=True)
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            assert "multitask_encoder" not in sys.modules
            inputs = [tuple(x) if isinstance(x, list) else x for x in job["inputs"]]
            results[key] = {"predictions": model.predict(inputs, batch_size=4)}
        except Exception:
            results[key] = {"error": traceback.format_exc()}
    open(out_path, "w", encoding="utf-8").write(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def reloaded() -> dict[str, dict[str, Any]]:
    """case id -> what the fresh process predicted (or its traceback); filled by the first reload test for
    every case built so far, so the whole file starts one interpreter (~5 s on 2 cores), not one per case."""
    return {}


@pytest.mark.parametrize(("type_name", "variant"), CASES)
def test_saved_model_predicts_the_same_in_a_fresh_process_without_the_package(
    cases, reloaded, run_without_package, tmp_path: Path, type_name: str, variant: str
) -> None:
    case = cases(type_name, variant)
    key = f"{type_name}-{variant}"
    if key not in reloaded:
        pending = [k for k, c in cases.built.items() if k not in reloaded and "trained" in c.__dict__]
        pending = list(dict.fromkeys([*pending, key]))
        jobs = {k: {"folder": str(cases.built[k].saved), "inputs": cases.built[k].inputs} for k in pending}
        jobs_path, out_path = tmp_path / "jobs.json", tmp_path / "predictions.json"
        jobs_path.write_text(json.dumps(jobs), encoding="utf-8")
        result = run_without_package(
            FRESH_PROCESS_SCRIPT, str(jobs_path), str(out_path), str(torch.get_num_threads())
        )
        assert result.returncode == 0, result.stderr[-4000:]
        reloaded.update(json.loads(out_path.read_text(encoding="utf-8")))
    outcome = reloaded[key]
    assert "error" not in outcome, outcome.get("error")
    assert_same(outcome["predictions"], case.predictions, RELOAD_TOLERANCE, "fresh process")
