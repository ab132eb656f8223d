"""Sources -> tables: the rows of one file (or one `datasets` split) as an Arrow dataset on disk, memory-mapped,
so memory does not grow with the file.

    csv / tsv      every column a string, as written ("" for an empty cell: no NA guessing)
    json / jsonl   every cell JSON-encoded (a column may mix numbers, strings, lists and nulls)
    parquet, datasets splits    the dataset's own typed columns; ClassLabel ids name their classes
    folder         <dir>/<label>/*.txt: columns text, label, one row per file
    conll          columns tokens, ner_tags, one row per sentence

Files are read once per run and written to the loader's cache under a key made of the path, its size and
modification time and the reading options: a second run with the same files reads the Arrow files back.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from collections.abc import Iterator
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from datasets.exceptions import DatasetGenerationError

from .readers import DelimitedReader, NotTextError, ReadError, decoded_lines, read_conll, read_jsonl
from .sources import Source
from .spec import DataError, tasks_label

logger = logging.getLogger(__name__)

READER_VERSION = 1  # bump when what a reader writes changes, so stale Arrow files are never reused
LOCATION = "__location__"  # the column naming each row's place in its file, where not its row number


@dataclass(frozen=True)
class TableLayout:
    """How to read the cells of a table and name its rows in errors (small and hashable: the row functions
    of `Dataset.map` take it, and it is part of their cache key).

    `json_cells`: the cells are JSON-encoded (structured files), decoded by `cell`; `class_names`: columns of
    class ids (datasets ClassLabel) -> their names; `content_column`/`label_column`: fixed column names of
    folder and CoNLL tables, used whatever a task entry names; `located`: the rows carry `__location__`
    (else a row's place is its 1-based row number).
    """

    name: str
    unit: str = "row"
    json_cells: bool = False
    class_names: tuple[tuple[str, tuple[str, ...]], ...] = ()
    content_column: str | None = None
    label_column: str | None = None
    located: bool = False

    def where(self, index: int, location: Any = None) -> str:
        """The row at `index` of the table (its `__location__` value when the table has one)."""
        return f"{self.name}, {self.unit} {location if self.located else index + 1}"

    def cell(self, column: str, value: Any) -> Any:
        """A raw cell as Python: JSON decoded, class ids named."""
        if self.json_cells and value is not None:
            value = json.loads(value)
        names = dict(self.class_names).get(column)
        if names is not None and value is not None:
            if isinstance(value, list):
                return [names[v] for v in value]
            return None if value < 0 else names[value]
        return value


@dataclass(frozen=True)
class Table:
    """The rows of one file (or `datasets` split): `rows` holds the file's columns (plus `__location__` where
    a row's place is not its row number), `layout` how to read them."""

    layout: TableLayout
    rows: Dataset

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def columns(self) -> list[str]:
        return [column for column in self.rows.column_names if column != LOCATION]

    def check_column(self, column: str) -> None:
        if column not in self.columns:
            raise DataError(f"column {column!r} not found in {self.name}; available columns: {self.columns}.")


# ---------------------------------------------------------------------------------------------- readers
def _csv_rows(path: str, encoding: str | None, delimiter: str, version: int) -> Iterator[dict[str, str]]:
    with open(path, "rb") as f:
        reader = DelimitedReader(decoded_lines(f, path, encoding), path, delimiter)
        header = reader.header
        for _, row in reader.rows():  # a row of another width than the header is refused there
            if not row:
                continue  # a blank line
            yield dict(zip(header, row))


def _csv_header(path: str, encoding: str | None, delimiter: str) -> list[str]:
    with open(path, "rb") as f:
        header = DelimitedReader(decoded_lines(f, path, encoding), path, delimiter).header
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise ReadError(f"{path}: the header names the column(s) {duplicates} more than once.")
    return header


def _record_rows(records: Iterator[tuple[int, Any]], path: str, unit: str, columns: AbcSequence[str]):
    for location, record in records:
        if not isinstance(record, dict):
            raise ReadError(
                f"{path}, {unit} {location}: expected a JSON object, got {type(record).__name__}."
            )
        row = {
            column: None if record.get(column) is None else json.dumps(record[column]) for column in columns
        }
        row[LOCATION] = location
        yield row


def _jsonl_records(path: str, encoding: str | None) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for line, value in read_jsonl(decoded_lines(f, path, encoding), path):
            if value is not None:
                yield line, value


def _jsonl_rows(path: str, encoding: str | None, columns: tuple[str, ...], version: Any):
    yield from _record_rows(_jsonl_records(path, encoding), path, "line", columns)


def _jsonl_columns(path: str, encoding: str | None) -> list[str]:
    """The union of the records' keys, in first-seen order (one streaming pass)."""
    columns: dict[str, None] = {}
    for line, record in _jsonl_records(path, encoding):
        if not isinstance(record, dict):
            raise ReadError(f"{path}, line {line}: expected a JSON object, got {type(record).__name__}.")
        columns.update(dict.fromkeys(record))
    return list(columns)


def _read_json_document(path: str, encoding: str | None) -> list[dict] | dict[str, list] | None:
    """A .json file's records (a list of objects, or a mapping column -> values); None when the file is JSON
    Lines saved as .json (as Dataset.to_json writes it)."""
    try:
        with open(path, encoding=encoding or "utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not valid {encoding or 'utf-8'} text ({error}); set `encoding:` (e.g. latin-1)."
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            return None
        raise ReadError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}).") from None
    if isinstance(data, dict) and data and all(isinstance(values, list) for values in data.values()):
        lengths = {len(values) for values in data.values()}
        if len(lengths) > 1:
            raise ReadError(f"{path}: the columns have different lengths {sorted(lengths)}.")
        return data
    if isinstance(data, list):
        return data
    raise ReadError(f"{path}: expected a list of records or a mapping column -> list of values.")


