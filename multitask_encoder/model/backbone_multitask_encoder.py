"""What a backbone gives `from_backbone` beyond its encoder weights, and the sentence-transformers format both
ways:

    published_backbone_name          the name a backbone is recorded by (never a local path)
    sentence_transformers_settings   a sentence-transformers backbone's pooling, Dense projection, normalisation
                                     and max_seq_length (its modules.json and module folders)
    backbone_setting                 one option of from_backbone: given, else the backbone's, else the default
    default_max_seq_length           the longest input a model built on a backbone takes when none is given
    load_dense_weights               a Dense module's weights into the model's projection
    sentence_transformers_files      the files a saved model writes so SentenceTransformer loads it as `encode`

Copied next to the weights with the modeling file (it imports only transformers, torch and its siblings).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file

from .configuration_multitask_encoder import PROJECTION_ACTIVATIONS, encoder_max_tokens

logger = logging.getLogger(__name__)


def published_backbone_name(name_or_path: str) -> str:
    """The name a backbone is recorded by in what a saved model publishes (config.json's `base_model_name` and
    the encoder's `_name_or_path`, the card, the adapter's config): a Hub id as given; a local folder by the Hub
    id it was downloaded as (a Hub cache snapshot, `.../models--org--name/snapshots/<commit>`), else by its
    folder's name as a relative path (`./name`: no Hub id, it loads from the folder's parent), so that no path
    of the training machine is written into a saved file."""
    if not os.path.isdir(name_or_path):
        return name_or_path
    parts = os.path.abspath(name_or_path).split(os.sep)
    for index, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[index + 1] == "snapshots":
            return part[len("models--") :].replace("--", "/")
    return "./" + os.path.basename(os.path.abspath(name_or_path))


# The sentence-transformers modules.json types `from_backbone` reproduces, in the only order it reproduces them
# (by the class name, the last part of the type: "sentence_transformers.models.Pooling" and
# "sentence_transformers.sentence_transformer.modules.Pooling" are both "Pooling"): the encoder, its pooling, a
# Dense layer (the projection with its activation), the normalisation. Any other module (LayerNorm,
# WeightedLayerPooling, a second Dense, ...) changes the embedding in a way this model does not reproduce, so such
# a backbone is refused by the module's name.
SENTENCE_TRANSFORMERS_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# 1_Pooling/config.json: the `pooling_mode` names (sentence-transformers >= 5.x), and the legacy boolean keys
# in the order sentence-transformers concatenates them -> this model's pooling modes (None: not supported).
SENTENCE_TRANSFORMERS_POOLING = {
    "cls": "cls",
    "max": "max",
    "mean": "mean",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "weightedmean": None,
    "lasttoken": None,
}
SENTENCE_TRANSFORMERS_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# The `from_pretrained` options that also say where a backbone's side files are (the rest is for the weights).
HUB_FILE_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")


def _backbone_json(name_or_path: str, filename: str, hub_kwargs: Mapping[str, Any]) -> Any:
    """The JSON of `filename` in the backbone (a folder or a Hub repo), None when it has no such file."""
    options = {key: value for key, value in hub_kwargs.items() if key in HUB_FILE_OPTIONS}
    path = cached_file(
        name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **options,
    )
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"Backbone {name_or_path}: {filename} is not valid JSON ({error}).") from None


def sentence_transformers_settings(name_or_path: str, **hub_kwargs: Any) -> dict[str, Any]:
    """What makes a sentence-transformers backbone's embedding its own, read from its modules.json,
    1_Pooling/config.json (pooling), a Dense module (2_Dense: the projection), 2_Normalize (normalisation) and
    sentence_bert_config.json (max_seq_length): {"pooling", "projection", "normalize", "max_seq_length"} (each
    only when the backbone says it; "projection" is the Dense layer's {"path", "out_features", "bias",
    "activation"}), {} for a plain encoder.

    `from_backbone` builds the model from these unless told otherwise, so that `encode` before training is
    `SentenceTransformer(backbone).encode`. A module this model cannot reproduce (a weighted-mean or last-token
    pooling, several poolings concatenated, a Dense layer with a residual or on the token states, modules in
    another order, an encoder in a subfolder) is refused, naming it: silently dropping it would give other
    embeddings than the backbone's."""
    settings: dict[str, Any] = {}
    sentence_bert_config = _backbone_json(name_or_path, "sentence_bert_config.json", hub_kwargs) or {}
    if sentence_bert_config.get("max_seq_length"):
        settings["max_seq_length"] = int(sentence_bert_config["max_seq_length"])
    modules = _backbone_json(name_or_path, "modules.json", hub_kwargs)
    if modules is None:
        return settings
    if not isinstance(modules, list):
        raise ValueError(f"Backbone {name_or_path}: modules.json is not a list of modules.")
    settings["normalize"] = False  # a sentence-transformers model normalises only with a Normalize module
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    supported = [kind for kind in kinds if kind in SENTENCE_TRANSFORMERS_MODULES]
    if supported == kinds and (
        len(set(kinds)) != len(kinds) or kinds != sorted(kinds, key=SENTENCE_TRANSFORMERS_MODULES.index)
    ):
        raise ValueError(
            f"Backbone {name_or_path}: its modules.json chains {kinds}, which this model does not reproduce (it "
            f"runs at most one of each, in the order {list(SENTENCE_TRANSFORMERS_MODULES)})."
        )
    for module, kind in zip(modules, kinds):
        path = module.get("path", "")
        if kind not in SENTENCE_TRANSFORMERS_MODULES:
            raise ValueError(
                f"Backbone {name_or_path}: its modules.json has a {kind or module.get('type')!r} module "
                f"({path or 'no path'}) after the encoder, which this model does not reproduce: its embeddings "
                f"would not be the backbone's. Supported modules: {list(SENTENCE_TRANSFORMERS_MODULES)}. To use "
                "the encoder alone, copy its config.json, weights and tokenizer files to a folder without "
                "modules.json."
            )
        if kind == "Transformer" and path:
            raise ValueError(
                f"Backbone {name_or_path}: its encoder is in the subfolder {path!r} (modules.json): give that "
                "subfolder as the backbone."
            )
        if kind == "Normalize":
            settings["normalize"] = True
        if kind == "Pooling":
            settings["pooling"] = _sentence_transformers_pooling(name_or_path, path, hub_kwargs)
        if kind == "Dense":
            settings["projection"] = _sentence_transformers_dense(name_or_path, path, hub_kwargs)
    return settings


