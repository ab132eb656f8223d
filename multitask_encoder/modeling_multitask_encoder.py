"""Multi-task sentence encoder: a pretrained encoder, pooled into one sentence embedding, read by a dict
of task heads, all in one forward pass.

    input_ids [batch, seq] ─► encoder ─► token states [batch, seq, hidden] ─┬─► token heads ─► [batch, seq, n_tags]
                                                                           │
                                           Pooling ─► Projection? ─► L2? ─┴─► embeddings [batch, dim]
                                                                                  └─► sentence heads ─► [batch, n]

This file is copied next to the weights by `save_pretrained`, so a saved model loads with
`trust_remote_code=True` on a machine without the `multitask_encoder` package: it imports only torch,
transformers, the standard library and its sibling configuration file.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_multitask_encoder import HeadSpec, MultiTaskEncoderConfig, TaskSpec
from .inference_multitask_encoder import SERVING_MODES, ServingPlan, build_serving_plan, iter_sorted_batches

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value meaning "this row/token carries no label for this task"


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


class TaskHead(nn.Module):
    """Features `[..., in_features]` -> logits `[..., num_outputs]`: a linear layer or a two-layer MLP."""

    def __init__(self, in_features: int, num_outputs: int, spec: HeadSpec) -> None:
        super().__init__()
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


def task_loss(spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Loss of one task over the rows (or tokens) that carry a label; None when none does.

    Labels: `sequence_classification` `[batch]` ids; `token_classification` `[batch, seq]` ids;
    `multi_label_classification` `[batch, num_labels]` 0/1; `regression` `[batch]` or `[batch, n]` floats.
    Missing = -100 (a whole row of -100 for multi-label).
    """
    logits = logits.float()
    if spec.type in ("sequence_classification", "token_classification"):
        labels = labels.long()
        if not (labels != IGNORE_INDEX).any():
            return None  # cross-entropy over nothing is NaN
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
    if spec.type == "multi_label_classification":
        labels = labels.float().reshape(logits.shape)
        labelled_rows = (labels != IGNORE_INDEX).all(dim=-1)
        if not labelled_rows.any():
            return None
        return F.binary_cross_entropy_with_logits(logits[labelled_rows], labels[labelled_rows])
    # regression
    labels = labels.float().reshape(logits.shape)
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        return None
    return F.mse_loss(logits[labelled], labels[labelled])


class MultiTaskEncoderPreTrainedModel(PreTrainedModel):
    config_class = MultiTaskEncoderConfig
    config: MultiTaskEncoderConfig
    base_model_prefix = "multitask_encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Heads and projection are ours; encoder modules are initialised by the encoder's own rules (and
        # then overwritten by the pretrained weights in from_backbone / from_pretrained).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, MultiTaskEncoderModel) and module.task_log_vars is not None:
            nn.init.zeros_(module.task_log_vars)


