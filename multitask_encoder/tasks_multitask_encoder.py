"""Task types: everything that differs between one kind of task and another, one class per type.

    config.json / training YAML ─► parse_task_spec ─► TaskSpec (type, labels, head, loss_weight, options)
                                                        │
                              spec.task_type = TASK_TYPES[spec.type] decides, for that task,
        config    its options and label rules             check_labels, options
        data      how a label cell reads and encodes      data_options, read_label, infer_labels, encode_label,
                                                          missing_label, has_label, count_labels, label_feature
        batches   how its labels become a tensor          collate_labels
        model     what its head reads, its loss           head_in_features, head_input, loss
        predict   logits -> the dicts `predict` returns   decode, prediction_fields, summarize
        scoring   metrics, main metric, prediction files  metrics, main_metric, prediction_row
        card      names on the model card and the Hub     display_name, hub_task, head_kind, model_index_metrics ...

No other module branches on a task's type: each asks `spec.task_type`. Adding a task type is one subclass
registered in `TASK_TYPES`, plus its tests.

Copied next to the weights by `save_pretrained` with the other model files (a saved model loads where the
`multitask_encoder` package is absent), so it imports only torch, numpy (which transformers requires), the
standard library and its sibling metrics file.
"""

from __future__ import annotations

import ast
import copy
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics_multitask_encoder import (
    IGNORE_INDEX,
    classification_metrics,
    entity_metrics,
    extract_entities,
    multi_label_metrics,
    regression_metrics,
)

HEAD_TYPES = ("linear", "mlp")
ACTIVATIONS = ("gelu", "relu", "tanh", "silu")
# The heads live in an `nn.ModuleDict`, which refuses keys that shadow its own attributes ("type", "values",
# "to", "training", ...): such task names are refused here, with the reason, instead of deep in torch.
RESERVED_TASK_NAMES = frozenset(dir(nn.ModuleDict()))
FLOAT32_MAX = float(np.finfo(np.float32).max)
SPEC_KEYS = ("type", "labels", "head", "loss_weight")  # every type's; a type adds its `options`
# Written into config.json for every task by versions before the registry; accepted (at its old default) on
# any type when loading such a config, refused when it would mean something.
LEGACY_OPTIONS = {"threshold": 0.5}


class LabelError(ValueError):
    """A label value that is not valid for its task (raised with the row's location; the data loader adds the
    task and re-raises it as its DataError)."""


# ---------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class HeadSpec:
    """Shape of one task head: `linear` (a single projection), or `mlp` (Linear-act-dropout-Linear).

    `layers` is what the head reads: `last` (the last encoder layer, as the embedding does), or a learned
    scalar mix (ELMo, UDify: softmax-weighted layers times a scale) of the encoder's hidden states, `all` of
    them or a list of indices (0 = the embedding layer's output, N = the last of N encoder layers).
    """

    type: str = "linear"
    hidden_size: int | None = None  # mlp only; defaults to the head's input size
    activation: str = "gelu"
    dropout: float = 0.1
    layers: str | tuple[int, ...] = "last"

    @property
    def mixes_layers(self) -> bool:
        """True when the head reads a learned mix of hidden layers instead of the last layer alone."""
        return self.layers != "last"

    def layer_indices(self, task: str, num_layers: int) -> tuple[int, ...] | None:
        """The hidden-state indices the head mixes (None for `last`), checked against an encoder of
        `num_layers` layers (hidden states 0..num_layers)."""
        if not self.mixes_layers:
            return None
        if self.layers == "all":
            return tuple(range(num_layers + 1))
        beyond = [index for index in self.layers if index > num_layers]
        if beyond:
            raise ValueError(
                f"Task {task!r}: head layers {list(self.layers)} has {beyond}, beyond the encoder's "
                f"{num_layers} layers (hidden states 0 = the embedding layer's output .. {num_layers} = the "
                "last layer)."
            )
        return tuple(self.layers)


@dataclass(frozen=True)
class TaskSpec:
    """One task the model serves, as config.json stores it.

    `labels` are the class names (their order gives the class ids); what they mean and which `options` a task
    takes depend on its type (see the `TaskType` subclasses). Build it through `parse_task_spec`, which
    validates it and fills the type's defaults.
    """

    type: str
    labels: list[str] = field(default_factory=list)
    head: HeadSpec = field(default_factory=HeadSpec)
    loss_weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)  # the type's own options, e.g. `threshold`
    name: str = ""  # the task's name (the key it has in config.tasks), for messages

    @property
    def task_type(self) -> TaskType:
        return TASK_TYPES[self.type]

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def is_token_level(self) -> bool:
        """True when the head reads every token's state (and predictions need character offsets)."""
        return self.task_type.reads_token_states

    @property
    def threshold(self) -> float:
        return self.options["threshold"]

    def to_dict(self) -> dict[str, Any]:
        """The flat form config.json stores: the common keys, then the type's options."""
        head = asdict(self.head)
        if isinstance(head["layers"], tuple):
            head["layers"] = list(head["layers"])
        return {
            "type": self.type,
            "labels": list(self.labels),
            "head": head,
            "loss_weight": self.loss_weight,
            **self.options,
        }