def _sentence_transformers_dense(
    name_or_path: str, folder: str, hub_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The projection the backbone's Dense module (its `folder`/config.json) is: {"path", "out_features",
    "bias", "activation"}; its weights are read by `load_dense_weights`."""
    filename = f"{folder}/config.json"
    config = _backbone_json(name_or_path, filename, hub_kwargs)
    if not isinstance(config, dict) or "out_features" not in config:
        raise ValueError(f"Backbone {name_or_path}: its Dense module has no readable {filename}.")
    # "torch.nn.modules.activation.Tanh" -> "tanh"; sentence-transformers' default is Tanh.
    activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh")).rsplit(".", 1)[-1]
    activation = activation.lower()
    unsupported = [
        f"{key}={config[key]!r}"
        for key, wanted in (("module_input_name", "sentence_embedding"), ("use_residual", False))
        if config.get(key, wanted) != wanted
    ]
    if config.get("module_output_name") not in (None, config.get("module_input_name", "sentence_embedding")):
        unsupported.append(f"module_output_name={config['module_output_name']!r}")
    if activation not in PROJECTION_ACTIVATIONS:
        unsupported.append(f"activation_function={config.get('activation_function')!r}")
    if unsupported:
        raise ValueError(
            f"Backbone {name_or_path}: its Dense module ({filename}) has {', '.join(unsupported)}, which this model "
            f"does not reproduce (a linear layer on the sentence embedding with one of the activations "
            f"{list(PROJECTION_ACTIVATIONS)})."
        )
    return {
        "path": folder,
        "out_features": int(config["out_features"]),
        "bias": bool(config.get("bias", True)),
        "activation": activation,
    }


def load_dense_weights(
    projection: nn.Linear, name_or_path: str, folder: str, hub_kwargs: Mapping[str, Any]
) -> None:
    """The backbone's Dense weights (`folder`/model.safetensors, else its pytorch_model.bin, read with
    weights_only) into `projection`."""
    options = {key: value for key, value in hub_kwargs.items() if key in HUB_FILE_OPTIONS}
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = cached_file(
            name_or_path,
            f"{folder}/{filename}",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **options,
        )
        if path is not None:
            break
    else:
        raise ValueError(f"Backbone {name_or_path}: its Dense module {folder} has no weights file.")
    state = {key.removeprefix("linear."): value for key, value in load_state_dict(path).items()}
    wanted = projection.state_dict()
    if state.keys() != wanted.keys() or any(state[key].shape != wanted[key].shape for key in wanted):
        found = {key: list(value.shape) for key, value in state.items()}
        raise ValueError(
            f"Backbone {name_or_path}: the Dense weights in {folder} ({found}) do not fit a projection of its "
            f"pooled embedding ({ {key: list(value.shape) for key, value in wanted.items()} })."
        )
    projection.load_state_dict(state)


def _sentence_transformers_pooling(name_or_path: str, folder: str, hub_kwargs: Mapping[str, Any]) -> str:
    """This model's pooling mode for the backbone's Pooling module (its `folder`/config.json)."""
    filename = f"{folder}/config.json" if folder else "config.json"
    config = _backbone_json(name_or_path, filename, hub_kwargs)
    if not isinstance(config, dict):
        raise ValueError(f"Backbone {name_or_path}: its Pooling module has no readable {filename}.")
    modes = config.get("pooling_mode")
    if modes is None:  # the legacy boolean keys; none set means mean, as sentence-transformers reads them
        modes = [mode for key, mode in SENTENCE_TRANSFORMERS_LEGACY_POOLING.items() if config.get(key)]
        modes = modes or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    pooling = SENTENCE_TRANSFORMERS_POOLING.get(modes[0]) if len(modes) == 1 else None
    if pooling is None:
        raise ValueError(
            f"Backbone {name_or_path}: {filename} pools with {modes}, which this model does not reproduce "
            f"(it pools with one of {sorted(k for k, v in SENTENCE_TRANSFORMERS_POOLING.items() if v)})."
        )
    return pooling


def backbone_setting(
    name: str, given: Any, backbone: Mapping[str, Any], default: Any, backbone_name: Any
) -> Any:
    """`from_backbone`'s value of setting `name`: the one given, else the sentence-transformers backbone's, else
    `default`. A given value that differs from the backbone's is logged: the model then starts from other
    embeddings than the backbone's."""
    if name not in backbone:
        return default if given is None else given
    if given is None:
        logger.info(
            f"{name}={backbone[name]!r}: read from the sentence-transformers backbone {backbone_name}."
        )
        return backbone[name]
    if given != backbone[name]:
        logger.warning(
            f"{name}={given!r} (given) overrides the sentence-transformers backbone {backbone_name}'s "
            f"{name}={backbone[name]!r}: the embeddings before training are not the backbone's."
        )
    return given


