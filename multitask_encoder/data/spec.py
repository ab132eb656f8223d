"""A task entry of a training config, parsed once into a frozen `TaskDataSpec`: where its data lives, how to
read it (the common keys, and the keys of its task type), and the model side of the task (handed to the
model config as it is).

    topic:                                  TaskDataSpec(name="topic", task_type=..., model={type, labels, ...},
      type: sequence_classification            splits={"train": ..., ...}, options={text_column, label_column,
      train: data/*.csv                        label_map}, max_train_examples=..., holdout={"test": 0.15}, ...)
      label_map: {0: negative, 1: positive}
      test_fraction: 0.15

Which keys a type takes (and their defaults) is the registry's `TaskType.options` (model side) and
`TaskType.data_options` (data side); docs/config.md lists them and a test keeps it in sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import MultiTaskEncoderError
from ..model.inputs_multitask_encoder import INPUT_KINDS
from ..model.tasks_multitask_encoder import SPEC_KEYS, check_task_name, registered_task_type
from ..task_types.types import TASK_TYPES, TaskType, cell_str

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "folder", "conll")
# Keys every task entry may have, whatever its type (its type adds `options` and `data_options`).
# The data option naming the column of each content role besides the main one (InputKind.roles).
ROLE_OPTIONS = {"text_pair": "text_pair_column", "text_negative": "negative_column"}
COMMON_DATA_KEYS = (
    *SPLITS,
    "dataset",
    "dataset_config",
    "data_files",
    "format",
    "encoding",
    "max_train_examples",
    "validation_fraction",
    "test_fraction",
    "max_eval_examples",
)


class DataError(MultiTaskEncoderError, ValueError):
    """Bad task data (a missing file or column, an unknown label, an empty split, ...), raised before training."""


@dataclass(frozen=True)
class TaskDataSpec:
    """One task entry, checked: everything the loader needs, nothing it must look up again."""

    name: str
    task_type: TaskType
    model: dict[str, Any]  # the model side as given (type, labels, head, loss_weight, type options)
    splits: dict[str, Any]  # split -> the entry's value (a path, a glob, a list, a split name), as given
    options: dict[str, Any]  # the type's data options, defaults filled in (text_column, label_map, ...)
    dataset: str | None = None
    dataset_config: str | None = None
    data_files: Any = None
    format: str | None = None
    encoding: str | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    holdout: dict[str, float] = field(default_factory=dict)  # split -> fraction of the train rows

    @property
    def content_column(self) -> str:
        """The column holding the text (or the word list, or a pair's first text) of a row."""
        return self.options[self.task_type.content_option]

    @property
    def content_columns(self) -> tuple[tuple[str, str, bool], ...]:
        """(role, column, required) of a row's content, by its input kind's roles: ("text" or "tokens", ...),
        for pairs also ("text_pair", ...) and, where the entry names one, ("text_negative", ..., optional)."""
        kind = INPUT_KINDS[self.task_type.input_kind]
        main = "tokens" if kind.word_level else "text"  # a word-level row's text is its words joined
        columns = [(main, self.content_column, True)]
        for role, option in ROLE_OPTIONS.items():
            required = role not in kind.optional_roles
            if role in kind.roles and (required or self.options.get(option)):
                columns.append((role, self.options[option], required))
        return tuple(columns)

    @property
    def input_encoding(self) -> str:
        """How the rows are tokenised (see TaskType.input_encoding): text, tokens, pair or pair_joint."""
        return self.task_type.input_encoding(self.model)

    @property
    def label_column(self) -> str | None:
        return self.task_type.label_column(self.name, self.options)


def tasks_label(names: list[str]) -> str:
    return f"Task {names[0]!r}" if len(names) == 1 else f"Tasks {names}"


def valid_keys(task_type: TaskType) -> list[str]:
    return [*SPEC_KEYS, *task_type.options, *COMMON_DATA_KEYS, *task_type.data_options]


def _positive_int(name: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"Task {name!r}: {key} must be a positive integer, got {value!r}.")
    return value


def _label_map(name: str, value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value:
        raise DataError(f"Task {name!r}: label_map must be a non-empty mapping raw value -> label name.")
    mapped: dict[str, str] = {}
    for key, label in value.items():
        if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
            raise DataError(f"Task {name!r}: label_map maps {key!r} to {label!r}, which is not a label name.")
        raw = cell_str(key)
        if raw in mapped:  # 1 and "1" (or 1.0) would collide silently
            raise DataError(f"Task {name!r}: label_map has the key {raw!r} twice ({key!r}).")
        mapped[raw] = str(label)
    return mapped


def parse_task_entry(name: Any, entry: Any) -> TaskDataSpec:
    """Check one task entry and split it into its parts; raises DataError naming the task and the key."""
    try:  # the model's checks of a task's name and type, as the model reports them
        check_task_name(name)
        if not isinstance(entry, Mapping):
            raise ValueError(f"Task {name!r}: the entry must be a mapping, got {type(entry).__name__}.")
        # The same type with its package side (data options, label reading).
        task_type = TASK_TYPES[registered_task_type(name, entry.get("type")).name]
    except ValueError as error:
        raise DataError(str(error)) from None
    valid = valid_keys(task_type)
    unknown = sorted(set(entry) - set(valid))
    if unknown:
        others = {
            key: [t.name for t in TASK_TYPES.values() if key in t.options or key in t.data_options]
            for key in unknown
        }
        elsewhere = {key: owners for key, owners in others.items() if owners}
        if elsewhere:
            key, owners = next(iter(elsewhere.items()))
            raise DataError(
                f"Task {name!r}: `{key}` applies to {' and '.join(owners)} tasks, not {task_type.name}; valid keys "
                f"are {valid}."
            )
        raise DataError(f"Task {name!r}: unknown key(s) {unknown}; valid keys are {valid}.")

    splits = {split: entry[split] for split in SPLITS if split in entry}
    has_train = splits.get("train") not in (None, "", []) or ("dataset" in entry and "train" not in entry)
    if not has_train:
        raise DataError(f"Task {name!r}: no train data; give `train:` (a file, glob or list) or `dataset:`.")
    fmt = entry.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"Task {name!r}: unknown format {fmt!r}; expected one of {list(FORMATS)}.")
    holdout = {}
    for split in EVAL_SPLITS:
        fraction = entry.get(f"{split}_fraction")
        if fraction is None:
            continue
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise DataError(f"Task {name!r}: {split}_fraction must be a number in (0, 1), got {fraction!r}.")
        if splits.get(split) not in (None, "", []):
            raise DataError(
                f"Task {name!r}: both `{split}:` and `{split}_fraction:` are given; keep one (the fraction "
                f"holds out part of the train data as the {split} split)."
            )
        holdout[split] = float(fraction)
    if sum(holdout.values()) >= 1:
        raise DataError(f"Task {name!r}: the held-out fractions {holdout} leave no train data.")
    for key in ("dataset", "dataset_config", "encoding"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise DataError(f"Task {name!r}: {key} must be a string, got {entry[key]!r}.")

    options = {key: entry.get(key, default) for key, default in task_type.data_options.items()}
    for key, value in options.items():
        if (
            key.endswith(("_column", "_separator"))
            and value is not None
            and not (isinstance(value, str) and value)
        ):
            raise DataError(f"Task {name!r}: {key} must be a non-empty string, got {value!r}.")
    if "label_map" in options:
        options["label_map"] = _label_map(name, options["label_map"])
    model_keys = (*SPEC_KEYS, *task_type.options)
    return TaskDataSpec(
        name=name,
        task_type=task_type,
        model={key: entry[key] for key in model_keys if key in entry},
        splits=splits,
        options=options,
        dataset=entry.get("dataset"),
        dataset_config=entry.get("dataset_config"),
        data_files=entry.get("data_files"),
        format=fmt,
        encoding=entry.get("encoding"),
        max_train_examples=_positive_int(name, "max_train_examples", entry.get("max_train_examples")),
        max_eval_examples=_positive_int(name, "max_eval_examples", entry.get("max_eval_examples")),
        holdout=holdout,
    )


def parse_task_entries(tasks: Any) -> dict[str, TaskDataSpec]:
    """The `tasks:` mapping of a training config -> one TaskDataSpec per task, in order."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise DataError("`tasks` must be a non-empty mapping of task name -> task entry.")
    return {name: parse_task_entry(name, entry) for name, entry in tasks.items()}


__all__ = [
    "COMMON_DATA_KEYS",
    "EVAL_SPLITS",
    "FORMATS",
    "SPLITS",
    "DataError",
    "TaskDataSpec",
    "parse_task_entries",
    "parse_task_entry",
    "tasks_label",
    "valid_keys",
]
