"""Task types, package side: what training, scoring and the card need of each type, one class per type.

Each class extends the model side of its type (`model/tasks_multitask_encoder.py`: options, head input, logits,
loss, decode), which is all a saved model carries, with what only this package needs:

        data      how a label cell reads and encodes      data_options, read_label, infer_labels, encode_label,
                                                          missing_label, has_label, count_labels, label_feature
        batches   how its labels become a tensor          collate_labels, teacher_targets, collate_teacher
        predict   prediction-file columns, log lines      prediction_fields, summarize
        scoring   metrics, main metric, prediction files  metrics, main_metric, prediction_row, collapse_note
        card      names on the model card and the Hub     display_name, hub_task, head_kind, model_index_metrics ...

No other module branches on a task's type: each asks `task_type(spec)` (this side) or `spec.task_type` (the model
side, inside the model files).
"""

from __future__ import annotations

import ast
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from ..errors import MultiTaskEncoderError
from ..model import tasks_multitask_encoder as model_tasks
from ..model.tasks_multitask_encoder import IGNORE_INDEX, TaskSpec, cosine, layer_mix_description
from .metrics import classification_metrics, entity_metrics, multi_label_metrics, regression_metrics

FLOAT32_MAX = float(np.finfo(np.float32).max)


class LabelError(MultiTaskEncoderError, ValueError):
    """A label value that is not valid for its task (raised with the row's location; the data loader adds the
    task and re-raises it as its DataError)."""


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


# Cells that hold several values: never one label (its repr would become a label name).
CONTAINERS = (list, tuple, set, frozenset, dict, np.ndarray)


def map_label(value: Any, label_map: Mapping[str, str] | None, where: str) -> str:
    """One label (a cell, or an item of a label list) -> its name, through `label_map` when given."""
    if isinstance(value, CONTAINERS):
        raise LabelError(
            f"{where}: the label {value!r} is a {type(value).__name__}, not a label name (a string or an integer)."
        )
    key = cell_str(value)
    if label_map is None:
        return key
    if key not in label_map:
        raise LabelError(f"{where}: value {key!r} is not a key of label_map {dict(label_map)}.")
    return label_map[key]


def label_list(
    value: Any, separator: str | None, label_map: Mapping[str, str] | None, where: str
) -> list[str]:
    """A cell of several labels (a list, tuple or array, a JSON list, or a separated string) -> their names.
    Every item must be a label name: a string, or an integer (a class id, as declared labels may be); any
    other item (a nested list, a dict, None, a float, a bool) is refused rather than named after its repr."""
    items = cell_list(value, separator)
    for position, item in enumerate(items, start=1):
        integral = isinstance(item, (float, np.floating)) and math.isfinite(item) and float(item).is_integer()
        if isinstance(item, (bool, np.bool_)) or not (isinstance(item, (str, int, np.integer)) or integral):
            raise LabelError(
                f"{where}: item {position} of the label list {value!r} is {item!r} ({type(item).__name__}), not "
                "a label name: the items must be strings (or integer class ids)."
            )
    return [map_label(item, label_map, where) for item in items]


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


# A head whose predictions spread less than this share of the gold values' spread (or, for cosines, less than
# COSINE_COLLAPSE in absolute terms) predicts about the same for every row: its evaluation warns.
SPREAD_COLLAPSE = 0.05
COSINE_COLLAPSE = 0.01
COLLAPSE_CAUSES = (
    "too few steps, a learning rate too high or too low, or features that do not carry the signal"
)


