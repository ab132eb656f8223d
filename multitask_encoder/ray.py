"""Prediction on Ray Data: `predict_dataset` for your own pipeline, and `multitask-encoder-predict --engine ray`.

    files (txt / csv / tsv / jsonl / parquet, or folders of them) ─► read_files: one read task per file, with
        the batch command's readers (the same errors, naming the file and line) ─► rows (path, line | row, text)
    ─► predict_dataset: map_batches(BatchPredictor) on a pool of actors, one model per actor
    ─► write_parquet / write_json / write_csv into a folder (renamed to OUTPUT when complete)

Ray Data streams: blocks flow from the readers through the actors to the writers, and memory per worker is
bounded by the blocks in flight: bench/distributed_predict.py measured a worker's own memory (USS) at 534 MiB
after 20,000 rows and 557 MiB after 100,000. (It used to grow with the rows, 844 and 2,183 MiB: glibc kept the
memory freed by each batch's forward passes; `BatchPredictor` now trims it after each batch.) Actors that die
(a killed process, a lost node) are restarted by Ray and their unfinished batches run again; output files are
named after the write task, so a retried write replaces its own file: no row is lost or written twice.

`pip install "multitask-encoder[ray]"`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from .batch_predict import INPUT_FORMATS, BatchPredictError, input_format_of, open_input, read_records
from .batch_predictor import BatchPredictor
from .errors import MultiTaskEncoderError

RAY_INPUT_FORMATS = {**INPUT_FORMATS, ".parquet": "parquet", ".pq": "parquet"}
RAY_OUTPUT_FORMATS = ("parquet", "jsonl", "csv")
READ_CHUNK_ROWS = 1024  # rows per block a reader yields: small blocks stream and spread over the workers


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise BatchPredictError(
            'Ray is not installed: pip install "multitask-encoder[ray]" (or run without --engine ray)'
        ) from None
    return ray


def predict_dataset(
    ds,
    model: str,
    *,
    workers: int = 1,
    threads: int = 1,
    rows_per_batch: int = 256,
    num_gpus: float = 0,
    predictor_class: type[BatchPredictor] = BatchPredictor,
    **predictor_options: Any,
):
    """`ds` (a `ray.data.Dataset` with a text column) with the prediction columns of `BatchPredictor(model,
    **predictor_options)` appended (its `output_schema()`), lazily, as Ray Data does.

    `workers` actors each load the model once and get `threads` CPUs (and torch threads) and `num_gpus` GPUs;
    `rows_per_batch` rows go to each call; `predictor_class` may be a subclass of `BatchPredictor` (to add
    columns of your own, say). The schema and the tasks are checked here, from the model's
    config, before any worker starts."""
    ray = import_ray()
    if workers < 1:
        raise BatchPredictError(f"workers must be >= 1, got {workers}")
    predictor_options.setdefault("threads", threads)
    predictor = predictor_class(model, **predictor_options)
    predictor.output_schema()  # refuses unknown tasks, pair/text mismatches, a model that is not ours
    return ds.map_batches(
        predictor_class,
        fn_constructor_kwargs={"model": model, **predictor_options},
        batch_format="pyarrow",
        batch_size=rows_per_batch,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
        num_gpus=num_gpus,
    )


# ---------------------------------------------------------------------------------------------- input
def input_files(path: str, given_format: str | None) -> tuple[list[str], str]:
    """The files of INPUT (a file, or a folder's files with one known extension, sorted) and their format."""
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if not name.startswith((".", "_")) and os.path.isfile(os.path.join(path, name))
        )
        if given_format is None:
            files = [file for file in files if os.path.splitext(file)[1].lower() in RAY_INPUT_FORMATS]
            formats = {RAY_INPUT_FORMATS[os.path.splitext(file)[1].lower()] for file in files}
            if len(formats) > 1:
                raise BatchPredictError(
                    f"the folder {path} holds files of several formats ({', '.join(sorted(formats))}); "
                    "pass --input-format to read one of them"
                )
        if not files:
            raise BatchPredictError(f"the folder {path} holds no input file (txt, csv, tsv, jsonl, parquet)")
        return files, given_format or formats.pop()
    if not os.path.isfile(path):
        raise BatchPredictError(f"cannot read {path}: no such file or folder")
    extension = os.path.splitext(path)[1].lower()
    if given_format is None and extension in (".parquet", ".pq"):
        return [path], "parquet"
    return [path], input_format_of(path, given_format)