class MultiTaskEncoderModel(MultiTaskEncoderPreTrainedModel):
    """One shared encoder, pooled into a sentence embedding, and one head per task (see the module docstring).

    Build it from any pretrained HF encoder with [`from_backbone`], train it with the HF `Trainer`, save it
    with `save_pretrained` (weights, config, code and tokenizer) and load it anywhere with
    `AutoModel.from_pretrained(path_or_repo, trust_remote_code=True)`.
    """

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
        self.projection = nn.Linear(hidden_size, config.projection_dim) if config.projection_dim else None
        self.heads = nn.ModuleDict(
            {
                name: TaskHead(
                    hidden_size if spec.is_token_level else config.embedding_size, spec.num_outputs, spec.head
                )
                for name, spec in config.tasks.items()
            }
        )
        self.task_log_vars = (
            nn.Parameter(torch.zeros(len(config.tasks))) if config.loss_weighting == "uncertainty" else None
        )
        self._tokenizer = None
        self._warned_truncation = False
        self.post_init()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | None = None,
        tasks: dict[str, Any] | list[dict[str, Any]] | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        projection_dim: int | None = None,
        loss_weighting: str = "static",
        max_seq_length: int | None = None,
        attn_implementation: str | None = None,
        **hub_kwargs: Any,
    ) -> MultiTaskEncoderModel:
        """A model whose encoder holds the pretrained weights of `name_or_path` (a Hub id or a local folder
        with a BERT-like encoder) and whose heads are freshly initialised. The backbone's tokenizer is
        attached and saved with the model. `hub_kwargs` (revision, token, ...) go to `from_pretrained`.

        With the `multitask_encoder` package installed, `None` (or the all-MiniLM-L6-v2 Hub id) means the
        packaged all-MiniLM-L6-v2 copy, checked against the official sha256 before use.
        """
        base_model_name = None if name_or_path is None else str(name_or_path)
        try:  # Not a dependency of this file: a remote-code copy simply has no packaged default.
            from multitask_encoder.backbone import public_backbone_name, resolve_backbone

            base_model_name = public_backbone_name(name_or_path)
            name_or_path = resolve_backbone(name_or_path)
        except ImportError:
            pass
        if name_or_path is None:
            raise ValueError("from_backbone needs a backbone name or path.")
        if not tasks:
            raise ValueError("from_backbone needs at least one task in `tasks`.")
        encoder_config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        encoder_config._name_or_path = base_model_name or ""  # saved nested in config.json: no local path
        if max_seq_length is None:
            max_seq_length = _sentence_transformers_max_length(name_or_path)
        config = MultiTaskEncoderConfig(
            encoder_config=encoder_config,
            pooling=pooling,
            normalize=normalize,
            projection_dim=projection_dim,
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
        model.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`, stricter in two ways that protect users of shared checkpoints:

        - only safetensors weights are read by default (never a pickle), unless `use_safetensors=False`;
        - weights that do not match the config fail loudly: a head the config declares but the checkpoint lacks
          (it would be silently re-initialised at random) or checkpoint weights the config has no place for
          (silently dropped) raise a `ValueError` naming the keys.
        """
        kwargs.setdefault("use_safetensors", True)
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        problems = []
        if info.get("missing_keys"):
            problems.append(f"weights missing from the checkpoint: {sorted(info['missing_keys'])}")
        if info.get("unexpected_keys"):
            problems.append(
                f"checkpoint weights the config has no place for: {sorted(info['unexpected_keys'])}"
            )
        if problems:
            raise ValueError(
                f"The checkpoint {pretrained_model_name_or_path} does not match its config (tasks "
                f"{list(model.config.tasks)}): " + "; ".join(problems) + ". Was config.json edited, or the "
                "weights saved from another model?"
            )
        return (model, info) if wants_info else model

    @property
    def tokenizer(self):
        """The tokenizer saved with the model (loaded on first use from the folder the model came from)."""
        if self._tokenizer is None:
            source = self.config.name_or_path
            if not source:
                raise ValueError(
                    "This model has no tokenizer: set `model.tokenizer = ...` or load a saved model."
                )
            # The commit the weights came from (None for a local folder): a model loaded with a pinned
            # `revision` must not pair with the tokenizer of a later push.
            revision = getattr(self.config, "_commit_hash", None)
            self._tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True, revision=revision)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained` (safetensors, config, code files) plus the tokenizer, and the
        `multitask-text-classification` pipeline: `config.custom_pipelines` names it, and the relative import
        below makes transformers copy `pipeline_multitask_encoder.py` with the other code files."""
        from .pipeline_multitask_encoder import CUSTOM_PIPELINES

        self.config.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
        super().save_pretrained(save_directory, *args, **kwargs)
        if self._tokenizer is not None and kwargs.get("is_main_process", True):
            self._tokenizer.save_pretrained(save_directory)

    @property
    def max_seq_length(self) -> int:
        """Longest input in tokens: `config.max_seq_length`, else the tokenizer's and encoder's limit."""
        if self.config.max_seq_length:
            return self.config.max_seq_length
        return min(self.tokenizer.model_max_length, self.config.encoder_config.max_position_embeddings)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        tasks: list[str] | None = None,
        pooled_embeddings: torch.Tensor | None = None,
        token_states: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **labels: torch.Tensor,
    ) -> MultiTaskEncoderOutput:
        """Run the encoder once and every head (or only `tasks`).

        Args:
            input_ids, attention_mask, token_type_ids: `[batch, seq]`, as the tokenizer returns them.
            tasks: names of the heads to run (default: all). Heads that do not run have no logits.
            pooled_embeddings: `[batch, hidden]` pooled encoder output computed earlier (the frozen-encoder
                fast path); skips the encoder when no token task runs.
            token_states: `[batch, seq, hidden]` encoder output computed earlier (with `attention_mask`).
            labels_<task>: labels for that task (see [`task_loss`] for shapes); -100 marks missing.

        Returns:
            [`MultiTaskEncoderOutput`] with `loss` (when any labels were given), `embeddings`,
            `task_losses` and one `<task>_logits` per task that ran.
        """
        task_names = self._check_tasks(tasks)
        unknown = [
            key for key in labels if not key.startswith("labels_") or key[len("labels_") :] not in self.heads
        ]
        if unknown:
            raise ValueError(f"Unexpected forward arguments {unknown}; labels are passed as labels_<task>.")
        needs_tokens = any(self.config.tasks[name].is_token_level for name in task_names)
        if token_states is None and (pooled_embeddings is None or needs_tokens):
            if input_ids is None:
                raise ValueError("forward needs input_ids (or precomputed pooled_embeddings/token_states).")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                encoder_inputs["token_type_ids"] = token_type_ids
            token_states = self._encoder_states(encoder_inputs)
        if pooled_embeddings is None:
            pooled_embeddings = self.pooling(token_states, attention_mask)
        embeddings = self.project(pooled_embeddings)

        output = MultiTaskEncoderOutput(embeddings=embeddings)
        losses: dict[str, torch.Tensor] = {}
        total_loss = None
        for position, name in enumerate(self.config.tasks):
            if name not in task_names:
                continue
            spec = self.config.tasks[name]
            logits = self.heads[name](token_states if spec.is_token_level else embeddings)
            output[f"{name}_logits"] = logits
            task_labels = labels.get(f"labels_{name}")
            if task_labels is None:
                continue
            # Touch every head that ran, even without labels in this batch: DDP then sees a gradient
            # (zero) for every parameter and needs no find_unused_parameters.
            loss = 0.0 * logits.float().sum()
            if self.task_log_vars is not None:
                loss = loss + 0.0 * self.task_log_vars[position]
            value = task_loss(spec, logits, task_labels)
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

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vector `[batch, hidden]` -> the sentence embedding `[batch, embedding_size]`
        (projection, then L2 normalisation, as configured)."""
        if self.projection is not None:
            pooled = self.projection(pooled)
        if self.config.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def _check_tasks(self, tasks: list[str] | str | None) -> list[str]:
        if tasks is None:
            return list(self.config.tasks)
        if isinstance(tasks, str):
            tasks = [tasks]
        unknown = [task for task in tasks if task not in self.config.tasks]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; this model has {list(self.config.tasks)}.")
        return list(tasks)

    # ------------------------------------------------------------------ inference
    def _tokenize(self, texts: list[str], with_offsets: bool) -> tuple[list[dict[str, list[int]]], list]:
        """Validate `texts` (a non-empty list) and tokenise each, unpadded and truncated to
        `max_seq_length` (warning once when a text is cut).

        Returns, per text, the model inputs (`input_ids`, `attention_mask`[, `token_type_ids`], lists of
        `seq` ints) and the tokenizer's `Encoding` (word ids; character offsets with `with_offsets`).
        Shared by `predict` and the `multitask-text-classification` pipeline.
        """
        self._check_texts(texts)
        max_length = self.max_seq_length
        encoded = self.tokenizer(
            texts, truncation=True, max_length=max_length, return_offsets_mapping=with_offsets, padding=False
        )
        truncated = sum(1 for enc in encoded.encodings if enc.overflowing)
        if truncated and not self._warned_truncation:
            logger.warning(
                f"{truncated} text(s) longer than {max_length} tokens were truncated to fit the model."
            )
            self._warned_truncation = True
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        features = [{k: encoded[k][i] for k in keys} for i in range(len(texts))]
        return features, encoded.encodings

    def _tokenize_sorted(self, texts: list[str], batch_size: int, with_offsets: bool):
        """Validate and tokenise `texts`, then yield (original indices, padded batch, encodings) batches of
        similar length (sorted longest first), so padding is minimal. No texts, no batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if not texts:
            return  # the tokenizer fails on an empty list; callers return their empty results
        self._check_texts(texts)  # every text before any work, with its index in the whole list
        # Tokenised and sorted a window of texts at a time (flat memory); batches as the serving mode says.
        plan = self._serving_plan or ServingPlan()
        yield from iter_sorted_batches(self, texts, batch_size, with_offsets, plan)

    @torch.inference_mode()
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
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        embeddings = torch.zeros(len(texts), self.config.embedding_size)
        was_training = self.training
        self.eval()
        try:
            for indices, batch, _ in self._tokenize_sorted(texts, batch_size, with_offsets=False):
                token_states = self._encoder_states(batch)
                pooled = self.pooling(token_states, batch["attention_mask"])
                batch_embeddings = self.project(pooled).float()
                embeddings[indices] = batch_embeddings.cpu()
        finally:
            self.train(was_training)
        if normalize is not None and normalize != self.config.normalize:
            if normalize:
                embeddings = F.normalize(embeddings, p=2, dim=-1)
            else:
                logger.warning(
                    "normalize=False has no effect: this model normalises inside its forward pass."
                )
        if single:
            embeddings = embeddings[0]
        return embeddings.numpy() if return_tensors == "np" else embeddings

    @torch.inference_mode()
    def predict(
        self,
        texts: list[str] | str,
        tasks: list[str] | str | None = None,
        top_k: int | None = None,
        batch_size: int = 64,
    ) -> list[dict[str, dict[str, Any]]]:
        """Predictions for every text and task (all tasks unless `tasks` narrows it), in input order.

        Per task, by type:
          sequence_classification: `{"label", "score", "scores": {label: probability}}` (scores sorted,
              the best `top_k` only when given);
          multi_label_classification: `{"labels": [labels with sigmoid >= threshold], "scores": {...}}`;
          regression: `{"value": float}` (one output) or `{"values": {name: float}}`;
          token_classification: `{"entities": [{"entity", "text", "start", "end", "score"}]}` with
              character offsets into the text, words merged from their sub-tokens.
        A single string gives a single dict.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        task_names = self._check_tasks(tasks)
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        needs_offsets = any(self.config.tasks[name].is_token_level for name in task_names)
        results: list[dict[str, Any]] = [{} for _ in texts]
        was_training = self.training
        self.eval()
        try:
            for indices, batch, encodings in self._tokenize_sorted(
                texts, batch_size, with_offsets=needs_offsets
            ):
                output = self(**batch, tasks=task_names)
                batch_texts = [texts[index] for index in indices]
                predictions = self._decode_predictions(output, batch_texts, encodings, task_names, top_k)
                for index, prediction in zip(indices, predictions):
                    results[index] = prediction
        finally:
            self.train(was_training)
        return results[0] if single else results

    def _decode_predictions(
        self,
        output: Any,
        texts: list[str],
        encodings: list,
        tasks: list[str],
        top_k: int | None = None,
    ) -> list[dict[str, dict[str, Any]]]:
        """One batch's logits -> one prediction dict per text (the dicts `predict` returns, see there).

        Args:
            output: the forward output, or any mapping, with `<task>_logits` for each of `tasks`:
                `[batch, num_outputs]` (sentence tasks) or `[batch, seq, num_tags]` (token tasks).
            texts: the batch's texts, row by row (entities quote their characters).
            encodings: the batch's tokenizer `Encoding`s, row by row, with offsets (read by token tasks only).
            tasks: checked task names, in the order the dicts list them.
        Shared by `predict` and the `multitask-text-classification` pipeline.
        """
        predictions: list[dict[str, Any]] = [{} for _ in texts]
        for name in tasks:
            spec = self.config.tasks[name]
            logits = output[f"{name}_logits"].float().cpu()
            for row, prediction in enumerate(predictions):
                if spec.is_token_level:
                    prediction[name] = {"entities": _entities(texts[row], encodings[row], logits[row], spec)}
                else:
                    prediction[name] = _sentence_prediction(logits[row], spec, top_k)
        return predictions

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
            "int8": token budget, the encoder's linear layers in int8 (CPU); not exact: embeddings agree with
                "exact" to cosine >= 0.99, task accuracy within a few tenths of a point (measured in the bench).
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
        self._serving_plan = build_serving_plan(self.encoder, mode, **options)
        return self

    def export_onnx(self, directory: str | os.PathLike[str]) -> str:
        """Write the whole model (encoder, pooling, projection, normalisation, every head) as one ONNX graph,
        `directory/model.onnx`, with dynamic batch and sequence axes: inputs as the tokenizer names them
        (`[batch, seq]` int64), outputs `embeddings` `[batch, embedding_size]` and `<task>_logits` per task
        (`[batch, n]`; token tasks `[batch, seq, n_tags]`); beside it `config.json` (labels) and the
        tokenizer. Needs `pip install multitask-encoder[onnx]`. Returns the path of `model.onnx`."""
        from .inference_multitask_encoder import export_model_onnx

        return str(export_model_onnx(self, directory))

    @property
    def serving_mode(self) -> str:
        """The mode `optimize_for_inference` set, one of `SERVING_MODES` ("exact" until it is called)."""
        return self._serving_plan.mode if self._serving_plan is not None else SERVING_MODES[0]

    def _encoder_states(self, encoder_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder output `[batch, seq, hidden]` for tokenised inputs `[batch, seq]`: the serving mode's encoder
        when one is set and the model is serving (eval mode, no gradients), else `self.encoder`."""
        plan = self._serving_plan
        if plan is None or plan.run_encoder is None or self.training or torch.is_grad_enabled():
            return self.encoder(**encoder_inputs).last_hidden_state
        plan.check_fresh(self.encoder)
        return plan.run_encoder(encoder_inputs)

    @staticmethod
    def _check_texts(texts: list[str]) -> None:
        """Refuse, naming its index, a text that is not a string or is empty / whitespace only."""
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Text #{index} is {type(text).__name__}, not str.")
            if not text.strip():
                raise ValueError(f"Text #{index} is empty or whitespace only; there is nothing to encode.")


def _sentence_prediction(logits: torch.Tensor, spec: TaskSpec, top_k: int | None) -> dict[str, Any]:
    """One text's logits `[num_outputs]` -> the prediction dict of a sentence-level task."""
    if spec.type == "regression":
        values = logits.tolist()
        return {"value": values[0]} if len(values) == 1 else {"values": dict(zip(spec.labels, values))}
    if spec.type == "multi_label_classification":
        probabilities = torch.sigmoid(logits).tolist()
        ranked = sorted(zip(spec.labels, probabilities), key=lambda pair: -pair[1])
        return {
            "labels": [label for label, p in ranked if p >= spec.threshold],
            "scores": dict(ranked[:top_k] if top_k else ranked),
        }
    probabilities = torch.softmax(logits, dim=-1).tolist()
    ranked = sorted(zip(spec.labels, probabilities), key=lambda pair: -pair[1])
    return {"label": ranked[0][0], "score": ranked[0][1], "scores": dict(ranked[:top_k] if top_k else ranked)}


def iob2_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """IOB2 tags -> entity spans `(type, start, end_exclusive)` over tag positions.

    Lenient, as conlleval/seqeval's default mode: an `I-X` that does not continue an `X` entity starts one.
    """
    spans: list[tuple[str, int, int]] = []
    current_type, start = None, 0
    for position, tag in enumerate([*tags, "O"]):
        prefix, _, entity_type = tag.partition("-")
        continues = prefix == "I" and entity_type == current_type
        if current_type is not None and not continues:
            spans.append((current_type, start, position))
            current_type = None
        if prefix in ("B", "I") and not continues:
            current_type, start = entity_type, position
    return spans


def _entities(text: str, encoding, logits: torch.Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
    """A text's token logits `[seq, num_tags]` -> entity spans with character offsets.

    Each word takes the tag of its first sub-token (as in training); a word's character span runs from its
    first sub-token's start to its last sub-token's end; consecutive words are merged by their IOB2 tags.
    """
    probabilities = torch.softmax(logits, dim=-1)
    words: dict[int, list[int]] = {}  # word id -> [first token, char start, char end]
    for token, word_id in enumerate(encoding.word_ids):
        if word_id is None:
            continue
        start, end = encoding.offsets[token]
        if word_id not in words:
            words[word_id] = [token, start, end]
        else:
            words[word_id][2] = end
    ordered = [words[word_id] for word_id in sorted(words)]
    tags, scores = [], []
    for first_token, _, _ in ordered:
        score, tag_id = probabilities[first_token].max(dim=-1)
        tags.append(spec.labels[int(tag_id)])
        scores.append(float(score))
    entities = []
    for entity_type, first, last in iob2_spans(tags):
        start, end = ordered[first][1], ordered[last - 1][2]
        entities.append(
            {
                "entity": entity_type,
                "text": text[start:end],
                "start": start,
                "end": end,
                "score": sum(scores[first:last]) / (last - first),
            }
        )
    return entities


def _sentence_transformers_max_length(name_or_path: str) -> int | None:
    """The max_seq_length a sentence-transformers checkpoint was trained with (256 for all-MiniLM-L6-v2),
    read from its sentence_bert_config.json when the backbone is a local folder."""
    path = os.path.join(str(name_or_path), "sentence_bert_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        value = json.load(f).get("max_seq_length")
    return int(value) if value else None


MultiTaskEncoderModel.register_for_auto_class("AutoModel")

__all__ = [
    "MultiTaskEncoderModel",
    "MultiTaskEncoderOutput",
    "MultiTaskEncoderPreTrainedModel",
    "Pooling",
    "TaskHead",
]
