"""`multitask-encoder-predict` / `python -m multitask_encoder.batch_predict`: real subprocess runs on txt, csv, tsv
and jsonl files whose csv / jsonl output must equal `model.predict` on the same texts (bit-exactly: same
windows, same threads), in input order, with empty texts skipped and counted; one-line errors naming the
file, line or column; and memory that does not grow with the input (live blocks and peak RSS, 500 vs 4k lines)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.batch_predict import PROG, WINDOW_BATCHES, main

REPO_ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "Arnold Schwarzenegger visited Paris on Monday.",
    "Stocks fell.",
    "The committee will publish its final report on climate policy next spring, in Brussels.",
    "Why is the sky blue?",
    'She said "hello, world" and left.',
    "Zürich's café owners – and 3 others – met Ms. O'Neill.",
    "Rain.",
    "The striker scored twice as United won the cup final in London.",
    "Oil prices rose 3% after the OPEC meeting in Vienna.",
    "A new species of frog was found in the Amazon rainforest.",
    "Is it going to snow tomorrow?",
    "The orchestra played Beethoven's ninth symphony to a full house.",
]


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> MultiTaskEncoderModel:
    return AutoModel.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def modules_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the checkpoint's remote code for the subprocesses (no stale cached module)."""
    return tmp_path_factory.mktemp("hf_modules")


def run_cli(
    args: list[str], modules_cache: Path, executable: str | None = None
) -> subprocess.CompletedProcess:
    """The command (`python -m`, or the console script `executable`) in a fresh process, with the same torch
    thread count as this one (same numbers)."""
    if executable:
        command = [executable, *args]
    else:
        command = [sys.executable, "-m", "multitask_encoder.batch_predict", *args]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_MODULES_CACHE=str(modules_cache),
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def expected_rows(
    model: MultiTaskEncoderModel,
    records: list[tuple[int, str]],
    batch_size: int,
    tasks: list[str] | None = None,
    top_k: int | None = None,
) -> list[dict[str, Any]]:
    """What the command must write for these (line, text) records: `predict` over the same windows."""
    kept = [(line, text) for line, text in records if text.strip()]
    window = batch_size * WINDOW_BATCHES
    rows = []
    for start in range(0, len(kept), window):
        chunk = kept[start : start + window]
        predictions = model.predict(
            [text for _, text in chunk], tasks=tasks, top_k=top_k, batch_size=batch_size
        )
        rows += [
            {"line": line, "text": text, "predictions": prediction}
            for (line, text), prediction in zip(chunk, predictions)
        ]
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------------------------------
# outputs equal predict
# ----------------------------------------------------------------------------------------------------------


