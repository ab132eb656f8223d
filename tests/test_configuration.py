"""MultiTaskEncoderConfig: validation of every field, task order through config.json, and a nested encoder
config that rebuilds the model without the backbone folder."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, BertConfig, RobertaConfig

from multitask_encoder import MultiTaskEncoderConfig, MultiTaskEncoderModel, TaskSpec
from multitask_encoder.model.configuration_multitask_encoder import (
    encoder_max_tokens,
    parse_tasks,
    usable_max_seq_length,
)
from multitask_encoder.model.tasks_multitask_encoder import parse_task_spec


@pytest.fixture(scope="module")
def encoder_config(tiny_backbone: str) -> BertConfig:
    return BertConfig.from_pretrained(tiny_backbone)


def make_config(encoder_config, tasks, **kwargs) -> MultiTaskEncoderConfig:
    return MultiTaskEncoderConfig(encoder_config=encoder_config, tasks=tasks, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Task validation
# ----------------------------------------------------------------------------------------------------------


def test_a_parsed_spec_is_validated_once_and_a_hand_built_one_is_checked(encoder_config) -> None:
    """The config, the collator and the data share the TaskSpec objects parse_task_spec built (no dict round
    trip, no second validation); a spec built by hand, or replaced, goes through the checks."""
    specs = parse_tasks({"topic": {"type": "sequence_classification", "labels": ["a", "b"]}})
    config = make_config(encoder_config, specs)
    assert config.tasks["topic"] is specs["topic"]
    assert parse_task_spec("topic", specs["topic"]) is specs["topic"]
    renamed = parse_task_spec("subject", specs["topic"])
    assert renamed.name == "subject" and renamed.labels == ["a", "b"] and renamed.checked
    with pytest.raises(ValueError, match=r"Task 'topic': duplicate labels \['a'\]"):
        parse_task_spec("topic", TaskSpec(type="sequence_classification", labels=["a", "a"]))
    with pytest.raises(ValueError, match=r"Task 'topic': duplicate labels \['b'\]"):
        parse_task_spec("topic", dataclasses.replace(specs["topic"], labels=["b", "b"]))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "classification", "labels": ["a", "b"]}, "unknown task type 'classification'"),
        ({"labels": ["a", "b"]}, "unknown task type None"),
        ({"type": "sequence_classification", "labels": ["a", "b", "a"]}, r"duplicate labels \['a'\]"),
        ({"type": "multi_label_classification", "labels": ["x", "x"]}, r"duplicate labels \['x'\]"),
        ({"type": "sequence_classification", "labels": []}, "non-empty list"),
        ({"type": "sequence_classification"}, "non-empty list"),
        ({"type": "sequence_classification", "labels": "ab"}, "non-empty list"),
        ({"type": "sequence_classification", "labels": ["a", ""]}, "must not be empty"),
        ({"type": "sequence_classification", "labels": ["a", "  "]}, "must not be empty"),
        ({"type": "sequence_classification", "labels": ["only"]}, "at least 2 labels"),
        ({"type": "token_classification", "labels": ["O", "PER", "LOC"]}, r"IOB2.*\['PER', 'LOC'\]"),
        ({"type": "token_classification", "labels": ["O", "B-PER", "E-PER"]}, r"IOB2.*\['E-PER'\]"),
        ({"type": "token_classification", "labels": ["O", "B_PER"]}, r"IOB2.*\['B_PER'\]"),
        ({"type": "regression", "head": {"type": "transformer"}}, "unknown head type 'transformer'"),
        ({"type": "regression", "head": "cnn"}, "unknown head type 'cnn'"),
        (
            {"type": "regression", "head": {"type": "mlp", "activation": "swish"}},
            "unknown activation 'swish'",
        ),
        ({"type": "regression", "head": {"dropout": 1.0}}, "dropout must be in"),
        ({"type": "regression", "head": {"type": "mlp", "hidden_size": 0}}, "hidden_size must be positive"),
        ({"type": "regression", "head": {"width": 3}}, r"unknown head keys \['width'\]"),
        ({"type": "regression", "loss_weight": -0.5}, "loss_weight must be >= 0"),
        ({"type": "multi_label_classification", "labels": ["a"], "threshold": 1.0}, "threshold must be in"),
        ({"type": "multi_label_classification", "labels": ["a"], "threshold": 0.0}, "threshold must be in"),
        ({"type": "regression", "lables": ["typo"]}, r"unknown spec keys \['lables'\]"),
        ({"type": "regression", "target_std": 0.0}, "target_std must be a positive finite number"),
        ({"type": "regression", "target_mean": "3"}, "target_mean must be a finite number"),
        (
            {"type": "regression", "labels": ["a", "b"], "target_mean": [1.0, 2.0, 3.0]},
            r"target_mean has 3 value\(s\), but the task has 2 output\(s\)",
        ),
    ],
)
def test_invalid_task_spec_is_refused(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiTaskEncoderConfig(tasks={"task": spec})


@pytest.mark.parametrize("name", ["my-task", "1st", "two words", "", "naïve-", "a.b"])
def test_task_name_must_be_an_identifier(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid Python identifier"):
        MultiTaskEncoderConfig(tasks={name: {"type": "regression"}})


def test_non_string_task_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not a valid Python identifier"):
        parse_tasks({3: {"type": "regression"}})


@pytest.mark.parametrize("name", ["type", "values"])
def test_task_named_like_a_module_dict_attribute_is_refused_or_works(encoder_config, name: str) -> None:
    # TREC's question "type" is a natural task name. Either the config refuses it up front with a
    # ValueError that says why, or the model must simply work with it.
    try:
        config = make_config(encoder_config, {name: {"type": "regression"}})
    except ValueError as error:
        assert name in str(error)
        return
    model = MultiTaskEncoderModel(config)
    assert name in model.heads


def test_list_form_needs_names_and_no_duplicates() -> None:
    with pytest.raises(ValueError, match="needs a `name` key"):
        parse_tasks([{"type": "regression"}])
    with pytest.raises(ValueError, match="declared twice"):
        parse_tasks([{"name": "a", "type": "regression"}, {"name": "a", "type": "regression"}])
    with pytest.raises(ValueError, match="must be a mapping"):
        parse_tasks("topic")


def test_defaults_and_normalisation_of_specs() -> None:
    tasks = parse_tasks(
        {
            "score": {"type": "regression"},
            "topic": {"type": "sequence_classification", "labels": [1, 2], "head": "mlp"},
            "ner": {"type": "token_classification", "labels": ["O", "B-PER", "I-PER"]},
        }
    )
    assert tasks["score"].labels == ["value"]
    assert tasks["score"].num_outputs == 1
    assert tasks["topic"].labels == ["1", "2"]  # label names are strings, as in config.json
    assert tasks["topic"].head.type == "mlp"
    assert tasks["topic"].label2id == {"1": 0, "2": 1}
    assert tasks["topic"].id2label == {0: "1", 1: "2"}
    assert tasks["ner"].is_token_level and not tasks["topic"].is_token_level
    assert isinstance(tasks["ner"], TaskSpec)


def test_input_spec_is_not_mutated(example_tasks: dict) -> None:
    before = copy.deepcopy(example_tasks)
    MultiTaskEncoderConfig(tasks=example_tasks)
    assert example_tasks == before


# ----------------------------------------------------------------------------------------------------------
# Model-level fields
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooling": "sum"}, "Unknown pooling 'sum'"),
        ({"pooling": "CLS"}, "Unknown pooling 'CLS'"),
        ({"loss_weighting": "gradnorm"}, "Unknown loss_weighting 'gradnorm'"),
        ({"projection_dim": 0}, "projection_dim must be a positive integer"),
        ({"projection_dim": -8}, "projection_dim must be a positive integer"),
    ],
)
def test_invalid_model_fields_are_refused(encoder_config, example_tasks, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(encoder_config, example_tasks, **kwargs)


def test_max_seq_length_beyond_the_encoders_positions_is_refused_and_a_saved_one_is_cut(
    encoder_config, example_tasks, tiny_backbone: str
) -> None:
    """Every text longer than the encoder takes would fail at the first long text a user predicts: refused when
    a model is built from a backbone (not only by the training job). A config saved with more before that still
    loads, and its model takes what the encoder holds."""
    assert encoder_max_tokens(encoder_config) == 512
    with pytest.raises(
        ValueError, match=r"max_seq_length 4096 is longer than the encoder takes \(512 tokens"
    ):
        MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=example_tasks, max_seq_length=4096)
    assert (
        MultiTaskEncoderModel.from_backbone(
            tiny_backbone, tasks=example_tasks, max_seq_length=512
        ).max_seq_length
        == 512
    )
    saved = make_config(encoder_config, example_tasks, max_seq_length=4096)
    assert usable_max_seq_length(saved) == 512
    assert MultiTaskEncoderModel(saved).max_seq_length == 512


def test_an_encoder_with_positions_after_padding_takes_two_tokens_fewer() -> None:
    """RoBERTa's position ids start after the padding index: of 514 positions, 512 hold tokens. A model on such an
    encoder cuts a longer input there (a standard pipeline's, untruncated) instead of failing in the encoder,
    also when its saved max_seq_length asks for more."""
    roberta = RobertaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=22,
        pad_token_id=1,
    )
    assert encoder_max_tokens(roberta) == 20
    assert encoder_max_tokens(RobertaConfig(pad_token_id=1, max_position_embeddings=514)) == 512
    input_ids = torch.randint(3, 50, (2, 22))  # two positions more than the encoder holds
    for max_seq_length in (None, 22):
        config = make_config(roberta, {"score": {"type": "regression"}}, max_seq_length=max_seq_length)
        model = MultiTaskEncoderModel(config).eval()
        with torch.no_grad():
            output = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        assert output.embeddings.shape == (2, 16) and torch.isfinite(output.embeddings).all()


def test_encoder_config_dict_needs_model_type(encoder_config) -> None:
    as_dict = encoder_config.to_dict()
    as_dict.pop("model_type")
    with pytest.raises(ValueError, match="model_type"):
        MultiTaskEncoderConfig(encoder_config=as_dict, tasks={"score": {"type": "regression"}})


def test_empty_config_is_allowed_but_cannot_build_a_model(encoder_config, tiny_backbone: str) -> None:
    # transformers builds `Config()` with no arguments internally, so that must work...
    empty = MultiTaskEncoderConfig()
    assert empty.tasks == {}
    # ...but no model can be built without an encoder or without tasks.
    with pytest.raises(ValueError, match="no encoder_config"):
        MultiTaskEncoderModel(MultiTaskEncoderConfig(tasks={"score": {"type": "regression"}}))
    with pytest.raises(ValueError, match="declares no tasks"):
        MultiTaskEncoderModel(make_config(encoder_config, {}))
    with pytest.raises(ValueError, match="at least one task"):
        MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks={})


def test_embedding_size_follows_projection(encoder_config, example_tasks) -> None:
    assert make_config(encoder_config, example_tasks).embedding_size == encoder_config.hidden_size
    assert make_config(encoder_config, example_tasks, projection_dim=32).embedding_size == 32


# ----------------------------------------------------------------------------------------------------------
# Serialisation
# ----------------------------------------------------------------------------------------------------------


def test_task_order_and_specs_survive_save_and_load(encoder_config, tmp_path: Path) -> None:
    # Reverse-alphabetical on purpose: config.json is written with sorted keys, so a plain dict of tasks
    # would come back as alpha, mid, zeta.
    tasks = {
        "zeta": {"type": "token_classification", "labels": ["O", "B-LOC", "I-LOC"], "loss_weight": 0.25},
        "mid": {"type": "multi_label_classification", "labels": ["c", "a", "b"], "threshold": 0.3},
        "alpha": {
            "type": "sequence_classification",
            "labels": ["z", "y"],
            "head": {"type": "mlp", "hidden_size": 7},
        },
        "beta": {"type": "regression", "labels": ["valence", "arousal"]},
    }
    config = make_config(encoder_config, tasks, pooling="max", normalize=False, projection_dim=12)
    config.save_pretrained(tmp_path)

    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert [task["name"] for task in on_disk["tasks"]] == ["zeta", "mid", "alpha", "beta"]

    reloaded = MultiTaskEncoderConfig.from_pretrained(tmp_path)
    assert list(reloaded.tasks) == ["zeta", "mid", "alpha", "beta"]
    assert reloaded.tasks == config.tasks  # dataclass equality: labels (in order), heads, weights, thresholds
    assert reloaded.tasks["mid"].labels == ["c", "a", "b"]
    assert (reloaded.pooling, reloaded.normalize, reloaded.projection_dim) == ("max", False, 12)
    assert reloaded.to_dict()["tasks"] == config.to_dict()["tasks"]


def test_nested_encoder_config_rebuilds_without_the_backbone_folder(
    tiny_backbone: str, tmp_path: Path
) -> None:
    backbone_copy = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, backbone_copy)
    model = MultiTaskEncoderModel.from_backbone(str(backbone_copy), tasks={"score": {"type": "regression"}})
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    texts = ["The backbone folder is gone.", "Only config.json remains."]
    before = model.encode(texts)
    shutil.rmtree(backbone_copy)  # the saved model must never need it again

    config = AutoConfig.from_pretrained(saved)
    assert isinstance(config, MultiTaskEncoderConfig)
    assert isinstance(config.encoder_config, BertConfig)
    assert config.encoder_config.num_hidden_layers == 2
    assert config.encoder_config.hidden_size == 384
    assert config.encoder_config.vocab_size == 30522

    # From the config alone (random weights) and from the checkpoint (same embeddings as before).
    rebuilt = MultiTaskEncoderModel(config)
    assert len(rebuilt.encoder.encoder.layer) == 2
    reloaded = MultiTaskEncoderModel.from_pretrained(saved)
    np.testing.assert_allclose(reloaded.encode(texts), before, atol=1e-6)


def test_regression_output_is_the_standardised_head_output_on_the_data_scale() -> None:
    """The head predicts z; `<task>_logits` is z * target_std + target_mean, and the loss is the MSE of the
    standardised values; a spec without the stats (a model saved before them) keeps mean 0 and std 1."""
    import torch

    from multitask_encoder.model.tasks_multitask_encoder import EncoderFeatures, parse_task_spec

    torch.manual_seed(0)
    head = torch.nn.Linear(4, 2)
    features = EncoderFeatures(None, None, torch.randn(5, 4))
    z = head(features.embeddings)
    old = parse_task_spec("r", {"type": "regression", "labels": ["a", "b"]})
    assert old.options == {"target_mean": None, "target_std": None}
    assert torch.equal(old.task_type.logits(head, old, features), z)

    spec = parse_task_spec(
        "r", {"type": "regression", "labels": ["a", "b"], "target_mean": [3, -1], "target_std": [2, 100]}
    )
    logits = spec.task_type.logits(head, spec, features)
    mean, std = torch.tensor([3.0, -1.0]), torch.tensor([2.0, 100.0])
    assert torch.allclose(logits, z * std + mean)
    gold = torch.randn(5, 2) * std + mean
    gold[0, 1] = -100.0  # missing
    labelled = gold != -100
    expected = torch.nn.functional.mse_loss(
        ((logits - mean) / std)[labelled], ((gold - mean) / std)[labelled]
    )
    assert torch.allclose(spec.task_type.loss(spec, logits, gold), expected)
