"""PEFT adapters (LoRA, IA3, LoHa, ...) on the encoder: the heads and the projection train in full, the encoder
through the adapter.

    peft:                   # a training config's block (or ModelArguments(peft={...}) in Python)
      type: lora            # any PEFT tuner that can be merged (not prompt learning); default lora
      r: 8
      alpha: 16             # lora: lora_alpha
      dropout: 0.1          # lora: lora_dropout
      target_modules: [query, key, value]   # or all-linear; default: PEFT's choice for the backbone type

The adapter wraps `model.encoder` only (`get_peft_model(model.encoder, ...)`), so the model stays a
`MultiTaskEncoderModel`: MultiTaskTrainer, its learning-rate groups and checkpoints work unchanged. At the end
of a run `merge_and_save_adapter` writes the adapter alone to `adapter/` (a standard PEFT adapter of the plain
backbone, with the heads it was trained with beside it in `multitask_heads.safetensors`) and merges it into the
encoder, so the saved folder is an ordinary model that loads anywhere
(sentence-transformers and the pipelines included), without peft.

peft is optional: `pip install 'multitask-encoder[peft]'`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from safetensors.torch import save_file

from .model.modeling_multitask_encoder import (
    ADAPTER_BASE_DIGEST_KEY,
    ADAPTER_HEADS_FILENAME,
    encoder_weights_sha256,
)

ADAPTER_DIR = "adapter"
INSTALL_HINT = "pip install 'multitask-encoder[peft]'"
# Our short names -> PEFT's LoRA argument names.
LORA_NAMES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}


def parse_adapter_block(block: Any) -> dict[str, Any] | None:
    """The `peft:` block as a dict (a JSON string from the command line is parsed), its `type` filled in."""
    if block is None:
        return None
    if isinstance(block, str):
        try:
            block = json.loads(block)
        except json.JSONDecodeError as error:
            raise ValueError(f"--peft must be a JSON object (e.g. '{{\"r\": 8}}'): {error.msg}.") from None
    if not isinstance(block, dict):
        raise ValueError(f"peft must be a mapping of adapter options, got {block!r}.")
    block = {"type": "lora", **block}
    if not isinstance(block["type"], str):
        raise ValueError(
            f"peft type must be a PEFT tuner name (lora, ia3, loha, ...), got {block['type']!r}."
        )
    return block


def peft_config(block: dict[str, Any]):
    """The PEFT config of a parsed block; refuses what peft does not know and what cannot be merged."""
    try:
        from peft import PeftType, get_peft_config
    except ImportError:
        raise ImportError(f"a peft: block needs the peft package: {INSTALL_HINT}") from None
    known = sorted(peft_type.value.lower() for peft_type in PeftType)
    if block["type"].lower() not in known:
        raise ValueError(
            f"peft type {block['type']!r} is not a PEFT tuner; the tuners are {', '.join(known)}."
        )
    options = {key: value for key, value in block.items() if key != "type"}
    if block["type"].lower() == "lora":
        options = {LORA_NAMES.get(key, key): value for key, value in options.items()}
    try:
        config = get_peft_config({"peft_type": block["type"].upper(), **options})
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"peft block {block}: {type(error).__name__}: {error}") from None
    if config.is_prompt_learning:
        raise ValueError(
            f"peft type {block['type']!r} is prompt learning, which cannot be merged into the encoder."
        )
    return config


def apply_adapter(model, block: dict[str, Any]) -> None:
    """Wrap `model.encoder` in the adapter of `block`; its base weights freeze, the heads keep training. The
    digest of the weights it wraps is kept (`model.adapter_base_sha256`), saved with the adapter for
    `load_adapter` to refuse other base weights."""
    from peft import get_peft_model

    model.adapter_base_sha256 = model.adapter_base_sha256 or encoder_weights_sha256(model.encoder)
    model.encoder = get_peft_model(model.encoder, peft_config(block))


def has_adapter(model) -> bool:
    return hasattr(model.encoder, "merge_and_unload") and hasattr(model.encoder, "peft_config")


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts of the model."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def merge_adapter(model) -> None:
    """Merge the encoder's adapter into its weights in place: the model is an ordinary `MultiTaskEncoderModel`
    again, whose config records it (`merged_adapter`: its `load_adapter` refuses to apply the adapter twice)."""
    model.encoder = model.encoder.merge_and_unload()
    model.config.merged_adapter = ADAPTER_DIR
    model.adapter_base_sha256 = None  # the weights are base + adapter now: no adapter is a difference to them


def merge_and_save_adapter(model, output_dir: str, base_model_name: str | None) -> None:
    """Write the adapter alone to `output_dir/adapter/` (for the backbone `base_model_name`) with every weight
    outside the encoder (heads, projection, ...) beside it in `multitask_heads.safetensors`, so that
    `MultiTaskEncoderModel.from_backbone(...).load_adapter(output_dir/adapter)` is the trained model, unmerged;
    then merge it into the encoder (`merge_adapter`)."""
    encoder = model.encoder
    for config in encoder.peft_config.values():
        config.base_model_name_or_path = base_model_name  # not the local path the backbone was read from
    folder = os.path.join(output_dir, ADAPTER_DIR)
    # The embedding layer is never resized here: peft need not look for the base model's config (which a
    # folder name recorded instead of its local path would not find) to decide whether to save it.
    encoder.save_pretrained(folder, save_embedding_layers=False)
    readme = os.path.join(folder, "README.md")  # peft's generic template; the model card is the card
    if os.path.isfile(readme):
        os.remove(readme)
    heads = {
        key: tensor.detach().contiguous()
        for key, tensor in model.state_dict().items()
        if not key.startswith("encoder.")
    }
    base = model.adapter_base_sha256
    metadata = {ADAPTER_BASE_DIGEST_KEY: base} if base else None
    save_file(heads, os.path.join(folder, ADAPTER_HEADS_FILENAME), metadata=metadata)
    merge_adapter(model)


__all__ = [
    "ADAPTER_DIR",
    "apply_adapter",
    "has_adapter",
    "merge_adapter",
    "merge_and_save_adapter",
    "parse_adapter_block",
    "peft_config",
    "trainable_parameters",
]