class EncoderFeatures(NamedTuple):
    """What the heads can read from one batch of `batch` rows: `token_states` `[batch, seq, hidden]` (None
    when no head needs them, e.g. on the precomputed fast path), `attention_mask` `[batch, seq]`, the sentence
    `embeddings` `[batch, embedding_size]` of each row's (first) text; for rows with a second text (pair
    tasks encoded separately, contrastive positives) `pair_embeddings` `[pairs, embedding_size]` and
    `pair_rows` `[pairs]` (the batch row each belongs to); contrastive negatives likewise. For heads that mix
    layers: `hidden_states` {hidden-state index: `[batch, seq, hidden]`} (the token heads' layers) and
    `pooled_hidden_states` {index: `[batch, hidden]`} (the sentence heads' layers, each pooled as the
    embedding is)."""

    token_states: torch.Tensor | None
    attention_mask: torch.Tensor | None
    embeddings: torch.Tensor
    pair_embeddings: torch.Tensor | None = None
    pair_rows: torch.Tensor | None = None
    negative_embeddings: torch.Tensor | None = None
    negative_rows: torch.Tensor | None = None
    hidden_states: Mapping[int, torch.Tensor] | None = None
    pooled_hidden_states: Mapping[int, torch.Tensor] | None = None

    def layer_mix(self, head: nn.Module, token_level: bool) -> torch.Tensor:
        """The learned mix of a layer-mixing head (`head.layers`, `head.mix`): of the token states of its
        layers (`token_level`), else of their pooled vectors."""
        source = self.hidden_states if token_level else self.pooled_hidden_states
        missing = [index for index in head.layers if source is None or index not in source]
        if missing:
            kind = "hidden_states" if token_level else "pooled_hidden_states"
            raise ValueError(
                f"The head mixes hidden layers {list(head.layers)}, but the encoder outputs have no {kind} for "
                f"{missing}."
            )
        return head.mix(torch.stack([source[index] for index in head.layers]))

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, first-text embeddings, second-text embeddings) of the rows that have a second text."""
        if self.pair_rows is None or self.pair_embeddings is None:
            empty = self.embeddings[:0]
            return torch.zeros(0, dtype=torch.long, device=self.embeddings.device), empty, empty
        return self.pair_rows, self.embeddings[self.pair_rows], self.pair_embeddings


class LabelBatch(NamedTuple):
    """What `collate_labels` may need besides the label values: the batch's rows (token tasks read their
    `word_ids`), the padded length and side of the model inputs, and the subtoken labelling choice."""

    rows: Sequence[Mapping[str, Any]]
    length: int
    padding_side: str = "right"
    label_all_subtokens: bool = False


class IndexedMetric(NamedTuple):
    """One metric as it goes into the Hub model-index: `type` is an id from hf.co/metrics."""

    key: str
    type: str
    name: str
    args: dict[str, str] | None = None


# ---------------------------------------------------------------------------------------------- cells
def is_missing(value: Any) -> bool:
    """None, NaN and empty strings mean "no label for this task in this row"."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def cell_str(value: Any) -> str:
    """A raw label as a name: 1, 1.0 and "1" all become "1"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def cell_list(value: Any, separator: str | None) -> list:
    """A list cell: a list, a JSON or Python list literal, or a string split on `separator` (whitespace if None)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            for parse in (json.loads, ast.literal_eval):
                try:
                    parsed = parse(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(parsed, list):
                    return parsed
        return [item.strip() for item in text.split(separator) if item.strip()] if separator else text.split()
    return [value]


def label_sort_key(label: str) -> tuple:
    """Numbers sort as numbers ("2" before "10"), then names alphabetically."""
    try:
        number = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (1, 0.0, label) if math.isnan(number) else (0, number, label)


def map_label(value: Any, label_map: Mapping[str, str] | None, where: str) -> str:
    key = cell_str(value)
    if label_map is None:
        return key
    if key not in label_map:
        raise LabelError(f"{where}: value {key!r} is not a key of label_map {dict(label_map)}.")
    return label_map[key]


def to_float(value: Any, where: str) -> float:
    if isinstance(value, bool):  # True/False would silently become 1.0/0.0
        raise LabelError(f"{where}: regression value {value!r} is not a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LabelError(f"{where}: regression value {value!r} is not a number.") from None
    if not math.isfinite(number):
        raise LabelError(f"{where}: regression value {value!r} is not finite.")
    if abs(number) > FLOAT32_MAX:  # stored and trained as float32, it would become infinity
        raise LabelError(
            f"{where}: regression value {value!r} is beyond float32's range (it would become infinity)."
        )
    return number


def label_ids(spec: TaskSpec, names: list[str], where: str) -> list[int]:
    """Label names -> their ids in `spec.labels` (raises LabelError naming the first unknown one)."""
    label2id = spec.label2id
    unknown = [label for label in names if label not in label2id]
    if unknown:
        raise LabelError(f"{where}: label {unknown[0]!r} is not one of the labels {spec.labels}.")
    return [label2id[label] for label in names]


def as_list(value: Any) -> list:
    """A list cell, whether a row came as Python lists or as tensors (`set_format("torch")`)."""
    if value is None:
        return []
    return value.tolist() if hasattr(value, "tolist") else list(value)


def ranked_scores(labels: Sequence[str], probabilities: list[float], top_k: int | None) -> dict[str, float]:
    ranked = sorted(zip(labels, probabilities), key=lambda pair: -pair[1])
    return dict(ranked[:top_k] if top_k else ranked)


# ---------------------------------------------------------------------------------------------- base
class TaskType:
    """What one kind of task means end to end. Subclasses set the class attributes and override the methods
    their type does differently; instances hold no state (one per type, in `TASK_TYPES`)."""

    name: ClassVar[str]
    display_name: ClassVar[str]  # model card / model-index ("Text Classification")
    hub_task: ClassVar[str]  # Hub task id of the model-index and pipeline tags
    hf_problem_type: ClassVar[str] = "single_label_classification"  # `config.problem_type` of its task view
    card_tags: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Any]] = {}  # spec keys of this type only -> default
    # Data side: the task's content is one text per row ("text"), a list of words ("tokens") or two texts
    # ("pair"); the keys a task entry of this type may set besides the common ones, with their defaults
    # (None: see the reader).
    input_kind: ClassVar[str] = "text"
    data_options: ClassVar[dict[str, Any]] = {"text_column": "text", "label_column": None}
    content_option: ClassVar[str] = "text_column"  # the data option naming the content column
    min_labels: ClassVar[int] = 1
    stratify: ClassVar[bool] = False  # held-out splits keep each class's share
    reads_token_states: ClassVar[bool] = False
    distinct_batch_texts: ClassVar[bool] = (
        False  # a batch must not hold the same text twice (in-batch negatives)
    )
    main_metric: ClassVar[str]
    model_index_metrics: ClassVar[tuple[IndexedMetric, ...]] = ()
    body_metrics: ClassVar[tuple[str, ...]] = ()
    support_name: ClassVar[str] = "Support (examples)"
    count_unit: ClassVar[str] = "examples"  # what one count of count_labels is
    limitation: ClassVar[str | None] = None  # a line for the card's Limitations

    # -------------------------------------------------------------- config
    def input_encoding(self, options: Mapping[str, Any]) -> str:
        """How a row's content is tokenised, from the task's options: "text", "tokens", "pair" (each text on its
        own: a second encoder pass gives `pair_embeddings`) or "pair_joint" (one `[CLS] a [SEP] b` input)."""
        return self.input_kind

    def default_labels(self) -> list[str]:
        return []

    def check_labels(self, task: str, labels: list[str]) -> None:
        if len(labels) < self.min_labels:
            raise ValueError(
                f"Task {task!r}: a {self.name} task needs at least {self.min_labels} labels, got {labels}."
            )

    def check_options(self, task: str, options: dict[str, Any]) -> dict[str, Any]:
        """The type's options with defaults filled in, validated."""
        return {**self.options, **options}

    # -------------------------------------------------------------- data
    def label_column(self, task: str, data_options: Mapping[str, Any]) -> str | None:
        """The column of the task's labels; None for a type whose label is the row itself (contrastive)."""
        return data_options.get("label_column") or task

    def read_label(self, value: Any, data_options: Mapping[str, Any], where: str) -> Any:
        """A present label cell -> its raw form (names or numbers), before the label set is known."""
        raise NotImplementedError

    def infer_labels(self, raw: Iterable[Any]) -> list[str]:
        """The label set from the train data's raw labels (None = missing), when the spec declares none; read
        in one pass (the train data may not fit in memory)."""
        raise NotImplementedError

    def encode_label(self, spec: TaskSpec, raw: Any, where: str) -> Any:
        """A raw label -> the value stored in `labels_<task>` (raises LabelError when it is not valid)."""
        raise NotImplementedError

    def missing_label(self, spec: TaskSpec) -> Any:
        """The value of `labels_<task>` in a row without a label for the task."""
        return IGNORE_INDEX

    def has_label(self, value: Any) -> bool:
        if isinstance(value, list):
            return any(v != IGNORE_INDEX for v in value)
        return value != IGNORE_INDEX

    def count_labels(self, spec: TaskSpec, values: list) -> dict[str, int]:
        """Label counts of one task in one split (what a count is: `count_unit`)."""
        raise NotImplementedError

    def label_feature(self, spec: TaskSpec) -> tuple[str, bool]:
        """How `labels_<task>` is stored: (dtype, is a list per row)."""
        raise NotImplementedError

    # -------------------------------------------------------------- batches
    def collate_labels(self, spec: TaskSpec, values: list[Any], batch: LabelBatch) -> torch.Tensor:
        """Rows' `labels_<task>` (None where a row has no such key) -> the tensor `forward` takes."""
        raise NotImplementedError

    # -------------------------------------------------------------- model
    def layer_mix_refusal(self, options: Mapping[str, Any]) -> str | None:
        """Why a task of this type (with these options) cannot read a mix of layers (head `layers` other than
        `last`), or None when it can."""
        return None

    def head_in_features(self, spec: TaskSpec, hidden_size: int, embedding_size: int) -> int | None:
        """The size of what the head reads; None for a type without a head of its own (it scores embeddings).
        A head mixing layers reads hidden states (or their pooled mix: never projected), of `hidden_size`."""
        return hidden_size if self.reads_token_states or spec.head.mixes_layers else embedding_size

    def head_reads(self, spec: TaskSpec) -> str:
        """What the head reads, for the model card."""
        if spec.head.mixes_layers:
            return layer_mix_description(spec.head, self.reads_token_states)
        return "each token state" if self.reads_token_states else "the sentence embedding"

    def head_input(self, head: nn.Module, spec: TaskSpec, features: EncoderFeatures) -> torch.Tensor:
        """What the head reads: token states or the sentence embedding, or their learned mix of layers."""
        if spec.head.mixes_layers:
            return features.layer_mix(head, self.reads_token_states)
        return features.token_states if self.reads_token_states else features.embeddings

    def logits(self, head: nn.Module | None, spec: TaskSpec, features: EncoderFeatures) -> torch.Tensor:
        """The task's output for every row of the batch (what `<task>_logits` holds)."""
        return head(self.head_input(head, spec, features))

    def loss(
        self, spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor, features: EncoderFeatures
    ) -> torch.Tensor | None:
        """Loss over the rows (or tokens) that carry a label; None when none does (the mean over nothing
        would be NaN). Labels: shapes as `collate_labels` makes them, -100 = missing."""
        raise NotImplementedError

    def logits_shape(self, spec: TaskSpec) -> str:
        return (
            f"[batch, seq, {spec.num_outputs}]" if self.reads_token_states else f"[batch, {spec.num_outputs}]"
        )

    # -------------------------------------------------------------- distillation (teachers.py)
    # Why a single-task teacher cannot teach this type, or None when it can.
    distillation_refused: ClassVar[str | None] = None

    def teacher_targets(self, spec: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
        """A teacher's logits for this task (its `<task>_logits`, labels in `spec.labels` order) -> the soft
        targets the student learns from, same shape: class probabilities for the classification types."""
        return torch.softmax(logits.float(), dim=-1)

    def collate_teacher(self, spec: TaskSpec, values: list[Any], batch: LabelBatch) -> torch.Tensor:
        """Rows' teacher targets (a list of `num_outputs` floats; [] or None where a row has none) -> a float
        tensor shaped like the task's logits, NaN where there is no target."""
        missing = [math.nan] * spec.num_outputs
        return torch.tensor([as_list(v) or missing for v in values], dtype=torch.float)

    def distillation_loss(
        self, spec: TaskSpec, logits: torch.Tensor, targets: torch.Tensor, features: EncoderFeatures
    ) -> torch.Tensor | None:
        """The student's loss against the teacher's targets over the rows (or tokens) that have one; None when
        none does. Cross-entropy with the teacher's class probabilities as soft targets (Hinton et al. 2015)."""
        logits = logits.float().reshape(-1, logits.shape[-1])
        targets = targets.float().reshape(logits.shape)
        present = torch.isfinite(targets).all(dim=-1)
        if not present.any():
            return None
        log_probabilities = torch.log_softmax(logits[present], dim=-1)
        return -(targets[present] * log_probabilities).sum(dim=-1).mean()

    # -------------------------------------------------------------- predict
    def decode(
        self,
        spec: TaskSpec,
        logits: torch.Tensor,
        texts: Sequence[str],
        encodings: Sequence[Any],
        top_k: int | None,
    ) -> list[dict[str, Any]]:
        """One batch's logits (float32, CPU) -> one prediction dict per row."""
        raise NotImplementedError

    def prediction_fields(self, spec: TaskSpec) -> tuple[str, ...]:
        """The keys of a prediction dict, known before any prediction (one CSV column each)."""
        raise NotImplementedError

    def summarize(self, prediction: dict[str, Any]) -> str:
        """A prediction dict in a few words, for logs."""
        raise NotImplementedError

    # -------------------------------------------------------------- scoring
    def metrics(self, spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Metrics of one task from its gathered logits and labels."""
        raise NotImplementedError

    def prediction_row(self, spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> tuple[Any, Any, Any]:
        """One test row's (gold, predicted, score) for the prediction file (score "" when it has none)."""
        raise NotImplementedError

    def collapse_note(self, spec: TaskSpec, metrics: Mapping[str, Any]) -> str | None:
        """A warning when an evaluation's predictions collapsed (e.g. one class for every row), else None."""
        return None

    # -------------------------------------------------------------- card
    def head_kind(self, spec: TaskSpec) -> str:
        return self.display_name.lower()

    def entity_counts(self, counts: Mapping[str, int]) -> Mapping[str, int] | None:
        """The train counts the card's imbalance notes compare (None: not meaningful for this type)."""
        return counts


class _SingleLabel(TaskType):
    """Shared by the types whose label is one class id per unit (a text, or a word)."""

    def collate_ids(self, values: list[Any]) -> torch.Tensor:
        return torch.tensor([IGNORE_INDEX if v is None else int(v) for v in values], dtype=torch.long)

    def loss(self, spec, logits, labels, features=None):
        labels = labels.long()
        if not (labels != IGNORE_INDEX).any():
            return None
        logits = logits.float()
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )


# ---------------------------------------------------------------------------------------------- types
class SequenceClassification(_SingleLabel):
    """One class per text: softmax head on the sentence embedding, cross-entropy."""

    name = "sequence_classification"
    display_name = "Text Classification"
    hub_task = "text-classification"
    card_tags = ("text-classification",)
    data_options: ClassVar[dict[str, Any]] = {"text_column": "text", "label_column": None, "label_map": None}
    min_labels = 2
    stratify = True
    main_metric = "accuracy"
    model_index_metrics = (
        IndexedMetric("accuracy", "accuracy", "Accuracy"),
        IndexedMetric("macro_f1", "f1", "Macro F1", {"average": "macro"}),
        IndexedMetric("weighted_f1", "f1", "Weighted F1", {"average": "weighted"}),
    )
    body_metrics = ("accuracy", "macro_f1", "weighted_f1", "support")

    def read_label(self, value, data_options, where):
        return map_label(value, data_options.get("label_map"), where)

    def infer_labels(self, raw):
        return sorted({value for value in raw if value is not None}, key=label_sort_key)

    def encode_label(self, spec, raw, where):
        return label_ids(spec, [raw], where)[0]

    def count_labels(self, spec, values):
        counts = Counter(spec.labels[value] for value in values if self.has_label(value))
        return {label: counts[label] for label in spec.labels}

    def label_feature(self, spec):
        return ("int64", False)

    def collate_labels(self, spec, values, batch):
        return self.collate_ids(values)

    def decode(self, spec, logits, texts, encodings, top_k):
        probabilities = torch.softmax(logits, dim=-1).tolist()
        predictions = []
        for row in probabilities:
            scores = ranked_scores(spec.labels, row, top_k)
            best = next(iter(scores))
            predictions.append({"label": best, "score": scores[best], "scores": scores})
        return predictions

    def prediction_fields(self, spec):
        return ("label", "score", "scores")

    def summarize(self, prediction):
        return f"{prediction['label']} ({prediction['score']:.2f})"

    def metrics(self, spec, logits, labels):
        return classification_metrics(logits.argmax(-1), labels, spec.labels)

    def prediction_row(self, spec, logits, labels):
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = int(probabilities.argmax())
        gold = spec.labels[int(labels)] if labels != IGNORE_INDEX else ""
        return gold, spec.labels[best], f"{probabilities[best]:.4f}"

    def collapse_note(self, spec, metrics):
        confusion = np.asarray(metrics.get("confusion_matrix") or [[]])
        if confusion.size == 0 or confusion.shape[0] != spec.num_outputs:
            return None
        predicted, gold = confusion.sum(axis=0), confusion.sum(axis=1)
        if (predicted > 0).sum() == 1 and (gold > 0).sum() > 1:
            label = spec.labels[int(predicted.argmax())]
            return (
                f"the head predicts `{label}` for every one of the {int(predicted.sum())} rows (collapsed to one "
                "class: too few steps, a learning rate too high or too low, or one class dominating the data)."
            )
        return None

    def head_kind(self, spec):
        return "classification (softmax)"


class MultiLabelClassification(TaskType):
    """Any number of labels per text: one sigmoid per label on the sentence embedding, binary cross-entropy;
    a label is predicted when its sigmoid >= `threshold`."""

    name = "multi_label_classification"
    display_name = "Multi-label Text Classification"
    hf_problem_type = "multi_label_classification"
    hub_task = "text-classification"
    card_tags = ("text-classification", "multi-label-classification")
    options: ClassVar[dict[str, Any]] = {"threshold": 0.5}
    data_options: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "label_column": None,
        "label_map": None,
        "label_separator": ",",
    }
    main_metric = "micro_f1"
    model_index_metrics = (
        IndexedMetric("micro_f1", "f1", "Micro F1", {"average": "micro"}),
        IndexedMetric("macro_f1", "f1", "Macro F1", {"average": "macro"}),
        IndexedMetric("exact_match", "exact_match", "Exact match (subset accuracy)"),
    )
    body_metrics = ("micro_f1", "macro_f1", "exact_match", "support")
    count_unit = "examples carrying the label"
    limitation = "Multi-label heads predict every label whose sigmoid reaches the threshold; a text may get no label at all."

    def check_options(self, task, options):
        options = super().check_options(task, options)
        threshold = options["threshold"]
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0.0 < threshold < 1.0
        ):
            raise ValueError(f"Task {task!r}: threshold must be in (0, 1), got {threshold}.")
        return {"threshold": float(threshold)}

    def read_label(self, value, data_options, where):
        separator = data_options.get("label_separator", ",")
        names = [map_label(v, data_options.get("label_map"), where) for v in cell_list(value, separator)]
        return list(dict.fromkeys(names))

    def infer_labels(self, raw):
        return sorted({label for labels in raw if labels is not None for label in labels}, key=label_sort_key)

    def encode_label(self, spec, raw, where):
        hot = [0.0] * spec.num_outputs
        for label_id in label_ids(spec, raw, where):
            hot[label_id] = 1.0
        return hot

    def missing_label(self, spec):
        return [float(IGNORE_INDEX)] * spec.num_outputs

    def count_labels(self, spec, values):
        counts = Counter()
        for value in values:
            if self.has_label(value):
                counts.update(label for label, hot in zip(spec.labels, value) if hot == 1.0)
        return {label: counts[label] for label in spec.labels}

    def label_feature(self, spec):
        return ("float32", True)

    def collate_labels(self, spec, values, batch):
        missing = [float(IGNORE_INDEX)] * spec.num_outputs
        return torch.tensor([as_list(v) or missing for v in values], dtype=torch.float)

    def loss(self, spec, logits, labels, features=None):
        logits = logits.float()
        labels = labels.float().reshape(logits.shape)
        labelled_rows = (labels != IGNORE_INDEX).all(dim=-1)
        if not labelled_rows.any():
            return None
        return F.binary_cross_entropy_with_logits(logits[labelled_rows], labels[labelled_rows])

    def teacher_targets(self, spec, logits):
        return torch.sigmoid(logits.float())

    def distillation_loss(self, spec, logits, targets, features):
        logits = logits.float()
        targets = targets.float().reshape(logits.shape)
        present = torch.isfinite(targets).all(dim=-1)
        if not present.any():
            return None
        return F.binary_cross_entropy_with_logits(logits[present], targets[present])

    def decode(self, spec, logits, texts, encodings, top_k):
        predictions = []
        for row in torch.sigmoid(logits).tolist():
            ranked = ranked_scores(spec.labels, row, None)
            predictions.append(
                {
                    "labels": [label for label, p in ranked.items() if p >= spec.threshold],
                    "scores": dict(list(ranked.items())[:top_k]) if top_k else ranked,
                }
            )
        return predictions

    def prediction_fields(self, spec):
        return ("labels", "scores")

    def summarize(self, prediction):
        return "|".join(prediction["labels"])

    def metrics(self, spec, logits, labels):
        predicted = (1.0 / (1.0 + np.exp(-logits)) >= spec.threshold).astype(np.int64)
        return multi_label_metrics(predicted, labels, spec.labels)

    def prediction_row(self, spec, logits, labels):
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        predicted = [label for label, p in zip(spec.labels, probabilities) if p >= spec.threshold]
        gold = [label for label, y in zip(spec.labels, labels) if y == 1]
        return "|".join(gold), "|".join(predicted), f"{probabilities.max():.4f}"

    def head_kind(self, spec):
        return f"multi-label (sigmoid ≥ {spec.threshold:g})"


