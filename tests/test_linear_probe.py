"""Linear probe first, then fine-tune (LP-FT, `linear_probe_epochs`): the first phase trains the heads alone and
leaves the encoder bit for bit as it was, early-stops on validation, and the second phase then fine-tunes the
encoder; the card and results say so. Real tokenizer and weights (the 2-layer MiniLM), real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import (
    Recorder,
    backbone_weights,
    encoder_of,
    heads_of,
    job_flags,
    toy_data,  # noqa: F401  (a fixture)
    toy_tasks,
    write_config,
)

from multitask_encoder.train import prepare_run, train_and_save


def test_the_probe_trains_the_heads_on_an_untouched_encoder_then_fine_tuning_moves_it(
    toy_data: Path,  # noqa: F811
    tiny_backbone: str,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data), linear_probe_learning_rate=1e-2)
    output_dir = tmp_path / "out"
    flags = ["--linear_probe_epochs", "6", "--linear_probe_patience", "1", "--max_steps", "6"]
    flags += ["--eval_strategy", "no", "--save_strategy", "no"]
    recorder = Recorder()
    run = prepare_run([config, *job_flags(tiny_backbone, output_dir, toy_data / "cache"), *flags], [recorder])
    fresh_heads = {k: v.detach().clone() for k, v in heads_of(run.model.state_dict()).items()}
    results = train_and_save(run)

    # Phase 2 starts from the probed heads and the untouched encoder.
    encoder_at_phase_two = encoder_of(recorder.initial)
    backbone = backbone_weights(tiny_backbone)
    assert encoder_at_phase_two.keys() == backbone.keys()
    assert all(torch.equal(encoder_at_phase_two[k], backbone[k]) for k in backbone)
    probed = heads_of(recorder.initial)
    assert all(not torch.equal(probed[k], fresh_heads[k]) for k in fresh_heads)
    # ... and the encoder trains in phase 2 (the probe did not leave it frozen).
    assert any("encoder." in name for group in recorder.groups for name in group["names"])
    final = encoder_of(load_file(output_dir / "model.safetensors"))
    assert not all(torch.equal(final[k], backbone[k]) for k in backbone)

    probe = results["linear_probe"]
    assert probe["steps"] > 0 and probe["best_combined_score"] is not None
    # Early-stopped on the validation score: with patience 1 it ran fewer than the 6 epochs or kept improving.
    assert probe["epochs"] <= 6
    assert not (output_dir / "linear_probe").exists()
    card = (output_dir / "README.md").read_text(encoding="utf-8")
    assert "| Linear probe first |" in card and "LP-FT" in card


def test_linear_probe_options_are_checked(toy_data: Path, tiny_backbone: str, tmp_path: Path) -> None:  # noqa: F811
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data, ner=False))
    flags = job_flags(tiny_backbone, tmp_path / "out", toy_data / "cache")
    with pytest.raises(ValueError, match=r"with freeze_encoder nothing is fine-tuned after it"):
        prepare_run([config, *flags, "--linear_probe_epochs", "2", "--freeze_encoder"])
    with pytest.raises(ValueError, match=r"linear_probe_epochs must be >= 0"):
        prepare_run([config, *flags, "--linear_probe_epochs", "-1"])
