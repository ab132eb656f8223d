"""What the package's command-line tools (`multitask-encoder-predict`, `multitask-encoder-train` / train.py,
`multitask-encoder-train-teachers`, `multitask-encoder-interpolate`, push_to_hub.py) share: every refusal is
one line on stderr and a non-zero exit status, without a traceback unless one is asked for (README, "Exit
statuses"; tests/test_errors.py runs every command):

    usage error (argparse)          -> "PROG: error: MESSAGE (see PROG --help)", exit status 2
    refusal (the command's errors)  -> "PREFIX MESSAGE", exit status 1
    any other exception             -> "PREFIX TypeName: first line (... --debug shows the traceback)", 1
    Ctrl-C (SIGINT) / SIGTERM       -> "PREFIX interrupted ..." / "PREFIX terminated ...", exit 130 / 143

`--debug`, or the environment variable MULTITASK_ENCODER_DEBUG=1, prints the traceback before the line,
including the error a one-line message was made from. SIGTERM is turned into an exception like Ctrl-C, so
the command's clean-up (`with` blocks: the temporary output file of the predict command) runs on both.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

import huggingface_hub.utils
import transformers.utils.logging

DEBUG_ENV = "MULTITASK_ENCODER_DEBUG"
EXIT_REFUSED = 1
EXIT_USAGE = 2  # argparse's
EXIT_INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a command stopped by Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM


class OneLineArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors (a missing argument, `--batch-size x`) are one line, exit
    status 2, instead of the usage block followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line_usage_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give an existing parser (train.py's HfArgumentParser) the one-line usage errors of
    `OneLineArgumentParser`; returns it."""
    parser.error = lambda message: OneLineArgumentParser.error(parser, message)  # type: ignore[method-assign]
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """`--debug`, which every command takes."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"on failure, print the traceback too (also: {DEBUG_ENV}=1 in the environment)",
    )


def configure_logging() -> None:
    """The commands' log lines (`INFO name: message` on stderr). Only a command's `main` calls this: the library
    never configures logging for the program that imports it."""
    # In a distributed run every process reads the data and would repeat each warning: the others say only
    # errors (RANK is set by torchrun / accelerate launch), unless MULTITASK_ENCODER_DEBUG asks for everything.
    every_line = os.environ.get("RANK", "0") == "0" or debug_requested(False)
    logging.basicConfig(
        format="%(levelname)s %(name)s: %(message)s", level=logging.INFO if every_line else logging.ERROR
    )
    # transformers draws a bar for every model load and save ("Loading weights", "Writing model shards"):
    # noise in a command's log. Downloads from the Hub keep theirs.
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()


def debug_requested(flag: bool) -> bool:
    """`--debug` was given, or MULTITASK_ENCODER_DEBUG is set to anything but "" or "0"."""
    return flag or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class Terminated(BaseException):
    """SIGTERM, raised where the program is (like KeyboardInterrupt for SIGINT), so clean-up runs."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` (only the main thread can set signal handlers; elsewhere,
    as in a test calling `main` from a thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(
    command: Callable[[], None],
    *,
    prefix: str,
    refusals: tuple[type[Exception], ...],
    debug: bool,
    interrupted: str = "interrupted",
    debug_flag: str | None = "--debug",
) -> int:
    """Run `command()` and return the exit status, reporting a failure as one line on stderr.

    `prefix` starts every line ("multitask-encoder-predict: error:"); an exception of `refusals` is the
    command's own one-line message; `interrupted` says what an interruption leaves behind; `debug_flag` is the
    command's option that shows tracebacks (None: only the environment variable)."""
    try:
        with _sigterm_raises():
            command()
    except refusals as error:
        return report(f"{prefix} {error}", error, debug, EXIT_REFUSED)
    except KeyboardInterrupt as error:
        return report(f"{prefix} {interrupted} (Ctrl-C)", error, debug, EXIT_INTERRUPTED)
    except Terminated as error:
        return report(f"{prefix} {interrupted} (SIGTERM)", error, debug, EXIT_TERMINATED)
    except Exception as error:  # a failure nobody foresaw: still one line, the traceback on request
        shows = f"{debug_flag} or {DEBUG_ENV}=1" if debug_flag else f"{DEBUG_ENV}=1"
        hint = "" if debug else f"; {shows} shows the traceback"
        return report(
            f"{prefix} {type(error).__name__}: {first_line(error)}{hint}", error, debug, EXIT_REFUSED
        )
    return 0


def report(message: str, error: BaseException, debug: bool, status: int) -> int:
    """Print `message` as one line on stderr (after the traceback of `error` when debugging); returns `status`."""
    if debug:
        # A one-line message raised `from None` hides the error it was made from: show that one too.
        error.__suppress_context__ = False
        traceback.print_exception(error, file=sys.stderr)
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(one_line, file=sys.stderr, flush=True)
    return status