def value_spread(predicted: np.ndarray, gold: np.ndarray) -> dict[str, list[float]]:
    """Per output (column): the mean and standard deviation of the predictions and the gold values over the
    labelled entries (gold -100 is missing), for `collapse_note`."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    gold = np.asarray(gold, dtype=np.float64).reshape(predicted.shape)
    spread: dict[str, list[float]] = {"predicted_mean": [], "predicted_std": [], "gold_std": []}
    for column in range(predicted.shape[1]):
        labelled = gold[:, column] != IGNORE_INDEX
        values, references = predicted[labelled, column], gold[labelled, column]
        spread["predicted_mean"].append(float(values.mean()) if values.size else 0.0)
        spread["predicted_std"].append(float(values.std()) if values.size else 0.0)
        spread["gold_std"].append(float(references.std()) if references.size else 0.0)
    return spread


def label_set_spread(predicted_sets: Sequence[Any], gold_sets: Sequence[Any]) -> dict[str, Any]:
    """How many distinct predictions (class ids, tags, label sets) and gold values an evaluation has, and the
    most predicted one, for `collapse_note`."""
    counts = Counter(predicted_sets)
    most, most_count = counts.most_common(1)[0] if counts else (None, 0)
    return {
        "distinct_predicted": len(counts),
        "distinct_gold": len(set(gold_sets)),
        "most_predicted": list(most) if isinstance(most, tuple) else most,
        "most_predicted_rows": most_count,
    }


class TaskType(model_tasks.TaskType):
    """The package side of `TaskType`."""

    display_name: ClassVar[str]  # model card / model-index ("Text Classification")
    hub_task: ClassVar[str]  # Hub task id of the model-index and pipeline tags
    card_tags: ClassVar[tuple[str, ...]] = ()
    data_options: ClassVar[dict[str, Any]] = {"text_column": "text", "label_column": None}
    content_option: ClassVar[str] = "text_column"  # the data option naming the content column
    stratify: ClassVar[bool] = False  # held-out splits keep each class's share
    distinct_batch_texts: ClassVar[bool] = (
        False  # a batch must not hold the same text twice (in-batch negatives)
    )
    # Why a row whose two texts are the same teaches the type nothing (the loader warns, counting them), or None.
    identical_pair_note: ClassVar[str | None] = None
    main_metric: ClassVar[str]
    model_index_metrics: ClassVar[tuple[IndexedMetric, ...]] = ()
    body_metrics: ClassVar[tuple[str, ...]] = ()
    support_name: ClassVar[str] = "Support (examples)"
    count_unit: ClassVar[str] = "examples"  # what one count of count_labels is
    limitation: ClassVar[str | None] = None  # a line for the card's Limitations

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

    # The type's labels are the names its label cells hold (so a `datasets` ClassLabel column's class names,
    # in their id order, are its label set when the spec declares none).
    labels_are_cell_names: ClassVar[bool] = False

    def class_label_order(
        self, inferred: list[str], class_names: Sequence[str], data_options: Mapping[str, Any]
    ) -> list[str]:
        """The label set of a task whose train label column is a ClassLabel: its class names in the dataset's
        id order (through `label_map` when given), then any other inferred label; `inferred` otherwise."""
        if not self.labels_are_cell_names:
            return inferred
        label_map = data_options.get("label_map")
        if label_map is not None:
            class_names = [label_map[name] for name in class_names if name in label_map]
        return list(dict.fromkeys([*class_names, *inferred]))

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

    def fitted_options(self, spec: TaskSpec, batches: Iterable[list]) -> dict[str, Any]:
        """Options the type learns from its train labels (batches of `labels_<task>` values), read once at
        the start of training and saved with the model; {} for most types."""
        return {}

    # -------------------------------------------------------------- batches
    def collate_labels(self, spec: TaskSpec, values: list[Any], batch: LabelBatch) -> torch.Tensor:
        """Rows' `labels_<task>` (None where a row has no such key) -> the tensor `forward` takes."""
        raise NotImplementedError

    def head_reads(self, spec: TaskSpec) -> str:
        """What the head reads, for the model card."""
        if spec.head.mixes_layers:
            return layer_mix_description(spec.head, self.reads_token_states)
        return "each token state" if self.reads_token_states else "the sentence embedding"

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

    def prediction_fields(self, spec: TaskSpec) -> tuple[str, ...]:
        """The keys of a prediction dict, known before any prediction (one CSV column each)."""
        raise NotImplementedError

    def prediction_schema(self, spec: TaskSpec) -> list[tuple[str, pa.DataType]]:
        """(field, Arrow type) of each of `prediction_fields`, in that order: the columns `BatchPredictor`
        writes, the same for every batch (per-label scores are a struct of the spec's labels in their order)."""
        raise NotImplementedError

    def summarize(self, prediction: dict[str, Any]) -> str:
        """A prediction dict in a few words, for logs."""
        raise NotImplementedError

    # -------------------------------------------------------------- scoring
    def metrics(self, spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Metrics of one task from its gathered logits and labels."""
        raise NotImplementedError

    # Whether a prediction has a confidence of its own (a class probability): the prediction file of a type
    # without one (a value, a tag sequence, a cosine) has no `score` column.
    has_prediction_score: ClassVar[bool] = True

    def prediction_row(self, spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> tuple[Any, Any, Any]:
        """One test row's (gold, predicted, score) for the prediction file (score "" for a type without
        `has_prediction_score`)."""
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


# An entity as token_classification's `decode` gives it (`predict`'s {"entity", "text", "start", "end", "score"}).
ENTITY_TYPE = pa.struct(
    [
        ("entity", pa.string()),
        ("text", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("score", pa.float64()),
    ]
)


def label_scores_type(labels: Sequence[str]) -> pa.DataType:
    """A {label: score} dict of `predict` as an Arrow struct: one float64 field per label, in the spec's order."""
    return pa.struct([(label, pa.float64()) for label in labels])


