"""The entry point: the `tasks:` section of a training config -> one tokenised training set and per-task
evaluation sets (see the package docstring for the flow)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
from datasets import Dataset

from ..model.tasks_multitask_encoder import TaskSpec, parse_task_spec
from ..task_types import task_type
from ..task_types.types import LabelError, to_float
from .labels import (
    count_labels,
    identical_pairs,
    label_batches,
    label_column,
    labelled_count,
    labelled_rows,
    raw_labels,
    read_content,
)
from .sources import Source, expand_paths, file_format, group_train_sources, resolve_sources
from .spec import EVAL_SPLITS, DataError, TaskDataSpec, parse_task_entries, tasks_label
from .splits import (
    cap_rows,
    drop_rows,
    hold_out,
    label_array,
    row_text_keys,
    shared_with_train,
    task_eval_rows,
    text_hashes,
)
from .tables import LOCATION, SourceReader, quiet_datasets, read_file
from .tokenize import DatasetTokenizer

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingPairs:
    """Pairs of texts with a gold similarity score (an `embedding_evaluation:` set)."""

    texts: list[str]
    text_pairs: list[str]
    scores: list[float]


@dataclass
class MultiTaskData:
    """Everything the trainer needs from the `tasks:` section.

    Rows (train and eval) have `input_ids`, `attention_mask` (+ `token_type_ids`) as unpadded lists,
    `labels_<task>` for every task, `word_ids` (token rows: word index per token, -1 for special tokens;
    sentence rows: []) and `group` (the row's train group; -1 in eval sets); eval rows also keep `text`
    (for token rows, the words joined by spaces). Rows without any label of their group are skipped. The sets
    are Arrow datasets on disk (memory-mapped): memory does not grow with the data.
    """

    task_specs: dict[str, TaskSpec]  # the model side of each task (type, labels, head, loss_weight, options)
    train: Dataset  # the groups concatenated in the order of group_sizes
    group_sizes: dict[str, int]  # group name ("domain+sentiment") -> rows, in concatenation order
    group_tasks: dict[str, list[str]]  # group name -> the tasks its rows carry labels for
    validation: dict[str, Dataset]  # task -> its validation set (absent when the task has none)
    test: dict[str, Dataset]  # task -> its test set (absent when the task has none)
    label_counts: dict[str, dict[str, dict[str, int]]]  # task -> split -> label -> count
    # Evaluation rows whose text is also a train row of the task's group, per split and task (found; dropped
    # from the sets when `dropped` is True).
    held_out_duplicates: dict[str, Any] = field(default_factory=dict)
    # Group -> [rows, k] hashes of each row's texts, for the groups whose batches must not repeat a text.
    distinct_text_keys: dict[str, np.ndarray] = field(default_factory=dict)


def model_task_specs(
    tasks: dict[str, Any] | dict[str, TaskDataSpec], inferred_labels: dict[str, list[str]] | None = None
) -> dict[str, TaskSpec]:
    """The model side of each task entry (type, labels, head, loss_weight, the type's options), validated and
    with defaults filled in, parsed once; `inferred_labels` fills label sets the entries do not declare."""
    entries = {
        name: entry if isinstance(entry, TaskDataSpec) else parse_task_entries({name: entry})[name]
        for name, entry in tasks.items()
    }
    specs = {}
    for name, entry in entries.items():
        spec = dict(entry.model)
        if not spec.get("labels") and inferred_labels and name in inferred_labels:
            spec["labels"] = inferred_labels[name]
        try:
            specs[name] = parse_task_spec(name, spec)
        except ValueError as error:
            raise DataError(str(error)) from None
    return specs


def _inferred_labels(task: TaskDataSpec, tables: list, source: Source) -> list[str]:
    """The task's label set, read from its train tables in one streaming pass; refuses train data without
    a single label."""
    present = False

    def marked():
        nonlocal present
        for table in tables:
            for value in raw_labels(table, task):
                if value is not None:
                    present = True
                yield value

    values = marked()
    labels = task.task_type.infer_labels(values)
    for _ in values:  # a type that needs no data to name its labels (similarity) still needs one label
        if present:
            break
    if not present:
        raise DataError(f"Task {task.name!r}: no labels in the train data ({source.describe()}).")
    # A `datasets` ClassLabel column names its classes in id order: the label ids stay the dataset's.
    for table in tables:
        class_names = dict(table.layout.class_names).get(label_column(table.layout, task))
        if class_names:
            return task.task_type.class_label_order(labels, class_names, task.options)
    return labels


def load_multitask_data(
    tasks: dict[str, dict[str, Any]],
    tokenizer,
    max_seq_length: int,
    base_dir: str,
    seed: int = 0,
    cache_dir: str | None = None,
    drop_held_out_duplicates: bool = False,
) -> MultiTaskData:
    """Read, check, label and tokenise the data of every task (see the package docstring).

    Everything is read and checked before anything is tokenised, so bad input fails fast. `base_dir` is
    the folder of the config file (relative paths resolve against it); `seed` draws the held-out splits and
    the `max_train_examples` subsets; read tables and tokenised sets are cached in `cache_dir` (default: the
    datasets cache). Evaluation rows whose text is also in the train rows of the task's group are counted
    (`held_out_duplicates`, and a warning) and, with `drop_held_out_duplicates`, removed.
    """
    entries = parse_task_entries(tasks)
    sources = resolve_sources(entries, base_dir)
    groups = group_train_sources(entries, sources)
    cache_dir = cache_dir or data_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    reader = SourceReader(cache_dir)

    # 1. Train: each group's tables read once; label sets declared, else inferred from the train labels.
    train_tables = {group: reader.read(names, sources[names[0]]["train"]) for group, names in groups.items()}
    inferred = {
        name: _inferred_labels(entries[name], train_tables[group], sources[name]["train"])
        for group, names in groups.items()
        for name in names
        if not entries[name].model.get("labels")
    }
    specs = model_task_specs(entries, inferred)

    # 2. Labelled rows of every split, all checked before any tokenisation. Held-out splits
    #    (validation_fraction / test_fraction) are carved from the group's rows before the train cap, the same
    #    rows for every task of the group.
    train_rows: dict[str, Dataset] = {}
    held_out: dict[str, dict[str, Dataset]] = {split: {} for split in EVAL_SPLITS}
    for index, (group, names) in enumerate(groups.items()):
        group_entries = [entries[name] for name in names]
        parts = [labelled_rows(table, group_entries, specs, index) for table in train_tables[group]]
        rows = _concatenate(parts)
        if rows.num_rows == 0:
            raise DataError(f"{tasks_label(names)}: no labelled rows in the train data.")
        for name in names:
            if not labelled_count(rows, name, specs[name]):
                raise DataError(
                    f"Task {name!r}: no labels in the train data ({sources[name]['train'].describe()})."
                )
        fractions = entries[names[0]].holdout
        if fractions:
            classes = [name for name in names if task_type(specs[name]).stratify]
            strata = label_array(rows, classes[0]) if classes else None
            rows, carved = hold_out(rows, fractions, strata, seed)
            for split, split_rows in carved.items():
                for name in names:
                    held_out[split][name] = task_eval_rows(split_rows, name, specs)
        train_rows[group] = cap_rows(rows, entries[names[0]].max_train_examples, seed)
    # Rows whose anchor is their positive teach a contrastive task nothing: counted, the first one named.
    for group, names in groups.items():
        for name in names:
            note = task_type(specs[name]).identical_pair_note
            if note is None:
                continue
            found = [identical_pairs(table, entries[name]) for table in train_tables[group]]
            count = sum(n for n, _ in found)
            if count:
                first = next(where for n, where in found if n)
                logger.warning(
                    f"Task {name!r}: {count} train row(s) have the same text as anchor and positive (the first: "
                    f"{first}): {note}. Remove them or give them another positive."
                )
    # Options a type learns from its train labels (regression: the targets' mean and std), unless declared.
    for group, names in groups.items():
        for name in names:
            fitted = task_type(specs[name]).fitted_options(
                specs[name], label_batches(train_rows[group], name)
            )
            fitted = {key: value for key, value in fitted.items() if entries[name].model.get(key) is None}
            if fitted:
                specs[name] = parse_task_spec(name, {**specs[name].to_dict(), **fitted})  # checks them too
                logger.info(f"Task {name!r}: from the train labels, {fitted}.")
    eval_rows: dict[str, dict[str, Dataset]] = {split: {} for split in EVAL_SPLITS}
    for split, by_task in eval_rows.items():
        for name, entry in entries.items():
            source = sources[name][split]
            if name in held_out[split]:
                rows = held_out[split][name]
            elif source is None or (tables := reader.read([name], source)) is None:
                continue
            else:
                rows = _concatenate([labelled_rows(table, [entry], specs, -1) for table in tables])
            if rows.num_rows == 0:
                where = source.describe() if source is not None else f"held out of train by {split}_fraction"
                raise DataError(f"Task {name!r}: no labelled rows in the {split} data ({where}).")
            by_task[name] = cap_rows(rows, entry.max_eval_examples, seed)

    # Evaluation rows that are also train rows measure memory, not generalisation: count them (and drop them).
    group_of = {name: group for group, names in groups.items() for name in names}
    train_hashes = {group: np.unique(text_hashes(rows)) for group, rows in train_rows.items()}
    found: dict[str, dict[str, int]] = {split: {} for split in EVAL_SPLITS}
    for split, by_task in eval_rows.items():
        for name, rows in by_task.items():
            shared = shared_with_train(rows, train_hashes[group_of[name]])
            found[split][name] = len(shared)
            if len(shared):
                action = (
                    "dropped" if drop_held_out_duplicates else "kept (drop_held_out_duplicates drops them)"
                )
                logger.warning(
                    f"Task {name!r}: {len(shared)} {split} row(s) have the text of a train row; {action}."
                )
                if drop_held_out_duplicates:
                    by_task[name] = drop_rows(rows, shared)
                    if by_task[name].num_rows == 0:
                        raise DataError(f"Task {name!r}: every {split} row is also a train row.")
    held_out_duplicates = {"found": found, "dropped": drop_held_out_duplicates}

    label_counts: dict[str, dict[str, dict[str, int]]] = {name: {} for name in entries}
    for group, names in groups.items():
        for name in names:
            label_counts[name]["train"] = count_labels(specs[name], train_rows[group], name)
    for split, by_task in eval_rows.items():
        for name, rows in by_task.items():
            label_counts[name][split] = count_labels(specs[name], rows, name)
    for name, counts in label_counts.items():
        unseen = [label for label, count in counts["train"].items() if count == 0]
        if unseen:
            logger.warning(
                f"Task {name!r}: no train rows for the label(s) {unseen}; the head cannot learn them."
            )

    # 3. Tokenise (cached), train groups concatenated in group order.
    negatives = any(
        role == "text_negative" for entry in entries.values() for role, _, _ in entry.content_columns
    )
    tokenize = DatasetTokenizer(tokenizer, max_seq_length, specs, cache_dir, negatives)
    train_sets = [
        tokenize(
            rows,
            keep_text=False,
            description=f"train {group}",
            encoding=entries[groups[group][0]].input_encoding,
        )
        for group, rows in train_rows.items()
    ]
    train = train_sets[0] if len(train_sets) == 1 else datasets.concatenate_datasets(train_sets)
    evaluation = {
        split: {
            name: tokenize(
                rows, keep_text=True, description=f"{split} {name}", encoding=entries[name].input_encoding
            )
            for name, rows in by_task.items()
        }
        for split, by_task in eval_rows.items()
    }
    group_sizes = {group: rows.num_rows for group, rows in train_rows.items()}
    # Groups whose batches must not repeat a text (contrastive: a repeated text is a false negative).
    distinct_text_keys = {
        group: row_text_keys(train_rows[group])
        for group, names in groups.items()
        if any(task_type(specs[name]).distinct_batch_texts for name in names)
    }
    logger.info(f"Training groups (rows): {group_sizes}")
    return MultiTaskData(
        task_specs=specs,
        train=train,
        group_sizes=group_sizes,
        group_tasks=dict(groups),
        validation=evaluation["validation"],
        test=evaluation["test"],
        label_counts=label_counts,
        held_out_duplicates=held_out_duplicates,
        distinct_text_keys=distinct_text_keys,
    )


EMBEDDING_EVAL_KEYS = (
    "data",
    "format",
    "encoding",
    "text_column",
    "text_pair_column",
    "score_column",
    "max_examples",
)


def load_embedding_eval_set(
    name: str, entry: Any, base_dir: str, cache_dir: str | None = None
) -> EmbeddingPairs:
    """One `embedding_evaluation:` entry (a file of text pairs with a gold similarity) as its three columns,
    every cell checked (non-empty texts, finite scores), naming the file, the row and the column."""
    if not isinstance(entry, dict) or "data" not in entry:
        raise DataError(
            f"embedding_evaluation {name!r}: give a mapping with `data:` (a file of text pairs and scores)."
        )
    unknown = sorted(set(entry) - set(EMBEDDING_EVAL_KEYS))
    if unknown:
        raise DataError(
            f"embedding_evaluation {name!r}: unknown key(s) {unknown}; valid keys are {list(EMBEDDING_EVAL_KEYS)}."
        )
    paths = expand_paths(name, "data", entry["data"], base_dir)
    if len(paths) != 1:
        raise DataError(
            f"embedding_evaluation {name!r}: `data:` must name one file, it matches {len(paths)}."
        )
    path = paths[0]
    table = read_file(
        path,
        file_format(name, path, entry.get("format")),
        entry.get("encoding"),
        cache_dir or data_cache_dir(),
    )
    columns = {
        role: entry.get(f"{role}_column", default)
        for role, default in (("text", "text"), ("text_pair", "text_pair"), ("score", "score"))
    }
    pairs = EmbeddingPairs([], [], [])
    layout = table.layout
    for column in columns.values():
        try:
            table.check_column(column)
        except DataError as error:
            raise DataError(f"embedding_evaluation {name!r}: {error}") from None
    rows = table.rows.select_columns(
        list(dict.fromkeys([*columns.values(), *([LOCATION] if layout.located else [])]))
    )
    for index, row in enumerate(rows):
        where = layout.where(index, row.get(LOCATION))
        try:
            pairs.texts.append(read_content(layout, "text", columns["text"], row[columns["text"]], where))
            pairs.text_pairs.append(
                read_content(layout, "text", columns["text_pair"], row[columns["text_pair"]], where)
            )
            pairs.scores.append(
                to_float(
                    layout.cell(columns["score"], row[columns["score"]]),
                    f"{where}, column {columns['score']!r}",
                )
            )
        except (DataError, LabelError) as error:
            raise DataError(f"embedding_evaluation {name!r}: {error}") from None
        if entry.get("max_examples") and len(pairs.scores) >= entry["max_examples"]:
            break
    if len(pairs.scores) < 2:
        raise DataError(f"embedding_evaluation {name!r}: {path} has fewer than 2 pairs to correlate.")
    return pairs


def data_cache_dir(cache_dir: str | None = None) -> str:
    """Where read and tokenised sets (and teachers' targets) are cached: `cache_dir`, else the datasets cache."""
    return cache_dir or os.path.join(datasets.config.HF_DATASETS_CACHE, "multitask_encoder")


def _concatenate(parts: list[Dataset]) -> Dataset:
    if len(parts) == 1:
        return parts[0]
    with quiet_datasets():
        return datasets.concatenate_datasets(parts)


__all__ = [
    "EmbeddingPairs",
    "MultiTaskData",
    "data_cache_dir",
    "load_embedding_eval_set",
    "load_multitask_data",
    "model_task_specs",
]
