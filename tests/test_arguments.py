"""The options of a run: MultiTaskTrainingArguments (validated, built in Python like any TrainingArguments,
never edited by the trainer), train.py --help (every option, and the tasks format from the registry), and
docs/config.md kept in sync with the task-type registry and the argument classes."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

from multitask_encoder.arguments import (
    MULTITASK_OPTIONS,
    JobArguments,
    ModelArguments,
    MultiTaskTrainingArguments,
)
from multitask_encoder.data.spec import COMMON_DATA_KEYS
from multitask_encoder.model.tasks_multitask_encoder import SPEC_KEYS
from multitask_encoder.task_types.types import TASK_TYPES

REPO = Path(__file__).resolve().parents[1]
CONFIG_DOC = REPO / "docs" / "config.md"


def doc_sections() -> dict[str, str]:
    """docs/config.md split at its headings: heading text -> the text under it (up to the next heading)."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    parts = re.split(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2])}


def documented(body: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", body))


def test_every_task_key_of_the_registry_is_documented_under_its_type() -> None:
    sections = doc_sections()
    common = documented(sections["Keys of every task"])
    assert set(SPEC_KEYS) | set(COMMON_DATA_KEYS) <= common, set(SPEC_KEYS) | set(COMMON_DATA_KEYS) - common
    for name, task_type in TASK_TYPES.items():
        section = sections.get(f"type: {name}")
        assert section is not None, f"docs/config.md has no section for the task type {name}"
        keys = set(task_type.options) | set(task_type.data_options)
        assert keys <= documented(section), (name, keys - documented(section))
    # ... and nothing documented as a type's key that the type does not take.
    for name, task_type in TASK_TYPES.items():
        listed = set(re.findall(r"^- `([a-z_]+)`", sections[f"type: {name}"], flags=re.MULTILINE))
        assert listed <= set(task_type.options) | set(task_type.data_options), name


def test_every_option_is_documented() -> None:
    sections = doc_sections()
    assert {f.name for f in dataclasses.fields(ModelArguments)} <= documented(sections["Model options"])
    multitask = documented(sections["Multi-task options (`MultiTaskTrainingArguments`)"])
    assert set(MULTITASK_OPTIONS) <= multitask, set(MULTITASK_OPTIONS) - multitask
    assert {f.name for f in dataclasses.fields(JobArguments)} <= documented(
        sections["Job options (`train.py` only)"]
    )


def test_help_lists_the_multitask_options_and_ends_with_the_tasks_format() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    help_text = result.stdout
    for option in (*MULTITASK_OPTIONS, "backbone", "example_sentences", "learning_rate"):
        assert f"--{option}" in help_text, option
    tail = help_text[help_text.index("tasks: (in the config file; see docs/config.md)") :]
    for name, task_type in TASK_TYPES.items():
        assert f"type: {name}" in tail
        for key in (*task_type.options, *task_type.data_options):
            assert key in tail, (name, key)


def test_multitask_arguments_are_validated_and_default_for_multi_task(tmp_path: Path) -> None:
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.remove_unused_columns is False and args.ddp_find_unused_parameters is False
    assert isinstance(args, TrainingArguments)
    for kwargs, message in (
        ({"composition": "round_robin"}, r"composition must be one of \['mixed', 'per_task'\]"),
        ({"sampling": "random"}, "sampling must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"layerwise_lr_decay": 1.5}, r"layerwise_lr_decay must be in \(0, 1\]"),
        ({"max_examples_per_group": 0}, "max_examples_per_group must be >= 1"),
        ({"precompute_embeddings": True}, "precompute_embeddings needs freeze_encoder"),
        ({"prediction_loss_only": True}, "prediction_loss_only and batch_eval_metrics are not supported"),
    ):
        with pytest.raises(ValueError, match=message):
            MultiTaskTrainingArguments(output_dir=str(tmp_path), report_to="none", **kwargs)


def test_trainer_never_edits_the_callers_arguments(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    from multitask_encoder.trainer import MultiTaskTrainer

    model = AutoModel.from_pretrained(tiny_checkpoint)
    plain = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    before = plain.to_dict()
    trainer = MultiTaskTrainer(
        model=model, args=plain, processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint)
    )
    assert plain.to_dict() == before and plain.remove_unused_columns is True
    assert isinstance(trainer.args, MultiTaskTrainingArguments) and trainer.args is not plain
    assert trainer.args.remove_unused_columns is False and trainer.args.learning_rate == plain.learning_rate

    ours = MultiTaskTrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, freeze_encoder=True
    )
    before = ours.to_dict()
    trainer = MultiTaskTrainer(
        model=model, args=ours, processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint)
    )
    assert ours.to_dict() == before
    assert not any(p.requires_grad for p in trainer.model.encoder.parameters())  # the option took effect