class _SingleLabel(TaskType, model_tasks._SingleLabel):
    """The package side of `_SingleLabel`."""

    def collate_ids(self, values: list[Any]) -> torch.Tensor:
        return torch.tensor([IGNORE_INDEX if v is None else int(v) for v in values], dtype=torch.long)


class SequenceClassification(_SingleLabel, model_tasks.SequenceClassification):
    """The package side of `SequenceClassification`."""

    display_name = "Text Classification"
    hub_task = "text-classification"
    card_tags = ("text-classification",)
    data_options: ClassVar[dict[str, Any]] = {"text_column": "text", "label_column": None, "label_map": None}
    stratify = True
    labels_are_cell_names = True
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

    def prediction_fields(self, spec):
        return ("label", "score", "scores")

    def prediction_schema(self, spec):
        return [("label", pa.string()), ("score", pa.float64()), ("scores", label_scores_type(spec.labels))]

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


class LabelTextClassification(SequenceClassification, model_tasks.LabelTextClassification):
    """The package side of `LabelTextClassification`: its data, metrics and card rows are a sequence
    classification task's; its card says it has no head."""

    def head_kind(self, spec):
        return "cosine to label texts (no head)"

    def head_reads(self, spec):
        return "the sentence embedding and its label texts' embeddings"