def default_max_seq_length(
    settings: Mapping[str, Any], tokenizer: Any, encoder_config: PretrainedConfig
) -> int | None:
    """The longest input of a model built on a backbone when none is given: the sentence-transformers backbone's
    `max_seq_length` (its `settings`), else its tokenizer's `model_max_length`, never more than the encoder's
    position embeddings hold (None when nothing limits it). `from_backbone` and the training job both take it, so
    a model trained without `max_seq_length` is the model `from_backbone` builds."""
    limit = encoder_max_tokens(encoder_config)
    if settings.get("max_seq_length"):
        return int(settings["max_seq_length"])  # checked against the encoder by check_fits_encoder
    own = getattr(tokenizer, "model_max_length", None)
    own = int(own) if isinstance(own, (int, float)) and own < 10**9 else None  # 1e30: "no limit" in HF
    if own is None or limit is None:
        return own if limit is None else limit
    return min(own, limit)


def sentence_transformers_files(max_seq_length: int) -> dict[str, Any]:
    """What sentence-transformers reads to load a folder as one Transformer module that calls `forward` and
    takes its `embeddings` as the sentence embedding (no pooling or normalisation of its own on top). Unpadded
    (flattened) batches are off: they would pass arguments `forward` does not take."""
    return {
        "modules.json": [
            {
                "idx": 0,
                "name": "0",
                "path": "",
                "type": "sentence_transformers.base.modules.transformer.Transformer",
            }
        ],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "embeddings"}},
            "module_output_name": "sentence_embedding",
            "max_seq_length": max_seq_length,
            "unpad_inputs": False,
        },
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
