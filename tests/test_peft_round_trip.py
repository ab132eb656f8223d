"""The PEFT round trip keeps the model whole: the adapter a `peft:` run saves (`adapter/`) holds the heads it was
trained with beside it, and `model.load_adapter(folder/adapter)` on a model built from the backbone gives the
trained model back, unmerged; on the trained (merged) folder itself it is refused, saying what works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from multitask_encoder import MultiTaskEncoderConfig, MultiTaskEncoderModel
from multitask_encoder.adapters import apply_adapter, merge_and_save_adapter
from multitask_encoder.hub import plan_upload

peft = pytest.importorskip("peft")

TASKS = {
    "topic": {"type": "sequence_classification", "labels": ["sports", "business", "world"]},
    "ner": {"type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
}
TEXTS = ["The match was great today", "John Smith flew to Paris", "Shares fell sharply"]


@pytest.fixture(scope="module")
def trained_with_adapter(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory):
    """(folder, the trained model's embeddings and predictions before merging): a LoRA model whose adapter,
    heads and projection were moved off their initial values (as training would), saved as train.py saves
    it (adapter/ alone, then the merged model)."""
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=TASKS, projection_dim=64).eval()
    apply_adapter(model, {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]})
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or not name.startswith("encoder."):
                parameter.add_(torch.randn_like(parameter) * 0.05)
    embeddings, predictions = model.encode(TEXTS), model.predict(TEXTS)
    folder = tmp_path_factory.mktemp("peft") / "out"
    merge_and_save_adapter(model, str(folder), model.config.base_model_name)
    model.save_pretrained(folder)
    return folder, embeddings, predictions


def test_the_saved_adapter_holds_the_heads(trained_with_adapter) -> None:
    folder, _, _ = trained_with_adapter
    heads = load_file(folder / "adapter" / "multitask_heads.safetensors")
    assert {key.split(".")[0] for key in heads} == {"heads", "projection"}
    assert "adapter/multitask_heads.safetensors" in plan_upload(folder, "alice/m").paths  # pushed with it
    assert json.loads((folder / "config.json").read_text())["merged_adapter"] == "adapter"


def test_load_adapter_on_the_backbone_is_the_trained_model(trained_with_adapter, tiny_backbone: str) -> None:
    folder, embeddings, predictions = trained_with_adapter
    trained = MultiTaskEncoderConfig.from_pretrained(folder)
    model = MultiTaskEncoderModel.from_backbone(
        tiny_backbone,
        tasks=trained.tasks,
        pooling=trained.pooling,
        normalize=trained.normalize,
        projection_dim=trained.projection_dim,
        max_seq_length=trained.max_seq_length,
    ).eval()
    assert model.load_adapter(str(folder / "adapter")) is model
    assert any("lora_" in name for name, _ in model.encoder.named_parameters())  # unmerged: base + adapter
    np.testing.assert_allclose(model.encode(TEXTS), embeddings, atol=1e-5, rtol=0)
    for got, want in zip(model.predict(TEXTS), predictions):
        assert got["topic"]["label"] == want["topic"]["label"]
        assert got["topic"]["score"] == pytest.approx(want["topic"]["score"], abs=1e-5)
        assert [e["entity"] for e in got["ner"]["entities"]] == [e["entity"] for e in want["ner"]["entities"]]
    # ... and the merged folder is the same model.
    merged = MultiTaskEncoderModel.from_pretrained(folder).eval()
    np.testing.assert_allclose(merged.encode(TEXTS), embeddings, atol=1e-5, rtol=0)


def test_load_adapter_on_the_merged_folder_is_refused(trained_with_adapter) -> None:
    folder, _, _ = trained_with_adapter
    merged = MultiTaskEncoderModel.from_pretrained(folder)
    before = {key: value.clone() for key, value in merged.state_dict().items()}
    with pytest.raises(ValueError, match="would apply the adapter twice") as refused:
        merged.load_adapter(str(folder / "adapter"))
    assert "build it from the backbone" in str(refused.value)
    after = merged.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_heads_that_do_not_fit_and_an_encoder_only_adapter_are_refused(
    trained_with_adapter, tiny_backbone: str, tmp_path: Path
) -> None:
    folder, _, _ = trained_with_adapter
    other = MultiTaskEncoderModel.from_backbone(
        tiny_backbone, tasks={"topic": TASKS["topic"]}, projection_dim=64
    )
    with pytest.raises(ValueError, match=r"do not fit this model .*missing \[\].*unexpected \['heads\.ner"):
        other.load_adapter(str(folder / "adapter"))
    encoder_only = tmp_path / "adapter"
    encoder_only.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (encoder_only / name).write_bytes((folder / "adapter" / name).read_bytes())
    with pytest.raises(ValueError, match=r"no multitask_heads\.safetensors.*model\.encoder\.load_adapter"):
        other.load_adapter(str(encoder_only))


def test_an_adapter_trained_on_other_weights_is_refused_and_loads_on_its_own(
    tiny_backbone: str, tmp_path: Path
) -> None:
    """An adapter is a difference to the exact weights it wrapped. Trained on a model whose encoder already moved
    (init_from a trained, merged model), it would load onto the plain backbone without a word and build another
    model: the digest of the base weights saved with it refuses that, and the model it was trained on takes it."""
    torch.manual_seed(0)
    start = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=TASKS).eval()
    with torch.no_grad():  # an encoder trained (merged) before: its weights moved off the backbone's
        for parameter in start.encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    start_folder = tmp_path / "start"
    start.save_pretrained(start_folder)
    apply_adapter(start, {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]})
    with torch.no_grad():
        for name, parameter in start.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    embeddings = start.encode(TEXTS)
    folder = tmp_path / "out"
    merge_and_save_adapter(start, str(folder), "start")
    with pytest.raises(ValueError, match="would apply the adapter twice"):  # merged in place: base + adapter
        start.load_adapter(str(folder / "adapter"))

    plain = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=TASKS)
    with pytest.raises(ValueError, match="trained on an encoder whose weights differ from this model's"):
        plain.load_adapter(str(folder / "adapter"))
    assert not any("lora_" in name for name, _ in plain.encoder.named_parameters())  # left as it was

    own = MultiTaskEncoderModel.from_pretrained(start_folder).eval()
    own.load_adapter(str(folder / "adapter"))
    np.testing.assert_allclose(own.encode(TEXTS), embeddings, atol=1e-5, rtol=0)
    own.load_adapter(str(folder / "adapter"), adapter_name="second")  # a second adapter on the same base
    assert {"default", "second"} <= set(own.encoder.peft_config)