class MultiLabelClassification(TaskType, model_tasks.MultiLabelClassification):
    """The package side of `MultiLabelClassification`."""

    display_name = "Multi-label Text Classification"
    hub_task = "text-classification"
    card_tags = ("text-classification", "multi-label-classification")
    data_options: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "label_column": None,
        "label_map": None,
        "label_separator": ",",
    }
    main_metric = "micro_f1"
    labels_are_cell_names = True
    model_index_metrics = (
        IndexedMetric("micro_f1", "f1", "Micro F1", {"average": "micro"}),
        IndexedMetric("macro_f1", "f1", "Macro F1", {"average": "macro"}),
        IndexedMetric("exact_match", "exact_match", "Exact match (subset accuracy)"),
    )
    body_metrics = ("micro_f1", "macro_f1", "exact_match", "support")
    count_unit = "examples carrying the label"
    limitation = "Multi-label heads predict every label whose sigmoid reaches the threshold; a text may get no label at all."

    def read_label(self, value, data_options, where):
        separator = data_options.get("label_separator", ",")
        names = label_list(value, separator, data_options.get("label_map"), where)
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

    def teacher_targets(self, spec, logits):
        return torch.sigmoid(logits.float())

    def prediction_fields(self, spec):
        return ("labels", "scores")

    def prediction_schema(self, spec):
        return [("labels", pa.list_(pa.string())), ("scores", label_scores_type(spec.labels))]

    def summarize(self, prediction):
        return "|".join(prediction["labels"])

    def metrics(self, spec, logits, labels):
        predicted = (1.0 / (1.0 + np.exp(-logits)) >= spec.threshold).astype(np.int64)
        metrics = multi_label_metrics(predicted, labels, spec.labels)
        labelled = ~(np.asarray(labels) == IGNORE_INDEX).all(axis=-1)

        def label_set(row):
            return tuple(label for label, hot in zip(spec.labels, row) if hot == 1)

        metrics["spread"] = label_set_spread(
            [label_set(row) for row in predicted[labelled]],
            [label_set(row) for row in np.asarray(labels)[labelled]],
        )
        return metrics

    def collapse_note(self, spec, metrics):
        spread = metrics.get("spread") or {}
        if spread.get("distinct_predicted") == 1 and spread.get("distinct_gold", 0) > 1:
            labels = ", ".join(f"`{label}`" for label in spread["most_predicted"]) or "no label"
            return (
                f"the head predicts the same label set ({labels}) for every one of the "
                f"{spread['most_predicted_rows']} rows (collapsed to one answer: {COLLAPSE_CAUSES})."
            )
        return None

    def prediction_row(self, spec, logits, labels):
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        predicted = [label for label, p in zip(spec.labels, probabilities) if p >= spec.threshold]
        gold = [label for label, y in zip(spec.labels, labels) if y == 1]
        return "|".join(gold), "|".join(predicted), f"{probabilities.max():.4f}"

    def head_kind(self, spec):
        return f"multi-label (sigmoid ≥ {spec.threshold:g})"


