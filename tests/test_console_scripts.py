"""Every console script setup.cfg declares introduces itself by the name the user typed (argparse's prog is the
invoked program's name: the script pip installed, not the module behind it). In-process, with sys.argv[0] as the
installed script sets it; tests/test_errors.py runs every command in a real subprocess."""

from __future__ import annotations

import configparser
import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def declared_console_scripts() -> dict[str, str]:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg", encoding="utf-8")
    entries = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in entries)


@pytest.mark.parametrize("name", sorted(declared_console_scripts()))
def test_help_names_the_command_the_user_typed(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    module, function = declared_console_scripts()[name].split(":")
    main = getattr(importlib.import_module(module), function)
    monkeypatch.setattr(sys, "argv", [f"/usr/local/bin/{name}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name} "), out[:300]