def test_txt_to_jsonl_streams_windows_in_order(
    model, tiny_checkpoint: Path, modules_cache: Path, tmp_path: Path
) -> None:
    # 24 texts, 2 empty and 1 blank line, CRLF line ends, no final newline; batch size 2 -> windows of 16.
    texts = SENTENCES * 2
    lines = [*texts[:1], "", *texts[1:2], "   ", *texts[2:20], "", *texts[20:]]
    source = tmp_path / "in.txt"
    source.write_bytes("\r\n".join(lines).encode("utf-8"))
    output = tmp_path / "out.jsonl"

    result = run_cli(
        ["--batch-size", "2", str(tiny_checkpoint), str(source), "-o", str(output)], modules_cache
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = list(enumerate(lines, start=1))
    rows = read_jsonl(output)
    assert rows == expected_rows(model, records, batch_size=2)
    assert [row["line"] for row in rows] == [line for line, text in records if text.strip()]
    assert len(rows) > 2 * WINDOW_BATCHES  # more than one window
    assert f"{PROG}: warning: skipped 3 empty text(s) in {source} (line 2, 4, 23)" in result.stderr
    assert "100%" in result.stderr  # the progress bar went to stderr
    assert not list(tmp_path.glob(".*partial"))


def test_console_script_csv_output_with_tasks_and_top_k(
    model, tiny_checkpoint: Path, modules_cache: Path, tmp_path: Path, console_script
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    output = tmp_path / "out.csv"
    args = [str(tiny_checkpoint), str(source), "-o", str(output), "--tasks", "ner, topic,tags"]
    executable = console_script("multitask-encoder-predict")
    result = run_cli([*args, "--top-k", "1", "--batch-size", "4"], modules_cache, executable)
    assert result.returncode == 0, result.stderr[-3000:]

    with open(output, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == [
        "line",
        "text",
        "ner.entities",
        "topic.label",
        "topic.score",
        "topic.scores",
        "tags.labels",
        "tags.scores",
    ]
    expected = expected_rows(
        model, list(enumerate(SENTENCES, start=1)), batch_size=4, tasks=["ner", "topic", "tags"], top_k=1
    )
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        line, text, entities, label, score, scores, tag_labels, tag_scores = row
        assert (int(line), text) == (want["line"], want["text"])
        got = {
            "ner": {"entities": json.loads(entities)},
            "topic": {"label": label, "score": float(score), "scores": json.loads(scores)},
            "tags": {"labels": json.loads(tag_labels), "scores": json.loads(tag_scores)},
        }
        assert got == want["predictions"]
        assert len(got["topic"]["scores"]) == 1


CSV_TEXT = (
    "id,sentence,source\r\n"
    '1,"Hello, ""world"", said the striker.",web\r\n'
    '2,"A text over\r\ntwo lines.",web\r\n'
    "3,,empty\r\n"
    "4,Stocks fell.,news\r\n"
)
TSV_TEXT = 'id\ttext\n1\t"Quoted" words stay as they are.\n2\t   \n3\tOil prices rose 3% in Vienna.\n'
JSONL_TEXT = (
    '{"text": "Zürich\'s café – open.", "id": 1}\n'
    "\n"
    '{"id": 2, "text": "Why is the sky blue?", "extra": {"nested": [1, 2]}}\n'
    '{"text": ""}\n'
    '{"text": "Rain."}'
)


@pytest.mark.parametrize(
    ("name", "content", "options", "records", "skipped"),
    [
        (
            "in.csv",
            CSV_TEXT,
            ["--text-column", "sentence"],
            [(2, 'Hello, "world", said the striker.'), (3, "A text over\r\ntwo lines."), (6, "Stocks fell.")],
            "skipped 1 empty text(s) in {path} (line 5)",
        ),
        (
            "in.tsv",
            TSV_TEXT,
            [],
            [(2, '"Quoted" words stay as they are.'), (4, "Oil prices rose 3% in Vienna.")],
            "skipped 1 empty text(s) in {path} (line 3)",
        ),
        (
            "in.jsonl",
            JSONL_TEXT,
            [],
            [(1, "Zürich's café – open."), (3, "Why is the sky blue?"), (5, "Rain.")],
            "skipped 2 empty text(s) in {path} (line 2, 4)",
        ),
    ],
    ids=["csv", "tsv", "jsonl"],
)
def test_table_inputs_to_stdout(
    model,
    tiny_checkpoint: Path,
    modules_cache: Path,
    tmp_path: Path,
    name,
    content,
    options,
    records,
    skipped,
) -> None:
    source = tmp_path / name
    source.write_bytes(content.encode("utf-8"))
    result = run_cli(
        [str(tiny_checkpoint), str(source), "-o", "-", "--format", "jsonl", "--no-progress", *options],
        modules_cache,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == expected_rows(model, records, batch_size=64)
    assert f"{PROG}: warning: " + skipped.format(path=source) in result.stderr


# ----------------------------------------------------------------------------------------------------------
# errors: one line on stderr, exit status 1, no output file
# ----------------------------------------------------------------------------------------------------------


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("missing.txt", None, [], "cannot read {path}: No such file or directory"),
        ("in.xlsx", "text\n", [], "cannot tell the format of {path} from its extension '.xlsx'"),
        (
            "in.csv",
            "id,body\n1,hi\n",
            [],
            "{path} has no column 'text' (pass --text-column); its columns are: 'id', 'body'",
        ),
        ("in.csv", "", [], "{path} is empty: expected a header row"),
        ("in.csv", "id,text\n1\n", [], "{path} line 2 has 1 field(s) but the header has 2."),
        ("in.csv", "id,text\n2,a,b\n1,hi\n", [], "{path} line 2 has 3 field(s) but the header has 2."),
        ("in.tsv", "id\ttext\n1\thi\textra\n", [], "{path} line 2 has 3 field(s) but the header has 2."),
        ("in.tsv", "id\tcontent\n1\thi\n", ["--text-column", "text"], "{path} has no column 'text'"),
        (
            "in.jsonl",
            '{"text": "ok"\n',
            [],
            "{path} line 1 is not valid JSON: Expecting ',' delimiter (column 14)",
        ),
        ("in.jsonl", "\n\n[1, 2]\n", [], "{path} line 3 is a JSON list, not an object with a 'text' key"),
        (
            "in.jsonl",
            '{"body": "hi", "id": 1}\n',
            [],
            "{path} line 1 has no key 'text' (pass --text-column); its keys are: 'body', 'id'",
        ),
        ("in.jsonl", '{"text": null}\n', [], "{path} line 1: 'text' is null (NoneType), not a string"),
        (
            "in.txt",
            b"\n  \n\xff\xfe broken\n",
            [],
            "{path} line 3 is not UTF-8 text: invalid start byte at byte 1",
        ),
        ("in.txt", "hi\n", ["--text-column", "body"], "--text-column applies to csv, tsv and jsonl input"),
        ("in.txt", "hi\n", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ("in.txt", "hi\n", ["--top-k", "0"], "--top-k must be >= 1, got 0"),
        ("in.txt", "hi\n", ["--tasks", " , "], "--tasks ' , ' names no task"),
    ],
    ids=[
        "missing-file",
        "unknown-extension",
        "missing-column",
        "empty-csv",
        "short-row",
        "long-row",
        "long-tsv-row",
        "tsv-missing-column",
        "bad-json",
        "json-not-object",
        "missing-key",
        "null-text",
        "not-utf8",
        "text-column-on-txt",
        "batch-size",
        "top-k",
        "no-task",
    ],
)
def test_input_errors(tmp_path: Path, capsys, name, content, options, message) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    output = tmp_path / "out.csv"
    code, err = run_main(["no-model-needed", str(path), "-o", str(output), *options], capsys)
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith(f"{PROG}: error: "), err
    assert message.format(path=path) in err
    assert sorted(os.listdir(tmp_path)) == ([name] if content is not None else [])


def test_output_and_model_errors(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "in.txt"
    source.write_text("hello\n", encoding="utf-8")
    cases = [
        (
            [str(tiny_checkpoint), str(source), "-o", str(tmp_path / "out.xlsx")],
            "use .csv or .jsonl, or pass --format",
        ),
        (
            [str(tiny_checkpoint), str(source), "-o", "-"],
            "writing to stdout (-o -) needs --format csv or jsonl",
        ),
        ([str(tiny_checkpoint), str(source), "-o", str(tmp_path / "no" / "out.csv")], "cannot write"),
        (
            [str(tiny_checkpoint), str(source), "-o", str(source), "--format", "csv"],
            "would overwrite the input",
        ),
        ([str(tmp_path / "nowhere"), str(source), "-o", str(tmp_path / "out.csv")], "no such folder"),
        ([str(tmp_path), str(source), "-o", str(tmp_path / "out.csv")], f"cannot load the model {tmp_path}"),
        (
            [str(tiny_checkpoint), str(tmp_path), "-o", str(tmp_path / "out.csv"), "--input-format", "txt"],
            "Is a directory",
        ),
    ]
    for args, message in cases:
        code, err = run_main(args, capsys)
        assert code == 1 and len(err.splitlines()) == 1 and message in err, (args, err)
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]  # no output, no partial file left behind


def test_a_ragged_csv_row_deep_in_the_file_stops_the_run_as_training_does(
    tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """A row with more fields than the header (an unquoted comma in the text) is refused by the same reader
    rule as training's, after earlier windows were predicted: nothing of the output is left behind."""
    source = tmp_path / "in.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(SENTENCES * 3))
    lines = source.read_text(encoding="utf-8").splitlines()
    lines.insert(31, "99,Hello, world")  # line 32
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, err = run_main([str(tiny_checkpoint), str(source), "-o", str(tmp_path / "out.csv")], capsys)
    errors = [line for line in err.splitlines() if f"{PROG}: error: " in line]
    assert code == 1 and len(errors) == 1, err
    assert errors[0].endswith(f"{PROG}: error: {source} line 32 has 3 field(s) but the header has 2."), err
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]


def test_help_documents_formats_and_empty_text_policy(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for needle in (
        "--text-column",
        "--batch-size",
        "--tasks",
        "--revision",
        "jsonl",
        "tsv",
        "empty texts",
        "skipped",
    ):
        assert needle in help_text, needle


def test_error_after_some_windows_leaves_no_output(
    model, tiny_checkpoint: Path, modules_cache: Path, tmp_path: Path
) -> None:
    good = [json.dumps({"text": text}) for text in SENTENCES * 3]  # 36 records: 2 full windows of 16 and more
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([*good, '{"text": "cut', *good]) + "\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    result = run_cli(
        [str(tiny_checkpoint), str(source), "-o", str(output), "--batch-size", "2"], modules_cache
    )
    assert result.returncode == 1
    assert f"{PROG}: error: {source} line 37 is not valid JSON: Unterminated string" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_unknown_task_names_the_model_tasks(
    model, tiny_checkpoint: Path, modules_cache: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("hello\n", encoding="utf-8")
    result = run_cli(
        [str(tiny_checkpoint), str(source), "-o", str(tmp_path / "out.csv"), "--tasks", "topic,sentiment"],
        modules_cache,
    )
    assert result.returncode == 1
    assert (
        f"{PROG}: error: Unknown task(s) ['sentiment']; this model has ['topic', 'tags', 'score', 'ner']."
        in result.stderr
    )
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]


# ----------------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------------

MEMORY_BENCH = REPO_ROOT / "bench" / "batch_predict_memory.py"


@pytest.fixture(scope="module")
def memory_bench():
    """bench/batch_predict_memory.py: `write_lines`, and `measure`, which runs the command in a fresh process
    and reports its peak RSS and what is alive after the first and after the last window."""
    spec = importlib.util.spec_from_file_location("batch_predict_memory", MEMORY_BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_memory_does_not_grow_with_input(
    memory_bench, tiny_checkpoint: Path, modules_cache: Path, tmp_path: Path
) -> None:
    """500 vs 4,000 lines here; bench/batch_predict_memory.py runs the same measurement on 20k vs 200k."""
    batch_size = 32
    window = batch_size * WINDOW_BATCHES
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_MODULES_CACHE=str(modules_cache)
    )
    reports = {}
    for lines in (500, 4_000):
        source, output = tmp_path / f"in{lines}.txt", tmp_path / f"out{lines}.csv"
        memory_bench.write_lines(source, lines)
        cli_args = ["--batch-size", str(batch_size), "--tasks", "topic"]
        reports[lines] = memory_bench.measure(str(tiny_checkpoint), source, output, cli_args, env)
        assert reports[lines]["exit_code"] == 0
        with open(output, encoding="utf-8") as f:
            assert sum(1 for _ in f) == lines + 1  # the header and one row per line, all written

    large = reports[4_000]
    # From the first window to the last (15 windows), nothing accumulates: keeping every text would add at
    # least one Python block per line, keeping every prediction about twelve.
    assert memory_bench.growth(large, "blocks") < (4_000 - window) / 4, reports
    assert large["max_rss_kb"] < 1.3 * reports[500]["max_rss_kb"], reports