class Regression(TaskType):
    """One or more real values per text (`labels` name the outputs; default one, "value"): linear head on
    the sentence embedding, mean squared error over the labelled values."""

    name = "regression"
    display_name = "Text Regression"
    hf_problem_type = "regression"
    # The Hub has no regression task id: regression heads are reported as text-classification, as the Hub
    # does for STS-B-style models (AutoModelForSequenceClassification with 1 output).
    hub_task = "text-classification"
    card_tags = ("regression",)
    main_metric = "spearman"
    model_index_metrics = (
        IndexedMetric("mse", "mse", "MSE"),
        IndexedMetric("mae", "mae", "MAE"),
        IndexedMetric("pearson", "pearsonr", "Pearson r"),
        IndexedMetric("spearman", "spearmanr", "Spearman rho"),
    )
    body_metrics = ("mse", "rmse", "mae", "pearson", "spearman", "support")
    support_name = "Support (labelled values)"
    count_unit = "labelled values"
    limitation = (
        "Regression heads are unbounded linear outputs: values outside the training range are possible."
    )

    def default_labels(self):
        return ["value"]

    def read_label(self, value, data_options, where):
        values = cell_list(value, None) if isinstance(value, (list, tuple, np.ndarray, str)) else [value]
        numbers = []
        for v in values:
            if is_missing(v):  # a list cell may lack some outputs: -100, masked one by one in the loss
                numbers.append(float(IGNORE_INDEX))
                continue
            number = to_float(v, where)
            if number == IGNORE_INDEX:
                raise LabelError(
                    f"{where}: regression value {v!r} equals -100, the marker of a missing value; it would "
                    "be ignored, not learnt. Shift or rescale the values."
                )
            numbers.append(number)
        return numbers[0] if len(numbers) == 1 else numbers

    def infer_labels(self, raw):
        first = next((value for value in raw if value is not None), None)
        width = len(first) if isinstance(first, list) else 1
        return ["value"] if width == 1 else [f"value_{i}" for i in range(width)]

    def encode_label(self, spec, raw, where):
        values = raw if isinstance(raw, list) else [raw]
        if len(values) != spec.num_outputs:
            raise LabelError(
                f"{where}: {len(values)} regression value(s), expected {spec.num_outputs} ({spec.labels})."
            )
        return values[0] if spec.num_outputs == 1 else values

    def missing_label(self, spec):
        return float(IGNORE_INDEX) if spec.num_outputs == 1 else [float(IGNORE_INDEX)] * spec.num_outputs

    def count_labels(self, spec, values):
        counts = Counter()
        for value in values:
            if self.has_label(value):
                outputs = value if isinstance(value, list) else [value]
                counts.update(label for label, v in zip(spec.labels, outputs) if v != IGNORE_INDEX)
        return {label: counts[label] for label in spec.labels}

    def label_feature(self, spec):
        return ("float32", spec.num_outputs != 1)

    def collate_labels(self, spec, values, batch):
        if spec.num_outputs == 1:
            return torch.tensor(
                [float(IGNORE_INDEX) if v is None else _as_scalar(v) for v in values], dtype=torch.float
            )
        missing = [float(IGNORE_INDEX)] * spec.num_outputs
        return torch.tensor([as_list(v) or missing for v in values], dtype=torch.float)

    def loss(self, spec, logits, labels, features=None):
        logits = logits.float()
        labels = labels.float().reshape(logits.shape)
        labelled = labels != IGNORE_INDEX
        if not labelled.any():
            return None
        return F.mse_loss(logits[labelled], labels[labelled])

    def teacher_targets(self, spec, logits):
        return logits.float()  # the teacher's values

    def distillation_loss(self, spec, logits, targets, features):
        logits = logits.float()
        targets = targets.float().reshape(logits.shape)
        present = torch.isfinite(targets)
        if not present.any():
            return None
        return F.mse_loss(logits[present], targets[present])

    def decode(self, spec, logits, texts, encodings, top_k):
        rows = logits.tolist()
        if spec.num_outputs == 1:
            return [{"value": row[0]} for row in rows]
        return [{"values": dict(zip(spec.labels, row))} for row in rows]

    def prediction_fields(self, spec):
        return ("value",) if spec.num_outputs == 1 else ("values",)

    def summarize(self, prediction):
        return str(prediction.get("value", prediction.get("values")))

    def metrics(self, spec, logits, labels):
        return regression_metrics(logits.reshape(labels.shape), labels)

    def prediction_row(self, spec, logits, labels):
        return float(np.ravel(labels)[0]), float(np.ravel(logits)[0]), ""

    def head_kind(self, spec):
        return "regression"

    def entity_counts(self, counts):
        return None  # a count per output says nothing about balance


