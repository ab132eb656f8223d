"""`multitask-encoder-predict` (or `python -m multitask_encoder.batch_predict`): every task's prediction for
each text of a file, streamed in constant memory.

    INPUT (txt / csv / tsv / jsonl) ─► records (line, text) ─► skip empty ─► windows of batch_size * 8 texts
        ─► model.predict (length-sorted batches of batch_size) ─► OUTPUT rows (csv / jsonl), in input order

The input is read one record at a time and each window's rows are written as soon as it is predicted, so
memory does not grow with the file. The output is written to a temporary file next to OUTPUT and renamed
when complete: a failed, interrupted (Ctrl-C) or terminated (SIGTERM) run leaves neither a half-written file
under the requested name nor the temporary file.

No code from the model's folder or repo runs unless --trust-remote-code is given: the installed package's
classes serve a multitask-encoder model, and a model or tokenizer that needs its own code is refused,
naming what needs it. Every refusal is one line on stderr (see `multitask_encoder.cli`).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, TextIO

from .cli import OneLineArgumentParser, add_common_options, debug_requested, first_line, run_command
from .data.readers import DelimitedReader, decoded_lines, read_jsonl, read_text_lines
from .errors import MultiTaskEncoderError
from .task_types import task_type

PROG = "multitask-encoder-predict"
INPUT_FORMATS = {".txt": "txt", ".text": "txt", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
INPUT_FORMATS.update({".jsonl": "jsonl", ".ndjson": "jsonl"})
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Texts are sorted by length (less padding) within a window of this many batches; larger windows pad less
# but delay the first rows and hold more texts.
WINDOW_BATCHES = 8
EPILOG = """\
input formats (from the extension, or --input-format):
  txt    one text per line (.txt, .text)
  csv    comma-separated with a header row; the text is in --text-column (.csv)
  tsv    tab-separated with a header row, no quoting (GLUE style): a field holds no tab or newline (.tsv, .tab)
  jsonl  one JSON object per line; the text is under the key --text-column (.jsonl, .ndjson)
  Files are read as UTF-8 (a byte-order mark is ignored).

output formats (from the extension, or --format; "-o -" writes to stdout and needs --format):
  jsonl  {"line": N, "text": ..., "predictions": {task: prediction}}, the predictions exactly as
         MultiTaskEncoderModel.predict returns them
  csv    columns line, text, then <task>.<field> per task: <task>.label, <task>.score, <task>.scores
         (classification), <task>.labels, <task>.scores (multi-label), <task>.value or <task>.values
         (regression), <task>.entities (NER); lists and dicts are JSON-encoded

  "line" is the input line where the record starts (1-based; in csv/tsv the header is line 1).
  Rows come out in input order.

empty texts: an empty or whitespace-only text (blank line, empty cell, "" in JSON) has nothing to predict;
  it is skipped, and a warning on stderr gives how many were skipped and where. So is a text the
  tokenizer keeps nothing of (zero-width or control characters only, which it drops: the model would
  read no word of it), with a warning of its own. The "line" field of each output row maps it back to
  the input. Anything else that is wrong (missing column or key, bad JSON, a text that is not a string,
  a csv/tsv row with more or fewer fields than the header, as training refuses it) stops the run with an error naming the line, exit status 1.

model code: without --trust-remote-code no Python file of the model's folder or repo runs. The installed
  multitask_encoder package's own classes serve a multitask-encoder model; a model whose model_type, or a
  tokenizer whose classes, only the folder's code provides (auto_map in config.json or
  tokenizer_config.json) is refused, naming it. --trust-remote-code runs that code on this machine.