def file_rows(
    path: str, input_format: str, text_column: str, pair_column: str | None, id_column: str | None
) -> Iterator[pa.Table]:
    """Blocks of one file's rows: path, its line ("line", as multitask-encoder-predict) or, for parquet, its
    1-based row ("row") and `id_column`, then "text" (and "text_pair"). Empty texts are kept (the predictor
    gives them null predictions)."""
    if input_format == "parquet":
        yield from parquet_rows(path, text_column, pair_column, id_column)
        return
    with open_input(path) as f:
        records = read_records(f, path, input_format, text_column, pair_column)
        chunk: list[tuple[int, Any]] = []
        for record in records:
            chunk.append(record)
            if len(chunk) == READ_CHUNK_ROWS:
                yield records_table(path, chunk, pair_column is not None)
                chunk = []
        if chunk:
            yield records_table(path, chunk, pair_column is not None)


def records_table(path: str, records: list[tuple[int, Any]], pairs: bool) -> pa.Table:
    columns: dict[str, Any] = {"path": [path] * len(records), "line": [line for line, _ in records]}
    if pairs:
        columns["text"] = [text for _, (text, _) in records]
        columns["text_pair"] = [pair for _, (_, pair) in records]
    else:
        columns["text"] = [text for _, text in records]
    return pa.table(columns)


def parquet_rows(
    path: str, text_column: str, pair_column: str | None, id_column: str | None
) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise BatchPredictError(f"cannot read {path} as Parquet: {error}") from None
    names = parquet.schema_arrow.names
    wanted = [(text_column, "--text-column", "text"), (pair_column, "--text-pair-column", "text_pair")]
    wanted.append((id_column, "--id-column", id_column))
    for column, flag, _ in wanted:
        if column is not None and column not in names:
            raise BatchPredictError(
                f"{path} has no column {column!r} (pass {flag}); its columns are: "
                + ", ".join(repr(name) for name in names)
            )
    wanted = [(column, name) for column, _, name in wanted if column is not None]
    first_row = 1
    for batch in parquet.iter_batches(batch_size=READ_CHUNK_ROWS, columns=[column for column, _ in wanted]):
        rows = batch.num_rows
        columns = {"path": pa.array([path] * rows), "row": pa.array(range(first_row, first_row + rows))}
        for column, name in wanted:
            values = batch.column(column)
            if name in ("text", "text_pair") and not (
                pa.types.is_string(values.type) or pa.types.is_null(values.type)
            ):
                raise BatchPredictError(f"{path}: column {column!r} is {values.type}, not text")
            columns[name] = values
        first_row += rows
        yield pa.table(columns)


def read_files(
    files: Sequence[str],
    input_format: str,
    text_column: str = "text",
    pair_column: str | None = None,
    id_column: str | None = None,
):
    """A `ray.data.Dataset` of the files' rows (`file_rows`), one read task per file."""
    ray = import_ray()

    def read(batch: Mapping[str, Any]) -> Iterator[pa.Table]:
        for path in batch["file"]:
            yield from file_rows(str(path), input_format, text_column, pair_column, id_column)

    paths = ray.data.from_items([{"file": file} for file in files], override_num_blocks=len(files))
    # No CPU reserved: reading is light next to the encoder, the workers hold the CPUs, and remote args that
    # differ from the workers' keep Ray from fusing the read into them (one file would then feed one worker).
    return paths.map_batches(read, batch_size=1, batch_format="numpy", num_cpus=0)


# ---------------------------------------------------------------------------------------------- output
def output_format_of(path: str, given: str | None) -> str:
    if given:
        return given
    extension = os.path.splitext(path.rstrip(os.sep))[1].lower().lstrip(".")
    extension = {"ndjson": "jsonl", "json": "jsonl", "pq": "parquet"}.get(extension, extension)
    return extension if extension in RAY_OUTPUT_FORMATS else "parquet"


def json_cells(batch: pa.Table, columns: Sequence[str]) -> pa.Table:
    """The nested prediction columns (structs, lists) as JSON text, for csv output."""
    for name in columns:
        index = batch.schema.get_field_index(name)
        field = batch.schema.field(index)
        if pa.types.is_nested(field.type):
            values = [
                None if value is None else json.dumps(value, ensure_ascii=False)
                for value in batch.column(index).to_pylist()
            ]
            batch = batch.set_column(index, pa.field(name, pa.string()), pa.array(values, pa.string()))
    return batch