class TokenClassification(_SingleLabel):
    """One IOB2 tag per word (NER): a head on every token state, cross-entropy over each word's first
    sub-token (or every sub-token with label_all_subtokens); predictions are entities with character offsets."""

    name = "token_classification"
    display_name = "Named Entity Recognition"
    hub_task = "token-classification"
    card_tags = ("token-classification", "ner")
    input_kind = "tokens"
    content_option = "tokens_column"
    data_options: ClassVar[dict[str, Any]] = {
        "tokens_column": "tokens",
        "tags_column": "ner_tags",
        "label_map": None,
    }
    min_labels = 2
    reads_token_states = True
    main_metric = "f1"
    model_index_metrics = (
        IndexedMetric("precision", "precision", "Entity precision"),
        IndexedMetric("recall", "recall", "Entity recall"),
        IndexedMetric("f1", "f1", "Entity F1"),
        IndexedMetric("accuracy", "accuracy", "Token accuracy"),
    )
    body_metrics = ("precision", "recall", "f1", "accuracy", "support")
    support_name = "Support (gold entities)"
    count_unit = "words with the tag"
    limitation = (
        "Entities are tagged per word (its first sub-token) and spans rebuilt from IOB2 tags; words split "
        "differently from the training data's tokenisation may be tagged inconsistently."
    )

    def check_labels(self, task, labels):
        super().check_labels(task, labels)
        bad = [tag for tag in labels if tag != "O" and not tag.startswith(("B-", "I-"))]
        if bad:
            raise ValueError(f"Task {task!r}: token labels must be IOB2 tags ('O', 'B-X', 'I-X'); got {bad}.")

    def label_column(self, task, data_options):
        return data_options.get("tags_column") or "ner_tags"

    def read_label(self, value, data_options, where):
        return [map_label(v, data_options.get("label_map"), where) for v in cell_list(value, None)]

    def infer_labels(self, raw):
        names = {tag for tags in raw if tags is not None for tag in tags}
        return ["O", *sorted(names - {"O"})] if "O" in names else sorted(names)

    def encode_label(self, spec, raw, where):
        return label_ids(spec, raw, where)

    def missing_label(self, spec):
        return []

    def has_label(self, value):
        return len(value) > 0

    def count_labels(self, spec, values):
        counts = Counter(spec.labels[tag] for value in values for tag in value)
        return {label: counts[label] for label in spec.labels}

    def label_feature(self, spec):
        return ("int64", True)

    def collate_labels(self, spec, values, batch):
        """Word-level tag ids + each row's `word_ids` -> LongTensor `[batch, length]` aligned to the padded
        word pieces: a word's first piece gets its tag, later pieces -100 (or, with label_all_subtokens, the
        continuation tag: B-X -> I-X); special tokens and padding -100."""
        continuation = continuation_tags(spec) if batch.label_all_subtokens else None
        labels = []
        for row, tags in zip(batch.rows, values):
            if "word_ids" not in row and len(as_list(tags)):
                # The Trainer drops columns its model's forward does not name, unless told otherwise; the
                # tags could then not be aligned and would silently become -100.
                raise ValueError(
                    f"A row has labels_{spec.name} but no word_ids to align them to word pieces. With the HF "
                    "Trainer, set TrainingArguments(remove_unused_columns=False)."
                )
            word_ids = as_list(row.get("word_ids"))
            offset = batch.length - len(word_ids) if batch.padding_side == "left" else 0
            labels.append(align_word_tags(word_ids, as_list(tags), batch.length, offset, continuation))
        return torch.tensor(labels, dtype=torch.long)

    def collate_teacher(self, spec, values, batch):
        """Each row's per-word teacher distributions `[words, num_tags]` -> `[batch, length, num_tags]` on the
        first piece of every word (the positions that carry the word's label), NaN elsewhere."""
        targets = torch.full((len(values), batch.length, spec.num_outputs), math.nan)
        for i, (row, words) in enumerate(zip(batch.rows, values)):
            words = as_list(words)
            if not words:
                continue
            word_ids = as_list(row.get("word_ids"))
            offset = batch.length - len(word_ids) if batch.padding_side == "left" else 0
            for position, word in first_pieces(word_ids):
                if word < len(words):
                    targets[i, offset + position] = torch.as_tensor(words[word], dtype=torch.float)
        return targets

    def decode(self, spec, logits, texts, encodings, top_k):
        return [
            {"entities": entities(text, encoding, row, spec)}
            for text, encoding, row in zip(texts, encodings, logits)
        ]

    def prediction_fields(self, spec):
        return ("entities",)

    def summarize(self, prediction):
        return ", ".join(f"{e['text']}:{e['entity']}" for e in prediction["entities"])

    def metrics(self, spec, logits, labels):
        # Words are scored (the first sub-token positions carry the labels), as seqeval does.
        predicted_ids = logits.argmax(-1)
        predicted_tags, gold_tags = [], []
        for row_predictions, row_labels in zip(predicted_ids, labels):
            scored = row_labels != IGNORE_INDEX
            if not scored.any():
                continue
            predicted_tags.append([spec.labels[i] for i in row_predictions[scored]])
            gold_tags.append([spec.labels[i] for i in row_labels[scored]])
        return entity_metrics(predicted_tags, gold_tags)

    def prediction_row(self, spec, logits, labels):
        scored = labels != IGNORE_INDEX
        gold = " ".join(spec.labels[i] for i in labels[scored])
        predicted = " ".join(spec.labels[i] for i in logits[: len(labels)].argmax(-1)[scored])
        return gold, predicted, ""

    def head_kind(self, spec):
        return "token classification (IOB2)"

    def entity_counts(self, counts):
        # Entities start with B-, so the B- counts are the entity counts per type.
        return {tag[2:]: n for tag, n in counts.items() if tag.startswith("B-")} or None


