"""Held-out splits carved from a group's train rows, per-task evaluation sets, and seeded caps: row
selections over Arrow datasets (index arrays, never copies of the rows in Python)."""

from __future__ import annotations

import hashlib

import numpy as np
from datasets import Dataset

from ..model.tasks_multitask_encoder import TaskSpec
from ..task_types import task_type
from .labels import BATCH_ROWS
from .tables import quiet_datasets


def hold_out(
    rows: Dataset, fractions: dict[str, float], strata: np.ndarray | None, seed: int
) -> tuple[Dataset, dict[str, Dataset]]:
    """Split a group's rows into (train, {split: held-out rows}) with a seeded shuffle, stratified by `strata`
    (one class id per row) so every class keeps its share in every split. Rows keep file order."""
    rng = np.random.default_rng(seed)
    strata = strata if strata is not None else np.zeros(rows.num_rows, dtype=np.int64)
    assigned: dict[str, list[np.ndarray]] = {split: [] for split in ("train", *fractions)}
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        start = 0
        for split, fraction in fractions.items():
            count = round(fraction * len(members))
            assigned[split].append(members[start : start + count])
            start += count
        assigned["train"].append(members[start:])
    selected = {split: np.sort(np.concatenate(parts)) for split, parts in assigned.items()}
    train = rows.select(selected.pop("train"))
    return train, {split: rows.select(indices) for split, indices in selected.items()}


def label_array(rows: Dataset, name: str) -> np.ndarray:
    """A one-value-per-row label column (class ids) as a numpy array, read a batch at a time."""
    column = rows.select_columns([f"labels_{name}"]).with_format("numpy")
    parts = [
        column[start : start + BATCH_ROWS][f"labels_{name}"] for start in range(0, rows.num_rows, BATCH_ROWS)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _eval_batch(batch: dict[str, list], name: str, specs: dict[str, TaskSpec]) -> dict[str, list]:
    size = len(batch["group"])
    for task, spec in specs.items():
        if task != name:
            batch[f"labels_{task}"] = [task_type(spec).missing_label(spec)] * size
    batch["group"] = [-1] * size
    return batch


def _has_label(batch: dict[str, list], name: str, spec: TaskSpec) -> list[bool]:
    return [task_type(spec).has_label(value) for value in batch[f"labels_{name}"]]


def task_eval_rows(rows: Dataset, name: str, specs: dict[str, TaskSpec]) -> Dataset:
    """Held-out group rows -> the eval set of task `name`: its labelled rows only, the other tasks' labels
    missing (as in a declared eval file), group -1."""
    spec = specs[name]
    with quiet_datasets():
        labelled = rows.filter(
            _has_label, batched=True, batch_size=BATCH_ROWS, fn_kwargs={"name": name, "spec": spec}
        )
        return labelled.map(
            _eval_batch, batched=True, batch_size=BATCH_ROWS, fn_kwargs={"name": name, "specs": specs}
        )


def text_hash(text: str) -> int:
    """A 64-bit hash of a text, whitespace collapsed (0 is kept for "no text")."""
    if not text:
        return 0
    return int.from_bytes(
        hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=8).digest(), "little"
    )


def text_hashes(rows: Dataset, columns: tuple[str, ...] = ("text", "text_pair")) -> np.ndarray:
    """One 64-bit hash per row of its content (its text, and a pair's second text), read a batch at a time:
    rows are compared across splits by these, not by holding the texts."""
    present = [column for column in columns if column in rows.column_names]
    view = rows.select_columns(present)
    hashes = np.empty(rows.num_rows, dtype=np.uint64)
    for start in range(0, rows.num_rows, BATCH_ROWS):
        batch = view[start : start + BATCH_ROWS]
        joined = ["\x1f".join(texts) for texts in zip(*(batch[column] for column in present))]
        hashes[start : start + len(joined)] = [text_hash(text) for text in joined]
    return hashes


def row_text_keys(
    rows: Dataset, columns: tuple[str, ...] = ("text", "text_pair", "text_negative")
) -> np.ndarray:
    """`[rows, k]` hashes of each row's texts (0 where a row has none): what the batches of a contrastive
    group must hold only once."""
    present = [column for column in columns if column in rows.column_names]
    view = rows.select_columns(present)
    keys = np.zeros((rows.num_rows, len(present)), dtype=np.uint64)
    for start in range(0, rows.num_rows, BATCH_ROWS):
        batch = view[start : start + BATCH_ROWS]
        for index, column in enumerate(present):
            keys[start : start + len(batch[column]), index] = [text_hash(text) for text in batch[column]]
    return keys


def shared_with_train(rows: Dataset, train_hashes: np.ndarray) -> np.ndarray:
    """Indices of `rows` whose text is also a train row's (`train_hashes`: `text_hashes` of the train rows)."""
    return np.flatnonzero(np.isin(text_hashes(rows), train_hashes))


def drop_rows(rows: Dataset, indices: np.ndarray) -> Dataset:
    return rows.select(np.setdiff1d(np.arange(rows.num_rows), indices)) if len(indices) else rows


def cap_rows(rows: Dataset, cap: int | None, seed: int) -> Dataset:
    """A seeded random subset of at most `cap` rows, kept in file order."""
    if cap is None or rows.num_rows <= cap:
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(rows.num_rows, size=cap, replace=False))
    return rows.select(keep)


__all__ = [
    "cap_rows",
    "drop_rows",
    "hold_out",
    "label_array",
    "row_text_keys",
    "shared_with_train",
    "task_eval_rows",
    "text_hashes",
]
