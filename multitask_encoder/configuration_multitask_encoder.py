"""Configuration of a multi-task sentence encoder: one pretrained encoder, one pooled sentence embedding,
and a dict of task heads that read it.

This file is copied next to the weights by `save_pretrained`, so a saved model can be loaded with
`trust_remote_code=True` on a machine that does not have the `multitask_encoder` package. It must
therefore import nothing but `torch`, `transformers` and the standard library.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from torch import nn
from transformers import AutoConfig, PretrainedConfig

TASK_TYPES = (
    "sequence_classification",
    "multi_label_classification",
    "regression",
    "token_classification",
)
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
HEAD_TYPES = ("linear", "mlp")
LOSS_WEIGHTINGS = ("static", "uncertainty")
# The heads live in an `nn.ModuleDict`, which refuses keys that shadow its own attributes ("type", "values",
# "to", "training", ...): such task names are refused here, with the reason, instead of deep in torch.
RESERVED_TASK_NAMES = frozenset(dir(nn.ModuleDict()))
ACTIVATIONS = ("gelu", "relu", "tanh", "silu")


@dataclass
class HeadSpec:
    """Shape of one task head: `linear` (a single projection), or `mlp` (Linear-act-dropout-Linear)."""

    type: str = "linear"
    hidden_size: int | None = None  # mlp only; defaults to the embedding size
    activation: str = "gelu"
    dropout: float = 0.1


@dataclass
class TaskSpec:
    """One task the model serves.

    `labels` are the class names (their order gives the class ids). A `regression` task may name its
    outputs in `labels` (default one output called "value"). A `token_classification` task takes IOB2
    tag names ("O", "B-PER", "I-PER", ...).
    """

    type: str
    labels: list[str] = field(default_factory=list)
    head: HeadSpec = field(default_factory=HeadSpec)
    loss_weight: float = 1.0
    threshold: float = 0.5  # multi_label_classification: a label is predicted when sigmoid >= threshold

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def is_token_level(self) -> bool:
        return self.type == "token_classification"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_task_spec(name: str, spec: TaskSpec | dict[str, Any]) -> TaskSpec:
    """Build and validate a `TaskSpec` from a dict (as found in config.json or a training YAML)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"Task name {name!r} is not a valid Python identifier (letters, digits, underscore)."
        )
    if name in RESERVED_TASK_NAMES:
        raise ValueError(
            f"Task name {name!r} is reserved: the heads are an nn.ModuleDict, which has an attribute of that "
            f"name. Rename the task (e.g. {name + '_task'!r})."
        )
    if isinstance(spec, TaskSpec):
        spec = spec.to_dict()
    if not isinstance(spec, dict):
        raise ValueError(f"Task {name!r}: the spec must be a mapping, got {type(spec).__name__}.")
    spec = copy.deepcopy(spec)
    unknown = set(spec) - {"type", "labels", "head", "loss_weight", "threshold"}
    if unknown:
        raise ValueError(f"Task {name!r}: unknown spec keys {sorted(unknown)}.")
    task_type = spec.get("type")
    if task_type not in TASK_TYPES:
        raise ValueError(
            f"Task {name!r}: unknown task type {task_type!r}; expected one of {list(TASK_TYPES)}."
        )

    labels = spec.get("labels")
    if task_type == "regression" and not labels:
        labels = ["value"]
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ValueError(f"Task {name!r}: `labels` must be a non-empty list of label names.")
    labels = [str(label) for label in labels]
    if any(not label.strip() for label in labels):
        raise ValueError(f"Task {name!r}: label names must not be empty.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Task {name!r}: duplicate labels {duplicates}.")
    if task_type in ("sequence_classification", "token_classification") and len(labels) < 2:
        raise ValueError(f"Task {name!r}: a {task_type} task needs at least 2 labels, got {labels}.")
    if task_type == "token_classification":
        bad = [tag for tag in labels if tag != "O" and not tag.startswith(("B-", "I-"))]
        if bad:
            raise ValueError(f"Task {name!r}: token labels must be IOB2 tags ('O', 'B-X', 'I-X'); got {bad}.")

    head_dict = spec.get("head") or {}
    if isinstance(head_dict, str):
        head_dict = {"type": head_dict}
    unknown = set(head_dict) - {"type", "hidden_size", "activation", "dropout"}
    if unknown:
        raise ValueError(f"Task {name!r}: unknown head keys {sorted(unknown)}.")
    head = HeadSpec(**head_dict)
    if head.type not in HEAD_TYPES:
        raise ValueError(
            f"Task {name!r}: unknown head type {head.type!r}; expected one of {list(HEAD_TYPES)}."
        )
    if head.activation not in ACTIVATIONS:
        raise ValueError(
            f"Task {name!r}: unknown activation {head.activation!r}; expected {list(ACTIVATIONS)}."
        )
    if not 0.0 <= float(head.dropout) < 1.0:
        raise ValueError(f"Task {name!r}: head dropout must be in [0, 1), got {head.dropout}.")
    if head.hidden_size is not None and int(head.hidden_size) < 1:
        raise ValueError(f"Task {name!r}: head hidden_size must be positive, got {head.hidden_size}.")

    loss_weight = float(spec.get("loss_weight", 1.0))
    if loss_weight < 0:
        raise ValueError(f"Task {name!r}: loss_weight must be >= 0, got {loss_weight}.")
    threshold = float(spec.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"Task {name!r}: threshold must be in (0, 1), got {threshold}.")
    return TaskSpec(type=task_type, labels=labels, head=head, loss_weight=loss_weight, threshold=threshold)