# ---------------------------------------------------------------------------------------------- pairs
def scatter_rows(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """`values` `[pairs, ...]` of the batch rows `rows` -> `[batch, ...]`, zero for the other rows (their labels
    are missing, so no loss or metric reads them)."""
    out = values.new_zeros((batch, *values.shape[1:]))
    return out.index_copy(0, rows, values) if len(rows) else out


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def cosent_loss(scores: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """CoSENT (Su, 2022): log(1 + sum over pairs (i, j) with target_i > target_j of exp(s * (cos_j - cos_i)))."""
    differences = scale * (scores[None, :] - scores[:, None])  # [i, j] = s * (cos_j - cos_i)
    differences = differences[targets[:, None] > targets[None, :]]
    return torch.logsumexp(torch.cat([differences.new_zeros(1), differences]), dim=0)


class PairClassification(SequenceClassification):
    """One class per pair of texts (entailment, paraphrase, ...). `pair_encoding: bi` (default): each text is
    encoded on its own and the head reads (u, v, |u - v|, u * v) of their embeddings (the SBERT classifier),
    so the embedding itself learns from the task; `pair_encoding: cross`: the pair is one `[CLS] a [SEP] b`
    input, pooled, then the head (usually more accurate; no reusable embedding)."""

    name = "pair_classification"
    display_name = "Text Pair Classification"
    options: ClassVar[dict[str, Any]] = {"pair_encoding": "bi"}
    input_kind = "pair"
    data_options: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "text_pair_column": "text_pair",
        "label_column": None,
        "label_map": None,
    }
    card_tags = ("text-classification", "text-pair-classification")

    def check_options(self, task, options):
        options = super().check_options(task, options)
        if options["pair_encoding"] not in ("bi", "cross"):
            raise ValueError(
                f"Task {task!r}: pair_encoding must be 'bi' or 'cross', got {options['pair_encoding']!r}."
            )
        return options

    def input_encoding(self, options):
        return "pair_joint" if options.get("pair_encoding", "bi") == "cross" else "pair"

    def layer_mix_refusal(self, options):
        if options.get("pair_encoding", "bi") == "bi":
            return (
                "with pair_encoding bi its head reads the model's embeddings of the two texts (u, v, |u-v|, "
                "u*v), which stay the last layer's; use pair_encoding: cross to mix layers"
            )
        return None

    def head_in_features(self, spec, hidden_size, embedding_size):
        if spec.options["pair_encoding"] == "cross":
            return super().head_in_features(spec, hidden_size, embedding_size)
        return 4 * embedding_size

    def logits(self, head, spec, features):
        if spec.options["pair_encoding"] == "cross":
            return head(self.head_input(head, spec, features))
        rows, u, v = features.pairs()
        pair_logits = head(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
        return scatter_rows(pair_logits, rows, features.embeddings.shape[0])

    def head_reads(self, spec):
        if spec.options["pair_encoding"] == "cross":
            if spec.head.mixes_layers:
                return layer_mix_description(spec.head, False) + " of the joint pair"
            return "the embedding of the joint pair"
        return "(u, v, |u-v|, u*v) of the two texts' embeddings"

    def head_kind(self, spec):
        if spec.options["pair_encoding"] == "cross":
            return "pair classification (softmax) on the joint encoding of the pair"
        return "pair classification (softmax) on (u, v, |u-v|, u*v) of the two embeddings"


class Similarity(TaskType):
    """A similarity score for a pair of texts, learnt on the cosine of their two embeddings (no head: the
    embedding itself is trained). The loss is CoSENT (Su, 2022) by default: it ranks the pairs of a batch by
    cosine in the order of their gold scores, so the gold scale does not matter and the cosine keeps its
    meaning; `loss: cosine_mse` regresses the cosine onto the score mapped from `score_range` to [0, 1]
    (SBERT's CosineSimilarityLoss). `score_range: [lo, hi]` declares the data's scale (a value outside it is
    refused); predictions give the cosine and, with a range, the score on that scale."""

    name = "similarity"
    display_name = "Semantic Textual Similarity"
    hub_task = "sentence-similarity"
    card_tags = ("sentence-similarity",)
    options: ClassVar[dict[str, Any]] = {"score_range": None, "loss": "cosent", "cosent_scale": 20.0}
    input_kind = "pair"
    data_options: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "text_pair_column": "text_pair",
        "label_column": None,
    }
    main_metric = "spearman"
    model_index_metrics = (
        IndexedMetric("pearson", "pearsonr", "Pearson r (cosine)"),
        IndexedMetric("spearman", "spearmanr", "Spearman rho (cosine)"),
    )
    body_metrics = ("pearson", "spearman", "support")
    support_name = "Support (pairs)"
    count_unit = "labelled pairs"
    limitation = (
        "Similarity is the cosine of the two embeddings; the score on the data's scale maps cosine 0..1 linearly "
        "onto score_range (a ranking, not a calibrated estimate)."
    )

    def default_labels(self):
        return ["similarity"]

    def check_labels(self, task, labels):
        if len(labels) != 1:
            raise ValueError(f"Task {task!r}: a similarity task has one output, got labels {labels}.")

    def check_options(self, task, options):
        options = super().check_options(task, options)
        score_range = options["score_range"]
        if score_range is not None:
            if (
                not isinstance(score_range, (list, tuple))
                or len(score_range) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in score_range)
                or not score_range[0] < score_range[1]
            ):
                raise ValueError(
                    f"Task {task!r}: score_range must be [low, high] with low < high, got {score_range!r}."
                )
            score_range = [float(score_range[0]), float(score_range[1])]
        if options["loss"] not in ("cosent", "cosine_mse"):
            raise ValueError(
                f"Task {task!r}: loss must be 'cosent' or 'cosine_mse', got {options['loss']!r}."
            )
        scale = options["cosent_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"Task {task!r}: cosent_scale must be a positive number, got {scale!r}.")
        return {"score_range": score_range, "loss": options["loss"], "cosent_scale": float(scale)}

    def read_label(self, value, data_options, where):
        return to_float(value, where)

    def infer_labels(self, raw):
        return ["similarity"]

    def encode_label(self, spec, raw, where):
        score_range = spec.options["score_range"]
        if score_range is not None and not score_range[0] <= raw <= score_range[1]:
            raise LabelError(f"{where}: similarity {raw!r} is outside score_range {score_range}.")
        if raw == IGNORE_INDEX:
            raise LabelError(f"{where}: similarity {raw!r} equals -100, the marker of a missing value.")
        return raw

    def missing_label(self, spec):
        return float(IGNORE_INDEX)

    def count_labels(self, spec, values):
        return {spec.labels[0]: sum(1 for value in values if self.has_label(value))}

    def label_feature(self, spec):
        return ("float32", False)

    def collate_labels(self, spec, values, batch):
        return torch.tensor(
            [float(IGNORE_INDEX) if v is None else _as_scalar(v) for v in values], dtype=torch.float
        )

    def layer_mix_refusal(self, options):
        return "it has no head: it scores the model's embedding itself, which stays the last layer's"

    def head_in_features(self, spec, hidden_size, embedding_size):
        return None

    def logits(self, head, spec, features):
        rows, u, v = features.pairs()
        return scatter_rows(cosine(u, v).unsqueeze(-1), rows, features.embeddings.shape[0])

    def loss(self, spec, logits, labels, features=None):
        labels = labels.float().reshape(-1)
        scores = logits.float().reshape(-1)
        labelled = labels != IGNORE_INDEX
        if not labelled.any():
            return None
        scores, labels = scores[labelled], labels[labelled]
        if spec.options["loss"] == "cosine_mse":
            low, high = spec.options["score_range"] or (0.0, 1.0)
            return F.mse_loss(scores, (labels - low) / (high - low))
        return cosent_loss(scores, labels, spec.options["cosent_scale"])

    def teacher_targets(self, spec, logits):
        return logits.float()  # the teacher's cosine of the two texts

    def distillation_loss(self, spec, logits, targets, features):
        """The student's cosine against the teacher's: CoSENT ranks the batch's pairs in the teacher's order
        (scale-free, as for the gold scores), cosine_mse regresses onto the teacher's cosine."""
        scores = logits.float().reshape(-1)
        targets = targets.float().reshape(-1)
        present = torch.isfinite(targets)
        if not present.any():
            return None
        if spec.options["loss"] == "cosine_mse":
            return F.mse_loss(scores[present], targets[present])
        return cosent_loss(scores[present], targets[present], spec.options["cosent_scale"])

    def decode(self, spec, logits, texts, encodings, top_k):
        score_range = spec.options["score_range"]
        predictions = []
        for value in logits.reshape(-1).tolist():
            prediction = {"similarity": value}
            if score_range is not None:
                low, high = score_range
                prediction["score"] = low + min(max(value, 0.0), 1.0) * (high - low)
            predictions.append(prediction)
        return predictions

    def prediction_fields(self, spec):
        return ("similarity", "score") if spec.options["score_range"] is not None else ("similarity",)

    def summarize(self, prediction):
        return f"cosine {prediction['similarity']:.3f}"

    def metrics(self, spec, logits, labels):
        metrics = regression_metrics(logits.reshape(labels.shape), labels)
        return {key: metrics[key] for key in ("pearson", "spearman", "support")}

    def prediction_row(self, spec, logits, labels):
        return float(np.ravel(labels)[0]), float(np.ravel(logits)[0]), ""

    def head_kind(self, spec):
        return f"cosine of the two embeddings ({spec.options['loss']} loss; no head)"

    def entity_counts(self, counts):
        return None


class Contrastive(TaskType):
    """Retrieval embeddings from (anchor, positive[, negative]) rows: each anchor must score its own positive
    above every other positive and negative of the batch (in-batch negatives, the Multiple Negatives Ranking
    loss of SBERT; `scale` multiplies the cosines). No head: the embedding is what trains. The batches of a
    contrastive group never hold the same text twice (a repeated text would be a false negative)."""

    name = "contrastive"
    display_name = "Contrastive Embedding (retrieval)"
    hub_task = "sentence-similarity"
    card_tags = ("sentence-similarity", "retrieval")
    options: ClassVar[dict[str, Any]] = {"scale": 20.0}
    input_kind = "pair"
    distinct_batch_texts = True
    data_options: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "text_pair_column": "text_pair",
        "negative_column": None,
    }
    main_metric = "mrr"
    model_index_metrics = (
        IndexedMetric("accuracy", "accuracy", "Top-1 retrieval accuracy"),
        IndexedMetric("mrr", "mrr", "MRR@10"),
    )
    body_metrics = ("accuracy", "mrr", "support")
    support_name = "Support (anchors, each searched among all positives of the set)"
    count_unit = "pairs"
    distillation_refused = (
        "its loss ranks each anchor against the other rows of the batch, so a teacher's target depends on "
        "which rows the student's batch holds; there is no per-row target to compute once"
    )

    def default_labels(self):
        return ["positive"]

    def check_labels(self, task, labels):
        if len(labels) != 1:
            raise ValueError(
                f"Task {task!r}: a contrastive task has one implicit label, got labels {labels}."
            )

    def check_options(self, task, options):
        options = super().check_options(task, options)
        scale = options["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"Task {task!r}: scale must be a positive number, got {scale!r}.")
        return {"scale": float(scale)}

    def label_column(self, task, data_options):
        return None  # the row is the label: its positive (and negative) texts

    def read_label(self, value, data_options, where):
        return 1

    def infer_labels(self, raw):
        return ["positive"]

    def encode_label(self, spec, raw, where):
        return 1

    def count_labels(self, spec, values):
        return {spec.labels[0]: sum(1 for value in values if self.has_label(value))}

    def label_feature(self, spec):
        return ("int64", False)

    def collate_labels(self, spec, values, batch):
        return torch.tensor([IGNORE_INDEX if v is None else int(v) for v in values], dtype=torch.long)

    def layer_mix_refusal(self, options):
        return "it has no head: it scores the model's embedding itself, which stays the last layer's"

    def head_in_features(self, spec, hidden_size, embedding_size):
        return None

    def logits(self, head, spec, features):
        rows, u, v = features.pairs()
        return scatter_rows(torch.cat([u, v], dim=-1), rows, features.embeddings.shape[0])

    def loss(self, spec, logits, labels, features=None):
        rows, anchors, positives = features.pairs()
        keep = labels.reshape(-1)[rows] != IGNORE_INDEX
        if not keep.any():
            return None
        anchors, positives = (
            F.normalize(anchors[keep].float(), dim=-1),
            F.normalize(positives[keep].float(), dim=-1),
        )
        candidates = positives
        if features.negative_embeddings is not None and len(features.negative_embeddings):
            candidates = torch.cat([positives, F.normalize(features.negative_embeddings.float(), dim=-1)])
        scores = spec.options["scale"] * anchors @ candidates.T  # [anchors, candidates]
        return F.cross_entropy(scores, torch.arange(len(anchors), device=scores.device))

    def decode(self, spec, logits, texts, encodings, top_k):
        size = logits.shape[-1] // 2
        return [{"similarity": value} for value in cosine(logits[:, :size], logits[:, size:]).tolist()]

    def prediction_fields(self, spec):
        return ("similarity",)

    def summarize(self, prediction):
        return f"cosine {prediction['similarity']:.3f}"

    def metrics(self, spec, logits, labels):
        """Every anchor searched among all the set's positives: top-1 accuracy and MRR@10."""
        rows = np.flatnonzero(np.asarray(labels).reshape(-1) != IGNORE_INDEX)
        size = logits.shape[-1] // 2
        anchors = torch.nn.functional.normalize(
            torch.as_tensor(logits[rows, :size], dtype=torch.float32), dim=-1
        )
        positives = torch.nn.functional.normalize(
            torch.as_tensor(logits[rows, size:], dtype=torch.float32), dim=-1
        )
        if not len(rows):
            return {"accuracy": 0.0, "mrr": 0.0, "support": 0}
        scores = anchors @ positives.T
        ranks = (scores > scores.diagonal()[:, None]).sum(dim=1) + 1  # 1 = the own positive ranks first
        reciprocal = torch.where(
            ranks <= 10, 1.0 / ranks.float(), torch.zeros_like(ranks, dtype=torch.float32)
        )
        return {
            "accuracy": float((ranks == 1).float().mean()),
            "mrr": float(reciprocal.mean()),
            "support": len(rows),
        }

    def prediction_row(self, spec, logits, labels):
        size = logits.shape[-1] // 2
        a, b = torch.as_tensor(logits[:size]), torch.as_tensor(logits[size:])
        return "", f"{float(cosine(a, b)):.4f}", ""

    def logits_shape(self, spec):
        return "[batch, 2 * embedding_size] (the anchor's and the positive's embeddings)"

    def head_kind(self, spec):
        return (
            f"in-batch negatives on the cosine of the embeddings (scale {spec.options['scale']:g}; no head)"
        )

    def entity_counts(self, counts):
        return None


TASK_TYPES: dict[str, TaskType] = {
    task_type.name: task_type
    for task_type in (
        SequenceClassification(),
        MultiLabelClassification(),
        Regression(),
        TokenClassification(),
        PairClassification(),
        Similarity(),
        Contrastive(),
    )
}


# ---------------------------------------------------------------------------------------------- parsing
def parse_head_spec(task: str, head: Any) -> HeadSpec:
    head = {} if head is None else head
    if isinstance(head, HeadSpec):
        return head
    if isinstance(head, str):
        head = {"type": head}
    if not isinstance(head, dict):
        raise ValueError(f"Task {task!r}: `head` must be a head type name or a mapping, got {head!r}.")
    unknown = set(head) - {"type", "hidden_size", "activation", "dropout", "layers"}
    if unknown:
        raise ValueError(f"Task {task!r}: unknown head keys {sorted(unknown)}.")
    head = dict(head)
    head["layers"] = parse_head_layers(task, head.get("layers", "last"))
    spec = HeadSpec(**head)
    if spec.type not in HEAD_TYPES:
        raise ValueError(
            f"Task {task!r}: unknown head type {spec.type!r}; expected one of {list(HEAD_TYPES)}."
        )
    if spec.activation not in ACTIVATIONS:
        raise ValueError(
            f"Task {task!r}: unknown activation {spec.activation!r}; expected {list(ACTIVATIONS)}."
        )
    dropout = spec.dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"Task {task!r}: head dropout must be in [0, 1), got {dropout}.")
    hidden = spec.hidden_size
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"Task {task!r}: head hidden_size must be positive, got {hidden}.")
    return HeadSpec(
        type=spec.type,
        hidden_size=hidden,
        activation=spec.activation,
        dropout=float(dropout),
        layers=spec.layers,
    )


