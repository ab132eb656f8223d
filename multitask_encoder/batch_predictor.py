"""`BatchPredictor`: a picklable, lazily loading predictor for distributed engines (Ray Data, Spark, or any
pool of worker processes) that hand it batches of rows.

    batch (dict of numpy arrays | pandas DataFrame | pyarrow Table) ─► texts of `text_column` (and
        `text_pair_column`) ─► skip empty texts and texts the tokenizer keeps nothing of (null result, counted)
        ─► model.predict (and model.encode) ─► the batch's columns + one column per task field, typed by
        `output_schema()`, in the same kind of batch

The object holds only names and options: it pickles to a few hundred bytes, and the model loads on its first
call in the worker process (the serving mode and thread count applied there), once per process. The columns,
their order and their Arrow types come from the model's config and the task types' `prediction_schema`, so
every batch of every worker has the same schema, a batch without any text to predict included.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .batch_predict import BatchPredictError, load_model, skip_empty_texts, skip_texts_without_tokens
from .task_types import task_type

logger = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"


def prediction_column(task: str, field: str) -> str:
    """The column of one task field: `<task>.<field>`, as multitask-encoder-predict's csv names it."""
    return f"{task}.{field}"


class _ConfigView:
    """What the task selection reads of a model (its config), without loading its weights."""

    def __init__(self, config) -> None:
        self.config = config

    def resolve_tasks(self, tasks):
        from .model.modeling_multitask_encoder import MultiTaskEncoderModel

        return MultiTaskEncoderModel.resolve_tasks(self, tasks)


