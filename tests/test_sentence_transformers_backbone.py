"""A sentence-transformers backbone keeps what makes it itself: the model reads its pooling (1_Pooling), its Dense
layer (the projection), its normalisation (2_Normalize) and max_seq_length from its modules, so `encode` before
training is `SentenceTransformer(backbone).encode`; a config value overrides them (logged); modules the model
cannot reproduce are refused by name."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.arguments import ModelArguments

TEXTS = [
    "The striker scored twice as United won the cup final.",
    "Shares fell sharply after the bank's results.",
    "hi",
    "A much longer sentence about the weather, the mountains and a train that was late again this morning.",
]
TASKS = {"topic": {"type": "sequence_classification", "labels": ["sports", "business"]}}
MODULE_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Normalize": "sentence_transformers.models.Normalize",
    "Dense": "sentence_transformers.models.Dense",
    "LayerNorm": "sentence_transformers.models.LayerNorm",
}
DENSE = {
    "in_features": 384,
    "out_features": 48,
    "bias": True,
    "activation_function": "torch.nn.modules.activation.Tanh",
}


def sentence_transformers_backbone(
    tiny_backbone: str,
    folder: Path,
    pooling: dict,
    modules: tuple[str, ...] = ("Pooling", "Normalize"),
    dense: dict | None = None,
) -> str:
    """A copy of the tiny backbone made a sentence-transformers model: modules.json with the Transformer and
    `modules`, 1_Pooling/config.json holding `pooling` (as sentence-transformers writes it), a Dense module's
    config `dense` (default DENSE) with seeded random weights."""
    shutil.copytree(tiny_backbone, folder)
    entries = [{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPES["Transformer"]}]
    for index, kind in enumerate(modules, start=1):
        path = f"{index}_{kind}"
        entries.append({"idx": index, "name": str(index), "path": path, "type": MODULE_TYPES[kind]})
        (folder / path).mkdir()
        if kind == "Pooling":
            (folder / path / "config.json").write_text(
                json.dumps({"word_embedding_dimension": 384, **pooling})
            )
        elif kind == "Dense":
            config = dense or DENSE
            (folder / path / "config.json").write_text(json.dumps(config))
            generator = torch.Generator().manual_seed(index)
            shape = (config["out_features"], config["in_features"])
            weights = {"linear.weight": torch.randn(shape, generator=generator) * 0.05}
            if config.get("bias", True):
                weights["linear.bias"] = torch.randn(config["out_features"], generator=generator) * 0.05
            save_file(weights, str(folder / path / "model.safetensors"))
    (folder / "modules.json").write_text(json.dumps(entries))
    return str(folder)


@pytest.fixture(scope="module")
def cls_backbone(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """CLS pooling and normalisation, as BGE models are (the legacy boolean pooling keys)."""
    pooling = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    return sentence_transformers_backbone(tiny_backbone, tmp_path_factory.mktemp("st") / "cls", pooling)


@pytest.fixture(scope="module")
def mean_backbone(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Mean pooling without normalisation (the `pooling_mode` key of sentence-transformers >= 5)."""
    return sentence_transformers_backbone(
        tiny_backbone, tmp_path_factory.mktemp("st") / "mean", {"pooling_mode": "mean"}, modules=("Pooling",)
    )


