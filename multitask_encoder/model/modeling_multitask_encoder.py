"""Multi-task sentence encoder: a pretrained encoder, pooled into one sentence embedding, read by a dict
of task heads, all in one forward pass.

    input_ids [batch, seq] ─► encoder ─► token states [batch, seq, hidden] ─┬─► token heads ─► [batch, seq, n_tags]
                                                                           │
                                           Pooling ─► Projection? ─► L2? ─┴─► embeddings [batch, dim]
                                                                                  └─► sentence heads ─► [batch, n]

A head may instead read a learned scalar mix of several hidden layers (head `layers`: ELMo / UDify): the same
single encoder pass then also returns those hidden states (`output_hidden_states`); token heads mix the token
states, sentence heads the layers each pooled. The embedding stays the last layer's.

This file is copied next to the weights by `save_pretrained`, so a saved model loads with
`trust_remote_code=True` on a machine without the `multitask_encoder` package: it imports only torch,
transformers, the standard library and its sibling files. What differs between task types (the head's input,
the loss, decoding into `predict`'s dicts) is asked of `spec.task_type` (tasks_multitask_encoder.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.modeling_utils import load_state_dict
from transformers.utils import ModelOutput, cached_file

from .backbone_multitask_encoder import (
    HUB_FILE_OPTIONS,
    backbone_setting,
    default_max_seq_length,
    load_dense_weights,
    published_backbone_name,
    sentence_transformers_files,
    sentence_transformers_settings,
)
from .configuration_multitask_encoder import MultiTaskEncoderConfig, check_fits_encoder, usable_max_seq_length
from .inference_multitask_encoder import (
    MODEL_INPUT_NAMES,
    SERVING_MODES,
    ServingPlan,
    TextBatch,
    build_serving_plan,
    encoder_hidden_states,
    split_layers,
)
from .predict_multitask_encoder import (
    as_pairs,
    check_texts,
    encode,
    label_text_embeddings,
    postprocess,
    predict,
    preprocess,
    save_tokenizer,
    similarity,
    task_spec,
    tasks_for,
)
from .tasks_multitask_encoder import EncoderFeatures, HeadSpec, TaskSpec, parse_task_spec

logger = logging.getLogger(__name__)

PROJECTION_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}

# Beside a PEFT adapter of the encoder (`adapter/` of a model trained with `peft:`): every weight of the model
# outside the encoder (heads, projection, ...), which the adapter of the encoder alone does not hold.
ADAPTER_HEADS_FILENAME = "multitask_heads.safetensors"
# The heads file's metadata key holding `encoder_weights_sha256` of the encoder the adapter was trained on.
ADAPTER_BASE_DIGEST_KEY = "base_encoder_sha256"


def encoder_weights_sha256(encoder: nn.Module) -> str:
    """A digest of an encoder's weights (the float32 values of its parameters, by name): an adapter is a
    difference to the exact weights it was trained on, and loading it onto others builds another model."""
    digest = hashlib.sha256()
    for name, parameter in sorted(encoder.named_parameters()):
        values = parameter.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)}".encode())
        digest.update(memoryview(values.numpy()))
    return digest.hexdigest()


def safetensors_metadata(path: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (its header: an 8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length)).get("__metadata__") or {}


@dataclass
class MultiTaskEncoderOutput(ModelOutput):
    """Output of [`MultiTaskEncoderModel.forward`].

    Besides the fields below, it holds one `<task>_logits` entry per task that ran, in the order of
    `config.tasks` (so the Trainer's prediction tuple is stable):
    sentence tasks `[batch, num_outputs]`, token tasks `[batch, seq, num_tags]`.

    Args:
        loss: weighted sum of the losses of the tasks that have labels in this batch (scalar).
        embeddings: the sentence embeddings the heads read, `[batch, embedding_size]`.
        task_losses: per-task loss (detached), only for tasks with labels in this batch.
    """

    loss: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    task_losses: dict[str, torch.Tensor] | None = None


class Pooling(nn.Module):
    """Token states `[batch, seq, hidden]` + attention mask `[batch, seq]` -> sentence vector `[batch, hidden]`."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return token_states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
        if self.mode == "max":
            # Padding must never win the max: push it to the dtype's lowest value.
            masked = token_states.masked_fill(mask == 0, torch.finfo(token_states.dtype).min)
            return masked.max(dim=1).values
        summed = (token_states * mask).sum(dim=1)
        lengths = mask.sum(dim=1).clamp(min=1.0)
        if self.mode == "mean_sqrt_len":
            return summed / lengths.sqrt()
        return summed / lengths  # mean

    def pool_layers(self, layers: Iterable[torch.Tensor], attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Several layers' token states `[batch, seq, hidden]`, each pooled as `forward` pools it (equal up to
        float rounding). The mean poolings are one `[batch, 1, seq] x [batch, seq, hidden]` product per layer,
        without `forward`'s masked `[batch, seq, hidden]` temporary: pooling every layer for a mixing head
        then costs next to nothing beside the encoder."""
        layers = list(layers)
        if self.mode in ("cls", "max") or not layers:
            return [self(states, attention_mask) for states in layers]
        mask = attention_mask.to(layers[0].dtype)
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        weights = (mask / (lengths.sqrt() if self.mode == "mean_sqrt_len" else lengths)).unsqueeze(1)
        return [torch.bmm(weights, states).squeeze(1) for states in layers]


class ScalarMix(nn.Module):
    """Hidden layers `[layers, ...]` -> their learned mix `[...]` (ELMo, Peters et al. 2018; UDify):
    `gamma * sum_l softmax(weights)_l * layer_l`, one weight per layer (init 0: uniform) and a scale `gamma`
    (init 1). With `normalize` (sentence heads of a model that normalises its embedding) the sum is
    L2-normalised before the scale (which a normalisation after it would undo, leaving gamma untrained)."""

    def __init__(self, num_layers: int, normalize: bool = False) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(1))
        self.normalize = normalize

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.weights, dim=0).to(layers.dtype)
        mixed = torch.einsum("l,l...->...", weights, layers)
        if self.normalize:
            mixed = F.normalize(mixed, p=2, dim=-1)
        return self.gamma.to(layers.dtype) * mixed


class TaskHead(nn.Module):
    """Features `[..., in_features]` -> logits `[..., num_outputs]`: a linear layer or a two-layer MLP.

    A head whose spec mixes layers (`layers` other than `last`) also holds its `ScalarMix` as `mix` and the
    hidden-state indices it mixes as `layers` (None otherwise); the task type feeds it the mix
    (`EncoderFeatures.layer_mix`)."""

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        spec: HeadSpec,
        layers: tuple[int, ...] | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.layers = layers
        self.mix = ScalarMix(len(layers), normalize) if layers else None
        self.dropout = nn.Dropout(spec.dropout)
        if spec.type == "mlp":
            hidden = spec.hidden_size or in_features
            activation = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}[spec.activation]
            self.hidden = nn.Sequential(
                nn.Linear(in_features, hidden), activation(), nn.Dropout(spec.dropout)
            )
            in_features = hidden
        else:
            self.hidden = nn.Identity()
        self.out = nn.Linear(in_features, num_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.dropout(features)))


class MultiTaskEncoderPreTrainedModel(PreTrainedModel):
    config_class = MultiTaskEncoderConfig
    config: MultiTaskEncoderConfig
    base_model_prefix = "multitask_encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`, stricter in the ways that protect users of shared checkpoints:

        - only safetensors weights are read by default (never a pickle), unless `use_safetensors=False`;
        - weights that do not match the config fail loudly, naming the keys: a head the config declares but
          the checkpoint lacks (it would be silently re-initialised at random), checkpoint weights the config
          has no place for (silently dropped), a head whose shape is not the config's (labels edited);
        - weights holding NaN or infinity are refused.
        """
        kwargs.setdefault("use_safetensors", True)
        wants_info = kwargs.pop("output_loading_info", False)
        kwargs.pop("trust_remote_code", None)  # the Auto classes decided it already
        # Mismatched shapes are reported below, naming the task, instead of deep inside transformers.
        kwargs.setdefault("ignore_mismatched_sizes", True)
        source = pretrained_model_name_or_path
        try:
            model, info = super().from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
        except OSError as error:
            if os.path.isfile(os.path.join(str(source), "model.onnx")):
                raise ValueError(
                    f"{source} is an ONNX export of a multitask-encoder model (export_onnx): it holds model.onnx, "
                    "not torch weights, so it does not load as a torch model. Serve it with ONNX Runtime or "
                    "OpenVINO (its config.json `postprocessing` says how to decode each task; see docs/onnx.md), "
                    "or load the model folder it was exported from."
                ) from error
            raise
        problems = []
        if info.get("mismatched_keys"):
            shapes = [
                f"{key} is {list(saved)} in the weights but {list(wanted)} for config.json"
                for key, saved, wanted in info["mismatched_keys"]
            ]
            problems.append("; ".join(shapes))
        if info.get("missing_keys"):
            problems.append(f"weights missing from the checkpoint: {sorted(info['missing_keys'])}")
        if info.get("unexpected_keys"):
            problems.append(
                f"checkpoint weights the config has no place for: {sorted(info['unexpected_keys'])}"
            )
        tasks = model.config.tasks
        if problems:
            raise ValueError(
                f"The checkpoint {source} does not match its config (tasks {list(tasks)}, labels "
                f"{ {name: len(spec.labels) for name, spec in tasks.items()} }): "
                + "; ".join(problems)
                + ". Was config.json edited (a task's labels changed?), or the weights saved from another model?"
            )
        broken = model.non_finite_weights()
        if broken:
            raise ValueError(
                f"The weights of {source} hold NaN or infinite values in {broken[:5]}"
                + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
                + ": the weights file is damaged (or the model diverged in training)."
            )
        if not getattr(model.config, "auto_map", None):
            logger.warning(
                f"{source}: config.json has no auto_map, so the folder will not load with "
                "trust_remote_code=True where the multitask_encoder package is not installed. Re-save it with "
                "save_pretrained."
            )
        return (model, info) if wants_info else model

    @torch.no_grad()
    def non_finite_weights(self) -> list[str]:
        """The names of the weight tensors holding a NaN or an infinite value, in state_dict order (empty for a
        sound model). Loading checks it, and training checks it before saving."""
        return [
            name
            for name, tensor in self.state_dict().items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()
        ]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Heads and projection are ours; encoder modules are initialised by the encoder's own rules (and
        # then overwritten by the pretrained weights in from_backbone / from_pretrained).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ScalarMix):  # uniform weights, scale 1
            nn.init.zeros_(module.weights)
            nn.init.ones_(module.gamma)
        elif isinstance(module, MultiTaskEncoderModel) and module.task_log_vars is not None:
            nn.init.zeros_(module.task_log_vars)


class MultiTaskEncoderModel(MultiTaskEncoderPreTrainedModel):
    """One shared encoder, pooled into a sentence embedding, and one head per task (see the module docstring).

    Build it from any pretrained HF encoder with [`from_backbone`], train it with the HF `Trainer`, save it
    with `save_pretrained` (weights, config, code and tokenizer) and load it anywhere with
    `AutoModel.from_pretrained(path_or_repo, trust_remote_code=True)`.
    """

    # How `from_backbone` reads a backbone name: name_or_path -> (what to load, the public name to record). The
    # package sets it (multitask_encoder/backbone.py: the packaged default, sha256-checked); this file never imports
    # the package, so a saved model's own copy takes names as given.
    backbone_resolver: ClassVar[Callable[[str | None], tuple[str, str | None]] | None] = None

    def __init__(self, config: MultiTaskEncoderConfig) -> None:
        super().__init__(config)
        config.validate_for_model()
        self.encoder = AutoModel.from_config(config.encoder_config)
        # We pool ourselves; a backbone pooler (BERT's tanh layer) would be dead weight, and parameters
        # that get no gradient break DDP unless find_unused_parameters is on.
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        hidden_size = config.encoder_config.hidden_size
        self.pooling = Pooling(config.pooling)
        self.projection = (
            nn.Linear(hidden_size, config.projection_dim, bias=config.projection_bias)
            if config.projection_dim
            else None
        )
        # No weights: the activation after the projection (a sentence-transformers Dense layer's).
        self.projection_activation = PROJECTION_ACTIVATION_MODULES[config.projection_activation]()
        # One head per task; similarity and contrastive tasks have none (they score the embeddings themselves).
        self.heads = nn.ModuleDict(
            {
                name: self._new_head(spec, in_features)
                for name, spec in config.tasks.items()
                if (in_features := spec.task_type.head_in_features(spec, hidden_size, config.embedding_size))
            }
        )
        self.task_log_vars = (
            nn.Parameter(torch.zeros(len(config.tasks))) if config.loss_weighting == "uncertainty" else None
        )
        self._tokenizer = None
        self._trust_remote_code = (
            False  # may the tokenizer run code from the model's folder (from_pretrained)
        )
        self._warned_truncation = False
        # sha256 of the encoder weights its adapters are a difference to (apply_adapter, load_adapter): set
        # before the first adapter wraps the encoder, whose state dict then holds the adapter too.
        self.adapter_base_sha256: str | None = None
        self.post_init()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | None = None,
        tasks: dict[str, Any] | list[dict[str, Any]] | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        projection_dim: int | None = None,
        loss_weighting: str = "static",
        max_seq_length: int | None = None,
        attn_implementation: str | None = None,
        **hub_kwargs: Any,
    ) -> MultiTaskEncoderModel:
        """A model whose encoder holds the pretrained weights of `name_or_path` (a Hub id or a local folder
        with a BERT-like encoder) and whose heads are freshly initialised. The backbone's tokenizer is
        attached and saved with the model. `hub_kwargs` (revision, token, ...) go to `from_pretrained`.

        A sentence-transformers backbone keeps what makes its embedding its own: `pooling`, `normalize`,
        `projection_dim` and `max_seq_length` left at None are read from its modules.json, 1_Pooling/config.json,
        a Dense module (the projection, with its weights, bias and activation), 2_Normalize and
        sentence_bert_config.json (`sentence_transformers_settings`), so that `encode` before training is
        `SentenceTransformer(backbone).encode`; a value given here overrides the backbone's (logged). A plain
        encoder pools with `mean` and normalises. A backbone with modules this model does not reproduce
        (weighted-mean pooling, a LayerNorm module, ...) is refused, naming the module.

        With the `multitask_encoder` package imported (it sets `backbone_resolver`), `None` (or the
        all-MiniLM-L6-v2 Hub id) means the packaged all-MiniLM-L6-v2 copy, checked against the official sha256
        before use.
        """
        base_model_name = None if name_or_path is None else published_backbone_name(str(name_or_path))
        if cls.backbone_resolver is not None:
            name_or_path, base_model_name = cls.backbone_resolver(name_or_path)
        if name_or_path is None:
            raise ValueError("from_backbone needs a backbone name or path.")
        if not tasks:
            raise ValueError("from_backbone needs at least one task in `tasks`.")
        encoder_config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        if encoder_config.model_type == MultiTaskEncoderConfig.model_type:
            raise ValueError(
                f"{name_or_path} is a trained multitask-encoder model, not a backbone: to keep its encoder, heads "
                "and labels and add tasks, load it (MultiTaskEncoderModel.from_pretrained) and call "
                "model.add_task(name, spec), or give `init_from:` in a training config."
            )
        # Saved nested in config.json (and published): the backbone's Hub id or folder name, never a local path.
        encoder_config._name_or_path = base_model_name or ""
        backbone = sentence_transformers_settings(name_or_path, **hub_kwargs)
        pooling = backbone_setting("pooling", pooling, backbone, "mean", base_model_name)
        normalize = backbone_setting("normalize", normalize, backbone, True, base_model_name)
        dense = backbone.get("projection")
        if dense is not None:
            backbone["projection_dim"] = dense["out_features"]
        projection_dim = backbone_setting("projection_dim", projection_dim, backbone, None, base_model_name)
        if projection_dim != (dense or {}).get("out_features"):
            dense = None  # a projection of another size: new, as for any backbone
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
        if (
            max_seq_length is None
        ):  # a number from here on: saved with the model and in its sentence-transformers files
            max_seq_length = default_max_seq_length(backbone, tokenizer, encoder_config)
        check_fits_encoder(max_seq_length, encoder_config, "the encoder")
        config = MultiTaskEncoderConfig(
            encoder_config=encoder_config,
            pooling=pooling,
            normalize=normalize,
            projection_dim=projection_dim,
            projection_activation=dense["activation"] if dense else "identity",
            projection_bias=dense["bias"] if dense else True,
            tasks=tasks,
            loss_weighting=loss_weighting,
            max_seq_length=max_seq_length,
            base_model_name=base_model_name,
        )
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        model = cls(config)
        pretrained = AutoModel.from_pretrained(
            name_or_path, attn_implementation=attn_implementation, **hub_kwargs
        )
        state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("pooler.")}
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Backbone {name_or_path!r} does not fit its own config: missing {missing}, unexpected {unexpected}."
            )
        if dense is not None:
            load_dense_weights(model.projection, name_or_path, dense["path"], hub_kwargs)
        model.tokenizer = tokenizer
        # The padding id the tokenizer uses; without it the Trainer "aligns" config and tokenizer, noisily.
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """The strict `MultiTaskEncoderPreTrainedModel.from_pretrained`, then the tokenizer, loaded now with the
        trust decision made for the model (`trust_remote_code`, or whether the model's own class came from the
        folder's code) and refused when its vocabulary does not fit the encoder's embedding matrix (damaged or
        missing tokenizer files)."""
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        remote = type(model).__module__.startswith("transformers_modules.")
        model._trust_remote_code = bool(trust_remote_code) if trust_remote_code is not None else remote
        model._tokenizer = model._load_tokenizer(pretrained_model_name_or_path)
        return (model, info) if wants_info else model

    @property
    def tokenizer(self):
        """The tokenizer saved with the model (loaded with the model by `from_pretrained`)."""
        if self._tokenizer is None:
            source = self.config.name_or_path
            if not source:
                raise ValueError(
                    "This model has no tokenizer: set `model.tokenizer = ...` or load a saved model."
                )
            self._tokenizer = self._load_tokenizer(source)
        return self._tokenizer

    def _load_tokenizer(self, source: str):
        """The tokenizer saved at `source`, at the weights' commit, run with the model's trust decision and
        checked against the encoder's vocabulary."""
        # The commit the weights came from (None for a local folder): a model loaded with a pinned `revision`
        # must not pair with the tokenizer of a later push.
        revision = getattr(self.config, "_commit_hash", None)
        trust = getattr(self, "_trust_remote_code", False)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust, revision=revision)
        except ValueError as error:
            if "trust_remote_code" not in str(error):
                raise ValueError(
                    f"Cannot read the tokenizer files of {source} (tokenizer.json, tokenizer_config.json, ...): "
                    f"{type(error).__name__}: {error}"
                ) from None
            raise ValueError(
                f"The tokenizer of {source} needs code from its folder (tokenizer_config.json names custom "
                "classes), which runs only when you trust it: load the model with trust_remote_code=True after "
                "reading that code, or replace the tokenizer files."
            ) from None
        except Exception as error:  # a damaged tokenizer.json surfaces as various tokenizers/json errors
            raise ValueError(
                f"Cannot read the tokenizer files of {source}: {type(error).__name__}: {error}"
            ) from None
        vocab_size = getattr(self.config.encoder_config, "vocab_size", None)
        if vocab_size and not vocab_size // 2 <= len(tokenizer) <= vocab_size:
            raise ValueError(
                f"The tokenizer of {source} has {len(tokenizer)} tokens, but the encoder's embedding matrix has "
                f"{vocab_size} rows: its tokenizer files (tokenizer.json, vocab.txt, ...) are missing or damaged "
                "or belong to another model, and every prediction would be garbage."
            )
        return tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained` (safetensors, config, code files) plus what lets every HF entry
        point load the folder:

        - the tokenizer, its `model_max_length` set to `max_seq_length` (the standard pipelines truncate there);
        - the `multitask-text-classification` pipeline: `config.custom_pipelines` names it, and the relative
          import below makes transformers copy `pipeline_multitask_encoder.py` with the other code files;
        - `auto_map` entries for `AutoModelForSequenceClassification` / `AutoModelForTokenClassification`
          (the task views below, for `pipeline("text-classification")` / `"token-classification"`);
        - `modules.json`, `sentence_bert_config.json` and `config_sentence_transformers.json`, so that
          `SentenceTransformer(folder, trust_remote_code=True)` encodes exactly as `encode`.
        """
        # Relative imports: transformers copies every file this one imports next to the weights.
        from .pipeline_multitask_encoder import CUSTOM_PIPELINES
        from .task_views_multitask_encoder import TASK_VIEWS

        self.config.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        for auto_class, view in TASK_VIEWS.items():
            if any(spec.is_token_level == view.token_level for spec in self.config.tasks.values()):
                auto_map[auto_class] = f"{view.__module__.rsplit('.', 1)[-1]}.{view.__name__}"
            else:
                auto_map.pop(auto_class, None)
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        # transformers writes the weights through a private temporary file (mode 0600): a folder that another
        # user serves could not read its weights. Give them the mode every other file here gets.
        umask = os.umask(0)
        os.umask(umask)
        for name in os.listdir(save_directory):
            if name.endswith(".safetensors"):
                os.chmod(os.path.join(save_directory, name), 0o666 & ~umask)
        max_length = (
            self.max_seq_length if self._tokenizer is not None or self.config.max_seq_length else None
        )
        if self._tokenizer is not None:
            save_tokenizer(self._tokenizer, save_directory, max_length)
        if max_length is not None:
            for name, content in sentence_transformers_files(max_length).items():
                with open(os.path.join(save_directory, name), "w", encoding="utf-8") as f:
                    json.dump(content, f, indent=2)
                    f.write("\n")

    def load_adapter(
        self, peft_model_id: str | os.PathLike[str], adapter_name: str | None = None, **kwargs: Any
    ):
        """Load a PEFT adapter that training with `peft:` saved (`<model folder>/adapter/`) onto this model: the
        adapter into the encoder (transformers' PEFT integration: the encoder then runs base weights + adapter)
        and the heads, projection, ... it was trained with from its `multitask_heads.safetensors`.

        Built from the backbone the adapter was trained on, with the trained model's tasks and options, this
        gives the trained model back, unmerged (to train the adapter further, or to swap adapters):

            trained = MultiTaskEncoderConfig.from_pretrained(folder)
            model = MultiTaskEncoderModel.from_backbone(backbone, tasks=trained.tasks, pooling=trained.pooling,
                normalize=trained.normalize, projection_dim=trained.projection_dim,
                loss_weighting=trained.loss_weighting, max_seq_length=trained.max_seq_length)
            model.load_adapter(f"{folder}/adapter")

        Refused on an encoder whose weights are not those the adapter was trained on (their sha256 is saved
        with the heads), in particular on a model whose encoder holds an adapter merged already (the trained
        folder itself: loading the adapter again would apply it twice), on an adapter without
        the heads file (an adapter of the encoder alone: `model.encoder.load_adapter(path)`), and when the
        heads do not fit this model's tasks. Other arguments go to transformers' `load_adapter`."""
        source = str(peft_model_id)
        twice = (
            f"This model's encoder holds a PEFT adapter merged into its weights already (config.merged_adapter: "
            f"{self.config.merged_adapter!r}): it is the trained model as it is, and loading {source} on top "
            "would apply the adapter twice. For the unmerged model, build it from the backbone the adapter was "
            "trained on and load the adapter there (see MultiTaskEncoderModel.load_adapter's docstring)."
        )
        options = {key: value for key, value in kwargs.items() if key in HUB_FILE_OPTIONS}
        heads_file = cached_file(
            source, ADAPTER_HEADS_FILENAME, _raise_exceptions_for_missing_entries=False, **options
        )
        if heads_file is None:
            if self.config.merged_adapter:
                raise ValueError(twice)
            raise ValueError(
                f"{source} has no {ADAPTER_HEADS_FILENAME}: it is an adapter of an encoder alone, without the "
                "heads it was trained with. Load it into the encoder with model.encoder.load_adapter(...); the "
                "heads stay this model's."
            )
        # The digest of the weights the adapter was trained on; None for adapters saved before it was recorded.
        trained_on = safetensors_metadata(heads_file).get(ADAPTER_BASE_DIGEST_KEY)
        base = self.adapter_base_sha256 or encoder_weights_sha256(self.encoder)
        if self.config.merged_adapter and trained_on != base:
            raise ValueError(twice)
        if trained_on is not None and trained_on != base:
            raise ValueError(
                f"The adapter {source} was trained on an encoder whose weights differ from this model's (sha256 "
                f"{trained_on[:12]}... there): loaded here it would build another model than the one trained. "
                f"Build the model from the encoder it was trained on (its adapter_config.json names it) "
                f"{'in float32 ' if self.encoder.dtype != torch.float32 else ''}and load the adapter there."
            )
        heads = load_state_dict(heads_file)
        expected = {key: value for key, value in self.state_dict().items() if not key.startswith("encoder.")}
        missing = sorted(set(expected) - set(heads))
        unexpected = sorted(set(heads) - set(expected))
        mismatched = [
            f"{key} is {list(heads[key].shape)} there but {list(expected[key].shape)} here"
            for key in sorted(set(heads) & set(expected))
            if heads[key].shape != expected[key].shape
        ]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"The heads saved with the adapter {source} do not fit this model (tasks "
                f"{list(self.config.tasks)}): missing {missing}, unexpected {unexpected}, shapes {mismatched}. Build "
                "the model with the trained model's tasks and options (its config.json)."
            )
        self.encoder.load_adapter(source, adapter_name=adapter_name, **kwargs)
        self.adapter_base_sha256 = base
        self.load_state_dict(heads, strict=False)  # the encoder's weights are the backbone's + the adapter
        return self

    @property
    def max_seq_length(self) -> int:
        """Longest input in tokens: `config.max_seq_length`, else the tokenizer's limit; never more than the
        encoder's positions hold (`usable_max_seq_length`)."""
        usable = usable_max_seq_length(self.config)
        if self.config.max_seq_length:
            return usable
        tokenizer_limit = self.tokenizer.model_max_length
        return tokenizer_limit if usable is None else min(tokenizer_limit, usable)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        tasks: list[str] | str | None = None,
        pair_inputs: dict[str, torch.Tensor] | None = None,
        negative_inputs: dict[str, torch.Tensor] | None = None,
        encoder_outputs: dict[str, torch.Tensor] | None = None,
        teacher_targets: dict[str, torch.Tensor] | None = None,
        teacher_weight: float | None = None,
        label_embeddings: dict[str, torch.Tensor] | None = None,
        return_dict: bool | None = None,
        **labels: torch.Tensor,
    ) -> MultiTaskEncoderOutput:
        """Run the encoder once and every head (or only `tasks`).

        Args:
            input_ids, attention_mask, token_type_ids: `[batch, seq]`, as the tokenizer returns them (for a
                row of a cross-encoded pair task, the joint `[CLS] a [SEP] b` input).
            tasks: names of the tasks to run (default: all). Tasks that do not run have no logits.
            pair_inputs: the second texts of the rows that have one (pair tasks encoded on their own,
                contrastive positives): `input_ids`, `attention_mask`[, `token_type_ids`] `[pairs, seq2]` and
                `rows` `[pairs]`, the batch row each belongs to. `negative_inputs`: contrastive negatives, alike.
            encoder_outputs: the encoder's output computed earlier, which skips the encoder (as in HF
                encoder-decoder models; the frozen-encoder fast path): `pooled_embeddings` `[batch, hidden]`,
                when a token task runs `last_hidden_state` `[batch, seq, hidden]` with `attention_mask`, and
                for pairs `pair_pooled_embeddings` `[pairs, hidden]` with `pair_rows` `[pairs]`. For heads
                that mix layers (head `layers`): `hidden_states` {hidden-state index: `[batch, seq, hidden]`}
                for token heads (and sentence heads, pooled here) and/or `pooled_hidden_states` {index:
                `[batch, hidden]`} for sentence heads.
            teacher_targets: a single-task teacher's targets per task (shapes: the task type's
                `collate_teacher`, NaN = none), distilled into the task's loss: `teacher_weight` times the
                distillation loss plus `1 - teacher_weight` times the gold loss (BAM's teacher annealing moves
                the weight from 1 to 0 over training; training-only, never needed to serve).
            label_embeddings: for tasks that score label texts (label_text_classification), their label
                texts' embeddings {task: `[num_labels, embedding_size]`} computed earlier (`embed_label_texts`;
                `predict` computes them once per call); a running such task without them has them computed
                here, with gradients when training.
            labels_<task>: labels for that task (shapes: the task type's `collate_labels`); -100 = missing.

        Returns:
            [`MultiTaskEncoderOutput`] with `loss` (when any labels were given), `embeddings`,
            `task_losses` and one `<task>_logits` per task that ran.
        """
        task_names = self.resolve_tasks(tasks)
        input_ids, attention_mask, token_type_ids = self._fit_to_max_length(
            input_ids, attention_mask, token_type_ids
        )
        unknown = [
            key
            for key in labels
            if not key.startswith("labels_") or key[len("labels_") :] not in self.config.tasks
        ]
        if unknown:
            raise ValueError(f"Unexpected forward arguments {unknown}; labels are passed as labels_<task>.")
        encoder_outputs = encoder_outputs or {}
        token_states = encoder_outputs.get("last_hidden_state")
        pooled = encoder_outputs.get("pooled_embeddings")
        hidden_states = dict(encoder_outputs.get("hidden_states") or {})
        pooled_hidden_states = dict(encoder_outputs.get("pooled_hidden_states") or {})
        # Token tasks that read the last layer; the layers the mixing heads of the running tasks read.
        needs_tokens = any(
            self.config.tasks[name].is_token_level and not self.config.tasks[name].head.mixes_layers
            for name in task_names
        )
        token_layers = self.mixed_layers(task_names, token_level=True)
        sentence_layers = self.mixed_layers(task_names, token_level=False)
        missing_layers = [i for i in token_layers if i not in hidden_states] + [
            i for i in sentence_layers if i not in pooled_hidden_states and i not in hidden_states
        ]
        if (token_states is None and (pooled is None or needs_tokens)) or missing_layers:
            if input_ids is None:
                raise ValueError("forward needs input_ids (or precomputed encoder_outputs).")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                encoder_inputs["token_type_ids"] = token_type_ids
            if token_layers or sentence_layers:
                # One pass gives the mixing heads' layers and the last one (for the embedding).
                last = self.config.encoder_config.num_hidden_layers
                layers = tuple(sorted({*token_layers, *sentence_layers, last}))
                hidden_states = dict(zip(layers, split_layers(self.encoder_states(encoder_inputs, layers))))
                token_states = hidden_states[last]
            else:
                token_states = self.encoder_states(encoder_inputs)
        unpooled = [index for index in sentence_layers if index not in pooled_hidden_states]
        pooled_hidden_states.update(
            zip(unpooled, self.pooling.pool_layers((hidden_states[i] for i in unpooled), attention_mask))
        )
        if pooled is None:
            pooled = self.pooling(token_states, attention_mask)
        pair_embeddings, pair_rows = self._second_texts(pair_inputs, encoder_outputs, "pair")
        negative_embeddings, negative_rows = self._second_texts(negative_inputs, encoder_outputs, "negative")
        label_embeddings = dict(label_embeddings or {})
        for name in task_names:
            spec = self.config.tasks[name]
            if spec.task_type.embeds_label_texts and name not in label_embeddings:
                label_embeddings[name] = self.embed_label_texts(spec.task_type.label_texts(spec))
        features = EncoderFeatures(
            token_states,
            attention_mask,
            self.project(pooled),
            pair_embeddings,
            pair_rows,
            negative_embeddings,
            negative_rows,
            hidden_states or None,
            pooled_hidden_states or None,
            label_embeddings or None,
        )

        output = MultiTaskEncoderOutput(embeddings=features.embeddings)
        losses: dict[str, torch.Tensor] = {}
        total_loss = None
        for position, name in enumerate(self.config.tasks):
            if name not in task_names:
                continue
            spec = self.config.tasks[name]
            head = self.heads[name] if name in self.heads else None  # noqa: SIM401 (no ModuleDict.get in older torch)
            logits = spec.task_type.logits(head, spec, features)
            output[f"{name}_logits"] = logits
            task_labels = labels.get(f"labels_{name}")
            if task_labels is None:
                continue
            # Touch every head that ran, even without labels in this batch: DDP then sees a gradient
            # (zero) for every parameter and needs no find_unused_parameters.
            loss = 0.0 * logits.float().sum()
            if self.task_log_vars is not None:
                loss = loss + 0.0 * self.task_log_vars[position]
            value = spec.task_type.loss(spec, logits, task_labels, features)
            if teacher_targets is not None and name in teacher_targets:
                value = self._distilled(spec, logits, value, teacher_targets[name], teacher_weight, features)
            if value is not None:
                losses[name] = value.detach()
                if self.task_log_vars is not None:
                    # Kendall et al. (2018): exp(-s) * L + s, with s = log(sigma^2) learned per task.
                    log_var = self.task_log_vars[position]
                    value = torch.exp(-log_var) * value + log_var
                loss = loss + spec.loss_weight * value
            total_loss = loss if total_loss is None else total_loss + loss
        output.loss = total_loss
        output.task_losses = losses or None
        return output

    @staticmethod
    def _distilled(spec, logits, gold_loss, targets, weight, features) -> torch.Tensor | None:
        """The gold loss mixed with the distillation loss against a teacher's targets: w * teacher + (1 - w) *
        gold, which for cross-entropy is the loss of the mixed target w * teacher + (1 - w) * gold (BAM)."""
        weight = 1.0 if weight is None else float(weight)
        distilled = spec.task_type.distillation_loss(spec, logits, targets, features)
        if distilled is None:
            return gold_loss
        if gold_loss is None:
            return weight * distilled
        return weight * distilled + (1.0 - weight) * gold_loss

    def embed(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised texts (`input_ids`, `attention_mask`[, `token_type_ids`] `[n, seq]`) -> their sentence
        embeddings `[n, embedding_size]` (the encoder as the serving mode runs it, pooling, projection,
        normalisation)."""
        encoder_inputs = {key: inputs[key] for key in MODEL_INPUT_NAMES if key in inputs}
        encoder_inputs["input_ids"], encoder_inputs["attention_mask"], token_type_ids = (
            self._fit_to_max_length(
                encoder_inputs["input_ids"],
                encoder_inputs.get("attention_mask"),
                encoder_inputs.get("token_type_ids"),
            )
        )
        if token_type_ids is not None:
            encoder_inputs["token_type_ids"] = token_type_ids
        return self.project(
            self.pooling(self.encoder_states(encoder_inputs), encoder_inputs["attention_mask"])
        )

    def embed_label_texts(self, texts: list[str]) -> torch.Tensor:
        """Label texts -> their embeddings `[len(texts), embedding_size]` (one padded batch: a task has few)."""
        inputs = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
        )
        return self.embed({key: value.to(self.device) for key, value in inputs.items()})

    def preprocess(
        self, texts: list[str] | str, tasks: list[str] | str | None = None, batch_size: int = 64
    ) -> Iterator[TextBatch]:
        """Texts -> padded batches for `forward`: checked once (a text that is not a non-empty string raises,
        naming its index), tokenised `window` texts at a time, truncated to `max_seq_length` (one warning),
        sorted longest first and batched as the serving mode says (`batch_size` texts, or a token budget).

        Each `TextBatch` holds `indices` (positions in `texts`), `inputs` (`input_ids`, `attention_mask`[,
        `token_type_ids`] `[batch, seq]` on the model's device), the batch's `texts` and their tokenizer
        `encodings` (with character offsets when one of `tasks` is a token task). Used by `predict`, the
        pipeline and the batch CLI through `predict`; give the batches to `postprocess` after `forward`.
        """
        return preprocess(self, texts, tasks, batch_size)

    def postprocess(
        self,
        outputs: Mapping[str, Any],
        texts: list[str],
        encodings: list[Any],
        tasks: list[str] | str | None = None,
        top_k: int | None = None,
        labels: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None,
    ) -> list[dict[str, dict[str, Any]]]:
        """One batch's forward outputs (any mapping with `<task>_logits` for each of `tasks`: `[batch, n]`
        or `[batch, seq, n]`) -> one `{task: prediction}` dict per row, as `predict` returns them. `texts` and
        `encodings` are the batch's (a `TextBatch`'s); token tasks read their character offsets. `top_k`
        keeps the best k class scores of classification tasks; `labels` are the label sets given to the
        `forward` call of label-text tasks (see `predict`)."""
        return postprocess(self, outputs, texts, encodings, tasks, top_k, labels)

    def encode(
        self,
        texts: list[str] | str,
        batch_size: int = 64,
        normalize: bool | None = None,
        return_tensors: Literal["np", "pt"] = "np",
    ):
        """Sentence embeddings `[len(texts), embedding_size]` (float32, in input order).

        `normalize` overrides `config.normalize` (L2) for this call. A single string gives `[embedding_size]`.
        """
        return encode(self, texts, batch_size, normalize, return_tensors)

    def predict(
        self,
        texts: list[str] | str | list[tuple[str, str]] | dict[str, str],
        tasks: list[str] | str | None = None,
        top_k: int | None = None,
        batch_size: int = 64,
        labels: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None,
    ) -> list[dict[str, dict[str, Any]]]:
        """Predictions for every text and task (the tasks of the input's kind unless `tasks` narrows it), in
        input order.

        `texts` are texts, or pairs of texts for pair tasks: `(text, text_pair)` tuples or
        `{"text": ..., "text_pair": ...}` dicts (one such dict alone is a single pair, and so is one bare tuple
        of two strings: refused, saying so, when the tasks read single texts; two texts are a list). Per task,
        the dict its type decodes (tasks_multitask_encoder.py):
          sequence / pair classification: `{"label", "score", "scores": {label: probability}}` (scores
              sorted, the best `top_k` only when given);
          multi-label classification: `{"labels": [labels with sigmoid >= threshold], "scores": {...}}`;
          regression: `{"value": float}` (one output) or `{"values": {name: float}}`;
          token classification: `{"entities": [{"entity", "text", "start", "end", "score"}]}` with
              character offsets into the text, words merged from their sub-tokens;
          similarity, contrastive: `{"similarity": cosine}` (similarity with a `score_range`: and `score`).
        A single string (or pair dict) gives a single dict. `labels` {task: label names, or {name: text}}
        replaces the labels of label_text_classification tasks for this call (new labels need no training).
        """
        return predict(self, texts, tasks, top_k, batch_size, labels)

    def tasks_for(self, kind: str, tasks: list[str] | str | None) -> list[str]:
        """The tasks a call on inputs of `kind` ("text" or "pair") runs: those asked for, which must read that
        kind, else every task that does."""
        return tasks_for(self, kind, tasks)

    def as_pairs(self, inputs: Any) -> list[tuple[Any, Any]] | None:
        """The (text, text_pair) pairs of `inputs` as `predict` reads them, or None when they are texts: a list
        (or tuple) of `(text, text_pair)` tuples or `{"text", "text_pair"}` dicts, one such dict alone, or one
        bare tuple of exactly two strings (one pair, never two texts). A list mixing texts and pairs raises."""
        return as_pairs(inputs)

    def check_texts(self, texts: Any) -> list[str]:
        """`texts` as a list of strings, refused (naming the container or the index) when it would give a
        meaningless answer. A single string is a list of one.

        The container must be an ordered collection of texts: a list, a tuple or another sequence, an
        iterator, a 1-D array. Refused: a mapping (a dict's texts are its keys or its values: say which), a
        set (no order to give the results back in), bytes (not decoded), an array that is not 1-D (a
        DataFrame iterates its column names). Each element must be a `str` (None, bytes, numbers and nested
        lists are refused) that is not empty or whitespace only, and of which the tokenizer keeps something:
        a text that tokenises to special tokens only (zero-width or control characters, which the
        normalizer drops, or literally "[SEP]") would get the same answer as any other such text. A text of
        characters the vocabulary does not know becomes [UNK] tokens, which the model does read, and is
        kept. Raises TypeError or ValueError naming the first text that is not a non-empty string, else
        the first text the tokenizer keeps nothing of.
        """
        return check_texts(self, texts)

    def label_text_embeddings(
        self, task_names: list[str], labels: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None
    ) -> dict[str, torch.Tensor]:
        """{task: its label texts' embeddings `[num_labels, embedding_size]`} for the tasks of `task_names` that
        score label texts, with `labels` replacing a task's labels (see `task_spec`); `forward` takes them as
        `label_embeddings`."""
        return label_text_embeddings(self, task_names, labels)

    def task_spec(self, name: str, labels: Sequence[str] | Mapping[str, str] | None = None) -> TaskSpec:
        """The spec of task `name`, or, for a task that scores label texts, the spec it has with `labels` for
        one call: label names (each its own text) or {name: text}."""
        return task_spec(self, name, labels)

    def _second_texts(
        self,
        inputs: Mapping[str, torch.Tensor] | None,
        encoder_outputs: Mapping[str, torch.Tensor],
        kind: str,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(embeddings `[n, embedding_size]`, batch rows `[n]`) of the pair or negative texts, encoded here or
        precomputed (`<kind>_pooled_embeddings` / `<kind>_rows` in `encoder_outputs`); (None, None) without."""
        pooled = encoder_outputs.get(f"{kind}_pooled_embeddings")
        if pooled is not None:
            return self.project(pooled), encoder_outputs[f"{kind}_rows"]
        if not inputs or "input_ids" not in inputs:
            return None, None
        return self.embed(inputs), inputs["rows"]

    def _fit_to_max_length(self, input_ids, attention_mask, token_type_ids):
        """Inputs longer than the model's limit (a caller that did not truncate, e.g. a standard pipeline)
        cut as the tokenizer cuts them: the first `limit - 1` tokens and the row's last real token (the closing
        special token). Right padding assumed. Never fails on long input; warns once."""
        limit = usable_max_seq_length(self.config)
        if input_ids is None or limit is None or input_ids.shape[1] <= limit:
            return input_ids, attention_mask, token_type_ids
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(dim=1)
        index = torch.arange(limit, device=input_ids.device).expand(input_ids.shape[0], limit).clone()
        index[:, -1] = torch.where(lengths > limit, lengths - 1, index[:, -1])
        if not self._warned_truncation:
            logger.warning(f"Inputs longer than {limit} tokens were truncated to fit the model.")
            self._warned_truncation = True
        return tuple(
            None if t is None else t.gather(1, index) for t in (input_ids, attention_mask, token_type_ids)
        )

    def similarity(self, embeddings_a, embeddings_b) -> torch.Tensor:
        """Cosine similarity of every row of `embeddings_a` `[n, dim]` with every row of `embeddings_b`
        `[m, dim]` -> `[n, m]`; the same as sentence-transformers' `similarity`. Each side is embeddings (a
        tensor, a numeric array, a list of vectors; one vector `[dim]` is one row) or texts, encoded first and
        checked as `predict` checks them (`check_texts`: a string, a list, tuple, iterator or 1-D array of
        strings; an empty list gives no rows)."""
        return similarity(self, embeddings_a, embeddings_b)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vector `[batch, hidden]` -> the sentence embedding `[batch, embedding_size]`
        (projection and its activation, then L2 normalisation, as configured)."""
        if self.projection is not None:
            pooled = self.projection_activation(self.projection(pooled))
        if self.config.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def add_task(self, name: str, spec: TaskSpec | Mapping[str, Any]) -> MultiTaskEncoderModel:
        """Add a task (a fresh head, or none for similarity/contrastive) to this model, keeping the encoder and
        every existing head and label; returns `self`. Train it with `freeze_existing` (train.py's `init_from`
        and `freeze_existing: true`) to leave the existing tasks' predictions exactly as they were."""
        if name in self.config.tasks:
            raise ValueError(f"Task {name!r} exists already (tasks: {list(self.config.tasks)}).")
        spec = parse_task_spec(name, spec)
        in_features = spec.task_type.head_in_features(
            spec, self.config.encoder_config.hidden_size, self.config.embedding_size
        )
        if in_features:
            head = self._new_head(spec, in_features).to(self.device, next(self.parameters()).dtype)
            head.apply(self._init_weights)
            self.heads[name] = head
        self.config.tasks = {**self.config.tasks, name: spec}
        if self.task_log_vars is not None:
            grown = torch.cat([self.task_log_vars.data, self.task_log_vars.data.new_zeros(1)])
            self.task_log_vars = nn.Parameter(grown)
        return self

    def _new_head(self, spec: TaskSpec, in_features: int) -> TaskHead:
        """The head of task `spec` (its layers checked against the encoder's layer count)."""
        layers = spec.head.layer_indices(spec.name, self.config.encoder_config.num_hidden_layers)
        normalize = self.config.normalize and not spec.is_token_level
        return TaskHead(in_features, spec.num_outputs, spec.head, layers, normalize)

    def mixed_layers(
        self, tasks: Iterable[str] | None = None, token_level: bool | None = None
    ) -> tuple[int, ...]:
        """The hidden-state indices (sorted) the layer-mixing heads of `tasks` (default: all) read; only token
        heads' (`token_level=True`) or sentence heads' (False) when given."""
        names = self.config.tasks if tasks is None else tasks
        layers = set()
        for name in names:
            head = self.heads[name] if name in self.heads else None  # noqa: SIM401
            spec = self.config.tasks[name]
            if head is not None and head.layers and token_level in (None, spec.is_token_level):
                layers.update(head.layers)
        return tuple(sorted(layers))

    def freeze_existing(self, keep: list[str]) -> None:
        """Freeze the encoder, the projection and every head but those of `keep` (the tasks being added): their
        weights, hence their predictions, stay exactly as loaded."""
        self.encoder.requires_grad_(False)
        if self.projection is not None:
            self.projection.requires_grad_(False)
        for name, head in self.heads.items():
            head.requires_grad_(name in keep)
        if self.task_log_vars is not None:
            self.task_log_vars.requires_grad_(False)

    def resolve_tasks(self, tasks: list[str] | str | None) -> list[str]:
        """The task names a call asks for (None: all, in config order); refuses unknown names and an empty
        selection (which would silently predict nothing)."""
        if tasks is None:
            return list(self.config.tasks)
        if isinstance(tasks, str):
            tasks = [tasks]
        elif not isinstance(tasks, (list, tuple)) or not all(isinstance(task, str) for task in tasks):
            raise TypeError(f"tasks must be a task name or a list of task names, got {tasks!r}.")
        if not tasks:
            raise ValueError(
                f"tasks is empty: name at least one of {list(self.config.tasks)} (or None for all)."
            )
        unknown = [task for task in tasks if task not in self.config.tasks]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; this model has {list(self.config.tasks)}.")
        return list(dict.fromkeys(tasks))

    # ------------------------------------------------------------------ pre- and post-processing

    # ------------------------------------------------------------------ serving modes
    _serving_plan: ServingPlan | None = None  # set by optimize_for_inference; None is the exact mode

    def optimize_for_inference(
        self,
        mode: str,
        *,
        token_budget: int | None = None,
        window: int | None = None,
        outlier_channels: int | None = None,
        threads: int | None = None,
    ) -> MultiTaskEncoderModel:
        """Choose how `encode`, `predict` (and `forward` in eval mode without gradients) run; returns `self`.

        Modes (see `inference_multitask_encoder.py`; speed and agreement in bench/serve_speed.py):
            "exact": the default: `batch_size` texts per batch, eager fp32 encoder.
            "token_budget": batches of <= `token_budget` padded tokens (default 4096) instead of `batch_size`
                texts: long texts get small batches, short ones large batches. Same math as "exact".
            "compiled": token budget, the encoder under `torch.compile` (dynamic shapes, capped
                recompiles). Equal to "exact" up to float rounding. The first batch compiles (tens of seconds).
            "bf16": token budget, the encoder of a float32 model under bf16 autocast (pooling and heads in
                float32); not exact: embeddings agree with "exact" to cosine >= 0.999. Fast only where bf16 is
                native (CPUs with AMX or AVX512-BF16, recent GPUs); elsewhere it warns.
            "int8": token budget, the encoder's linear layers in int8 with torch's kernels (CPU). Refused while
                `MODES_OUTSIDE_GUARD` names it: the bench measured texts below cosine 0.99 to "exact".
            "onnx", "onnx_int8", "openvino", "openvino_bf16": token budget, the encoder exported to ONNX and
                served by ONNX Runtime (fp32; int8 products with fp32 outlier channels) or OpenVINO (fp32;
                bf16, fast only where bf16 is native). Optional runtimes: `pip install
                multitask-encoder[onnx]` / `[openvino]`. `threads` is their thread count (default
                `torch.get_num_threads()`). Agreement and speed per CPU: bench/serve_speed.py.

        `window` texts are tokenised and sorted at a time (default 4096): memory stays flat for any number of
        texts. In the token-budget modes `batch_size` is not used. The int8 and runtime encoders are built
        from the current weights: after changing them (training, `load_state_dict`) or moving the model, call
        this again; encode/predict raise until then. The mode is not saved with the model.
        """
        options: dict[str, Any] = {"token_budget": token_budget}
        if window is not None:
            options["window"] = window
        if outlier_channels is not None:
            options["outlier_channels"] = outlier_channels
        if threads is not None:
            options["threads"] = threads
        # The runtime graphs export the hidden states the layer-mixing heads read besides the last layer.
        options["layers"] = self.mixed_layers()
        self._serving_plan = build_serving_plan(self.encoder, mode, **options)
        return self

    def export_onnx(self, directory: str | os.PathLike[str]) -> str:
        """Write the model (encoder, pooling, projection, normalisation, heads) as ONNX for serving without
        torch: `directory/model.onnx`, with dynamic batch and sequence axes: inputs as the tokenizer names
        them (`[batch, seq]` int64), outputs `embeddings` `[batch, embedding_size]` and `<task>_logits` of each
        task that reads one input (a text, or a pair encoded jointly; `[batch, n]`, token tasks `[batch, seq,
        n_tags]`). Bi-encoded pair_classification heads go to `pair_heads.onnx` (inputs: the two texts'
        `embeddings`); similarity and contrastive are the cosine of the two texts' `embeddings`. Beside them
        `config.json` with `postprocessing`: per task, its graph, output, activation, `id2label` and decoding
        rules (docs/onnx.md), and the tokenizer. Needs `pip install multitask-encoder[onnx]`. Returns the
        path of `model.onnx`."""
        from .onnx_multitask_encoder import export_model_onnx

        return str(export_model_onnx(self, directory))

    @property
    def serving_plan(self) -> ServingPlan:
        """How `optimize_for_inference` batches and encodes (the exact mode's plan until it is called)."""
        return self._serving_plan or ServingPlan()

    @property
    def serving_mode(self) -> str:
        """The mode `optimize_for_inference` set, one of `SERVING_MODES` ("exact" until it is called)."""
        return self._serving_plan.mode if self._serving_plan is not None else SERVING_MODES[0]

    def encoder_states(
        self, encoder_inputs: dict[str, torch.Tensor], layers: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """Encoder output `[batch, seq, hidden]` for tokenised inputs `[batch, seq]`: the serving mode's encoder
        when one is set and the model is serving (eval mode, no gradients), else `self.encoder`. With `layers`
        (hidden-state indices: 0 = the embedding layer's output, N = the last layer), those hidden states
        of the same single pass instead, one `[batch, seq, hidden]` tensor each (`split_layers` reads them)."""
        plan = self._serving_plan
        if plan is None or plan.run_encoder is None or self.training or torch.is_grad_enabled():
            return encoder_hidden_states(self.encoder, encoder_inputs, layers)
        plan.check_fresh(self.encoder)
        if layers is None:
            return plan.run_encoder(encoder_inputs)
        return plan.run_encoder(encoder_inputs, layers)


MultiTaskEncoderModel.register_for_auto_class("AutoModel")

__all__ = [
    "MultiTaskEncoderModel",
    "MultiTaskEncoderOutput",
    "MultiTaskEncoderPreTrainedModel",
    "Pooling",
    "TaskHead",
]