def parse_tasks(tasks: dict[str, Any] | list[dict[str, Any]]) -> dict[str, TaskSpec]:
    """Parse the ordered task specs, given as a mapping name -> spec or as a list of specs with `name`."""
    if isinstance(tasks, (list, tuple)):
        named = {}
        for position, spec in enumerate(tasks):
            if not isinstance(spec, dict) or "name" not in spec:
                raise ValueError(f"Task #{position}: a task given in a list needs a `name` key.")
            spec = dict(spec)
            name = spec.pop("name")
            if name in named:
                raise ValueError(f"Task {name!r} is declared twice.")
            named[name] = spec
        tasks = named
    if not isinstance(tasks, dict):
        raise ValueError(f"`tasks` must be a mapping of task name -> spec, got {type(tasks).__name__}.")
    return {name: parse_task_spec(name, spec) for name, spec in tasks.items()}


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
        tasks (`dict[str, dict]` or `list[dict]`):
            Ordered mapping task name -> spec (`type`, `labels`, `head`, `loss_weight`, `threshold`); see
            [`TaskSpec`]. The order fixes the order of the per-task logits in the model output. It is saved
            as a list of specs with a `name` key, because config.json is written with sorted keys.
        loss_weighting (`str`, defaults to `"static"`):
            `static` sums `loss_weight * task_loss`; `uncertainty` learns one log-variance per task
            (Kendall, Gal & Cipolla, 2018) on top of the static weights.
        max_seq_length (`int`, *optional*):
            Longest input, in tokens, for `encode`/`predict` (default: the encoder's position limit).
        base_model_name (`str`, *optional*):
            Where the encoder weights came from (a Hub id or a path), recorded for the model card.
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
        tasks: dict[str, Any] | list[dict[str, Any]] | None = None,
        loss_weighting: str = "static",
        max_seq_length: int | None = None,
        base_model_name: str | None = None,
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
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"Unknown loss_weighting {loss_weighting!r}; expected one of {list(LOSS_WEIGHTINGS)}."
            )
        self.loss_weighting = loss_weighting
        self.max_seq_length = max_seq_length
        self.base_model_name = base_model_name
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

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["tasks"] = [{"name": name, **spec.to_dict()} for name, spec in self.tasks.items()]
        return output


MultiTaskEncoderConfig.register_for_auto_class()
