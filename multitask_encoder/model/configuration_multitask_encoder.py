"""Configuration of a multi-task sentence encoder: one pretrained encoder, one pooled sentence embedding,
and a dict of task heads that read it.

This file is copied next to the weights by `save_pretrained`, so a saved model can be loaded with
`trust_remote_code=True` on a machine that does not have the `multitask_encoder` package. It must
therefore import nothing but `torch`, `transformers`, the standard library and its sibling files (the task
types live in `tasks_multitask_encoder.py`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig, PretrainedConfig

from .tasks_multitask_encoder import TASK_TYPES, HeadSpec, TaskSpec, parse_task_spec, parse_tasks

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
# What follows the projection (a sentence-transformers Dense layer's activation: its Tanh by default).
PROJECTION_ACTIVATIONS = ("identity", "tanh", "relu", "gelu")
LOSS_WEIGHTINGS = ("static", "uncertainty")
# Encoders whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 of their
# max_position_embeddings are not usable by tokens.
POSITIONS_AFTER_PADDING = (
    "roberta",
    "roberta-prelayernorm",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "mpnet",
    "longformer",
    "data2vec-text",
    "xmod",
    "ibert",
    "luke",
    "esm",
    "markuplm",
    "lilt",
    "layoutlmv3",
)


def encoder_max_tokens(encoder_config: PretrainedConfig | None) -> int | None:
    """How many tokens one input of an encoder with `encoder_config` can hold (its absolute position
    embeddings); None when it declares no such limit."""
    positions = getattr(encoder_config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if encoder_config.model_type in POSITIONS_AFTER_PADDING:
        positions -= (encoder_config.pad_token_id or 0) + 1
    return positions


def check_fits_encoder(max_seq_length: int | None, encoder_config: PretrainedConfig, encoder: str) -> None:
    """Refuse a `max_seq_length` beyond what the encoder's position embeddings hold: every longer text would
    fail in the encoder, at the first long text a user predicts. `encoder` names it in the message."""
    limit = encoder_max_tokens(encoder_config)
    if max_seq_length is not None and limit is not None and max_seq_length > limit:
        raise ValueError(
            f"max_seq_length {max_seq_length} is longer than {encoder} takes ({limit} tokens, its position "
            f"embeddings): set max_seq_length to at most {limit}."
        )


def usable_max_seq_length(config: MultiTaskEncoderConfig) -> int | None:
    """The longest input a model of `config` takes: its `max_seq_length` capped at what the encoder's position
    embeddings hold (a config saved with more, before that was refused, is cut there), else the encoder's
    limit; None when neither limits it."""
    limit = encoder_max_tokens(config.encoder_config)
    if config.max_seq_length is None or limit is None:
        return limit if config.max_seq_length is None else config.max_seq_length
    return min(config.max_seq_length, limit)


class MultiTaskEncoderConfig(PretrainedConfig):
    r"""Configuration of [`MultiTaskEncoderModel`].

    Args:
        encoder_config (`dict` or `PretrainedConfig`):
            The backbone encoder's own configuration (BERT, MiniLM, RoBERTa, DistilBERT, ...). Stored in full
            so that a saved model rebuilds its encoder with `AutoModel.from_config`, never downloading the
            original backbone.
        pooling (`str`, defaults to `"mean"`):
            How token states become one sentence vector: `mean` (attention-masked), `cls`, `max` (masked),
            or `mean_sqrt_len` (sum divided by sqrt(length), as in sentence-transformers).
        normalize (`bool`, defaults to `True`):
            L2-normalise the sentence embedding (the heads read the normalised vector).
        projection_dim (`int`, *optional*):
            If set, a linear projection of the pooled vector to this size (before normalisation).
        projection_activation (`str`, defaults to `"identity"`), projection_bias (`bool`, defaults to `True`):
            The projection's activation (one of `PROJECTION_ACTIVATIONS`) and whether it has a bias: a
            sentence-transformers backbone's Dense layer becomes the projection with its own.
        tasks (`dict[str, dict]` or `list[dict]`):
            Ordered mapping task name -> spec (`type`, `labels`, `head`, `loss_weight` and the type's own
            options); see [`TaskSpec`] and the task types in `tasks_multitask_encoder.py`. The order fixes the order of the per-task logits in the model output. It is saved
            as a list of specs with a `name` key, because config.json is written with sorted keys.
        loss_weighting (`str`, defaults to `"static"`):
            `static` sums `loss_weight * task_loss`; `uncertainty` learns one log-variance per task
            (Kendall, Gal & Cipolla, 2018) on top of the static weights.
        max_seq_length (`int`, *optional*):
            Longest input, in tokens, for `encode`/`predict` (default: the encoder's position limit).
        base_model_name (`str`, *optional*):
            Where the encoder weights came from (a Hub id or a path), recorded for the model card.
        sequence_classification_task, token_classification_task (`str`, *optional*):
            The task `pipeline("text-classification")` / `pipeline("token-classification")` serve (through
            `AutoModelForSequenceClassification` / `AutoModelForTokenClassification`); default: the first
            sentence-level / token-level task.
        weight_interpolation (`dict`, *optional*):
            Set when the encoder is a WiSE-FT weight interpolation (Wortsman et al., 2022) of a trained model's
            encoder and the encoder it started from (`multitask_encoder.interpolate`): `alpha` (1: the trained
            encoder, 0: the original), `original` and `trained` (their names) and `heads` (`"trained"`: kept
            from the trained model, `"refit"`: refit on the interpolated encoder).
        merged_adapter (`str`, *optional*):
            Set when the encoder holds a PEFT adapter merged into its weights (training with `peft:`): the folder,
            relative to the model's, that holds the adapter alone with the heads it was trained with (`adapter`).
            `load_adapter` refuses to load that adapter onto it (it would apply the adapter twice); an adapter
            trained on this model (`init_from` it with `peft:`) loads.
    """

    model_type = "multitask_encoder"
    sub_configs: ClassVar[dict[str, type]] = {"encoder_config": AutoConfig}
    # Output fields the Trainer must not gather as predictions (only the `<task>_logits` are).
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["embeddings", "task_losses"]

    def __init__(
        self,
        encoder_config: dict[str, Any] | PretrainedConfig | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        projection_dim: int | None = None,
        projection_activation: str = "identity",
        projection_bias: bool = True,
        tasks: dict[str, Any] | list[dict[str, Any]] | None = None,
        loss_weighting: str = "static",
        max_seq_length: int | None = None,
        base_model_name: str | None = None,
        sequence_classification_task: str | None = None,
        token_classification_task: str | None = None,
        weight_interpolation: dict[str, Any] | None = None,
        merged_adapter: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            if "model_type" not in encoder_config:
                raise ValueError("encoder_config needs a `model_type` (e.g. 'bert').")
            encoder_config = AutoConfig.for_model(**encoder_config)
        self.encoder_config = encoder_config
        if pooling not in POOLING_MODES:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {list(POOLING_MODES)}.")
        self.pooling = pooling
        self.normalize = bool(normalize)
        if projection_dim is not None and int(projection_dim) < 1:
            raise ValueError(f"projection_dim must be a positive integer, got {projection_dim}.")
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        if projection_activation not in PROJECTION_ACTIVATIONS:
            raise ValueError(
                f"Unknown projection_activation {projection_activation!r}; expected one of "
                f"{list(PROJECTION_ACTIVATIONS)}."
            )
        self.projection_activation = projection_activation
        self.projection_bias = bool(projection_bias)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"Unknown loss_weighting {loss_weighting!r}; expected one of {list(LOSS_WEIGHTINGS)}."
            )
        self.loss_weighting = loss_weighting
        self.max_seq_length = max_seq_length
        self.base_model_name = base_model_name
        # The task the standard pipelines serve (AutoModelForSequence/TokenClassification); None: the first.
        self.sequence_classification_task = sequence_classification_task
        self.token_classification_task = token_classification_task
        if weight_interpolation is not None and not isinstance(weight_interpolation, dict):
            raise ValueError(
                f"weight_interpolation must be a mapping (alpha, original, trained), got {weight_interpolation!r}."
            )
        self.weight_interpolation = None if weight_interpolation is None else dict(weight_interpolation)
        self.merged_adapter = merged_adapter
        # `PretrainedConfig()` is built with no arguments by transformers internals (e.g. to diff against
        # defaults when saving), so an empty task dict is allowed here and refused when a model is built.
        self.tasks: dict[str, TaskSpec] = parse_tasks(tasks or {})
        super().__init__(**kwargs)

    @property
    def embedding_size(self) -> int:
        """Size of the sentence embedding the heads read."""
        return self.projection_dim or self.encoder_config.hidden_size

    def validate_for_model(self) -> None:
        """Refuse a configuration that cannot build a model (called by the model's constructor)."""
        if self.encoder_config is None:
            raise ValueError(
                "MultiTaskEncoderConfig has no encoder_config: build it with from_backbone(...)."
            )
        if not self.tasks:
            raise ValueError("MultiTaskEncoderConfig declares no tasks: give at least one in `tasks`.")
        num_layers = self.encoder_config.num_hidden_layers
        for name, spec in self.tasks.items():
            spec.head.layer_indices(name, num_layers)  # head `layers` within the encoder's hidden states
        for field_name, token_level in (
            ("sequence_classification_task", False),
            ("token_classification_task", True),
        ):
            task = getattr(self, field_name, None)
            if task is not None and (
                task not in self.tasks or self.tasks[task].is_token_level != token_level
            ):
                served = [name for name, spec in self.tasks.items() if spec.is_token_level == token_level]
                raise ValueError(
                    f"{field_name} is {task!r}, which is not one of this model's tasks of that kind: {served}."
                )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["tasks"] = [{"name": name, **spec.to_dict()} for name, spec in self.tasks.items()]
        return output


MultiTaskEncoderConfig.register_for_auto_class()

__all__ = ["TASK_TYPES", "HeadSpec", "MultiTaskEncoderConfig", "TaskSpec", "parse_task_spec", "parse_tasks"]