--engine ray: the same tasks and options on Ray Data workers (pip install "multitask-encoder[ray]"). INPUT is a
  file or a folder of files (txt, csv, tsv, jsonl, parquet), OUTPUT a new folder of parquet files (or jsonl /
  csv from its name or --format). Rows carry path and line (parquet: row, and --id-column); an empty text
  keeps its row with null predictions (counted in a warning); --top-k is not taken (every label's score).

exit status: 0 done; 1 refused or failed, with one line on stderr naming the file, line, column or
  option; 2 a usage error; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Only a complete run
  writes OUTPUT, and no temporary file is left behind. --debug (or MULTITASK_ENCODER_DEBUG=1) adds the
  traceback.
"""


class BatchPredictError(MultiTaskEncoderError):
    """A problem with the command's input, model or output, reported as one line (exit status 1)."""


# ---------------------------------------------------------------------------------------------- input
def input_format_of(path: str, given: str | None) -> str:
    if given:
        return given
    extension = os.path.splitext(path)[1].lower()
    if extension not in INPUT_FORMATS:
        raise BatchPredictError(
            f"cannot tell the format of {path} from its extension {extension or '(none)'!r}; "
            "pass --input-format txt, csv, tsv or jsonl"
        )
    return INPUT_FORMATS[extension]


def count_lines(path: str) -> int:
    """Number of lines in the file (a last line without a newline counts), read in constant memory."""
    lines, last = 0, b"\n"
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as error:
        raise BatchPredictError(f"cannot read {path}: {error.strerror or error}") from None
    return lines + (last != b"\n")


def open_input(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as error:
        raise BatchPredictError(f"cannot read {path}: {error.strerror or error}") from None


def read_delimited(
    lines: Iterable[str], path: str, delimiter: str, columns: list[str]
) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line, the `columns`' values) of a csv or tsv file with a header row (see `DelimitedReader`); a blank
    line gives empty texts."""
    reader = DelimitedReader(lines, path, delimiter)  # reads the header: a missing column fails first
    for column, flag in zip(columns, ("--text-column", "--text-pair-column")):
        if column not in reader.header:
            raise BatchPredictError(
                f"{path} has no column {column!r} (pass {flag}); its columns are: "
                + ", ".join(repr(name) for name in reader.header)
            )
    return _delimited_texts(reader, [reader.header.index(column) for column in columns])


def _delimited_texts(reader: DelimitedReader, positions: list[int]) -> Iterator[tuple[int, tuple[str, ...]]]:
    for line, row in reader.rows():  # a row of another width than the header is refused there
        if not row:  # a blank line
            yield line, ("",) * len(positions)
            continue
        yield line, tuple(row[position] for position in positions)


def read_jsonl_texts(
    lines: Iterable[str], path: str, keys: list[str]
) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line, the texts under `keys`) of a JSON Lines file; a blank line gives empty texts."""
    for line_number, record in read_jsonl(lines, path):
        if record is None:
            yield line_number, ("",) * len(keys)
            continue
        if not isinstance(record, dict):
            raise BatchPredictError(
                f"{path} line {line_number} is a JSON {type(record).__name__}, not an object with a {keys[0]!r} key"
            )
        texts = []
        for key, flag in zip(keys, ("--text-column", "--text-pair-column")):
            if key not in record:
                raise BatchPredictError(
                    f"{path} line {line_number} has no key {key!r} (pass {flag}); its keys are: "
                    + ", ".join(repr(name) for name in record)
                )
            text = record[key]
            if not isinstance(text, str):
                raise BatchPredictError(
                    f"{path} line {line_number}: {key!r} is {json.dumps(text)[:40]} ({type(text).__name__}), "
                    "not a string"
                )
            texts.append(text)
        yield line_number, tuple(texts)


def read_records(
    f: BinaryIO, path: str, input_format: str, text_column: str, pair_column: str | None = None
) -> Iterator[tuple[int, str | tuple[str, str]]]:
    """(line, text) for every record of the input (opened in binary), empty texts included; with
    `pair_column`, (line, (text, text_pair))."""
    lines = decoded_lines(f, path)
    if input_format == "txt":
        return read_text_lines(lines)
    columns = [text_column, *([pair_column] if pair_column else [])]
    if input_format == "jsonl":
        records = read_jsonl_texts(lines, path, columns)
    else:
        records = read_delimited(lines, path, "," if input_format == "csv" else "\t", columns)
    return ((line, texts if pair_column else texts[0]) for line, texts in records)


class TextSkipper:
    """Passes the records whose text `keep` accepts; counts the others (`what` they are, for the warning)
    and remembers where the first were."""

    SHOWN = 5

    def __init__(self, keep: Callable[[str], bool], what: str) -> None:
        self.keep = keep
        self.what = what
        self.count = 0
        self.first_lines: list[int] = []

    def __call__(self, records: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        for line, text in records:
            if all(self.keep(part) for part in (text if isinstance(text, tuple) else (text,))):
                yield line, text
                continue
            self.count += 1
            if len(self.first_lines) < self.SHOWN:
                self.first_lines.append(line)

    def warning(self, path: str) -> str | None:
        if not self.count:
            return None
        where = ", ".join(str(line) for line in self.first_lines)
        more = ", ..." if self.count > len(self.first_lines) else ""
        return (
            f"skipped {self.count} {self.what} in {path} (line {where}{more}); the 'line' field of each "
            "output row gives its input line"
        )


def skip_empty_texts() -> TextSkipper:
    """Skips empty and whitespace-only texts: nothing to predict."""
    return TextSkipper(lambda text: bool(text.strip()), "empty text(s)")


def skip_texts_without_tokens(model) -> TextSkipper:
    """Skips the texts `model`'s tokenizer keeps nothing of (zero-width or control characters only), which
    `predict` refuses: the model's own check (`check_texts`) decides."""

    def keeps_something(text: str) -> bool:
        try:
            model.check_texts(text)
        except ValueError:  # its refusal of a text it keeps nothing of (empty texts were skipped before)
            return False
        return True

    return TextSkipper(
        keeps_something, "text(s) the tokenizer keeps nothing of (zero-width or control characters)"
    )


# ---------------------------------------------------------------------------------------------- output
def output_format_of(path: str, given: str | None) -> str:
    if given:
        return given
    if path == "-":
        raise BatchPredictError("writing to stdout (-o -) needs --format csv or jsonl")
    extension = os.path.splitext(path)[1].lower()
    if extension not in OUTPUT_FORMATS:
        raise BatchPredictError(
            f"cannot tell the output format from the extension {extension or '(none)'!r} of {path}; "
            "use .csv or .jsonl, or pass --format"
        )
    return OUTPUT_FORMATS[extension]


class JsonlRows:
    def __init__(self, f: TextIO) -> None:
        self.f = f

    def write(self, line: int, text: str | tuple[str, str], prediction: dict[str, Any]) -> None:
        texts = {"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else {"text": text}
        record = {"line": line, **texts, "predictions": prediction}
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")


class CsvRows:
    def __init__(self, f: TextIO, columns: list[tuple[str, str]], pairs: bool = False) -> None:
        self.writer = csv.writer(f)
        self.columns = columns  # (task, field)
        texts = ["text", "text_pair"] if pairs else ["text"]
        self.writer.writerow(["line", *texts, *(f"{task}.{name}" for task, name in columns)])

    def write(self, line: int, text: str | tuple[str, str], prediction: dict[str, Any]) -> None:
        row: list[Any] = [line, *(text if isinstance(text, tuple) else (text,))]
        for task, name in self.columns:
            value = prediction[task][name]
            row.append(json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value)
        self.writer.writerow(row)


class AtomicOutput:
    """A text file written under a temporary name next to `path` and renamed to `path` on success
    (stdout for "-")."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.temporary: str | None = None

    def __enter__(self) -> TextIO:
        if self.path == "-":
            return sys.stdout
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            descriptor, self.temporary = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(self.path)}.", suffix=".partial"
            )
        except OSError as error:
            raise BatchPredictError(f"cannot write {self.path}: {error.strerror} ({directory})") from None
        self.f = open(descriptor, "w", encoding="utf-8", newline="")
        return self.f

    def __exit__(self, error_type, error, traceback) -> None:
        """Renames the complete file to `path`; on any exception (KeyboardInterrupt included), or when
        closing or renaming fails, removes the temporary file instead."""
        if self.temporary is None:
            sys.stdout.flush()
            return
        try:
            self.f.close()  # the last rows are written here: a full disk fails now
            if error_type is None:
                os.replace(self.temporary, self.path)
        except OSError as failure:
            if error_type is None:  # the run itself went well: this is the error to report
                raise BatchPredictError(f"cannot write {self.path}: {failure.strerror or failure}") from None
        finally:
            if os.path.exists(self.temporary):  # not renamed
                os.unlink(self.temporary)


# ---------------------------------------------------------------------------------------------- model
def load_model(name_or_path: str, revision: str | None, device: str | None, trust_remote_code: bool):
    """The model and its tokenizer (at the same commit). Without `trust_remote_code` no code of the folder
    runs: the installed package's classes serve it (`import multitask_encoder` registers them with the Auto
    classes), and a model or tokenizer that needs the folder's code is refused, naming it."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    # Hub ids ("org/name") are left to transformers; something that can only be a path must be a folder.
    if os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")):
        if not os.path.isdir(os.path.expanduser(name_or_path)):
            raise BatchPredictError(f"cannot load the model {name_or_path}: no such folder")
        name_or_path = os.path.expanduser(name_or_path)
    # transformers' "Loading weights" bar would come before a refusal (or this command's own progress bar).
    progress_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as error:  # OSError, ValueError, ... from deep inside transformers: keep one line
        # transformers (for the model's classes) and the model (for its tokenizer) refuse folder code that
        # was not trusted with a message that names the option.
        if not trust_remote_code and "trust_remote_code" in str(error):
            raise BatchPredictError(folder_code_refusal(name_or_path, revision, error)) from None
        raise BatchPredictError(f"cannot load the model {name_or_path}: {first_line(error)}") from None
    finally:
        if progress_bars:
            transformers_logging.enable_progress_bar()
    if not hasattr(model, "predict") or not isinstance(getattr(model.config, "tasks", None), dict):
        raise BatchPredictError(
            f"{name_or_path} is not a multitask-encoder model (model_type {model.config.model_type!r})"
        )
    try:  # load it now (at the weights' commit): a missing tokenizer fails before any output is written
        model.tokenizer  # noqa: B018
    except Exception as error:
        raise BatchPredictError(f"cannot load the tokenizer of {name_or_path}: {first_line(error)}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def folder_code_refusal(name_or_path: str, revision: str | None, error: Exception) -> str:
    """Why `name_or_path` does not load without --trust-remote-code: what needs the folder's code, read from
    config.json and tokenizer_config.json (data: reading them runs nothing). `error` is transformers'
    refusal, whose first line is the fallback."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    try:
        config, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
        model_type = config.get("model_type")
        if model_type not in CONFIG_MAPPING:  # transformers' own classes and the ones this package registers
            code = ", ".join(f"{auto} -> {ref}" for auto, ref in (config.get("auto_map") or {}).items())
            needs = (
                f"its config.json has model_type {model_type!r}, which neither transformers nor the installed "
                f"multitask_encoder package provides (auto_map: {code})"
            )
        else:  # the model's classes are the package's, so the refusal was the tokenizer's
            tokenizer_config = get_tokenizer_config(name_or_path, revision=revision)
            auto_map = tokenizer_config.get("auto_map") or {}
            references = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map
            if not isinstance(references, (list, tuple)):
                references = [references]
            code = ", ".join(str(reference) for reference in references if reference)
            needs = (
                f"its tokenizer_config.json names tokenizer_class {tokenizer_config.get('tokenizer_class')!r}, "
                f"whose code is the folder's (auto_map AutoTokenizer: {code})"
            )
    except Exception:  # the files could not be read again: say what transformers said
        needs = first_line(error)
    return (
        f"{name_or_path} needs its own code to load: {needs}. Without --trust-remote-code no code from a model "
        "folder or repo runs; --trust-remote-code runs it on this machine with your permissions: read it "
        "first (for a Hub repo, pin the commit you read with --revision)"
    )


def windows(records: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    while window := list(itertools.islice(records, size)):
        yield window


# ---------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="Predict every task of a multitask-encoder model for each text of a file, streamed in "
        "batches in constant memory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="saved model folder or Hub repo id")
    parser.add_argument("input", metavar="INPUT", help="text file: txt, csv, tsv or jsonl (see below)")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="output file (.csv or .jsonl), or - for stdout",
    )
    parser.add_argument(
        "--format",
        choices=("csv", "jsonl", "parquet"),
        help="output format (default: from OUTPUT; parquet: ray)",
    )
    parser.add_argument(
        "--input-format",
        choices=("txt", "csv", "tsv", "jsonl", "parquet"),
        help="input format (default: from INPUT; parquet: --engine ray)",
    )
    parser.add_argument(
        "--text-column",
        metavar="NAME",
        help='csv/tsv column or jsonl key holding the text (default: "text")',
    )
    parser.add_argument(
        "--text-pair-column",
        metavar="NAME",
        help="csv/tsv column or jsonl key holding each text's pair: predicts the pair tasks on (text, text_pair)",
    )
    parser.add_argument(
        "--tasks",
        metavar="TASK,...",
        help="only these tasks, comma-separated (default: all, in the model's order)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--top-k", type=int, help="keep the best K class scores per classification task")
    parser.add_argument(
        "--labels",
        action="append",
        metavar="TASK=A,B,...",
        help="the labels a label_text_classification task scores for this run (each label's name is its text); "
        "repeat for several tasks",
    )
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the model's folder or repo run its own Python code (model or tokenizer classes) on this "
        "machine; off by default: the installed package's classes serve a multitask-encoder model",
    )
    engine = parser.add_argument_group(
        "distributed prediction (--engine ray; pip install multitask-encoder[ray])"
    )
    engine.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: Ray Data workers, INPUT a file or folder (also parquet), "
        "OUTPUT a folder (parquet, jsonl or csv from its extension or --format; default parquet)",
    )
    engine.add_argument(
        "--address", help='Ray cluster to join ("auto": the running one; default: start one here)'
    )
    engine.add_argument("--workers", type=int, help="model workers (default: the cluster's CPUs / --threads)")
    engine.add_argument("--threads", type=int, help="CPUs and torch threads per worker (default: 1)")
    engine.add_argument(
        "--mode", default="exact", help="serving mode of each worker's model (default: exact)"
    )
    engine.add_argument("--embeddings", action="store_true", help="add each text's sentence embedding")
    engine.add_argument("--id-column", metavar="NAME", help="parquet input: a column carried to the output")
    add_common_options(parser)
    return parser


def parse_tasks(value: str | None) -> list[str] | None:
    """`--tasks A,B` -> ["A", "B"] (None: every task)."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise BatchPredictError(f"--tasks {value!r} names no task")
    return names


def parse_label_sets(values: list[str] | None) -> dict[str, list[str]]:
    """`--labels TASK=A,B,...` values -> {task: [labels]}."""
    labels: dict[str, list[str]] = {}
    for value in values or []:
        task, separator, names = value.partition("=")
        names = [name.strip() for name in names.split(",") if name.strip()]
        if not separator or not task.strip() or not names:
            raise BatchPredictError(f"--labels {value!r} is not TASK=LABEL,LABEL,...")
        if task.strip() in labels:
            raise BatchPredictError(f"--labels names task {task.strip()!r} twice")
        labels[task.strip()] = names
    return labels


def run(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    # Before anything else: a directory has no extension to read the format from, and renaming the finished
    # file onto it would fail only after all the work.
    if args.output != "-" and os.path.isdir(args.output):
        raise BatchPredictError(
            f"the output {args.output} is a directory; name a file, e.g. -o "
            f"{os.path.join(args.output, 'predictions.jsonl')}"
        )
    if args.batch_size < 1:
        raise BatchPredictError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.top_k is not None and args.top_k < 1:
        raise BatchPredictError(f"--top-k must be >= 1, got {args.top_k}")
    if args.engine == "ray":
        run_on_ray(args)
        return
    engine_options = ("--address", "--workers", "--threads", "--mode", "--embeddings", "--id-column")
    given = [
        flag
        for flag in engine_options
        if getattr(args, flag[2:].replace("-", "_")) not in (None, False, "exact")
    ]
    if args.format == "parquet" or args.input_format == "parquet":
        given.append("parquet files")
    if given:
        raise BatchPredictError(f"{', '.join(given)} apply to --engine ray")
    input_format = input_format_of(args.input, args.input_format)
    if input_format == "txt" and args.text_column is not None:
        raise BatchPredictError("--text-column applies to csv, tsv and jsonl input, not to plain text lines")
    if input_format == "txt" and args.text_pair_column is not None:
        raise BatchPredictError(
            "--text-pair-column applies to csv, tsv and jsonl input, not to plain text lines"
        )
    output_format = output_format_of(args.output, args.format)
    if args.output != "-" and os.path.abspath(args.output) == os.path.abspath(args.input):
        raise BatchPredictError(f"the output {args.output} would overwrite the input")
    requested_tasks = parse_tasks(args.tasks)
    labels = parse_label_sets(args.labels)
    total_lines = count_lines(args.input)

    with open_input(args.input) as input_file, AtomicOutput(args.output) as output_file:
        empty = skip_empty_texts()
        records = empty(
            read_records(
                input_file, args.input, input_format, args.text_column or "text", args.text_pair_column
            )
        )
        # Read the first record now: a missing column or a bad first line fails before the slow model load.
        first = list(itertools.islice(records, 1))
        records = itertools.chain(first, records)

        model = load_model(args.model, args.revision, args.device, args.trust_remote_code)
        without_tokens = skip_texts_without_tokens(model)
        records = without_tokens(records)
        kind = "pair" if args.text_pair_column else "text"
        try:  # the tasks asked for (or every task of the input's kind), checked to read that kind
            task_names = model.tasks_for(kind, requested_tasks)
        except ValueError as error:
            raise BatchPredictError(str(error)) from None
        tasks = task_names
        try:  # labels only for label_text tasks this run predicts, before any text is read
            model.label_text_embeddings([name for name in task_names if name in labels], labels)
        except ValueError as error:
            raise BatchPredictError(str(error)) from None
        if output_format == "csv":
            columns = [
                (name, field)
                for name in task_names
                for field in task_type(model.config.tasks[name]).prediction_fields(model.config.tasks[name])
            ]
            rows: CsvRows | JsonlRows = CsvRows(output_file, columns, pairs=kind == "pair")
        else:
            rows = JsonlRows(output_file)

        progress = tqdm(
            total=total_lines, unit="line", desc=os.path.basename(args.input), disable=args.no_progress
        )
        written = 0
        for window in windows(records, args.batch_size * WINDOW_BATCHES):
            texts = [text for _, text in window]
            predictions = model.predict(
                texts, tasks=tasks, top_k=args.top_k, batch_size=args.batch_size, labels=labels or None
            )
            for (line, text), prediction in zip(window, predictions):
                rows.write(line, text, prediction)
            written += len(window)
            progress.update(window[-1][0] - progress.n)
        progress.update(total_lines - progress.n)
        progress.close()

    for skipped in (empty, without_tokens):
        warning = skipped.warning(args.input)
        if warning:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if args.output != "-":
        print(f"{PROG}: wrote {written} row(s) to {args.output}", file=sys.stderr)


def run_on_ray(args: argparse.Namespace) -> None:
    """--engine ray: the same options, read and written by Ray Data (`multitask_encoder.ray.run`)."""
    if args.top_k is not None:
        raise BatchPredictError(
            "--top-k applies to --engine local (the ray engine writes every label's score)"
        )
    if args.output == "-":
        raise BatchPredictError("--engine ray writes a folder: name it with -o")
    if args.workers is not None and args.workers < 1:
        raise BatchPredictError(f"--workers must be >= 1, got {args.workers}")
    args.threads = 1 if args.threads is None else args.threads
    if args.threads < 1:
        raise BatchPredictError(f"--threads must be >= 1, got {args.threads}")
    requested_tasks = parse_tasks(args.tasks)
    from .ray import run

    run(args, PROG, parse_label_sets(args.labels), requested_tasks)


def main(argv: list[str] | None = None) -> int:
    """The command: exit status 0 when OUTPUT is complete; otherwise one line on stderr (see
    `multitask_encoder.cli.run_command`) and no OUTPUT."""
    args = build_parser().parse_args(argv)
    interrupted = "interrupted" if args.output == "-" else f"interrupted; {args.output} was not written"
    return run_command(
        lambda: run(args),
        prefix=f"{PROG}: error:",
        refusals=(MultiTaskEncoderError,),
        debug=debug_requested(args.debug),
        interrupted=interrupted,
    )


if __name__ == "__main__":
    sys.exit(main())
