"""The packaged default backbone: found, verified against the official sha256, and refused when tampered."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from multitask_encoder import backbone
from multitask_encoder.backbone import (
    DEFAULT_BACKBONE_HUB_ID,
    OFFICIAL_SHA256,
    default_backbone,
    resolve_backbone,
    sha256_of,
    verify_packaged_backbone,
)


@pytest.fixture(scope="module")
def tampered_copy(minilm_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full copy of the packaged folder with one byte of model.safetensors flipped, mid-tensor data."""
    copy = tmp_path_factory.mktemp("tampered") / "model"
    shutil.copytree(minilm_path, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(os.path.getsize(weights) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return copy


@pytest.fixture
def fresh_verification_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which folders this process already verified, so the check really runs."""
    monkeypatch.setattr(backbone, "_verified", set())


def test_default_backbone_is_the_verified_packaged_folder(
    minilm_path: str, monkeypatch: pytest.MonkeyPatch, fresh_verification_cache: None
) -> None:
    hashed: list[str] = []

    def spy_sha256(path: str) -> str:
        hashed.append(path)
        return sha256_of(path)

    monkeypatch.setattr(backbone, "sha256_of", spy_sha256)
    path = default_backbone()
    assert path == minilm_path
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    assert os.path.isfile(os.path.join(path, "tokenizer.json"))
    assert hashed == [os.path.join(minilm_path, "model.safetensors")]  # really hashed the weights...
    assert default_backbone() == minilm_path
    assert len(hashed) == 1  # ...once per process


def test_packaged_weights_are_the_official_ones(minilm_path: str) -> None:
    assert sha256_of(os.path.join(minilm_path, "model.safetensors")) == OFFICIAL_SHA256


def test_default_backbone_refuses_weights_with_another_hash(
    monkeypatch: pytest.MonkeyPatch, fresh_verification_cache: None
) -> None:
    monkeypatch.setattr(backbone, "sha256_of", lambda path: "0" * 64)
    with pytest.raises(ValueError, match="Refusing the packaged backbone"):
        default_backbone()


def test_flipped_byte_is_refused_naming_file_and_both_hashes(tampered_copy: Path) -> None:
    weights = tampered_copy / "model.safetensors"
    actual = sha256_of(str(weights))
    assert actual != OFFICIAL_SHA256
    with pytest.raises(ValueError) as error:
        verify_packaged_backbone(str(tampered_copy))
    message = str(error.value)
    assert str(weights) in message
    assert actual in message
    assert OFFICIAL_SHA256 in message
    # Refused every time, not only the first.
    with pytest.raises(ValueError):
        verify_packaged_backbone(str(tampered_copy))


def test_untouched_copy_passes_and_missing_weights_are_refused(minilm_path: str, tmp_path: Path) -> None:
    # Only the weights matter for the check; copying the one file keeps this test cheap.
    intact = tmp_path / "intact"
    intact.mkdir()
    shutil.copy(os.path.join(minilm_path, "model.safetensors"), intact / "model.safetensors")
    verify_packaged_backbone(str(intact))

    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        verify_packaged_backbone(str(tmp_path / "empty"))


def test_tampered_packaged_folder_is_refused_by_resolve_backbone(
    tampered_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the wheel installed the tampered copy: the default, and the folder named explicitly, are refused.
    monkeypatch.setattr(backbone, "packaged_backbone_path", lambda: str(tampered_copy))
    with pytest.raises(ValueError, match="Refusing"):
        resolve_backbone(None)
    with pytest.raises(ValueError, match="Refusing"):
        resolve_backbone(DEFAULT_BACKBONE_HUB_ID)
    with pytest.raises(ValueError, match="Refusing"):
        resolve_backbone(str(tampered_copy))


def test_resolve_backbone(minilm_path: str, tiny_backbone: str) -> None:
    assert resolve_backbone(None) == minilm_path
    assert resolve_backbone(DEFAULT_BACKBONE_HUB_ID) == minilm_path
    assert resolve_backbone(minilm_path) == minilm_path  # named explicitly: verified, returned as given
    # Anything else is returned unchanged (no lookup, no download).
    assert (
        resolve_backbone("sentence-transformers/all-mpnet-base-v2")
        == "sentence-transformers/all-mpnet-base-v2"
    )
    assert resolve_backbone("bert-base-uncased") == "bert-base-uncased"
    assert resolve_backbone(tiny_backbone) == tiny_backbone
    assert resolve_backbone(Path(tiny_backbone)) == tiny_backbone


def test_public_backbone_name_hides_local_paths(minilm_path: str, tiny_backbone: str, tmp_path: Path) -> None:
    assert backbone.public_backbone_name(None) == DEFAULT_BACKBONE_HUB_ID
    assert backbone.public_backbone_name(minilm_path) == DEFAULT_BACKBONE_HUB_ID
    assert backbone.public_backbone_name(minilm_path + "/") == DEFAULT_BACKBONE_HUB_ID
    # Another folder: its name only (no path of this machine is published); a Hub cache snapshot: its Hub id.
    assert backbone.public_backbone_name(tiny_backbone) == "./" + os.path.basename(tiny_backbone)
    snapshot = (
        tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / "5c38ec7c405ec4b44b94cc5a9bb"
    )
    snapshot.mkdir(parents=True)
    assert backbone.public_backbone_name(str(snapshot)) == "BAAI/bge-small-en-v1.5"
    assert backbone.public_backbone_name("bert-base-uncased") == "bert-base-uncased"


def test_without_the_wheel_the_default_is_the_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone, "packaged_backbone_path", lambda: None)
    assert default_backbone() == DEFAULT_BACKBONE_HUB_ID
    assert resolve_backbone(None) == DEFAULT_BACKBONE_HUB_ID
