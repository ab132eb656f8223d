"""One base for the package's refusals: every exception class the package defines (outside the model files,
which travel without it) is a MultiTaskEncoderError, and the commands report any of them as one line."""

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import multitask_encoder
from multitask_encoder import MultiTaskEncoderError


def package_exception_classes() -> list[type]:
    found = []
    for module_info in pkgutil.walk_packages(multitask_encoder.__path__, "multitask_encoder."):
        if module_info.name.startswith("multitask_encoder.model"):
            continue  # remote code: raises ValueError, cannot import the package's base
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if (
                value.__module__ == module.__name__
                and issubclass(value, Exception)
                and not value.__name__.startswith("_")
            ):
                found.append(value)
    return found


def test_every_package_exception_is_a_multitask_encoder_error() -> None:
    classes = package_exception_classes()
    names = {cls.__name__ for cls in classes}
    assert {
        "DataError",
        "ConfigError",
        "LabelError",
        "PushError",
        "BatchPredictError",
        "TeacherError",
    } <= names
    outside = [
        f"{cls.__module__}.{cls.__name__}" for cls in classes if not issubclass(cls, MultiTaskEncoderError)
    ]
    assert not outside, outside


def test_a_command_reports_a_refusal_as_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "texts.txt"
    source.write_text("A text.\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "multitask_encoder.batch_predict",
            str(tiny_checkpoint),
            str(source),
            "-o",
            str(tmp_path / "out.csv"),
            "--labels",
            "topic",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "multitask-encoder-predict: error: --labels 'topic' is not TASK=LABEL,LABEL,..."
    ]


# ---------------------------------------------------------------------------------------------- exit statuses
REPO = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    """setup.cfg's console_scripts: command name -> "module:function"."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def command_line(command: str) -> list[str]:
    """How a user runs `command`: the console script's function exactly as its wrapper calls it
    (`sys.exit(function())`), or a script of the checkout."""
    if command.endswith(".py"):
        return [sys.executable, str(REPO / command)]
    module, function = console_scripts()[command].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


# Per command: arguments that are a usage error (argparse: exit status 2) and arguments the command itself
# refuses (exit status 1), each reported as one line on stderr. {tmp} is the test's scratch folder.
EXIT_STATUS_CASES = {
    "multitask-encoder-train": (["--max_steps", "x"], ["{tmp}/missing.yaml"]),
    "train.py": (["--max_steps", "x"], ["{tmp}/missing.yaml"]),
    "multitask-encoder-predict": ([], ["{tmp}/no-model", "{tmp}/texts.txt", "-o", "{tmp}/out.csv"]),
    "multitask-encoder-train-teachers": ([], ["{tmp}/missing.yaml", "--teachers_dir", "{tmp}/teachers"]),
    "multitask-encoder-interpolate": ([], ["{tmp}/no-model", "--alpha", "2", "-o", "{tmp}/out"]),
    "push_to_hub.py": ([], ["{tmp}/no-model", "alice/x"]),
}


def test_every_command_is_in_the_exit_status_cases() -> None:
    assert set(console_scripts()) <= set(EXIT_STATUS_CASES)


@pytest.mark.parametrize("command", sorted(EXIT_STATUS_CASES))
def test_usage_errors_exit_2_and_refusals_exit_1_in_one_line(command: str, tmp_path: Path) -> None:
    """One convention for every command (multitask_encoder/cli.py, README "Exit statuses")."""
    (tmp_path / "texts.txt").write_text("A text.\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MULTITASK_ENCODER_DEBUG", None)
    # Both invocations at once: each spends its seconds importing torch and transformers on one core.
    runs = []
    for arguments, status in zip(EXIT_STATUS_CASES[command], (2, 1)):
        argv = [argument.format(tmp=tmp_path) for argument in arguments]
        process = subprocess.Popen(
            [*command_line(command), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        runs.append((argv, status, process))
    for argv, status, process in runs:
        _, stderr = process.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if "error" in line.lower()]
        assert process.returncode == status, (command, argv, stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in stderr, (command, argv, stderr[-2000:])
