"""Where each split of each task comes from: paths resolved (`pkg:` paths, globs, relative to the config),
each file's format, or a split of a `datasets` dataset; and which tasks share their train data (a group:
one encoder pass serves all its tasks' labels)."""

from __future__ import annotations

import glob
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from .spec import SPLITS, DataError, TaskDataSpec

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".conll": "conll",
}
# Formats whose rows are word lists with tags (token tasks) vs texts (every other task).
FORMAT_INPUT_KINDS = {"conll": "tokens", "folder": "text"}


@dataclass(frozen=True)
class Source:
    """Where one split of one task comes from: files (each with its format), or a split of a `datasets`
    dataset. Two tasks with equal train sources share one group."""

    files: tuple[tuple[str, str], ...] = ()  # (resolved path, format)
    encoding: str | None = None
    dataset: str | None = None  # a `datasets` name, or a resolved local path
    dataset_config: str | None = None
    data_files: tuple | None = None  # hashable form of load_dataset's data_files
    split: str | None = None
    optional: bool = field(default=False, compare=False)  # a default split name: a missing split is fine

    def describe(self) -> str:
        if self.dataset is not None:
            return f"dataset {self.dataset} split {self.split!r}"
        return ", ".join(path for path, _ in self.files)


def resolve_path(path: str, base_dir: str) -> str:
    """`pkg:NAME/rest` -> <folder of installed package NAME>/rest (found without importing it); a relative
    path -> against `base_dir`."""
    path = str(path)
    if path.startswith("pkg:"):
        package, _, rest = path[len("pkg:") :].partition("/")
        if not package.isidentifier():
            raise DataError(
                f"{path!r}: `pkg:` must be followed by a top-level package name, as in pkg:NAME/sub/path."
            )
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"{path!r}: no installed package named {package!r}.")
        path = os.path.join(spec.submodule_search_locations[0], rest)
    path = os.path.expanduser(path)
    return os.path.abspath(os.path.join(base_dir, path))  # an absolute path ignores base_dir


def resolve_path_for(name: str, path: str, base_dir: str) -> str:
    """`resolve_path`, with the task named in any error."""
    try:
        return resolve_path(path, base_dir)
    except DataError as error:
        raise DataError(f"Task {name!r}: {error}") from None


def expand_paths(name: str, split: str, value: str | list[str], base_dir: str) -> list[str]:
    """A path, a glob or a list of them -> existing files (or folders), in the given order, globs sorted."""
    paths: list[str] = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(item, str) or not item:
            raise DataError(f"Task {name!r}: {split} must be a path, a glob or a list of them, got {item!r}.")
        path = resolve_path_for(name, item, base_dir)
        if glob.has_magic(path):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise DataError(f"Task {name!r}: no {split} file matches {item!r} (resolved to {path}).")
            paths.extend(matches)
        elif os.path.exists(path):
            paths.append(path)
        else:
            raise DataError(f"Task {name!r}: {split} file not found: {path} (given as {item!r}).")
    return list(dict.fromkeys(paths))  # a file named twice (a glob and a path) is read once


def file_format(name: str, path: str, declared: str | None) -> str:
    """The format of one file: declared, else a directory of class folders, else from the extension."""
    is_dir = os.path.isdir(path)
    extension = os.path.splitext(path)[1].lower()
    if declared is None and not is_dir and extension not in EXTENSIONS:
        raise DataError(
            f"Task {name!r}: unknown format of {path} (extension {extension!r}); set `format:` to one of "
            f"{['csv', 'tsv', 'json', 'jsonl', 'parquet', 'folder', 'conll']}."
        )
    fmt = declared or ("folder" if is_dir else EXTENSIONS[extension])
    if is_dir != (fmt == "folder"):
        raise DataError(
            f"Task {name!r}: {path} is a {'directory' if is_dir else 'file'}, but format {fmt!r} reads "
            f"{'a directory of class folders' if fmt == 'folder' else 'a file'}."
        )
    return fmt


def hashable_data_files(name: str, data_files: Any, base_dir: str) -> tuple | None:
    """`data_files` of load_dataset (a path, a list, or split -> paths) with paths resolved, as a tuple."""
    if data_files is None:
        return None
    if isinstance(data_files, dict):
        return tuple(
            (str(split), tuple(expand_paths(name, str(split), paths, base_dir)))
            for split, paths in data_files.items()
        )
    return tuple(expand_paths(name, "data_files", data_files, base_dir))


def resolve_source(task: TaskDataSpec, split: str, base_dir: str) -> Source | None:
    """The source of one split of one task, or None when the task has no such split."""
    name = task.name
    if task.dataset is not None:
        if split in task.splits and task.splits[split] in (None, ""):
            return None
        dataset = task.dataset
        looks_local = dataset.startswith(("pkg:", ".", "/", "~")) or os.path.exists(
            os.path.join(base_dir, dataset)
        )
        if looks_local:
            dataset = resolve_path_for(name, dataset, base_dir)
            if not os.path.exists(dataset):
                raise DataError(f"Task {name!r}: dataset not found: {dataset} (given as {task.dataset!r}).")
        return Source(
            dataset=dataset,
            dataset_config=task.dataset_config,
            data_files=hashable_data_files(name, task.data_files, base_dir),
            split=str(task.splits.get(split, split)),
            optional=split not in task.splits and split != "train",
        )
    if task.splits.get(split) in (None, "", []):
        return None
    paths = expand_paths(name, split, task.splits[split], base_dir)
    files = tuple((path, file_format(name, path, task.format)) for path in paths)
    for path, fmt in files:
        kind = FORMAT_INPUT_KINDS.get(fmt)
        if kind is not None and kind != task.task_type.input_kind:
            readers = {"tokens": "word lists with tags", "text": "texts"}[kind]
            raise DataError(
                f"Task {name!r}: format {fmt!r} of {path} reads {readers}, which a {task.task_type.name} task "
                "cannot use."
            )
    return Source(files=files, encoding=task.encoding)


def resolve_sources(tasks: dict[str, TaskDataSpec], base_dir: str) -> dict[str, dict[str, Source | None]]:
    return {
        name: {split: resolve_source(task, split, base_dir) for split in SPLITS}
        for name, task in tasks.items()
    }


def group_train_sources(
    tasks: dict[str, TaskDataSpec], sources: dict[str, dict[str, Source | None]]
) -> dict[str, list[str]]:
    """Tasks whose train data is the same (files, content columns, how rows are tokenised, cap, held-out
    fractions) form one group. Groups are ordered by their first task; the name is the joined task names."""
    groups: dict[tuple, list[str]] = {}
    for name, task in tasks.items():
        key = (
            sources[name]["train"],
            task.content_columns,
            task.input_encoding,
            task.max_train_examples,
            tuple(sorted(task.holdout.items())),
        )
        groups.setdefault(key, []).append(name)
    return {"+".join(names): names for names in groups.values()}


__all__ = [
    "EXTENSIONS",
    "Source",
    "expand_paths",
    "file_format",
    "group_train_sources",
    "resolve_path",
    "resolve_source",
    "resolve_sources",
]