def parse_head_layers(task: str, layers: Any) -> str | tuple[int, ...]:
    """A head's `layers`: "last", "all", or a non-empty list of distinct hidden-state indices >= 0 (the
    upper bound, the encoder's layer count, is checked when the model is built: `HeadSpec.layer_indices`)."""
    if layers is None:
        return "last"
    if isinstance(layers, str):
        if layers in ("last", "all"):
            return layers
        raise ValueError(
            f"Task {task!r}: head layers must be 'last', 'all' or a list of hidden-state indices, got {layers!r}."
        )
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(
            f"Task {task!r}: head layers must be 'last', 'all' or a non-empty list of hidden-state indices "
            f"(0 = the embedding layer's output), got {layers!r}."
        )
    bad = [index for index in layers if isinstance(index, bool) or not isinstance(index, int) or index < 0]
    if bad:
        raise ValueError(
            f"Task {task!r}: head layers must be integers >= 0 (hidden-state indices, 0 = the embedding "
            f"layer's output), got {bad} in {list(layers)}."
        )
    duplicates = sorted({index for index in layers if list(layers).count(index) > 1})
    if duplicates:
        raise ValueError(f"Task {task!r}: head layers lists {duplicates} more than once: {list(layers)}.")
    return tuple(int(index) for index in layers)