def write_dataset(ds, output: str, output_format: str, nested_columns: Sequence[str]) -> None:
    """Writes `ds` into a temporary folder next to `output`, renamed to `output` when complete: a failed
    run leaves no half-written OUTPUT."""
    temporary = os.path.join(
        os.path.dirname(os.path.abspath(output)),
        f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}.partial",
    )
    try:
        if output_format == "parquet":
            ds.write_parquet(temporary)
        elif output_format == "jsonl":
            ds.write_json(
                temporary, double_precision=15, force_ascii=False
            )  # pandas' default keeps 10 digits
        else:
            ds.map_batches(json_cells, fn_args=(list(nested_columns),), batch_format="pyarrow").write_csv(
                temporary
            )
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary, ignore_errors=True)


def refusal_in(error: BaseException) -> MultiTaskEncoderError | None:
    """The package's refusal a Ray error wraps (a worker's exception travels as its cause), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MultiTaskEncoderError) and type(error).__module__.startswith(
            "multitask_encoder"
        ):
            return error
        cause = getattr(error, "cause", None)
        error = cause if isinstance(cause, BaseException) else (error.__cause__ or error.__context__)
    return None


def count_null_rows(
    output: str, output_format: str, column: str, id_columns: Sequence[str]
) -> tuple[int, list]:
    """How many rows of the written output have no prediction, and the ids of the first few."""
    import pyarrow.csv
    import pyarrow.dataset as pads

    formats = {
        "parquet": "parquet",
        "jsonl": "json",
        # A null cell is written empty; read back, an empty text cell is null too (an empty label cannot be).
        "csv": pads.CsvFileFormat(convert_options=pyarrow.csv.ConvertOptions(strings_can_be_null=True)),
    }
    table = pads.dataset(output, format=formats[output_format]).to_table(columns=[column, *id_columns])
    nulls = table.filter(table.column(column).is_null())
    return nulls.num_rows, nulls.slice(0, 5).select(list(id_columns)).to_pylist()


def run(args, prog: str, labels: dict[str, list[str]], tasks: list[str] | None) -> None:
    """`multitask-encoder-predict ... --engine ray`: see `multitask_encoder.batch_predict`."""
    import logging
    import sys

    from .cli import debug_requested

    ray = import_ray()
    if not debug_requested(args.debug):  # a failed run is one line from the command; --debug shows Ray's log
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    files, input_format = input_files(args.input, args.input_format)
    if input_format == "txt" and (args.text_column or args.text_pair_column):
        raise BatchPredictError(
            "--text-column and --text-pair-column apply to csv, tsv, jsonl and parquet input"
        )
    if args.id_column and input_format != "parquet":
        raise BatchPredictError(
            "--id-column applies to parquet input (other formats carry their line numbers)"
        )
    output_format = output_format_of(args.output, args.format)
    if os.path.exists(args.output):
        raise BatchPredictError(f"the output {args.output} exists; name a new folder")
    text_column = args.text_column or "text"
    # A missing column or a bad first line fails here, before Ray starts.
    next(iter(file_rows(files[0], input_format, text_column, args.text_pair_column, args.id_column)), None)
    predictor_options = dict(
        tasks=tasks,
        mode=args.mode,
        embeddings=args.embeddings,
        text_column="text",
        text_pair_column="text_pair" if args.text_pair_column else None,
        batch_size=args.batch_size,
        labels=labels or None,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
    )
    schema = BatchPredictor(args.model, **predictor_options).output_schema()
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # output files in input order
        context.enable_progress_bars = not args.no_progress
        workers = args.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // args.threads)
        ds = read_files(files, input_format, text_column, args.text_pair_column, args.id_column)
        ds = predict_dataset(ds, args.model, workers=workers, threads=args.threads, **predictor_options)
        try:
            write_dataset(ds, args.output, output_format, schema.names)
        except Exception as error:
            refusal = refusal_in(error)
            if refusal is not None:
                raise BatchPredictError(str(refusal)) from None
            raise
    finally:
        ray.shutdown()
    ids = ["path", "row"] if input_format == "parquet" else ["path", "line"]
    skipped, first = count_null_rows(args.output, output_format, schema.names[0], ids)
    if skipped:
        where = ", ".join(f"{os.path.basename(row['path'])}:{row[ids[1]]}" for row in first)
        print(
            f"{prog}: warning: {skipped} row(s) had no text to predict (empty, or nothing the tokenizer keeps): "
            f"null predictions ({where}{', ...' if skipped > len(first) else ''})",
            file=sys.stderr,
        )
    print(f"{prog}: wrote {output_format} to the folder {args.output} ({workers} worker(s))", file=sys.stderr)
