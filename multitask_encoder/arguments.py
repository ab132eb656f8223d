"""The options of a multi-task run, as `HfArgumentParser` dataclasses (so `train.py --help` lists them and a
Python user builds them the same way):

    ModelArguments               how the model is built (backbone, pooling, projection, max length, ...)
    MultiTaskTrainingArguments   TrainingArguments + the multi-task options: batch composition and task
                                 sampling, caps, freezing, head/encoder learning rates, layer-wise decay,
                                 the frozen-encoder fast path, NER sub-token labels, early stopping
    JobArguments                 what only the train.py job does (example sentences, the data cache)

The `tasks:` section of a config file is described by `tasks_help()`, generated from the task-type registry
(docs/config.md is the long form; a test keeps both in sync with the registry).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments

from .adapters import parse_adapter_block
from .data.spec import COMMON_DATA_KEYS
from .model.configuration_multitask_encoder import LOSS_WEIGHTINGS, POOLING_MODES
from .model.modeling_multitask_encoder import MultiTaskEncoderModel
from .model.tasks_multitask_encoder import SPEC_KEYS
from .sampling import COMPOSITIONS, SAMPLING_STRATEGIES
from .task_types.types import TASK_TYPES


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}.")


# The model options' defaults are `from_backbone`'s, declared there once: a run that leaves an option out trains
# the model `from_backbone` builds without it.
BACKBONE_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(MultiTaskEncoderModel.from_backbone).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


@dataclass
class ModelArguments:
    _argument_group_name: ClassVar[str] = "model"

    backbone: str | None = field(
        default=BACKBONE_DEFAULTS["name_or_path"],
        metadata={"help": "Encoder to start from (Hub id or folder). Default: packaged all-MiniLM-L6-v2."},
    )
    pooling: str | None = field(
        default=BACKBONE_DEFAULTS["pooling"],
        metadata={
            "help": " | ".join(POOLING_MODES)
            + " (default: a sentence-transformers backbone's own, else mean)"
        },
    )
    normalize: bool | None = field(
        default=BACKBONE_DEFAULTS["normalize"],
        metadata={
            "help": "L2-normalise the sentence embedding (default: as a sentence-transformers backbone does, "
            "else true)."
        },
    )
    projection_dim: int | None = field(
        default=BACKBONE_DEFAULTS["projection_dim"],
        metadata={
            "help": "Project the pooled vector to this size (default: a sentence-transformers backbone's "
            "Dense layer, else none)."
        },
    )
    max_seq_length: int | None = field(
        default=BACKBONE_DEFAULTS["max_seq_length"],
        metadata={
            "help": "Longest input in tokens (training and inference). Default: a sentence-transformers "
            "backbone's own (256 for all-MiniLM-L6-v2), else its tokenizer's limit, within the encoder's positions."
        },
    )
    loss_weighting: str = field(
        default=BACKBONE_DEFAULTS["loss_weighting"],
        metadata={"help": "static | uncertainty (learned per-task weights, Kendall et al. 2018)"},
    )
    attn_implementation: str | None = field(
        default=BACKBONE_DEFAULTS["attn_implementation"], metadata={"help": "sdpa | eager (default: sdpa)"}
    )
    peft: dict | str | None = field(
        default=None,
        metadata={
            "help": "A PEFT adapter on the encoder (a `peft:` block in the config, or JSON here): type (lora, "
            "ia3, loha, ...; default lora), r, alpha, dropout, target_modules. Merged into the saved model."
        },
    )

    def __post_init__(self) -> None:
        if self.pooling is not None:
            _choice("pooling", self.pooling, POOLING_MODES)
        _choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        self.peft = parse_adapter_block(self.peft)
        if self.max_seq_length is not None and (
            isinstance(self.max_seq_length, bool)
            or not isinstance(self.max_seq_length, int)
            or self.max_seq_length < 1
        ):
            raise ValueError(f"max_seq_length must be a positive integer, got {self.max_seq_length!r}.")


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the multi-task options, read by `MultiTaskTrainer`.

    Two defaults differ from `TrainingArguments`: `remove_unused_columns=False` (the collator reads the rows'
    `word_ids`, which the model's forward does not take) and `ddp_find_unused_parameters=False` (every head
    gets a gradient each step, a zero one without labels, so DDP needs no search; with it DDP would rebuild
    the output from its keys and fail on the per-task logits).
    """

    composition: str = field(
        default="mixed",
        metadata={"help": "mixed (tasks share batches) | per_task (one data group per batch)"},
    )
    sampling: str = field(
        default="proportional",
        metadata={"help": "proportional | uniform | temperature: each group's share of an epoch"},
    )
    temperature: float = field(default=2.0, metadata={"help": "T of temperature sampling: p ~ n^(1/T)"})
    max_examples_per_group: int | None = field(
        default=None, metadata={"help": "Per-epoch cap on each data group (a fresh subset every epoch)."}
    )
    min_examples_per_group: int | None = field(
        default=None, metadata={"help": "Oversample smaller data groups to this many rows per epoch."}
    )
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the heads only."})
    freeze_embeddings: bool = field(default=False, metadata={"help": "Freeze the encoder's embedding layer."})
    freeze_bottom_layers: int = field(
        default=0, metadata={"help": "Freeze this many encoder layers from the bottom."}
    )
    encoder_learning_rate: float | None = field(default=None, metadata={"help": "Default: learning_rate."})
    head_learning_rate: float | None = field(default=None, metadata={"help": "Default: learning_rate."})
    layerwise_lr_decay: float = field(
        default=1.0, metadata={"help": "Encoder learning-rate factor per layer downwards, in (0, 1]."}
    )
    precompute_embeddings: bool = field(
        default=False, metadata={"help": "With freeze_encoder: encode the data once, train the heads on it."}
    )
    precompute_mode: str = field(
        default="fastest",
        metadata={
            "help": "Serving mode the precompute encodes through: 'fastest' (the fastest within the serving guard "
            "here, see multitask_encoder.precompute.precompute_mode) or an optimize_for_inference mode ('exact': "
            "the eager fp32 numbers the slow path computes)."
        },
    )
    label_all_subtokens: bool = field(
        default=False,
        metadata={"help": "Token tasks: label every word piece (B-X -> I-X), not the first only."},
    )
    embedding_distillation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Keep the sentence embedding close to the original encoder's: this weight times the mean cosine "
            "distance to a frozen copy's embedding of the same texts is added to the loss (0: off)."
        },
    )
    linear_probe_epochs: int = field(
        default=0,
        metadata={
            "help": "Linear probe first (LP-FT, Kumar et al. 2022): before fine-tuning, train the heads alone on the "
            "frozen encoder's fast path for up to this many epochs (early-stopped on validation when the tasks have "
            "validation sets, keeping the best epoch), then fine-tune everything as configured (0: off)."
        },
    )
    linear_probe_learning_rate: float | None = field(
        default=None,
        metadata={"help": "The heads' learning rate in the linear probe (default: head_learning_rate)."},
    )
    linear_probe_patience: int = field(
        default=2,
        metadata={"help": "The linear probe stops after this many epochs without a better validation score."},
    )
    teacher_weight_start: float = field(
        default=1.0,
        metadata={
            "help": "With `teachers:` in the config: the weight of a teacher's targets against the gold labels at "
            "the first step (the loss is w * distillation + (1 - w) * gold)."
        },
    )
    teacher_weight_end: float = field(
        default=0.0,
        metadata={
            "help": "The teacher's weight at the last step; it moves linearly from teacher_weight_start "
            "(teacher annealing, Clark et al. 2019: 1 -> 0). Equal values keep it constant."
        },
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the collator needs the rows' word_ids."}
    )

    def __post_init__(self) -> None:
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False
        if self.dataloader_pin_memory and not _has_accelerator():
            self.dataloader_pin_memory = (
                False  # pinning serves GPU copies; torch warns for every loader without one
            )
        # Zero would divide by zero deep inside the Trainer (a traceback, not a message).
        for name in (
            "gradient_accumulation_steps",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
        ):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        super().__post_init__()
        _choice("composition", self.composition, COMPOSITIONS)
        _choice("sampling", self.sampling, SAMPLING_STRATEGIES)
        if not self.temperature > 0:  # also refuses NaN
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}.")
        for name in ("max_examples_per_group", "min_examples_per_group", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if self.freeze_bottom_layers < 0:
            raise ValueError(f"freeze_bottom_layers must be >= 0, got {self.freeze_bottom_layers}.")
        if self.prediction_loss_only or self.batch_eval_metrics:
            # Both skip compute_metrics over the whole set, which scores each task and keeps its logits.
            raise ValueError(
                "prediction_loss_only and batch_eval_metrics are not supported: the multi-task evaluation "
                "scores every task on its whole evaluation set."
            )
        if self.linear_probe_epochs < 0 or self.linear_probe_patience < 1:
            raise ValueError(
                f"linear_probe_epochs must be >= 0 and linear_probe_patience >= 1, got {self.linear_probe_epochs} "
                f"and {self.linear_probe_patience}."
            )
        if self.linear_probe_epochs and self.freeze_encoder:
            raise ValueError(
                "linear_probe_epochs trains the heads on the frozen encoder before fine-tuning it; with "
                "freeze_encoder nothing is fine-tuned after it (train the heads with freeze_encoder alone)."
            )
        for name in ("teacher_weight_start", "teacher_weight_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # also refuses NaN
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.embedding_distillation_weight < 0:
            raise ValueError(
                f"embedding_distillation_weight must be >= 0, got {self.embedding_distillation_weight}."
            )
        if self.embedding_distillation_weight and self.freeze_encoder:
            raise ValueError(
                "embedding_distillation_weight keeps a training encoder close to the original; the encoder is frozen."
            )
        if self.precompute_embeddings and not self.freeze_encoder:
            raise ValueError(
                "precompute_embeddings needs freeze_encoder: a training encoder changes its output."
            )

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments) -> MultiTaskTrainingArguments:
        """A copy of plain `TrainingArguments` with the multi-task defaults (the given object is not changed)."""
        if isinstance(args, cls):
            return args
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
        values["remove_unused_columns"] = False
        if values.get("ddp_find_unused_parameters") is None:
            values["ddp_find_unused_parameters"] = False
        return cls(**values)


@dataclass
class JobArguments:
    _argument_group_name: ClassVar[str] = "train.py job"

    language: list[str] | None = field(
        default=None,
        metadata={
            "help": "Language codes of the training data, for the card (default: the backbone card's)."
        },
    )
    example_sentences: list[str] = field(
        default_factory=list,
        metadata={"help": "Sentences to predict at the end (printed, and shown in the card)."},
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache for read and tokenised datasets (default: the datasets cache)."},
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "A trained multitask-encoder folder or Hub id to start from: its encoder, heads and labels stay "
            "and the config's new tasks are added (instead of a backbone)."
        },
    )
    freeze_existing: bool = field(
        default=False,
        metadata={
            "help": "With init_from: the encoder and the trained heads do not move (their predictions stay)."
        },
    )
    only_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Train only these tasks of the config (the others and their teachers are left out); what "
            "`python -m multitask_encoder.teachers` uses to train each task's teacher."
        },
    )
    drop_held_out_duplicates: bool = field(
        default=False,
        metadata={"help": "Drop validation/test rows whose text is also a train row (counted either way)."},
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep output_dir's checkpoint-* folders after a successful run (deleted by default)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a finished run, or another run's checkpoints, in output_dir."},
    )