class BatchPredictor:
    """Every selected task's prediction (and optionally the sentence embedding) for each row of a batch.

    Args:
        model: saved model folder or Hub repo id (loaded in each worker, on its first batch).
        tasks: task names (default: every task that reads the input's kind: texts, or pairs with
            `text_pair_column`), as `predict`'s `tasks`.
        mode: serving mode (`MultiTaskEncoderModel.optimize_for_inference`), "exact" by default.
        embeddings: also return the sentence embedding of `text_column` as column "embedding"
            (fixed-size list of float32, `encode`'s).
        text_column, text_pair_column: the columns holding the texts (and their pairs).
        batch_size: texts per forward pass inside one call.
        labels: {task: labels} for label_text_classification tasks (`predict`'s `labels`).
        threads: torch threads in the worker (default: torch's default there).
        device: torch device (default: cuda when available, else cpu).
        trust_remote_code, revision: as `multitask-encoder-predict`'s options.

    A row whose text is missing (null), empty or whitespace-only, or holds nothing the tokenizer keeps, gets
    null in every prediction column and is counted in `skipped` (a warning is logged per batch); its row stays
    where it was, with its other columns.
    """

    def __init__(
        self,
        model: str,
        tasks: Sequence[str] | str | None = None,
        mode: str = "exact",
        embeddings: bool = False,
        text_column: str = "text",
        text_pair_column: str | None = None,
        batch_size: int = 64,
        labels: Mapping[str, Sequence[str]] | None = None,
        threads: int | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise BatchPredictError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise BatchPredictError(f"threads must be >= 1, got {threads}")
        self.model_name = model
        self.tasks = [tasks] if isinstance(tasks, str) else (list(tasks) if tasks is not None else None)
        self.mode = mode
        self.embeddings = embeddings
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.batch_size = batch_size
        self.labels = {name: list(values) for name, values in (labels or {}).items()}
        self.threads = threads
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.revision = revision
        self.skipped: dict[str, int] = {}  # what was skipped (in this process) -> how many rows
        self._model = None
        self._schema: pa.Schema | None = None
        self._task_names: list[str] | None = None
        self._columns: list[tuple[str, str]] = []  # (task, field) of each prediction column
        self._skippers = None

    # ------------------------------------------------------------------ pickling: names and options only
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_model=None, _skippers=None)
        return state

    @property
    def kind(self) -> str:
        return "pair" if self.text_pair_column else "text"

    # ------------------------------------------------------------------ schema (config only)
    def _config(self):
        if self._model is not None:
            return self._model.config
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(
                self.model_name, revision=self.revision, trust_remote_code=self.trust_remote_code
            )
        except Exception as error:
            raise BatchPredictError(
                f"cannot load the config of the model {self.model_name}: {error}"
            ) from None

    def _task_specs(self) -> dict[str, Any]:
        """{task: spec} of the tasks this predictor runs (label_text tasks with their `labels`)."""
        from .model.predict_multitask_encoder import task_spec, tasks_for

        config = self._config()
        if not isinstance(getattr(config, "tasks", None), dict):
            raise BatchPredictError(
                f"{self.model_name} is not a multitask-encoder model (model_type {config.model_type!r})"
            )
        view = _ConfigView(config)
        try:
            names = tasks_for(view, self.kind, self.tasks)
            unused = [name for name in self.labels if name not in names]
            if unused:
                raise ValueError(
                    f"labels were given for task(s) {unused}, which this predictor does not run {names}."
                )
            return {name: task_spec(view, name, self.labels.get(name)) for name in names}
        except (TypeError, ValueError) as error:
            raise BatchPredictError(str(error)) from None

    def output_schema(self) -> pa.Schema:
        """The prediction columns every call adds, with their Arrow types: `<task>.<field>` per task field
        (`prediction_schema` of its type), then "embedding" with `embeddings=True`. Reads the model's config
        only (no weights), so a driver can declare it before any worker starts."""
        if self._schema is None:
            specs = self._task_specs()
            fields, self._columns = [], []
            for name, spec in specs.items():
                try:
                    schema = task_type(spec).prediction_schema(spec)
                except NotImplementedError:
                    raise BatchPredictError(
                        f"task {name!r} is a {spec.type} task, whose predictions have no declared Arrow type "
                        "(prediction_schema): BatchPredictor cannot serve it; pass tasks= without it"
                    ) from None
                fields += [
                    pa.field(prediction_column(name, field), arrow_type) for field, arrow_type in schema
                ]
                self._columns += [(name, field) for field, _ in schema]
            if self.embeddings:
                size = self._config().embedding_size
                fields.append(pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), size)))
            self._task_names = list(specs)
            self._schema = pa.schema(fields)
        return self._schema

    # ------------------------------------------------------------------ the model, once per process
    @property
    def model(self):
        if self._model is None:
            self.load()
        return self._model

    def load(self) -> None:
        """Loads the model in this process, with the serving mode and thread count asked for."""
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        model = load_model(self.model_name, self.revision, self.device, self.trust_remote_code)
        if self.mode != "exact":
            try:
                model.optimize_for_inference(self.mode, threads=self.threads)
            except (ValueError, ImportError) as error:
                raise BatchPredictError(f"serving mode {self.mode!r}: {error}") from None
        self._model = model
        self._skippers = (skip_empty_texts(), skip_texts_without_tokens(model))
        self.output_schema()  # checks the tasks and labels against the loaded model

    # ------------------------------------------------------------------ one batch
    def __call__(self, batch):
        """`batch` (a dict of numpy arrays, a pandas DataFrame or a pyarrow Table) -> the same kind, with
        the prediction columns appended (`output_schema()`), row for row."""
        table = batch_to_table(batch)
        predictions = self.predict_table(table)
        if isinstance(batch, pa.Table):
            for field in predictions.schema:
                table = table.append_column(field, predictions.column(field.name))
            return table
        if is_pandas(batch):
            import pandas as pd

            frame = predictions.to_pandas()
            frame.index = batch.index
            return pd.concat([batch, frame], axis=1)
        return {
            **batch,
            **{name: column_to_numpy(predictions.column(name)) for name in predictions.column_names},
        }

    def predict_table(self, table: pa.Table) -> pa.Table:
        """The prediction columns alone (`output_schema()`) for the rows of `table`."""
        model = self.model
        schema = self.output_schema()
        texts = self._texts(table)
        kept: list[tuple[int, Any]] = list(enumerate(texts))
        counts = []
        for skipper in self._skippers:
            before = skipper.count
            kept = list(skipper(kept))
            counts.append((skipper.what, skipper.count - before))
        for what, count in counts:
            if count:
                self.skipped[what] = self.skipped.get(what, 0) + count
                logger.warning(
                    "%d %s in a batch of %d rows: null predictions for them", count, what, len(texts)
                )
        rows: list[dict[str, Any] | None] = [None] * len(texts)
        embeddings = None
        if kept:
            inputs = [text for _, text in kept]
            for (index, _), prediction in zip(
                kept,
                model.predict(
                    inputs, tasks=self._task_names, batch_size=self.batch_size, labels=self.labels or None
                ),
            ):
                rows[index] = prediction
            if self.embeddings:
                firsts = [text[0] if isinstance(text, tuple) else text for text in inputs]
                embeddings = model.encode(firsts, batch_size=self.batch_size).astype(np.float32)
        columns = []
        for field, (task, name) in zip(schema, self._columns):
            values = [None if row is None else row[task][name] for row in rows]
            columns.append(pa.array(values, type=field.type))
        if self.embeddings:
            field = schema.field(EMBEDDING_COLUMN)
            columns.append(embedding_column(field.type, len(rows), [i for i, _ in kept], embeddings))
        predictions = pa.Table.from_arrays(columns, schema=schema)
        del rows, embeddings, kept
        return_freed_heap_to_os()
        return predictions

    def _texts(self, table: pa.Table) -> list[Any]:
        """The batch's texts (pairs as (text, text_pair)); a missing value is an empty text."""
        columns = []
        for column, what in ((self.text_column, "text_column"), (self.text_pair_column, "text_pair_column")):
            if column is None:
                continue
            if column not in table.column_names:
                raise BatchPredictError(
                    f"the batch has no column {column!r} ({what}); its columns are: "
                    + ", ".join(repr(name) for name in table.column_names)
                )
            values = table.column(column).to_pylist()
            wrong = next(
                (value for value in values if not is_missing(value) and not isinstance(value, str)), None
            )
            if wrong is not None:
                raise BatchPredictError(
                    f"column {column!r} holds {type(wrong).__name__} values ({wrong!r:.40}), not texts"
                )
            columns.append(["" if is_missing(value) else value for value in values])
        if len(columns) == 1:
            return columns[0]
        return list(zip(*columns))


