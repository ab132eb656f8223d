"""Tables -> labelled rows: each row's content checked (a text, or a list of words), each task's label cell
read, checked and encoded by its task type (task_types/types.py), in batches over the Arrow rows.

    table rows ─► raw labels (label_map applied, checked)  ─► label sets (declared, else inferred from train)
               ─► rows: text (and tokens), labels_<task> for EVERY task (missing where the task has none),
                  group; rows without a label for any of the tasks read are dropped

A bad cell raises DataError naming the task, the file, the row and the column.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from datasets import Dataset, Features, Sequence, Value

from ..model.inputs_multitask_encoder import INPUT_KINDS
from ..model.tasks_multitask_encoder import TaskSpec
from ..task_types import task_type
from ..task_types.types import LabelError, cell_list, is_missing
from .spec import DataError, TaskDataSpec, tasks_label
from .tables import LOCATION, Table, TableLayout, quiet_datasets

logger = logging.getLogger(__name__)

BATCH_ROWS = 10_000  # rows read at a time: memory is bounded by a batch, not by the file


def label_column(layout: TableLayout, task: TaskDataSpec) -> str | None:
    """The column of the task's labels in a table (None: the row itself is the label, contrastive rows)."""
    if task.label_column is None:
        return None
    return layout.label_column or task.label_column


def content_columns(table: Table, task: TaskDataSpec) -> tuple[tuple[str, str, bool], ...]:
    """(role, column, required) of the task's content in `table` (folder and CoNLL tables fix the column)."""
    columns = task.content_columns
    if table.layout.content_column:
        columns = ((columns[0][0], table.layout.content_column, True), *columns[1:])
    return columns


def check_columns(table: Table, task: TaskDataSpec) -> None:
    try:
        for _, column, _ in content_columns(table, task):
            table.check_column(column)
        if label_column(table.layout, task) is not None:
            table.check_column(label_column(table.layout, task))
    except DataError as error:
        raise DataError(f"Task {task.name!r}: {error}") from None


def read_label(layout: TableLayout, task: TaskDataSpec, column: str | None, value: Any, where: str) -> Any:
    """One label cell -> its raw label (None = missing), checked by the task type; a task without a label
    column (contrastive) labels every row."""
    if column is None:
        return task.task_type.read_label(None, task.options, where)
    value = layout.cell(column, value)
    if is_missing(value):
        return None
    try:
        return task.task_type.read_label(value, task.options, f"{where}, column {column!r}")
    except LabelError as error:
        raise DataError(f"Task {task.name!r}: {error}") from None


def raw_labels(table: Table, task: TaskDataSpec) -> Iterator[Any]:
    """The task's raw labels in `table`, row by row (None = missing): what label inference reads. Token
    tasks' rows are checked to have one tag per word here too, before any label set is built from them."""
    check_columns(table, task)
    column = label_column(table.layout, task)
    tokens = INPUT_KINDS[task.task_type.input_kind].word_level
    content = content_columns(table, task)[0][1]
    wanted = [column] if column is not None else [content]
    if tokens:
        wanted.append(content)
    if table.layout.located:
        wanted.append(LOCATION)
    wanted = list(dict.fromkeys(wanted))
    layout = table.layout
    for start in range(0, table.rows.num_rows, BATCH_ROWS):
        batch = table.rows.select_columns(wanted)[start : start + BATCH_ROWS]
        for offset in range(len(batch[wanted[0]])):
            where = layout.where(start + offset, batch[LOCATION][offset] if layout.located else None)
            raw = read_label(layout, task, column, batch[column][offset] if column else None, where)
            if tokens and raw is not None:
                words = read_content(layout, "tokens", content, batch[content][offset], where)
                if len(raw) != len(words):
                    raise DataError(f"Task {task.name!r}: {where}: {len(words)} tokens but {len(raw)} tags.")
            yield raw


def read_content(
    layout: TableLayout, role: str, column: str, value: Any, where: str, required: bool = True
) -> str | list[str]:
    """A text (a non-empty string) or, for the "tokens" role, a word list (a non-empty list of strings). An
    optional column (a contrastive negative) may be empty: ""."""
    value = layout.cell(column, value)
    tokens = role == "tokens"
    if not required and is_missing(value):
        return ""
    if tokens and not is_missing(value):
        value = cell_list(value, None)
        if any(not isinstance(token, str) or not token.strip() for token in value):
            raise DataError(
                f"{where}: the words in column {column!r} must be non-empty strings, got {value!r}."
            )
    if is_missing(value) or (tokens and not value):
        raise DataError(f"{where}: empty {'tokens' if tokens else 'text'} in column {column!r}.")
    if not tokens and not isinstance(value, str):
        raise DataError(f"{where}: the text in column {column!r} is {type(value).__name__}, not a string.")
    return value


def identical_pairs(table: Table, task: TaskDataSpec) -> tuple[int, str | None]:
    """Rows of `table` whose first and second text (anchor and positive) are the same text, whitespace
    collapsed: (how many, where the first one is)."""
    roles = {role: column for role, column, _ in content_columns(table, task)}
    columns = [roles["text"], roles["text_pair"]]
    layout = table.layout
    wanted = [*dict.fromkeys(columns), *([LOCATION] if layout.located else [])]
    count, first = 0, None
    for start in range(0, table.rows.num_rows, BATCH_ROWS):
        batch = table.rows.select_columns(wanted)[start : start + BATCH_ROWS]
        for offset, (text, text_pair) in enumerate(zip(batch[columns[0]], batch[columns[1]])):
            text, text_pair = layout.cell(columns[0], text), layout.cell(columns[1], text_pair)
            if isinstance(text, str) and isinstance(text_pair, str) and text.split() == text_pair.split():
                count += 1
                if first is None:
                    first = layout.where(start + offset, batch[LOCATION][offset] if layout.located else None)
    return count, first


