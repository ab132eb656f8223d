"""Inputs that would give a meaningless answer without a word are refused, naming the container, the index,
the line or the option: `encode` and `predict`, the `multitask-text-classification` pipeline and the
`multitask-encoder-predict` command (whose usage errors, refusals and interruptions are one line, a non-zero
exit and no file left behind). Real tokenizer and weights (the tiny checkpoint), real files and processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoModel, pipeline

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.batch_predict import PROG, AtomicOutput, BatchPredictError, main
from multitask_encoder.cli import EXIT_INTERRUPTED, EXIT_TERMINATED
from multitask_encoder.model.pipeline_multitask_encoder import PIPELINE_TASK

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Arnold Schwarzenegger visited Paris on Monday.", "Stocks fell.", "Why is the sky blue?"]
NOT_SEQUENCES_OF_TEXTS = "texts must be a string or a list of strings, got "


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> MultiTaskEncoderModel:
    return AutoModel.from_pretrained(tiny_checkpoint)


@pytest.fixture
def encoder_calls(model: MultiTaskEncoderModel):
    """How many times the encoder ran (a refusal must come before any work)."""
    calls = []
    handle = model.encoder.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


# ----------------------------------------------------------------------------------------------------------
# encode / predict
# ----------------------------------------------------------------------------------------------------------

REFUSED_INPUTS = {
    "dict": ({"first": TEXTS[0]}, TypeError, NOT_SEQUENCES_OF_TEXTS + "dict (pass list(texts.values()) or"),
    "set": (set(TEXTS), TypeError, NOT_SEQUENCES_OF_TEXTS + "set (a set has no order, so the results could"),
    "frozenset": (frozenset(TEXTS), TypeError, NOT_SEQUENCES_OF_TEXTS + "frozenset (a set has no order"),
    "dict keys": ({t: 1 for t in TEXTS}.keys(), TypeError, NOT_SEQUENCES_OF_TEXTS + "dict_keys (a set has"),
    "bytes": (b"Stocks fell.", TypeError, NOT_SEQUENCES_OF_TEXTS + "bytes (decode it to str first)."),
    "bytearray": (bytearray(b"Stocks fell."), TypeError, NOT_SEQUENCES_OF_TEXTS + "bytearray (decode it"),
    "0-d array": (
        np.array("Stocks fell."),
        TypeError,
        NOT_SEQUENCES_OF_TEXTS + "ndarray (it has 0 dimension",
    ),
    "2-d array": (
        np.array([TEXTS[:2]]),
        TypeError,
        NOT_SEQUENCES_OF_TEXTS + "ndarray (it has 2 dimension(s)",
    ),
    "number": (7, TypeError, NOT_SEQUENCES_OF_TEXTS + "int (not a collection of texts)."),
    "None": (None, TypeError, NOT_SEQUENCES_OF_TEXTS + "NoneType (not a collection of texts)."),
    "array of numbers": (np.array([1.5, 2.5]), TypeError, "Text #0 is float64, not str."),
    "bytes in a list": ([TEXTS[0], b"Stocks fell."], TypeError, "Text #1 is bytes, not str."),
    "nested list": ([TEXTS[0], [TEXTS[1]]], TypeError, "Text #1 is list, not str."),
    "zero-width": (
        [TEXTS[0], "\u200b\u200b"],
        ValueError,
        "Text #1 ('\\u200b\\u200b') has nothing the tokenizer keeps: it tokenises to special tokens only "
        "([CLS] [SEP]; zero-width and control characters are dropped), so there is nothing to encode.",
    ),
    "control characters": (["\x00\x07\x7f", TEXTS[0]], ValueError, "Text #0 ('\\x00\\x07\\x7f') has nothing"),
    "byte-order mark and joiner": (
        [TEXTS[1], "\ufeff \u200d"],
        ValueError,
        "Text #1 ('\\ufeff \\u200d') has",
    ),
    "special tokens only": (
        ["[SEP] [CLS]"],
        ValueError,
        "Text #0 ('[SEP] [CLS]') has nothing the tokenizer keeps: it tokenises to special tokens only "
        "([CLS] [SEP] [CLS] [SEP];",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_INPUTS))
@pytest.mark.parametrize("method", ["encode", "predict"])
def test_meaningless_inputs_are_refused_before_any_work(model, encoder_calls, method: str, case: str) -> None:
    texts, error, message = REFUSED_INPUTS[case]
    with pytest.raises(error) as refused:
        getattr(model, method)(texts)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)
    assert encoder_calls == []


@pytest.mark.parametrize(
    "make_texts",
    [tuple, np.array, lambda texts: (text for text in texts)],
    ids=["tuple", "1-d array of str", "generator"],
)
def test_ordered_collections_of_texts_are_accepted(model, make_texts: Callable[[list[str]], Any]) -> None:
    np.testing.assert_array_equal(model.encode(make_texts(TEXTS)), model.encode(TEXTS))
    assert model.predict(make_texts(TEXTS)) == model.predict(TEXTS)


def test_texts_with_something_the_tokenizer_keeps_are_accepted(model) -> None:
    # Unknown characters become [UNK], which the model reads; zero-width characters inside words are dropped
    # from a text that still has words; punctuation is kept.
    texts = ["🦄🦄", "Stocks\u200b fell.", "?!", "[SEP] Stocks fell."]
    tokens = [model.tokenizer.tokenize(text) for text in texts]
    assert tokens == [
        ["[UNK]"],  # one word the vocabulary does not know
        ["stocks", "fell", "."],
        ["?", "!"],
        ["[SEP]", "stocks", "fell", "."],
    ]
    predictions = model.predict(texts)
    assert len(predictions) == 4 and all(set(p) == set(model.config.tasks) for p in predictions)
    np.testing.assert_allclose(model.encode(texts[1]), model.encode("Stocks fell."), atol=1e-6)


def test_the_index_is_the_one_in_the_whole_list(tiny_checkpoint: Path) -> None:
    model = AutoModel.from_pretrained(tiny_checkpoint)
    model.optimize_for_inference("exact", window=4)  # tokenised 4 texts at a time
    with pytest.raises(ValueError, match=r"^Text #9 \('\\u200b'\) has nothing the tokenizer keeps"):
        model.predict([*(TEXTS * 3), "\u200b", *TEXTS])


@pytest.mark.parametrize(
    ("method", "options", "error", "message"),
    [
        ("encode", {"batch_size": "8"}, ValueError, "batch_size must be an integer >= 1, got '8'."),
        ("encode", {"batch_size": 8.0}, ValueError, "batch_size must be an integer >= 1, got 8.0."),
        ("encode", {"batch_size": None}, ValueError, "batch_size must be an integer >= 1, got None."),
        ("predict", {"batch_size": True}, ValueError, "batch_size must be an integer >= 1, got True."),
        ("predict", {"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0."),
        ("predict", {"top_k": "1"}, ValueError, "top_k must be an integer >= 1, got '1'."),
        ("predict", {"top_k": 1.5}, ValueError, "top_k must be an integer >= 1, got 1.5."),
        (
            "predict",
            {"tasks": []},
            ValueError,
            "tasks is empty: name at least one of ['topic', 'tags', 'score',",
        ),
        (
            "predict",
            {"tasks": ["topic", "sentiment"]},
            ValueError,
            "Unknown task(s) ['sentiment']; this model",
        ),
        (
            "predict",
            {"tasks": {"topic"}},
            TypeError,
            "tasks must be a task name or a list of task names, got",
        ),
    ],
)
def test_options_of_the_wrong_type_or_content_are_refused_before_any_work(
    model, encoder_calls, method: str, options: dict, error: type, message: str
) -> None:
    with pytest.raises(error) as refused:
        getattr(model, method)(TEXTS, **options)
    assert str(refused.value).startswith(message), str(refused.value)
    assert encoder_calls == []


# ----------------------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------------------


def test_pipeline_refuses_an_empty_task_selection_and_meaningless_texts(model, encoder_calls) -> None:
    classify = pipeline(PIPELINE_TASK, model=model)
    with pytest.raises(ValueError, match=r"^tasks is empty: name at least one of \['topic', 'tags', 'score'"):
        classify(TEXTS[0], tasks=[])
    with pytest.raises(ValueError, match=r"^tasks is empty"):
        pipeline(PIPELINE_TASK, model=model, tasks=[])
    with pytest.raises(ValueError, match=r"^Text #0 \('\\u200b\\u200b'\) has nothing the tokenizer keeps"):
        classify("\u200b\u200b")
    with pytest.raises(ValueError, match=r"^Text #0 \('\\x00'\) has nothing the tokenizer keeps"):
        classify([TEXTS[0], "\x00"], batch_size=2)  # (the pipeline checks its texts one at a time)
    with pytest.raises(ValueError, match=r"^top_k must be an integer >= 1, got '2'"):
        classify(TEXTS[0], top_k="2")
    for not_text, name in (({TEXTS[0]}, "set"), ({"text": TEXTS[0]}, "dict"), (b"Stocks fell.", "bytes")):
        with pytest.raises(TypeError, match=rf"^Text #0 is {name}, not str\."):
            classify(not_text)
    assert encoder_calls == []
    assert classify(TEXTS[1]) == model.predict(TEXTS[1])  # and it still works


# ----------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
        (["--batch-size", "2.5"], "argument --batch-size: invalid int value: '2.5'"),
        (["--top-k", "1.5"], "argument --top-k: invalid int value: '1.5'"),
        (["--top-k", ""], "argument --top-k: invalid int value: ''"),
        (
            ["--format", "xlsx"],
            "argument --format: invalid choice: 'xlsx' (choose from 'csv', 'jsonl', 'parquet')",
        ),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_usage_errors_are_one_line_with_exit_status_2(
    tmp_path: Path, capsys, options: list[str], message: str
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("hello\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        main(["no-model-needed", str(source), "-o", str(tmp_path / "out.csv"), *options])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{PROG}: error: {message} (see {PROG} --help)"], err
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]


def test_output_directory_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "results.csv").mkdir()  # a directory, even with a file's extension
    for output in (tmp_path, tmp_path / "results.csv"):
        # The model and the input do not exist: the refusal comes before either is looked at.
        code, err = run_main(["no-model-needed", str(tmp_path / "missing.txt"), "-o", str(output)], capsys)
        assert code == 1
        assert err.splitlines() == [
            f"{PROG}: error: the output {output} is a directory; name a file, e.g. -o "
            f"{os.path.join(output, 'predictions.jsonl')}"
        ]
    assert sorted(os.listdir(tmp_path)) == ["results.csv"] and not os.listdir(tmp_path / "results.csv")


def test_texts_the_tokenizer_keeps_nothing_of_are_skipped_naming_the_line(
    model, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    source, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    lines = [TEXTS[0], "\u200b\u200b", "", TEXTS[1], "\x00\x01", TEXTS[2]]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, err = run_main([str(tiny_checkpoint), str(source), "-o", str(output), "--no-progress"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [(row["line"], row["text"]) for row in rows] == [(1, TEXTS[0]), (4, TEXTS[1]), (6, TEXTS[2])]
    assert [row["predictions"] for row in rows] == model.predict(TEXTS)
    assert err.splitlines() == [
        f"{PROG}: warning: skipped 1 empty text(s) in {source} (line 3); the 'line' field of each output row "
        "gives its input line",
        f"{PROG}: warning: skipped 2 text(s) the tokenizer keeps nothing of (zero-width or control characters) "
        f"in {source} (line 2, 5); the 'line' field of each output row gives its input line",
        f"{PROG}: wrote 3 row(s) to {output}",
    ]


def test_debug_shows_the_traceback_of_a_refusal(tmp_path: Path, capsys, monkeypatch) -> None:
    source = tmp_path / "in.txt"
    source.write_text("hello\n", encoding="utf-8")
    not_a_model = tmp_path / "empty_folder"
    not_a_model.mkdir()
    args = [str(not_a_model), str(source), "-o", str(tmp_path / "out.csv")]
    refusal = f"{PROG}: error: cannot load the model {not_a_model}: "

    code, err = run_main(args, capsys)
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith(refusal), err

    for debug_args, env in (([*args, "--debug"], None), (args, "1")):
        if env is not None:
            monkeypatch.setenv("MULTITASK_ENCODER_DEBUG", env)
        code, err = run_main(debug_args, capsys)
        lines = err.splitlines()
        assert code == 1 and lines[-1].startswith(refusal), err
        # The error the one line was made from, where transformers raised it, then the refusal.
        assert lines[0] == "Traceback (most recent call last):", err
        assert "During handling of the above exception, another exception occurred:" in err
        assert "multitask_encoder.batch_predict.BatchPredictError: cannot load the model" in err
    monkeypatch.setenv("MULTITASK_ENCODER_DEBUG", "0")  # "0" is off
    code, err = run_main(args, capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["empty_folder", "in.txt"]


def test_a_failed_rename_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    refused = pytest.raises(
        BatchPredictError, match=rf"^cannot write {re.escape(str(target))}: Is a directory$"
    )
    with refused, AtomicOutput(str(target)) as f:
        f.write("line,text\n")
        target.mkdir()  # taken meanwhile: the finished file cannot be renamed onto it
    assert sorted(os.listdir(tmp_path)) == ["out.csv"] and not os.listdir(target)


@pytest.mark.parametrize(
    ("signal_number", "status", "how"),
    [(signal.SIGINT, EXIT_INTERRUPTED, "Ctrl-C"), (signal.SIGTERM, EXIT_TERMINATED, "SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupted_run_leaves_no_partial_file(
    tiny_checkpoint: Path, tmp_path: Path, signal_number: int, status: int, how: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source, output = work / "in.txt", work / "out.jsonl"
    source.write_text("\n".join(TEXTS * 2000) + "\n", encoding="utf-8")  # minutes of work at batch size 2
    modules = str(tmp_path / "modules")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_MODULES_CACHE=modules)
    command = [sys.executable, "-m", "multitask_encoder.batch_predict", str(tiny_checkpoint), str(source)]
    process = subprocess.Popen(
        [*command, "-o", str(output), "--batch-size", "2", "--no-progress"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Python turns SIGINT into KeyboardInterrupt only when it was not ignored (as in a background job).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        # Rows are being written: the model is loaded and predicting.
        while not [p for p in work.glob(".out.jsonl.*.partial") if p.stat().st_size > 0]:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, stderr
    assert stderr.splitlines() == [f"{PROG}: error: interrupted; {output} was not written ({how})"], stderr
    assert sorted(os.listdir(work)) == ["in.txt"]  # no output, no partial file