class Regression(TaskType, model_tasks.Regression):
    """The package side of `Regression`."""

    has_prediction_score = False

    display_name = "Text Regression"
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

    def fitted_options(self, spec, batches):
        """The train targets' mean and standard deviation per output (`target_mean`, `target_std`): the head
        predicts standardised values, which the model maps back to the data's scale. Read a batch at a
        time; sums are shifted by each output's first value so large values keep their precision."""
        shift = total = squares = count = None
        for batch in batches:
            values = np.asarray(
                [as_list(v) if isinstance(v, (list, tuple)) else [v] for v in batch], np.float64
            )
            values = values.reshape(len(batch), spec.num_outputs)
            labelled = values != IGNORE_INDEX
            if shift is None:
                shift, total, squares = (np.zeros(spec.num_outputs) for _ in range(3))
                count = np.zeros(spec.num_outputs, dtype=np.int64)
            unset = (count == 0) & labelled.any(axis=0)
            shift[unset] = values[labelled[:, unset].argmax(axis=0), np.flatnonzero(unset)]
            deviations = np.where(labelled, values - shift, 0.0)
            total += deviations.sum(axis=0)
            squares += (deviations**2).sum(axis=0)
            count += labelled.sum(axis=0)
        if count is None or not count.any():
            return {}
        seen = np.maximum(count, 1)
        mean = shift + total / seen
        std = np.sqrt(np.maximum(squares / seen - (total / seen) ** 2, 0.0))
        # A constant (or absent) output has nothing to standardise: its std stays 1.
        std = np.where((count > 0) & (std > 0), std, 1.0)
        mean = np.where(count > 0, mean, 0.0)
        if spec.num_outputs == 1:
            return {"target_mean": float(mean[0]), "target_std": float(std[0])}
        return {"target_mean": mean.tolist(), "target_std": std.tolist()}

    def collate_labels(self, spec, values, batch):
        if spec.num_outputs == 1:
            return torch.tensor(
                [float(IGNORE_INDEX) if v is None else _as_scalar(v) for v in values], dtype=torch.float
            )
        missing = [float(IGNORE_INDEX)] * spec.num_outputs
        return torch.tensor([as_list(v) or missing for v in values], dtype=torch.float)

    def teacher_targets(self, spec, logits):
        return logits.float()  # the teacher's values

    def prediction_fields(self, spec):
        return ("value",) if spec.num_outputs == 1 else ("values",)

    def prediction_schema(self, spec):
        if spec.num_outputs == 1:
            return [("value", pa.float64())]
        return [("values", label_scores_type(spec.labels))]

    def summarize(self, prediction):
        return str(prediction.get("value", prediction.get("values")))

    def metrics(self, spec, logits, labels):
        predicted = logits.reshape(labels.shape)
        return {**regression_metrics(predicted, labels), "spread": value_spread(predicted, labels)}

    def collapse_note(self, spec, metrics):
        spread = metrics.get("spread") or {}
        notes = [
            f"`{label}` about {mean:.4g} (spread {predicted:.3g} against the gold values' {gold:.3g})"
            for label, mean, predicted, gold in zip(
                spec.labels,
                spread.get("predicted_mean", []),
                spread.get("predicted_std", []),
                spread.get("gold_std", []),
            )
            if gold > 0 and predicted < SPREAD_COLLAPSE * gold
        ]
        if notes:
            return (
                f"the head predicts nearly the same value for every row: {'; '.join(notes)} (collapsed to a "
                f"constant: {COLLAPSE_CAUSES})."
            )
        return None

    def prediction_row(self, spec, logits, labels):
        gold, predicted = np.ravel(labels), np.ravel(logits)
        if spec.num_outputs == 1:
            return float(gold[0]), float(predicted[0]), ""
        # Several outputs: every one of them, in `labels` order, "|"-separated (a missing gold value: empty).
        return (
            "|".join("" if value == IGNORE_INDEX else repr(float(value)) for value in gold),
            "|".join(repr(float(value)) for value in predicted),
            "",
        )

    def head_kind(self, spec):
        return "regression"

    def entity_counts(self, counts):
        return None  # a count per output says nothing about balance


class TokenClassification(_SingleLabel, model_tasks.TokenClassification):
    """The package side of `TokenClassification`."""

    display_name = "Named Entity Recognition"
    has_prediction_score = False
    hub_task = "token-classification"
    card_tags = ("token-classification", "ner")
    content_option = "tokens_column"
    data_options: ClassVar[dict[str, Any]] = {
        "tokens_column": "tokens",
        "tags_column": "ner_tags",
        "label_map": None,
    }
    main_metric = "f1"
    labels_are_cell_names = True
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

    def label_column(self, task, data_options):
        return data_options.get("tags_column") or "ner_tags"

    def read_label(self, value, data_options, where):
        return label_list(value, None, data_options.get("label_map"), where)

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

    def prediction_fields(self, spec):
        return ("entities",)

    def prediction_schema(self, spec):
        return [("entities", pa.list_(ENTITY_TYPE))]

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
        metrics = entity_metrics(predicted_tags, gold_tags)
        metrics["spread"] = label_set_spread(
            [tag for tags in predicted_tags for tag in tags], [tag for tags in gold_tags for tag in tags]
        )
        return metrics

    def collapse_note(self, spec, metrics):
        spread = metrics.get("spread") or {}
        if spread.get("distinct_predicted") == 1 and spread.get("distinct_gold", 0) > 1:
            return (
                f"the head tags every one of the {spread['most_predicted_rows']} words `{spread['most_predicted']}` "
                f"(collapsed to one tag: {COLLAPSE_CAUSES})."
            )
        return None

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