def layer_mix_description(head: HeadSpec, token_level: bool) -> str:
    """What a layer-mixing head reads, for the model card."""
    which = (
        "all hidden layers (the embedding layer's output to the last layer)"
        if head.layers == "all"
        else f"hidden layers {list(head.layers)} (0 = the embedding layer's output)"
    )
    if token_level:
        return f"a learned softmax-weighted mix (times a learned scale) of each token's states in {which}"
    return (
        f"a learned softmax-weighted mix of the pooled {which}, L2-normalised when the embedding is, times "
        "a learned scale (no projection)"
    )


def check_task_name(name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"Task name {name!r} is not a valid Python identifier (letters, digits, underscore)."
        )
    if name in RESERVED_TASK_NAMES:
        raise ValueError(
            f"Task name {name!r} is reserved: the heads are an nn.ModuleDict, which has an attribute of that "
            f"name. Rename the task (e.g. {name + '_task'!r})."
        )


def parse_task_spec(name: str, spec: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """Build and validate a `TaskSpec` from a mapping (as config.json or a training YAML gives it)."""
    check_task_name(name)
    if isinstance(spec, TaskSpec):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ValueError(f"Task {name!r}: the spec must be a mapping, got {type(spec).__name__}.")
    spec = copy.deepcopy(dict(spec))
    type_name = spec.get("type")
    if type_name not in TASK_TYPES:
        raise ValueError(
            f"Task {name!r}: unknown task type {type_name!r}; expected one of {list(TASK_TYPES)}."
        )
    task_type = TASK_TYPES[type_name]
    options: ClassVar[dict[str, Any]] = {key: spec.pop(key) for key in list(spec) if key in task_type.options}
    for key, old_default in LEGACY_OPTIONS.items():
        if key in spec and key not in task_type.options:
            if spec[key] != old_default:
                owners = [t.name for t in TASK_TYPES.values() if key in t.options]
                raise ValueError(
                    f"Task {name!r}: `{key}` applies to {' and '.join(owners)} tasks, not {type_name}."
                )
            del spec[key]
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"Task {name!r}: unknown spec keys {sorted(unknown)}.")

    labels = spec.get("labels") or task_type.default_labels()
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ValueError(f"Task {name!r}: `labels` must be a non-empty list of label names.")
    if any(not isinstance(label, (str, int)) or isinstance(label, bool) for label in labels):
        # 1.0 would become the name "1.0", which no data cell reading 1 matches.
        raise ValueError(f"Task {name!r}: label names must be strings or integers, got {list(labels)}.")
    labels = [str(label) for label in labels]
    if any(not label.strip() for label in labels):
        raise ValueError(f"Task {name!r}: label names must not be empty.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Task {name!r}: duplicate labels {duplicates}.")
    task_type.check_labels(name, labels)

    loss_weight = spec.get("loss_weight", 1.0)
    if (
        isinstance(loss_weight, bool)
        or not isinstance(loss_weight, (int, float))
        or not math.isfinite(loss_weight)
    ):
        raise ValueError(f"Task {name!r}: loss_weight must be a number, got {loss_weight!r}.")
    if loss_weight < 0:
        raise ValueError(f"Task {name!r}: loss_weight must be >= 0, got {loss_weight}.")
    options = task_type.check_options(name, options)
    head = parse_head_spec(name, spec.get("head"))
    if head.mixes_layers:
        refusal = task_type.layer_mix_refusal(options)
        if refusal:
            raise ValueError(
                f"Task {name!r}: a {type_name} task cannot mix layers (head layers "
                f"{head.layers if isinstance(head.layers, str) else list(head.layers)!r}): {refusal}."
            )
    return TaskSpec(
        type=type_name,
        labels=labels,
        head=head,
        loss_weight=float(loss_weight),
        options=options,
        name=name,
    )