def label_feature(spec: TaskSpec):
    dtype, is_list = task_type(spec).label_feature(spec)
    return Sequence(Value(dtype)) if is_list else Value(dtype)


# The Arrow type of each content column a kind's labelled rows hold (InputKind.roles).
ROLE_FEATURES = {
    "text": Value("string"),
    "tokens": Sequence(Value("string")),
    "text_pair": Value("string"),
    "text_negative": Value("string"),
}


def row_features(specs: dict[str, TaskSpec], input_kind: str, with_text: bool = True) -> Features:
    """The columns of labelled rows: the content columns of the input kind (text; tokens; for pairs text_pair
    and text_negative), labels_<task> for every task, group."""
    roles = INPUT_KINDS[input_kind].roles
    features = {role: ROLE_FEATURES[role] for role in roles if with_text or role != "text"}
    features.update({f"labels_{name}": label_feature(spec) for name, spec in specs.items()})
    features["group"] = Value("int32")
    return Features(features)


def _labelled_batch(
    batch: dict[str, list],
    indices: list[int],
    layout: TableLayout,
    tasks: tuple[TaskDataSpec, ...],
    specs: dict[str, TaskSpec],
    group: int,
    content: tuple[tuple[str, str, bool], ...],
) -> dict[str, list]:
    """One batch of table rows -> its labelled rows (see `labelled_rows`)."""
    kind = INPUT_KINDS[tasks[0].task_type.input_kind]
    out: dict[str, list] = {column: [] for column in row_features(specs, kind.name)}
    names = [task.name for task in tasks]
    for offset, index in enumerate(indices):
        where = layout.where(index, batch[LOCATION][offset] if layout.located else None)
        try:
            values = {
                role: read_content(layout, role, column, batch[column][offset], where, required)
                for role, column, required in content
            }
        except DataError as error:
            raise DataError(f"{tasks_label(names)}: {error}") from None
        main = values["tokens"] if kind.word_level else values["text"]
        encoded = {}
        for task in tasks:
            column = label_column(layout, task)
            raw = read_label(layout, task, column, batch[column][offset] if column else None, where)
            spec = specs[task.name]
            if raw is None:
                encoded[task.name] = task_type(spec).missing_label(spec)
                continue
            if kind.word_level and len(raw) != len(main):
                raise DataError(f"Task {task.name!r}: {where}: {len(main)} tokens but {len(raw)} tags.")
            try:
                encoded[task.name] = task_type(spec).encode_label(spec, raw, where)
            except LabelError as error:
                raise DataError(f"Task {task.name!r}: {error}") from None
        if not any(task_type(specs[name]).has_label(encoded[name]) for name in names):
            continue  # nothing to learn from (or evaluate on) here
        out["text"].append(" ".join(main) if kind.word_level else main)
        for role in kind.roles[1:]:  # the words, a pair's second text, a negative ("" where a row has none)
            out[role].append(values.get(role, ""))
        for name, spec in specs.items():
            out[f"labels_{name}"].append(
                encoded[name] if name in encoded else task_type(spec).missing_label(spec)
            )
        out["group"].append(group)
    return out


def labelled_rows(table: Table, tasks: list[TaskDataSpec], specs: dict[str, TaskSpec], group: int) -> Dataset:
    """The rows of `table` for `tasks` (one group, or one eval task): content checked, each task's label
    encoded, every other task of `specs` missing, `group` set; rows without any label of `tasks` dropped."""
    for task in tasks:
        check_columns(table, task)
    content = content_columns(table, tasks[0])
    input_kind = tasks[0].task_type.input_kind
    with quiet_datasets():
        rows = table.rows.map(
            _labelled_batch,
            batched=True,
            batch_size=BATCH_ROWS,
            with_indices=True,
            remove_columns=table.rows.column_names,
            features=row_features(specs, input_kind),
            fn_kwargs={
                "layout": table.layout,
                "tasks": tuple(tasks),
                "specs": specs,
                "group": group,
                "content": content,
            },
        )
    dropped = table.rows.num_rows - rows.num_rows
    if dropped:
        logger.info(
            f"{tasks_label([task.name for task in tasks])}: skipped {dropped} row(s) without a label."
        )
    return rows


def label_batches(rows: Dataset, name: str) -> Iterator[list]:
    """The `labels_<name>` values of `rows`, a batch at a time (memory bounded by a batch)."""
    column = rows.select_columns([f"labels_{name}"])
    for start in range(0, rows.num_rows, BATCH_ROWS):
        yield column[start : start + BATCH_ROWS][f"labels_{name}"]


def labelled_count(rows: Dataset, name: str, spec: TaskSpec) -> int:
    """Rows of `rows` that carry a label of task `name`."""
    return sum(task_type(spec).has_label(value) for batch in label_batches(rows, name) for value in batch)


def count_labels(spec: TaskSpec, rows: Dataset, name: str) -> dict[str, int]:
    """Label counts of one task in one set, read a batch at a time."""
    counts: Counter = Counter()
    for batch in label_batches(rows, name):
        counts.update(task_type(spec).count_labels(spec, batch))
    return {label: counts[label] for label in spec.labels}


__all__ = [
    "count_labels",
    "identical_pairs",
    "label_batches",
    "label_feature",
    "labelled_count",
    "labelled_rows",
    "raw_labels",
    "row_features",
]
