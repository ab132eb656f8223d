"""Continuing training with sentence-transformers' trainer replaces the model card with its generic one (no base
model, licence, language or results; a usage line that needs trust_remote_code but lacks it). One command writes
this package's card for the folder again: `python -m multitask_encoder.model_card FOLDER --from-card OLD`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.hub import plan_upload
from multitask_encoder.model_card import main, write_model_card

TASKS = {"topic": {"type": "sequence_classification", "labels": ["sports", "business"]}}
RESULTS = {"test": {"topic": {"accuracy": 0.8, "macro_f1": 0.78, "weighted_f1": 0.79, "support": 50}}}


@pytest.fixture(scope="module")
def continued_with_sentence_transformers(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory):
    """(the original folder with this package's card, the folder sentence-transformers' trainer saved after one
    more training step)."""
    pytest.importorskip("sentence_transformers")
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=TASKS)
    model.config.base_model_name = "sentence-transformers/all-MiniLM-L6-v2"  # as if built from the Hub id
    original = tmp_path_factory.mktemp("card") / "original"
    model.save_pretrained(original)
    write_model_card(str(original), model.config, RESULTS, None, None, None, language=["en"])

    st_model = SentenceTransformer(str(original), trust_remote_code=True, device="cpu")
    pairs = Dataset.from_dict(
        {
            "anchor": ["a cat sleeps", "stocks fell", "the match ended"],
            "positive": ["a kitten", "shares", "game"],
        }
    )
    work = tmp_path_factory.mktemp("card")
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(work / "run"),
        max_steps=1,
        per_device_train_batch_size=3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=st_model,
        args=arguments,
        train_dataset=pairs,
        loss=MultipleNegativesRankingLoss(st_model),
    )
    trainer.train()
    continued = work / "continued"
    st_model.save_pretrained(str(continued))
    return original, continued


def test_the_command_writes_this_packages_card_again(continued_with_sentence_transformers) -> None:
    original, continued = continued_with_sentence_transformers
    generic = (continued / "README.md").read_text(encoding="utf-8")
    assert "generated_from_trainer" in generic and "base_model:" not in generic  # the problem
    notes = " ".join(plan_upload(continued, "alice/m").notes)
    assert f"python -m multitask_encoder.model_card {continued}" in notes  # the push says what to run

    (continued / "eval_results.json").write_text(json.dumps(RESULTS))  # this model's own scores
    assert main([str(continued), "--from-card", str(original / "README.md")]) == 0
    card = (continued / "README.md").read_text(encoding="utf-8")
    metadata = ModelCard(card).data
    assert metadata.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert metadata.license == "apache-2.0" and metadata.language == ["en"]
    assert metadata.library_name == "transformers" and "generated_from_trainer" not in card
    assert "Macro F1" in card and "0.78" in card  # the results table
    assert "trust_remote_code=True" in card and "`topic`" in card
    assert not plan_upload(continued, "alice/m").notes  # nothing left to say


def test_a_folder_without_a_model_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "config.json is no readable config: FileNotFoundError" in error
    assert not (tmp_path / "README.md").exists()
