"""One base for the package's refusals: every exception class the package defines (outside the model files,
which travel without it) is a MultiTaskEncoderError, and the commands report any of them as one line."""

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

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