def _folder_files(path: str) -> list[tuple[str, str]]:
    """(label, file) for every `<path>/<label>/*.txt`, labels and files sorted."""
    classes = sorted(
        entry
        for entry in os.listdir(path)
        if os.path.isdir(os.path.join(path, entry)) and not entry.startswith((".", "_"))
    )
    if not classes:
        raise ReadError(f"{path} is a directory without class folders; expected <dir>/<label>/*.txt.")
    return [
        (label, file) for label in classes for file in sorted(glob.glob(os.path.join(path, label, "*.txt")))
    ]


def _folder_rows(path: str, encoding: str | None, stamp: Any, version: int) -> Iterator[dict[str, str]]:
    fallbacks = []
    for label, file in _folder_files(path):
        with open(file, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode(encoding or "utf-8")
        except UnicodeDecodeError as error:
            if encoding is not None:
                raise ReadError(f"{file} is not valid {encoding} text ({error}).") from None
            # Corpora scraped over years mix encodings (one BBC file is latin-1 among utf-8 ones); without a
            # declared encoding such a file is read as latin-1, which cannot fail.
            text = raw.decode("latin-1")
            fallbacks.append(os.path.relpath(file, path))
        yield {"text": text.strip(), "label": label, LOCATION: os.path.relpath(file, path)}
    if fallbacks:
        logger.warning(
            f"{len(fallbacks)} file(s) in {path} are not utf-8 and were read as latin-1: {fallbacks[:3]}"
        )


def _conll_rows(path: str, encoding: str | None, version: int) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        for line, tokens, tags in read_conll(decoded_lines(f, path, encoding), path):
            yield {"tokens": tokens, "ner_tags": tags, LOCATION: line}


def file_stamp(path: str) -> tuple:
    """What identifies a file's content for the cache: its path, size and modification time (of every class
    file, for a folder)."""
    if os.path.isdir(path):
        return tuple(
            (os.path.relpath(f, path), os.path.getsize(f), os.stat(f).st_mtime_ns)
            for _, f in _folder_files(path)
        )
    status = os.stat(path)
    return (path, status.st_size, status.st_mtime_ns)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars inside (writing a table is an implementation detail), as they were outside."""
    disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not disabled:
            datasets.enable_progress_bars()


def _generate(generator, features: Features, gen_kwargs: dict[str, Any], cache_dir: str) -> Dataset:
    try:
        with quiet_datasets():
            return Dataset.from_generator(
                generator, features=features, gen_kwargs=gen_kwargs, cache_dir=cache_dir
            )
    except DatasetGenerationError as error:
        cause = error.__cause__
        if isinstance(cause, (ReadError, DataError)):
            raise cause from None
        raise
    except ValueError as error:
        if "corresponds to no data" not in str(error):
            raise
        # A file with a header and no rows: an empty table (the caller refuses it, naming the file).
        return Dataset.from_dict({column: [] for column in features}, features=features)


def read_file(path: str, fmt: str, encoding: str | None, cache_dir: str) -> Table:
    """One file (or class folder) as a Table, written to Arrow in `cache_dir` once per content."""
    stamp = file_stamp(path)
    kwargs = {"path": path, "encoding": encoding, "version": READER_VERSION}
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        header = _csv_header(path, encoding, delimiter)
        features = Features(dict.fromkeys(header, Value("string")))
        kwargs.update(delimiter=delimiter, version=(READER_VERSION, stamp))
        rows = _generate(_csv_rows, features, kwargs, cache_dir)
        return Table(TableLayout(path, unit="data row"), rows)
    if fmt == "parquet":
        try:
            with quiet_datasets():
                rows = Dataset.from_parquet(path, cache_dir=cache_dir)
        except Exception as error:  # pyarrow raises several unrelated types for a bad file
            raise ReadError(f"cannot read {path} as parquet: {error}") from None
        return dataset_table(path, rows)
    if fmt == "folder":
        features = Features({"text": Value("string"), "label": Value("string"), LOCATION: Value("string")})
        rows = _generate(_folder_rows, features, {**kwargs, "stamp": stamp}, cache_dir)
        return Table(
            TableLayout(path, "file", content_column="text", label_column="label", located=True), rows
        )
    if fmt == "conll":
        features = Features(
            {
                "tokens": Sequence(Value("string")),
                "ner_tags": Sequence(Value("string")),
                LOCATION: Value("int64"),
            }
        )
        rows = _generate(_conll_rows, features, {**kwargs, "version": (READER_VERSION, stamp)}, cache_dir)
        return Table(
            TableLayout(path, "line", content_column="tokens", label_column="ner_tags", located=True), rows
        )
    document = _read_json_document(path, encoding) if fmt == "json" else None
    if document is None:  # JSON Lines
        columns = _jsonl_columns(path, encoding)
        features = Features({**dict.fromkeys(columns, Value("string")), LOCATION: Value("int64")})
        # A tuple: `from_generator` would split a list-valued argument into shards.
        kwargs.update(columns=tuple(columns), version=(READER_VERSION, stamp))
        rows = _generate(_jsonl_rows, features, kwargs, cache_dir)
        return Table(TableLayout(path, "line", json_cells=True, located=True), rows)
    if isinstance(document, dict):  # column -> values
        columns = {
            name: [None if v is None else json.dumps(v) for v in values] for name, values in document.items()
        }
        rows = Dataset.from_dict(columns, features=Features(dict.fromkeys(columns, Value("string"))))
        return Table(TableLayout(path, json_cells=True), rows)
    records = list(enumerate(document, start=1))
    names = list(dict.fromkeys(key for _, record in records if isinstance(record, dict) for key in record))
    rows = list(_record_rows(iter(records), path, "record", names))
    features = Features({**dict.fromkeys(names, Value("string")), LOCATION: Value("int64")})
    table = Dataset.from_list(rows, features=features) if rows else Dataset.from_dict({}, features=features)
    return Table(TableLayout(path, "record", json_cells=True, located=True), table)


def dataset_table(name: str, split: Dataset) -> Table:
    """A `datasets` split as a Table; ClassLabel columns (also in lists) are read as their class names."""
    class_names = []
    for column, feature in split.features.items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, ClassLabel):
            class_names.append((column, tuple(feature.names)))
        elif isinstance(inner, ClassLabel):
            class_names.append((column, tuple(inner.names)))
    return Table(TableLayout(name, class_names=tuple(class_names)), split)


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


class SourceReader:
    """Reads sources into tables, once each (tasks of one group, or sharing an eval file, reuse them)."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self.tables: dict[Source, list[Table] | None] = {}
        self.dataset_dicts: dict[tuple, dict[str, Dataset]] = {}

    def read(self, names: list[str], source: Source) -> list[Table] | None:
        """The tables of `source` (None for an absent optional dataset split). Errors name `names`."""
        if source not in self.tables:
            try:
                self.tables[source] = self._read(source)
            except (DataError, ReadError) as error:
                raise DataError(f"{tasks_label(names)}: {_message(error)}") from None
        return self.tables[source]

    def _read(self, source: Source) -> list[Table] | None:
        if source.dataset is None:
            tables = [read_file(path, fmt, source.encoding, self.cache_dir) for path, fmt in source.files]
        else:
            key = (source.dataset, source.dataset_config, source.data_files)
            if key not in self.dataset_dicts:
                try:
                    with quiet_datasets():
                        self.dataset_dicts[key] = load_dataset_dict(source, self.cache_dir)
                except Exception as error:  # load_dataset raises many types (missing builder, offline, ...)
                    raise DataError(f"could not load dataset {source.dataset!r}: {error}") from None
            splits = self.dataset_dicts[key]
            if source.split not in splits:
                if source.optional:
                    return None
                raise DataError(
                    f"dataset {source.dataset} has no split {source.split!r}; available splits: {list(splits)}."
                )
            tables = [dataset_table(f"{source.dataset} [{source.split}]", splits[source.split])]
        for table in tables:
            if table.rows.num_rows == 0:
                raise DataError(f"{table.name} has no data rows (empty split).")
        return tables


def _message(error: Exception) -> str:
    if isinstance(error, NotTextError):
        return (
            f"{error.path} is not valid {error.encoding} text (line {error.line}: {error.reason} at byte "
            f"{error.byte}); set `encoding:` (e.g. latin-1)."
        )
    return str(error)


__all__ = ["LOCATION", "SourceReader", "Table", "TableLayout", "dataset_table", "read_file"]