def parse_tasks(tasks: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, TaskSpec]:
    """Parse the ordered task specs, given as a mapping name -> spec or as a list of specs with `name`."""
    if isinstance(tasks, (list, tuple)):
        named = {}
        for position, spec in enumerate(tasks):
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ValueError(f"Task #{position}: a task given in a list needs a `name` key.")
            spec = dict(spec)
            name = spec.pop("name")
            if name in named:
                raise ValueError(f"Task {name!r} is declared twice.")
            named[name] = spec
        tasks = named
    if not isinstance(tasks, Mapping):
        raise ValueError(f"`tasks` must be a mapping of task name -> spec, got {type(tasks).__name__}.")
    return {name: parse_task_spec(name, spec) for name, spec in tasks.items()}


# ---------------------------------------------------------------------------------------------- token tasks
def continuation_tags(spec: TaskSpec) -> list[int]:
    """For each tag id, the tag of a word's later word pieces: B-X -> I-X (when I-X exists), else itself."""
    label2id = spec.label2id
    return [
        label2id.get("I-" + tag[2:], i) if tag.startswith("B-") else i for i, tag in enumerate(spec.labels)
    ]


def first_pieces(word_ids: list[int]) -> list[tuple[int, int]]:
    """(position, word) of the first piece of every word of a row's `word_ids` (-1: special tokens)."""
    pieces, previous = [], None
    for position, word in enumerate(word_ids):
        if word >= 0 and word != previous:
            pieces.append((position, word))
        previous = word
    return pieces


def align_word_tags(
    word_ids: list[int], word_tags: list[int], length: int, offset: int, continuation: list[int] | None
) -> list[int]:
    """Word-level tag ids -> one label per position of a padded row of `length` tokens.

    The row's pieces start at `offset` (left padding). The first piece of each word gets the word's tag; the
    later pieces get -100, or with `continuation` (label_all_subtokens) the word's continuation tag.
    Special tokens (word id -1), padding and rows without tags get -100.
    """
    labels = [IGNORE_INDEX] * length
    previous = None
    for position, word in enumerate(word_ids):
        if 0 <= word < len(word_tags):
            if word != previous:
                labels[offset + position] = word_tags[word]
            elif continuation is not None:
                labels[offset + position] = continuation[word_tags[word]]
        previous = word
    return labels


def entities(text: str, encoding: Any, logits: torch.Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
    """A text's token logits `[seq, num_tags]` -> entity spans with character offsets.

    Each word takes the tag of its first sub-token (as in training); a word's character span runs from its
    first sub-token's start to its last sub-token's end; consecutive words are merged by their IOB2 tags.
    """
    probabilities = torch.softmax(logits, dim=-1)
    words: dict[int, list[int]] = {}  # word id -> [first token, char start, char end]
    for token, word_id in enumerate(encoding.word_ids):
        if word_id is None:
            continue
        start, end = encoding.offsets[token]
        if word_id not in words:
            words[word_id] = [token, start, end]
        else:
            words[word_id][2] = end
    ordered = [words[word_id] for word_id in sorted(words)]
    if not ordered:
        return []
    best = probabilities[[first for first, _, _ in ordered]].max(dim=-1)
    tags = [spec.labels[i] for i in best.indices.tolist()]
    scores = best.values.tolist()
    found = []
    for entity_type, first, last in extract_entities(tags):
        start, end = ordered[first][1], ordered[last - 1][2]
        found.append(
            {
                "entity": entity_type,
                "text": text[start:end],
                "start": start,
                "end": end,
                "score": sum(scores[first:last]) / (last - first),
            }
        )
    return found


def _as_scalar(value: Any) -> float:
    """A one-output regression value, given as a number, a one-element list or a tensor."""
    return float(value[0]) if isinstance(value, (list, tuple)) else float(value)


__all__ = [
    "IGNORE_INDEX",
    "TASK_TYPES",
    "EncoderFeatures",
    "HeadSpec",
    "LabelBatch",
    "LabelError",
    "TaskSpec",
    "TaskType",
    "parse_task_spec",
    "parse_tasks",
]