ARGUMENT_CLASSES = (ModelArguments, MultiTaskTrainingArguments, JobArguments)
# Multi-task options the model card reports next to the TrainingArguments ones.
MULTITASK_OPTIONS = tuple(
    f.name
    for f in dataclasses.fields(MultiTaskTrainingArguments)
    if f.name not in {g.name for g in dataclasses.fields(TrainingArguments)}
)


def tasks_help() -> str:
    """The `tasks:` section of a config file: the keys every task takes, then each type's own keys with their
    defaults (from the task-type registry)."""
    lines = [
        "tasks: (in the config file; see docs/config.md)",
        "  <name>:                 a Python identifier; the head's name",
        f"    common keys:          {', '.join([*SPEC_KEYS, *COMMON_DATA_KEYS])}",
        "    head:                 linear | mlp | {type, hidden_size, activation, dropout, layers}; layers: last |",
        "                          all | [hidden-state indices]: the head reads a learned mix of those layers",
    ]
    for task_type in TASK_TYPES.values():
        keys = {**task_type.options, **task_type.data_options}
        described = ", ".join(
            f"{key}={'<task name>' if default is None and key == 'label_column' else default!r}"
            for key, default in keys.items()
        )
        lines.append(f"    type: {task_type.name}")
        lines.append(f"      {described}")
    lines += [
        "teachers: (in the config file) <task>: a trained single-task model (folder or Hub id) whose outputs the",
        "  task learns from besides its labels (see teacher_weight_start/end; multitask-encoder-train-teachers",
        "  trains them); embedding_evaluation: <name>: {data, score_column, ...} pairs scoring the embedding",
    ]
    return "\n".join(lines)


__all__ = [
    "ARGUMENT_CLASSES",
    "MULTITASK_OPTIONS",
    "JobArguments",
    "ModelArguments",
    "MultiTaskTrainingArguments",
    "tasks_help",
]