_malloc_trim = None  # glibc's malloc_trim, looked up once per process (False where there is none)


def return_freed_heap_to_os() -> None:
    """Hands the pages glibc's malloc holds free back to the OS (`malloc_trim(0)`; nothing without glibc).

    In a Ray Data model worker glibc keeps the memory the forward passes free (tensors of a new shape each
    batch) resident in its arenas instead of reusing or returning it; the same calls in a plain process, on a
    thread too, stay flat, so Ray's own allocations around them play a part. Measured there (/proc/<pid>/smaps,
    mallinfo2): Python objects, Arrow buffers and the memory malloc has in use stayed flat (~176 MiB), while
    the arenas' free memory and the worker's anonymous memory grew ~7 KiB per row predicted, without bound.
    Trimmed after each batch, the worker's anonymous memory went from 402 to 419 MiB over 100,000 rows (its
    freed address space still grows, ~20 KiB a row, but holds no memory); a trim took 6 ms on average, against
    ~0.7 s for a batch of 256 texts."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        with contextlib.suppress(OSError):  # the process's own symbols (libc's among them), without ldconfig
            _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
        if _malloc_trim:
            _malloc_trim.argtypes = [ctypes.c_size_t]
    if _malloc_trim:
        _malloc_trim(0)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_pandas(batch: Any) -> bool:
    return type(batch).__module__.startswith("pandas") and hasattr(batch, "columns")


def batch_to_table(batch: Any) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if is_pandas(batch):
        return pa.Table.from_pandas(batch, preserve_index=False)
    if isinstance(batch, Mapping):
        return pa.table({name: pa.array(list(values)) for name, values in batch.items()})
    raise BatchPredictError(
        f"a batch must be a dict of numpy arrays, a pandas DataFrame or a pyarrow Table, got {type(batch).__name__}"
    )


def column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A prediction column as numpy: numbers as float arrays (NaN for null rows), the rest as object arrays
    of the Python values (dicts, lists, None)."""
    if pa.types.is_floating(column.type):
        return column.to_numpy()
    values = np.empty(len(column), dtype=object)
    values[:] = column.to_pylist()
    return values


def embedding_column(arrow_type: pa.DataType, rows: int, indices: list[int], embeddings) -> pa.Array:
    """A fixed-size float32 list per row: `embeddings[i]` for the row `indices[i]`, null for the others."""
    size = arrow_type.list_size
    values = np.zeros((rows, size), dtype=np.float32)
    valid = np.zeros(rows, dtype=bool)
    if indices:
        values[indices] = embeddings
        valid[indices] = True
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), size, mask=pa.array(~valid))
