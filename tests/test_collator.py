"""Collator: dynamic padding, every task's labels in every batch (-100 where missing), word-piece alignment
of NER tags, and a real forward pass of the model on a collated batch."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import copy
import json

import pytest
import torch
from transformers import AutoTokenizer

from multitask_encoder.backbone import default_backbone
from multitask_encoder.collator import MultiTaskCollator, tasks_present
from multitask_encoder.data import load_multitask_data
from multitask_encoder.model.configuration_multitask_encoder import TaskSpec
from multitask_encoder.model.modeling_multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.precompute import precompute_features
from multitask_encoder.task_types.types import align_word_tags, continuation_tags

CONLL = "Arnold\tB-person\nSchwarzenegger\tI-person\nvisited\tO\nKilimanjaro\tB-geo-loc\n\nMount\tB-geo-loc\nFuji\tI-geo-loc\n"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_backbone())


@pytest.fixture(scope="module")
def data(tokenizer, tmp_path_factory):
    """Four tasks in three groups: topic+sentiment share a CSV, genres and ner have their own files."""
    folder = tmp_path_factory.mktemp("collator")
    (folder / "shared.csv").write_text(
        "text,topic,sentiment\nA long and rather detailed review of the new phone,tech,positive\n"
        "Vote postponed,politics,\n"
    )
    genres = [
        {"text": "Funny and sad", "genres": ["comedy", "drama"]},
        {"text": "Scary", "genres": ["horror"]},
    ]
    (folder / "genres.jsonl").write_text("\n".join(json.dumps(row) for row in genres))
    (folder / "ner.txt").write_text(CONLL)
    tasks = {
        "topic": {"type": "sequence_classification", "train": "shared.csv"},
        "sentiment": {
            "type": "sequence_classification",
            "train": "shared.csv",
            "labels": ["negative", "positive"],
        },
        "genres": {"type": "multi_label_classification", "train": "genres.jsonl"},
        "ner": {"type": "token_classification", "train": "ner.txt", "format": "conll"},
    }
    return load_multitask_data(tasks, tokenizer, 64, str(folder), cache_dir=str(folder / "cache"))


@pytest.fixture(scope="module")
def collator(tokenizer, data):
    return MultiTaskCollator(tokenizer, data.task_specs)


def test_pads_dynamically_and_keeps_only_model_keys(collator, data):
    rows = [data.train[i] for i in range(len(data.train))]
    batch = collator(rows)
    longest = max(len(row["input_ids"]) for row in rows)
    assert (
        batch["input_ids"].shape
        == batch["attention_mask"].shape
        == batch["token_type_ids"].shape
        == (6, longest)
    )
    shortest = min(range(6), key=lambda i: len(rows[i]["input_ids"]))
    assert batch["attention_mask"][shortest].sum() == len(rows[shortest]["input_ids"])
    assert batch["input_ids"][shortest, -1] == 0  # [PAD]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"} | {
        f"labels_{t}" for t in data.task_specs
    }

    padded = MultiTaskCollator(collator.tokenizer, data.task_specs, pad_to_multiple_of=8)(rows)
    assert padded["input_ids"].shape[1] % 8 == 0 and padded["labels_ner"].shape == padded["input_ids"].shape


def test_every_label_key_present_with_minus_100_filling(collator, data):
    groups = data.train["group"]
    batch = collator([data.train[i] for i, group in enumerate(groups) if group == 0])  # topic+sentiment only
    assert batch["labels_topic"].tolist() == [1, 0] and batch["labels_topic"].dtype == torch.long
    assert batch["labels_sentiment"].tolist() == [1, -100]  # empty cell
    assert batch["labels_genres"].dtype == torch.float and batch["labels_genres"].shape == (2, 3)
    assert (batch["labels_genres"] == -100).all()
    assert batch["labels_ner"].shape == batch["input_ids"].shape and (batch["labels_ner"] == -100).all()
    assert tasks_present(batch) == ["topic", "sentiment"]

    genres = collator([data.train[i] for i, group in enumerate(groups) if group == 1])
    assert genres["labels_genres"].tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # comedy, drama, horror


def test_rows_without_a_label_key_are_filled(tokenizer):
    specs = {
        "stars": TaskSpec(type="regression"),
        "aspects": {"type": "regression", "labels": ["price", "quality"]},
    }
    rows = [
        {"input_ids": [101, 7592, 102], "labels_stars": 4.5},
        {"input_ids": [101, 102], "labels_aspects": [1.0, 2.0]},
    ]
    batch = MultiTaskCollator(tokenizer, specs)(rows)
    assert batch["labels_stars"].tolist() == [4.5, -100.0]
    assert batch["labels_aspects"].tolist() == [[-100.0, -100.0], [1.0, 2.0]]


def test_first_sub_token_gets_the_tag(collator, data):
    ner = data.task_specs["ner"].labels  # ["O", "B-geo-loc", "B-person", "I-geo-loc", "I-person"]
    row = data.train[list(data.train["group"]).index(2)]  # the first NER sentence
    pieces = collator.tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert pieces == [
        "[CLS]",
        "arnold",
        "schwarz",
        "##ene",
        "##gger",
        "visited",
        "ki",
        "##lim",
        "##an",
        "##jar",
        "##o",
        "[SEP]",
    ]
    labels = collator([row])["labels_ner"][0].tolist()
    tag = ner.index
    assert labels == [
        -100,
        tag("B-person"),
        tag("I-person"),
        -100,
        -100,
        tag("O"),
        tag("B-geo-loc"),
        -100,
        -100,
        -100,
        -100,
        -100,
    ]

    all_pieces = MultiTaskCollator(collator.tokenizer, data.task_specs, label_all_subtokens=True)([row])[
        "labels_ner"
    ]
    # Later pieces of a B-X word get I-X (Kilimanjaro), of an I-X word I-X (Schwarzenegger).
    expected = [
        -100,
        tag("B-person"),
        *[tag("I-person")] * 3,
        tag("O"),
        tag("B-geo-loc"),
        *[tag("I-geo-loc")] * 4,
        -100,
    ]
    assert all_pieces[0].tolist() == expected


def test_label_all_subtokens_turns_b_into_i():
    spec = TaskSpec(type="token_classification", labels=["O", "B-LOC", "I-LOC"])
    collator = MultiTaskCollator(tokenizer=None, task_specs={"ner": spec}, label_all_subtokens=True)
    continuation = continuation_tags(collator.task_specs["ner"])
    # [CLS] ki ##lim ##an [SEP] [PAD]: word 0 is B-LOC, its later pieces I-LOC
    assert align_word_tags([-1, 0, 0, 0, -1], [1], 6, 0, continuation) == [-100, 1, 2, 2, -100, -100]
    assert align_word_tags([-1, 0, 0, 0, -1], [1], 6, 0, None) == [-100, 1, -100, -100, -100, -100]
    assert align_word_tags([-1, 0, 0, -1], [], 4, 0, continuation) == [-100] * 4  # a row without tags


def test_tags_without_word_ids_are_refused(collator, data):
    row = dict(data.train[list(data.train["group"]).index(2)])
    del row["word_ids"]  # what the Trainer does with remove_unused_columns=True
    with pytest.raises(ValueError, match=r"labels_ner but no word_ids.*remove_unused_columns=False"):
        collator([row])


def test_left_padding_shifts_the_tags(tokenizer, data):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    rows = [data.train[i] for i in range(len(data.train))]
    batch = MultiTaskCollator(left, data.task_specs)(rows)
    right = MultiTaskCollator(tokenizer, data.task_specs)(rows)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["labels_ner"][i, -n:].tolist() == right["labels_ner"][i, :n].tolist()
        assert batch["input_ids"][i, -n:].tolist() == row["input_ids"]


def test_batch_runs_through_the_model(collator, data):
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(default_backbone(), tasks=data.task_specs).eval()
    batch = collator([data.train[i] for i in range(len(data.train))])
    with torch.no_grad():
        output = model(**batch)
    assert torch.isfinite(output.loss)
    assert set(output.task_losses) == set(data.task_specs)
    assert output.ner_logits.shape[:2] == batch["labels_ner"].shape

    validation_like = collator([data.train[0]])  # sentence row only: other tasks all -100, loss still finite
    with torch.no_grad():
        assert torch.isfinite(model(**validation_like).loss)


def test_precomputed_token_rows_keep_the_real_tokens_whatever_the_padding_side(tokenizer, data):
    """The frozen-encoder fast path stores each row's real tokens only, with their own tags, for tokenizers
    that pad on the left as well as on the right."""
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(default_backbone(), tasks=data.task_specs)
    ner_rows = [i for i in range(len(data.train)) if data.train[i].get("labels_ner")]
    assert len(ner_rows) == 2 and len({len(data.train[i]["input_ids"]) for i in ner_rows}) == 2
    for side in ("right", "left"):
        padded = copy.deepcopy(tokenizer)
        padded.padding_side = side
        features = precompute_features(model, data.train, MultiTaskCollator(padded, data.task_specs), 8)
        for i in ner_rows:
            alone = MultiTaskCollator(tokenizer, data.task_specs)([data.train[i]])  # no padding at all
            item = features[i]
            assert item["token_states"].shape == (len(data.train[i]["input_ids"]), 384), side
            assert item["attention_mask"].tolist() == [1] * len(data.train[i]["input_ids"]), side
            assert item["labels_ner"].tolist() == alone["labels_ner"][0].tolist(), side