class PairClassification(SequenceClassification, model_tasks.PairClassification):
    """The package side of `PairClassification`."""

    display_name = "Text Pair Classification"
    data_options: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "text_pair_column": "text_pair",
        "label_column": None,
        "label_map": None,
    }
    card_tags = ("text-classification", "text-pair-classification")

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


class Similarity(TaskType, model_tasks.Similarity):
    """The package side of `Similarity`."""

    display_name = "Semantic Textual Similarity"
    has_prediction_score = False
    hub_task = "sentence-similarity"
    card_tags = ("sentence-similarity",)
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

    def teacher_targets(self, spec, logits):
        return logits.float()  # the teacher's cosine of the two texts

    def prediction_fields(self, spec):
        return ("similarity", "score") if spec.options["score_range"] is not None else ("similarity",)

    def prediction_schema(self, spec):
        return [(name, pa.float64()) for name in self.prediction_fields(spec)]

    def summarize(self, prediction):
        return f"cosine {prediction['similarity']:.3f}"

    def metrics(self, spec, logits, labels):
        predicted = logits.reshape(labels.shape)
        metrics = regression_metrics(predicted, labels)
        return {
            **{key: metrics[key] for key in ("pearson", "spearman", "support")},
            "spread": value_spread(predicted, labels),
        }

    def collapse_note(self, spec, metrics):
        spread = metrics.get("spread") or {}
        predicted, gold = spread.get("predicted_std", [None])[0], spread.get("gold_std", [0.0])[0]
        if predicted is not None and gold > 0 and predicted < COSINE_COLLAPSE:
            return (
                f"the cosine of every pair is about {spread['predicted_mean'][0]:.3f} (spread {predicted:.2g}): "
                f"the embedding no longer tells the pairs apart (collapsed: {COLLAPSE_CAUSES})."
            )
        return None

    def prediction_row(self, spec, logits, labels):
        return float(np.ravel(labels)[0]), float(np.ravel(logits)[0]), ""

    def head_kind(self, spec):
        return f"cosine of the two embeddings ({spec.options['loss']} loss; no head)"

    def entity_counts(self, counts):
        return None


class Contrastive(TaskType, model_tasks.Contrastive):
    """The package side of `Contrastive`."""

    has_prediction_score = False

    display_name = "Contrastive Embedding (retrieval)"
    hub_task = "sentence-similarity"
    card_tags = ("sentence-similarity", "retrieval")
    distinct_batch_texts = True
    identical_pair_note = (
        "an anchor always scores its own text highest, so the row adds no signal, only a loss that is already "
        "at its minimum"
    )
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

    def prediction_fields(self, spec):
        return ("similarity",)

    def prediction_schema(self, spec):
        return [("similarity", pa.float64())]

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
            # Every anchor against every positive: a collapsed embedding scores them all alike.
            "spread": {"score_mean": float(scores.mean()), "score_std": float(scores.std(unbiased=False))},
        }

    def collapse_note(self, spec, metrics):
        spread = metrics.get("spread") or {}
        if metrics.get("support", 0) > 1 and spread.get("score_std", 1.0) < COSINE_COLLAPSE:
            return (
                f"every anchor scores about {spread['score_mean']:.3f} against every positive (spread "
                f"{spread['score_std']:.2g}): the embedding no longer tells the texts apart (collapsed: "
                f"{COLLAPSE_CAUSES})."
            )
        return None

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


def _as_scalar(value: Any) -> float:
    """A one-output regression value, given as a number, a one-element list or a tensor."""
    return float(value[0]) if isinstance(value, (list, tuple)) else float(value)


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
        LabelTextClassification(),
    )
}


def task_type(spec: TaskSpec | str) -> TaskType:
    """The package side of a task's type (of a TaskSpec, or a type name)."""
    name = spec if isinstance(spec, str) else spec.type
    return TASK_TYPES[name]
