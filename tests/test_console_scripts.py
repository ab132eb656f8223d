"""Every console script setup.cfg declares is installed and introduces itself by its own name."""

from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def declared_console_scripts() -> list[str]:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg", encoding="utf-8")
    entries = setup["options.entry_points"]["console_scripts"].splitlines()
    return [line.split("=")[0].strip() for line in entries if line.strip()]


@pytest.mark.parametrize("name", declared_console_scripts())
def test_help_names_the_command_the_user_typed(name: str, console_script) -> None:
    result = subprocess.run(
        [console_script(name), "--help"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {name} "), result.stdout[:300]