@pytest.fixture(scope="module")
def dense_backbone(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Mean pooling, a Dense layer (384 -> 48, Tanh) and normalisation, as e.g. LaBSE-style models are."""
    return sentence_transformers_backbone(
        tiny_backbone,
        tmp_path_factory.mktemp("st") / "dense",
        {"pooling_mode": "mean"},
        modules=("Pooling", "Dense", "Normalize"),
    )


@pytest.mark.parametrize(
    ("backbone_fixture", "pooling", "normalize", "projection"),
    [
        ("cls_backbone", "cls", True, None),
        ("mean_backbone", "mean", False, None),
        ("dense_backbone", "mean", True, (48, "tanh")),
    ],
)
def test_encode_before_training_is_the_sentence_transformers_backbone(
    request: pytest.FixtureRequest, backbone_fixture: str, pooling: str, normalize: bool, projection
) -> None:
    from sentence_transformers import SentenceTransformer

    backbone = request.getfixturevalue(backbone_fixture)
    model = MultiTaskEncoderModel.from_backbone(backbone, tasks=TASKS)
    assert (model.config.pooling, model.config.normalize) == (pooling, normalize)
    if projection is not None:
        assert (model.config.projection_dim, model.config.projection_activation) == projection
    assert model.config.max_seq_length == 256  # the backbone's sentence_bert_config.json
    expected = SentenceTransformer(backbone, device="cpu").encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=3), expected, atol=1e-5, rtol=0)


def test_cls_and_mean_backbones_differ(cls_backbone: str, mean_backbone: str) -> None:
    """The two fixtures really pool differently (else the test above would not tell them apart)."""
    cls_model = MultiTaskEncoderModel.from_backbone(cls_backbone, tasks=TASKS)
    mean_model = MultiTaskEncoderModel.from_backbone(mean_backbone, tasks=TASKS, normalize=True)
    assert np.abs(cls_model.encode(TEXTS) - mean_model.encode(TEXTS)).max() > 0.1


def test_a_given_pooling_overrides_the_backbone_and_is_logged(
    cls_backbone: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        model = MultiTaskEncoderModel.from_backbone(cls_backbone, tasks=TASKS, pooling="mean", normalize=True)
    assert (model.config.pooling, model.config.normalize) == ("mean", True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("pooling='mean' (given) overrides" in m and "pooling='cls'" in m for m in warnings), warnings
    assert not any("normalize" in m for m in warnings)  # the same as the backbone's: nothing to say


def test_a_plain_encoder_pools_with_mean_and_normalises(tiny_backbone: str) -> None:
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=TASKS)
    assert (model.config.pooling, model.config.normalize) == ("mean", True)


def test_training_config_defaults_leave_the_choice_to_the_backbone() -> None:
    arguments = ModelArguments()
    assert (arguments.pooling, arguments.normalize) == (None, None)
    with pytest.raises(ValueError, match="pooling must be one of"):
        ModelArguments(pooling="weightedmean")


def test_a_dense_backbone_saves_and_reloads_as_itself(dense_backbone: str, tmp_path: Path) -> None:
    model = MultiTaskEncoderModel.from_backbone(dense_backbone, tasks=TASKS)
    model.save_pretrained(tmp_path / "saved")
    reloaded = MultiTaskEncoderModel.from_pretrained(tmp_path / "saved")
    assert (reloaded.config.projection_activation, reloaded.config.projection_bias) == ("tanh", True)
    np.testing.assert_array_equal(reloaded.encode(TEXTS), model.encode(TEXTS))


def test_a_projection_of_another_size_replaces_the_dense_layer(
    dense_backbone: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        model = MultiTaskEncoderModel.from_backbone(dense_backbone, tasks=TASKS, projection_dim=16)
    assert (model.config.projection_dim, model.config.projection_activation) == (16, "identity")
    assert any("projection_dim=16 (given) overrides" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("pooling", "modules", "dense", "refusal"),
    [
        ({"pooling_mode": "mean"}, ("Pooling", "LayerNorm"), None, r"'LayerNorm' module \(2_LayerNorm\)"),
        ({"pooling_mode": "weightedmean"}, ("Pooling",), None, r"pools with \['weightedmean'\]"),
        (
            {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
            ("Pooling",),
            None,
            "pools with",
        ),
        ({"pooling_mode": "mean"}, ("Pooling", "Dense", "Dense"), None, "chains"),
        ({"pooling_mode": "mean"}, ("Pooling", "Normalize", "Dense"), None, "in the order"),
        (
            {"pooling_mode": "mean"},
            ("Pooling", "Dense"),
            {**DENSE, "use_residual": True},
            "use_residual=True",
        ),
        (
            {"pooling_mode": "mean"},
            ("Pooling", "Dense"),
            {**DENSE, "in_features": 100},
            "do not fit a projection",
        ),
    ],
    ids=[
        "layer-norm",
        "weighted-mean",
        "two-poolings",
        "two-dense",
        "dense-after-normalize",
        "residual-dense",
        "dense-of-another-size",
    ],
)
def test_modules_the_model_cannot_reproduce_are_refused_by_name(
    tiny_backbone: str, tmp_path: Path, pooling: dict, modules: tuple[str, ...], dense, refusal: str
) -> None:
    backbone = sentence_transformers_backbone(tiny_backbone, tmp_path / "backbone", pooling, modules, dense)
    with pytest.raises(ValueError, match=refusal):
        MultiTaskEncoderModel.from_backbone(backbone, tasks=TASKS)
