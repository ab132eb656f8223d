"""Streaming readers of text files: one record at a time, each with the line it starts on, in constant memory.

Shared by the training data loader (which writes the records to Arrow files, see `tables.py`) and the
`multitask-encoder-predict` command (which predicts them window by window). Standard library only, so the
command starts fast. Every problem raises `ReadError` naming the file and the line.

    decoded_lines(binary file)  ─► lines (str, line ends kept; each decoded on its own: exact error lines)
        ─► DelimitedReader (csv: Excel quoting; tsv: no quoting)  header, then (line, row fields)
        ─► read_jsonl                                              (line, JSON object), blank lines skipped
        ─► read_text_lines                                         (line, text)
    read_conll(path)                                              (line of the first token, tokens, tags)
"""

from __future__ import annotations

import codecs
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from ..errors import MultiTaskEncoderError

# Quoted csv fields may hold long texts (articles); the csv module's default cap is 128 KiB.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class ReadError(MultiTaskEncoderError, ValueError):
    """A file that cannot be read as its format says, with the file and line in the message."""


class NotTextError(ReadError):
    """A line with bytes that are not valid in the file's encoding (which line, which byte, why)."""

    def __init__(self, path: str, line: int, encoding: str, reason: str, byte: int) -> None:
        self.path, self.line, self.encoding, self.reason, self.byte = path, line, encoding, reason, byte
        super().__init__(f"{path} line {line} is not {encoding_name(encoding)} text: {reason} at byte {byte}")


def decoded_lines(f: BinaryIO, path: str, encoding: str | None = None) -> Iterator[str]:
    """The file's lines as str, line ends kept (csv needs them to see newlines inside quoted fields).

    Each line is decoded on its own, so a byte that is not valid in `encoding` (default utf-8, a byte-order
    mark ignored) is reported with its exact line.
    """
    encoding = encoding or "utf-8"
    for line_number, raw in enumerate(f, start=1):
        if line_number == 1 and codecs.lookup(encoding).name == "utf-8":
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as error:
            raise NotTextError(path, line_number, encoding, error.reason, error.start + 1) from None


def encoding_name(encoding: str) -> str:
    return "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding


def read_text_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line, text) for every line, empty ones included."""
    for line_number, line in enumerate(lines, start=1):
        yield line_number, line.rstrip("\r\n")


class DelimitedReader:
    """A csv (`delimiter=","`, quoting as Excel) or tsv (tab, no quoting: GLUE style) file with a header row.

    The header is read on construction (`header`), so a missing column fails before any row is read.
    `rows()` yields `(line where the record starts, fields)` for every record; a blank line gives `[]`.
    """

    def __init__(self, lines: Iterable[str], path: str, delimiter: str) -> None:
        self.path = path
        if delimiter == "\t":
            self._reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            self._reader = csv.reader(lines, delimiter=delimiter)
        try:
            self.header: list[str] = next(self._reader)
        except StopIteration:
            raise ReadError(f"{path} is empty: expected a header row naming the columns") from None
        except csv.Error as error:
            raise ReadError(f"{path} line 1: {error}") from None

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """`(line where the record starts, fields)` of every record; a blank line gives `[]`. A record with
        more or fewer fields than the header is refused (training and the batch command alike): which
        field belongs to which column would be a guess, and extra fields would be dropped unseen."""
        while True:
            start_line = self._reader.line_num + 1
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise ReadError(f"{self.path} line {self._reader.line_num}: {error}") from None
            if row and len(row) != len(self.header):
                raise ReadError(
                    f"{self.path} line {start_line} has {len(row)} field(s) but the header has "
                    f"{len(self.header)}."
                )
            yield start_line, row


def read_jsonl(lines: Iterable[str], path: str) -> Iterator[tuple[int, Any]]:
    """(line, parsed JSON value) for every non-blank line; blank lines give (line, None)."""
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            yield line_number, None
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))  # an error at the end names the line's last column
        except json.JSONDecodeError as error:
            raise ReadError(
                f"{path} line {line_number} is not valid JSON: {error.msg} (column {error.colno})"
            ) from None
        yield line_number, value


def read_conll(lines: Iterable[str], path: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """`token<TAB or spaces>tag` per line (the tag is the last field), sentences separated by blank lines;
    `-DOCSTART-` lines are skipped. Yields (line of the sentence's first token, tokens, tags)."""
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for line_number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                yield start, tokens, tags
                tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise ReadError(f"{path}, line {line_number}: expected `token<TAB>tag`, got {line!r}.")
        if not tokens:
            start = line_number
        tokens.append(fields[0])
        tags.append(fields[-1].strip())
    if tokens:
        yield start, tokens, tags


__all__ = [
    "DelimitedReader",
    "NotTextError",
    "ReadError",
    "decoded_lines",
    "read_conll",
    "read_jsonl",
    "read_text_lines",
]
