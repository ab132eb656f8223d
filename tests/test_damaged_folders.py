"""A damaged or incomplete model folder fails loudly at load, naming what is wrong, instead of loading and
predicting garbage or failing deep inside transformers (the label-edit case is in test_save_load.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import multitask_encoder  # noqa: F401  (the Auto classes serve the folder without remote code)


@pytest.fixture
def folder(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


def test_missing_tokenizer_file_is_refused_not_a_tiny_vocabulary(folder: Path) -> None:
    # Without tokenizer.json, transformers builds a 5-token BertTokenizer from tokenizer_config.json alone and
    # every prediction is garbage.
    (folder / "tokenizer.json").unlink()
    with pytest.raises(
        ValueError,
        match=r"has 5 tokens, but the encoder's embedding matrix has 30522 rows.*missing or damaged",
    ):
        AutoModel.from_pretrained(folder)


def test_unreadable_tokenizer_file_is_refused(folder: Path) -> None:
    (folder / "tokenizer.json").write_text('{"version": "1.0", "truncation": nul', encoding="utf-8")
    with pytest.raises(ValueError, match=r"Cannot read the tokenizer files of .*model"):
        AutoModel.from_pretrained(folder)


def test_tokenizer_of_another_model_is_refused(folder: Path) -> None:
    vocabulary = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = vocabulary["model"]["vocab"]
    keep = dict(list(vocab.items())[:1000])  # a 1,000-word tokenizer with the same special tokens
    vocabulary["model"]["vocab"] = keep
    (folder / "tokenizer.json").write_text(json.dumps(vocabulary), encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"has 1000 tokens, but the encoder's embedding matrix has 30522 rows"
    ):
        AutoModel.from_pretrained(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused(folder: Path, value: float) -> None:
    weights = load_file(folder / "model.safetensors")
    weights["heads.topic.out.weight"][0, 0] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"hold NaN or infinite values in \['heads\.topic\.out\.weight'\].*damaged"
    ):
        AutoModel.from_pretrained(folder)


def test_removed_auto_map_is_warned_about(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        model = AutoModel.from_pretrained(folder)  # the installed package can still serve it ...
    assert (
        "config.json has no auto_map, so the folder will not load with trust_remote_code=True" in caplog.text
    )
    assert set(model.predict("A sentence.")) == set(model.config.tasks)  # ... and does


def test_an_intact_folder_loads_and_keeps_its_finite_weights(folder: Path) -> None:
    model = AutoModel.from_pretrained(folder)
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())
    assert len(model.tokenizer) == model.config.encoder_config.vocab_size
