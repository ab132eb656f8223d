"""Task types, model side: what one kind of task means to a loaded model, one class per type.

    config.json ─► parse_task_spec ─► TaskSpec (type, labels, head, loss_weight, options)
                                        │
              spec.task_type = TASK_TYPES[spec.type] decides, for that task,
        config    its options and label rules        check_labels, check_options, default_labels
        model     what its head reads, its loss      head_in_features, head_input, logits, loss, distillation_loss
        predict   logits -> the dicts `predict` returns   decode
        export    how an ONNX export's consumer decodes   postprocessing

What only training, scoring and the card need of a type (reading label cells, collating labels, metrics,
prediction-file columns, card names) is its package side: `multitask_encoder/task_types/types.py`, one subclass
of each class here. Adding a task type is one class here, one there, both registered, plus the contract suite.

Copied next to the weights by `save_pretrained` with the other model files (a saved model loads where the
`multitask_encoder` package is absent), so it imports only torch, the standard library and nothing else.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .inputs_multitask_encoder import INPUT_KINDS, InputKind

IGNORE_INDEX = -100  # a missing label (a row without the task, a special token, padding)
# IOB2 prefixes, plus E-/S- because seqeval's default chunker accepts IOBES tags too.
ENTITY_PREFIXES = ("B", "I", "E", "S")
# How `entities` turns a text's token logits into entity spans, as the ONNX export's config.json states it for
# token tasks (docs/onnx.md spells each rule out).
ENTITY_DECODING = {
    "word_tag": "first_subtoken",  # a word (the tokenizer's word ids) takes its first sub-token's argmax tag
    "scheme": "IOB2",
    # An I-X tag continues the open entity when the previous word's tag is B-X or I-X; any other non-O tag
    # opens a new one ("O I-X" is an X entity; "B-X I-Y" two entities): seqeval's default (conlleval) chunking.
    "grouping": "conlleval",
    "entity_score": "mean_word_probability",  # the mean over its words of each word's tag probability
    "span": "character_offsets",  # first word's first sub-token start .. last word's last sub-token end
}

HEAD_TYPES = ("linear", "mlp")
ACTIVATIONS = ("gelu", "relu", "tanh", "silu")
# The heads live in an `nn.ModuleDict`, which refuses keys that shadow its own attributes ("type", "values",
# "to", "training", ...): such task names are refused here, with the reason, instead of deep in torch.
RESERVED_TASK_NAMES = frozenset(dir(nn.ModuleDict()))
SPEC_KEYS = ("type", "labels", "head", "loss_weight")  # every type's; a type adds its `options`
# Written into config.json for every task by versions before the registry; accepted (at its old default) on
# any type when loading such a config, refused when it would mean something.
LEGACY_OPTIONS = {"threshold": 0.5}


# ---------------------------------------------------------------------------------------------- entities
def is_finite_number(value: Any) -> bool:
    """An int or float that is neither NaN nor infinite (bool is not a number here): what every numeric task
    option must be, since one NaN or inf in a loss scale or score range turns every weight it reaches into NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _split_tag(tag: str) -> tuple[str, str]:
    """Split an IOB2/IOBES tag into (prefix, entity type), e.g. "B-PER" -> ("B", "PER"), "O" -> ("O", "")."""
    if tag == "O":
        return "O", ""
    prefix, separator, entity_type = tag.partition("-")
    if prefix not in ENTITY_PREFIXES or not separator or not entity_type:
        raise ValueError(f"Tag {tag!r} is not 'O' or '<B|I|E|S>-<TYPE>'.")
    return prefix, entity_type


def extract_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """Chunk one sentence's tag sequence into entities, exactly as seqeval's default (conlleval) mode does.

    Args:
        tags: one tag per token, "O" or "<prefix>-<TYPE>" with prefix B or I (IOB2), or E/S (IOBES).

    Returns:
        (entity type, start, end) for each entity in order, end exclusive:
        ["B-PER", "I-PER", "O"] -> [("PER", 0, 2)].

    The only rule: an I- or E- tag continues the open entity when the previous tag is B- or I- of the same
    type. Every other non-O tag starts a new entity, so malformed sequences are repaired the lenient way:
    "O I-PER" is a PER entity and "B-PER I-LOC" is two entities.
    """
    entities = []
    entity_type, entity_start = None, 0  # entity_type is None while no entity is open
    previous_prefix, previous_type = "O", ""
    for position, tag in enumerate(tags):
        prefix, tag_type = _split_tag(tag)
        continues_entity = (
            prefix in ("I", "E") and previous_prefix in ("B", "I") and tag_type == previous_type
        )
        if not continues_entity:
            if entity_type is not None:
                entities.append((entity_type, entity_start, position))
            entity_type, entity_start = (None, 0) if prefix == "O" else (tag_type, position)
        previous_prefix, previous_type = prefix, tag_type
    if entity_type is not None:
        entities.append((entity_type, entity_start, len(tags)))
    return entities


# ---------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class HeadSpec:
    """Shape of one task head: `linear` (a single projection), or `mlp` (Linear-act-dropout-Linear).

    `layers` is what the head reads: `last` (the last encoder layer, as the embedding does), or a learned
    scalar mix (ELMo, UDify: softmax-weighted layers times a scale) of the encoder's hidden states, `all` of
    them or a list of indices (0 = the embedding layer's output, N = the last of N encoder layers).
    """

    type: str = "linear"
    hidden_size: int | None = None  # mlp only; defaults to the head's input size
    activation: str = "gelu"
    dropout: float = 0.1
    layers: str | tuple[int, ...] = "last"

    @property
    def mixes_layers(self) -> bool:
        """True when the head reads a learned mix of hidden layers instead of the last layer alone."""
        return self.layers != "last"

    def layer_indices(self, task: str, num_layers: int) -> tuple[int, ...] | None:
        """The hidden-state indices the head mixes (None for `last`), checked against an encoder of
        `num_layers` layers (hidden states 0..num_layers)."""
        if not self.mixes_layers:
            return None
        if self.layers == "all":
            return tuple(range(num_layers + 1))
        beyond = [index for index in self.layers if index > num_layers]
        if beyond:
            raise ValueError(
                f"Task {task!r}: head layers {list(self.layers)} has {beyond}, beyond the encoder's "
                f"{num_layers} layers (hidden states 0 = the embedding layer's output .. {num_layers} = the "
                "last layer)."
            )
        return tuple(self.layers)


@dataclass(frozen=True)
class TaskSpec:
    """One task the model serves, as config.json stores it.

    `labels` are the class names (their order gives the class ids); what they mean and which `options` a task
    takes depend on its type (see the `TaskType` subclasses). Build it through `parse_task_spec`, which
    validates it and fills the type's defaults.
    """

    type: str
    labels: list[str] = field(default_factory=list)
    head: HeadSpec = field(default_factory=HeadSpec)
    loss_weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)  # the type's own options, e.g. `threshold`
    name: str = ""  # the task's name (the key it has in config.tasks), for messages

    @property
    def checked(self) -> bool:
        """True for a spec `parse_task_spec` built: the config, the collator and the data take it as it is
        instead of validating it again; a spec built or `dataclasses.replace`d by hand is checked."""
        return CHECKED_SPECS.get(id(self)) is self

    @property
    def task_type(self) -> TaskType:
        return TASK_TYPES[self.type]

    @property
    def input_kind(self) -> InputKind:
        """What a row (and a `predict` input) of this task is and how it is encoded (the type's
        `input_encoding` for the task's options)."""
        return INPUT_KINDS[self.task_type.input_encoding(self.options)]

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
        """True when the head reads every token's state (and predictions need character offsets)."""
        return self.task_type.reads_token_states

    @property
    def threshold(self) -> float:
        return self.options["threshold"]

    def to_dict(self) -> dict[str, Any]:
        """The flat form config.json stores: the common keys, then the type's options."""
        head = asdict(self.head)
        if isinstance(head["layers"], tuple):
            head["layers"] = list(head["layers"])
        return {
            "type": self.type,
            "labels": list(self.labels),
            "head": head,
            "loss_weight": self.loss_weight,
            **self.options,
        }


class EncoderFeatures(NamedTuple):
    """What the heads can read from one batch of `batch` rows: `token_states` `[batch, seq, hidden]` (None
    when no head needs them, e.g. on the precomputed fast path), `attention_mask` `[batch, seq]`, the sentence
    `embeddings` `[batch, embedding_size]` of each row's (first) text; for rows with a second text (pair
    tasks encoded separately, contrastive positives) `pair_embeddings` `[pairs, embedding_size]` and
    `pair_rows` `[pairs]` (the batch row each belongs to); contrastive negatives likewise. For heads that mix
    layers: `hidden_states` {hidden-state index: `[batch, seq, hidden]`} (the token heads' layers) and
    `pooled_hidden_states` {index: `[batch, hidden]`} (the sentence heads' layers, each pooled as the
    embedding is). For tasks that score label texts (label_text_classification): `label_embeddings` {task:
    `[num_labels, embedding_size]`}, the embeddings of the task's label texts."""

    token_states: torch.Tensor | None
    attention_mask: torch.Tensor | None
    embeddings: torch.Tensor
    pair_embeddings: torch.Tensor | None = None
    pair_rows: torch.Tensor | None = None
    negative_embeddings: torch.Tensor | None = None
    negative_rows: torch.Tensor | None = None
    hidden_states: Mapping[int, torch.Tensor] | None = None
    pooled_hidden_states: Mapping[int, torch.Tensor] | None = None
    label_embeddings: Mapping[str, torch.Tensor] | None = None

    def layer_mix(self, head: nn.Module, token_level: bool) -> torch.Tensor:
        """The learned mix of a layer-mixing head (`head.layers`, `head.mix`): of the token states of its
        layers (`token_level`), else of their pooled vectors."""
        source = self.hidden_states if token_level else self.pooled_hidden_states
        missing = [index for index in head.layers if source is None or index not in source]
        if missing:
            kind = "hidden_states" if token_level else "pooled_hidden_states"
            raise ValueError(
                f"The head mixes hidden layers {list(head.layers)}, but the encoder outputs have no {kind} for "
                f"{missing}."
            )
        return head.mix(torch.stack([source[index] for index in head.layers]))

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, first-text embeddings, second-text embeddings) of the rows that have a second text."""
        if self.pair_rows is None or self.pair_embeddings is None:
            empty = self.embeddings[:0]
            return torch.zeros(0, dtype=torch.long, device=self.embeddings.device), empty, empty
        return self.pair_rows, self.embeddings[self.pair_rows], self.pair_embeddings


def ranked_scores(labels: Sequence[str], probabilities: list[float], top_k: int | None) -> dict[str, float]:
    ranked = sorted(zip(labels, probabilities), key=lambda pair: -pair[1])
    return dict(ranked[:top_k] if top_k else ranked)


# ---------------------------------------------------------------------------------------------- base
class TaskType:
    """What one kind of task means end to end. Subclasses set the class attributes and override the methods
    their type does differently; instances hold no state (one per type, in `TASK_TYPES`)."""

    name: ClassVar[str]
    hf_problem_type: ClassVar[str] = "single_label_classification"  # `config.problem_type` of its task view
    options: ClassVar[dict[str, Any]] = {}  # spec keys of this type only -> default
    # The input kind (inputs_multitask_encoder.INPUT_KINDS) of its rows: one text ("text"), a list of words
    # ("tokens") or two texts ("pair"); `input_encoding` may pick another kind of the same content by option.
    input_kind: ClassVar[str] = "text"
    min_labels: ClassVar[int] = 1
    reads_token_states: ClassVar[bool] = False

    # -------------------------------------------------------------- config
    def input_encoding(self, options: Mapping[str, Any]) -> str:
        """The input kind a task of this type encodes its rows as, from the task's options: "text", "tokens",
        "pair" (each text on its own: a second encoder pass gives `pair_embeddings`) or "pair_joint" (one
        `[CLS] a [SEP] b` input). `TaskSpec.input_kind` is that kind."""
        return self.input_kind

    def default_labels(self) -> list[str]:
        return []

    def check_labels(self, task: str, labels: list[str]) -> None:
        if len(labels) < self.min_labels:
            raise ValueError(
                f"Task {task!r}: a {self.name} task needs at least {self.min_labels} labels, got {labels}."
            )

    def check_options(self, task: str, options: dict[str, Any]) -> dict[str, Any]:
        """The type's options with defaults filled in, validated."""
        return {**self.options, **options}

    def check_label_options(self, task: str, labels: list[str], options: Mapping[str, Any]) -> None:
        """Checks of options that name labels (after `check_options`)."""

    # Types whose logits score the embeddings of label texts (`label_texts`) rather than a head's output:
    # the model embeds those texts with the encoder (`EncoderFeatures.label_embeddings`).
    embeds_label_texts: ClassVar[bool] = False

    def label_texts(self, spec: TaskSpec) -> list[str]:
        """The texts whose embeddings stand for the task's labels, in `spec.labels` order."""
        raise NotImplementedError

    # -------------------------------------------------------------- model
    def layer_mix_refusal(self, options: Mapping[str, Any]) -> str | None:
        """Why a task of this type (with these options) cannot read a mix of layers (head `layers` other than
        `last`), or None when it can."""
        return None

    def head_in_features(self, spec: TaskSpec, hidden_size: int, embedding_size: int) -> int | None:
        """The size of what the head reads; None for a type without a head of its own (it scores embeddings).
        A head mixing layers reads hidden states (or their pooled mix: never projected), of `hidden_size`."""
        return hidden_size if self.reads_token_states or spec.head.mixes_layers else embedding_size

    def head_input(self, head: nn.Module, spec: TaskSpec, features: EncoderFeatures) -> torch.Tensor:
        """What the head reads: token states or the sentence embedding, or their learned mix of layers."""
        if spec.head.mixes_layers:
            return features.layer_mix(head, self.reads_token_states)
        return features.token_states if self.reads_token_states else features.embeddings

    def logits(self, head: nn.Module | None, spec: TaskSpec, features: EncoderFeatures) -> torch.Tensor:
        """The task's output for every row of the batch (what `<task>_logits` holds)."""
        return head(self.head_input(head, spec, features))

    def loss(
        self, spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor, features: EncoderFeatures
    ) -> torch.Tensor | None:
        """Loss over the rows (or tokens) that carry a label; None when none does (the mean over nothing
        would be NaN). Labels: shapes as `collate_labels` makes them, -100 = missing."""
        raise NotImplementedError

    def distillation_loss(
        self, spec: TaskSpec, logits: torch.Tensor, targets: torch.Tensor, features: EncoderFeatures
    ) -> torch.Tensor | None:
        """The student's loss against the teacher's targets over the rows (or tokens) that have one; None when
        none does. Cross-entropy with the teacher's class probabilities as soft targets (Hinton et al. 2015)."""
        logits = logits.float().reshape(-1, logits.shape[-1])
        targets = targets.float().reshape(logits.shape)
        present = torch.isfinite(targets).all(dim=-1)
        if not present.any():
            return None
        log_probabilities = torch.log_softmax(logits[present], dim=-1)
        return -(targets[present] * log_probabilities).sum(dim=-1).mean()

    # -------------------------------------------------------------- task view
    def view_labels(self, spec: TaskSpec) -> list[str]:
        """The labels (`config.id2label`) of the task's view (`AutoModelForSequenceClassification`), one per
        column of `view_logits`."""
        return list(spec.labels)

    def view_logits(self, spec: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
        """The task's logits as its view returns them: what the standard text-classification pipeline turns,
        by `hf_problem_type`, into the scores `decode` gives (softmax, sigmoid, or the raw value)."""
        return logits

    # -------------------------------------------------------------- predict
    def decode(
        self,
        spec: TaskSpec,
        logits: torch.Tensor,
        texts: Sequence[str],
        encodings: Sequence[Any],
        top_k: int | None,
    ) -> list[dict[str, Any]]:
        """One batch's logits (float32, CPU) -> one prediction dict per row."""
        raise NotImplementedError

    # -------------------------------------------------------------- export
    def postprocessing(self, spec: TaskSpec) -> dict[str, Any]:
        """What `decode` does, as data: how a consumer of the ONNX export turns the task's exported output
        into `decode`'s dicts without this package (`activation`: softmax, sigmoid, none or cosine, and the
        type's own keys: `id2label`, `threshold`, `score_range`, ...). `export_onnx` writes it into the
        exported config.json's `postprocessing`, beside where the output is; docs/onnx.md describes it."""
        raise NotImplementedError


class _SingleLabel(TaskType):
    """Shared by the types whose label is one class id per unit (a text, or a word)."""

    def loss(self, spec, logits, labels, features=None):
        labels = labels.long()
        if not (labels != IGNORE_INDEX).any():
            return None
        logits = logits.float()
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )


# ---------------------------------------------------------------------------------------------- types
class SequenceClassification(_SingleLabel):
    """One class per text: softmax head on the sentence embedding, cross-entropy."""

    name = "sequence_classification"
    min_labels = 2

    def decode(self, spec, logits, texts, encodings, top_k):
        probabilities = torch.softmax(logits, dim=-1).tolist()
        predictions = []
        for row in probabilities:
            scores = ranked_scores(spec.labels, row, top_k)
            best = next(iter(scores))
            predictions.append({"label": best, "score": scores[best], "scores": scores})
        return predictions

    def postprocessing(self, spec):
        return {"activation": "softmax", "id2label": spec.id2label}


class LabelTextClassification(SequenceClassification):
    """One class per text, scored by the sentence embedding itself: a label's logit is `scale` times the cosine
    between the text's embedding and the embedding of the label's text (its `label_descriptions` entry, else
    its name), with a softmax over the labels and cross-entropy (a bi-encoder over label descriptions, as in
    zero-shot classification by embedding similarity). No head: training moves the encoder, the embedding
    stays the one every task reads, and labels can be renamed or added at prediction time
    (`predict(texts, labels={task: [...]})`) without retraining."""

    name = "label_text_classification"
    options: ClassVar[dict[str, Any]] = {"label_descriptions": {}, "scale": 20.0}
    embeds_label_texts = True

    def check_options(self, task, options):
        options = super().check_options(task, options)
        descriptions = options["label_descriptions"]
        if descriptions is None:
            descriptions = {}
        if not isinstance(descriptions, Mapping) or any(
            not isinstance(text, str) or not text.strip() for text in descriptions.values()
        ):
            raise ValueError(
                f"Task {task!r}: label_descriptions must map label names to non-empty texts, got {descriptions!r}."
            )
        scale = options["scale"]
        if not is_finite_number(scale) or scale <= 0:
            raise ValueError(f"Task {task!r}: scale must be a positive finite number, got {scale!r}.")
        return {"label_descriptions": {str(k): v for k, v in descriptions.items()}, "scale": float(scale)}

    def check_label_options(self, task, labels, options):
        unknown = sorted(set(options["label_descriptions"]) - set(labels))
        if unknown:
            raise ValueError(
                f"Task {task!r}: label_descriptions names {unknown}, which are not labels of the task {labels}."
            )

    def label_texts(self, spec):
        descriptions = spec.options["label_descriptions"]
        return [descriptions.get(label, label) for label in spec.labels]

    def layer_mix_refusal(self, options):
        return "it has no head: it scores the model's embedding itself, which stays the last layer's"

    def head_in_features(self, spec, hidden_size, embedding_size):
        return None

    def logits(self, head, spec, features):
        if features.label_embeddings is None or spec.name not in features.label_embeddings:
            raise ValueError(f"Task {spec.name!r}: the embeddings of its label texts were not computed.")
        texts = F.normalize(features.embeddings.float(), dim=-1)
        labels = F.normalize(features.label_embeddings[spec.name].float(), dim=-1)
        return spec.options["scale"] * texts @ labels.T

    def postprocessing(self, spec):
        # The exported logits already are `scale` x cosine to the label texts embedded at export.
        return {
            **super().postprocessing(spec),
            "logit_scale": spec.options["scale"],
            "label_texts": self.label_texts(spec),
        }


class MultiLabelClassification(TaskType):
    """Any number of labels per text: one sigmoid per label on the sentence embedding, binary cross-entropy;
    a label is predicted when its sigmoid >= `threshold`."""

    name = "multi_label_classification"
    hf_problem_type = "multi_label_classification"
    options: ClassVar[dict[str, Any]] = {"threshold": 0.5}

    def check_options(self, task, options):
        options = super().check_options(task, options)
        threshold = options["threshold"]
        if not is_finite_number(threshold) or not 0.0 < threshold < 1.0:
            raise ValueError(f"Task {task!r}: threshold must be in (0, 1), got {threshold}.")
        return {"threshold": float(threshold)}

    def loss(self, spec, logits, labels, features=None):
        logits = logits.float()
        labels = labels.float().reshape(logits.shape)
        labelled_rows = (labels != IGNORE_INDEX).all(dim=-1)
        if not labelled_rows.any():
            return None
        return F.binary_cross_entropy_with_logits(logits[labelled_rows], labels[labelled_rows])

    def distillation_loss(self, spec, logits, targets, features):
        logits = logits.float()
        targets = targets.float().reshape(logits.shape)
        present = torch.isfinite(targets).all(dim=-1)
        if not present.any():
            return None
        return F.binary_cross_entropy_with_logits(logits[present], targets[present])

    def decode(self, spec, logits, texts, encodings, top_k):
        predictions = []
        for row in torch.sigmoid(logits).tolist():
            ranked = ranked_scores(spec.labels, row, None)
            predictions.append(
                {
                    "labels": [label for label, p in ranked.items() if p >= spec.threshold],
                    "scores": dict(list(ranked.items())[:top_k]) if top_k else ranked,
                }
            )
        return predictions

    def postprocessing(self, spec):
        return {"activation": "sigmoid", "threshold": spec.threshold, "id2label": spec.id2label}


class Regression(TaskType):
    """One or more real values per text (`labels` name the outputs; default one, "value"): linear head on
    the sentence embedding, mean squared error over the labelled values.

    The head predicts standardised values z; `<task>_logits` is z * `target_std` + `target_mean` (the train
    targets' mean and standard deviation per output, set by training and saved in config.json), so every
    consumer of the logits sees the data's scale. The loss is the MSE of the standardised values, whatever
    the data's units. Without the stats (models saved before them) the mean is 0 and the std 1."""

    name = "regression"
    hf_problem_type = "regression"
    options: ClassVar[dict[str, Any]] = {"target_mean": None, "target_std": None}

    def default_labels(self):
        return ["value"]

    def check_options(self, task, options):
        options = super().check_options(task, options)
        for key, positive in (("target_mean", False), ("target_std", True)):
            value = options[key]
            if value is None:
                continue
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if not values or any(not is_finite_number(v) or (positive and v <= 0) for v in values):
                kind = "positive finite number" if positive else "finite number"
                raise ValueError(
                    f"Task {task!r}: {key} must be a {kind}, or a list of them (one per output), got {value!r}."
                )
            options[key] = float(values[0]) if len(values) == 1 else [float(v) for v in values]
        return options

    def check_label_options(self, task, labels, options):
        for key in ("target_mean", "target_std"):
            value = options[key]
            count = 1 if not isinstance(value, list) else len(value)
            if value is not None and count != len(labels):
                raise ValueError(
                    f"Task {task!r}: {key} has {count} value(s), but the task has {len(labels)} output(s) "
                    f"{labels}."
                )

    def target_scale(self, spec: TaskSpec, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the task's targets `[num_outputs]` on `like`'s device (0 and 1 without stats)."""

        def per_output(value, default):
            values = [default] * spec.num_outputs if value is None else value
            values = values if isinstance(values, (list, tuple)) else [values]
            return torch.tensor(values, dtype=torch.float32, device=like.device)

        return per_output(spec.options.get("target_mean"), 0.0), per_output(
            spec.options.get("target_std"), 1.0
        )

    def logits(self, head, spec, features):
        standardised = head(self.head_input(head, spec, features))
        mean, std = self.target_scale(spec, standardised)
        return standardised * std.to(standardised.dtype) + mean.to(standardised.dtype)

    def standardised_mse(self, spec, logits, targets, present):
        """MSE of (value - mean) / std between `logits` and `targets` (the data's scale) where `present`."""
        mean, std = self.target_scale(spec, logits)
        mean, std = mean.expand_as(logits)[present], std.expand_as(logits)[present]
        return F.mse_loss((logits[present] - mean) / std, (targets[present] - mean) / std)

    def loss(self, spec, logits, labels, features=None):
        logits = logits.float()
        labels = labels.float().reshape(logits.shape)
        labelled = labels != IGNORE_INDEX
        if not labelled.any():
            return None
        return self.standardised_mse(spec, logits, labels, labelled)

    def distillation_loss(self, spec, logits, targets, features):
        logits = logits.float()
        targets = targets.float().reshape(logits.shape)
        present = torch.isfinite(targets)
        if not present.any():
            return None
        return self.standardised_mse(spec, logits, targets, present)

    def decode(self, spec, logits, texts, encodings, top_k):
        rows = logits.tolist()
        if spec.num_outputs == 1:
            return [{"value": row[0]} for row in rows]
        return [{"values": dict(zip(spec.labels, row))} for row in rows]

    def postprocessing(self, spec):
        return {"activation": "none", "id2label": spec.id2label}


class TokenClassification(_SingleLabel):
    """One IOB2 tag per word (NER): a head on every token state, cross-entropy over each word's first
    sub-token (or every sub-token with label_all_subtokens); predictions are entities with character offsets."""

    name = "token_classification"
    input_kind = "tokens"
    min_labels = 2
    reads_token_states = True

    def check_labels(self, task, labels):
        super().check_labels(task, labels)
        bad = [tag for tag in labels if tag != "O" and not tag.startswith(("B-", "I-"))]
        if bad:
            raise ValueError(f"Task {task!r}: token labels must be IOB2 tags ('O', 'B-X', 'I-X'); got {bad}.")

    def decode(self, spec, logits, texts, encodings, top_k):
        return [
            {"entities": entities(text, encoding, row, spec)}
            for text, encoding, row in zip(texts, encodings, logits)
        ]

    def postprocessing(self, spec):
        return {"activation": "softmax", "id2label": spec.id2label, "decoding": dict(ENTITY_DECODING)}


# ---------------------------------------------------------------------------------------------- pairs
def scatter_rows(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """`values` `[pairs, ...]` of the batch rows `rows` -> `[batch, ...]`, zero for the other rows (their labels
    are missing, so no loss or metric reads them)."""
    out = values.new_zeros((batch, *values.shape[1:]))
    # `rows.shape[0]`, not `len(rows)`: the ONNX export keeps the batch axis dynamic (len() would fix it).
    return out.index_copy(0, rows, values) if rows.shape[0] else out


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def cosent_loss(scores: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """CoSENT (Su, 2022): log(1 + sum over pairs (i, j) with target_i > target_j of exp(s * (cos_j - cos_i)))."""
    differences = scale * (scores[None, :] - scores[:, None])  # [i, j] = s * (cos_j - cos_i)
    differences = differences[targets[:, None] > targets[None, :]]
    return torch.logsumexp(torch.cat([differences.new_zeros(1), differences]), dim=0)


class PairClassification(SequenceClassification):
    """One class per pair of texts (entailment, paraphrase, ...). `pair_encoding: bi` (default): each text is
    encoded on its own and the head reads (u, v, |u - v|, u * v) of their embeddings (the SBERT classifier),
    so the embedding itself learns from the task; `pair_encoding: cross`: the pair is one `[CLS] a [SEP] b`
    input, pooled, then the head (usually more accurate; no reusable embedding)."""

    name = "pair_classification"
    options: ClassVar[dict[str, Any]] = {"pair_encoding": "bi"}
    input_kind = "pair"

    def check_options(self, task, options):
        options = super().check_options(task, options)
        if options["pair_encoding"] not in ("bi", "cross"):
            raise ValueError(
                f"Task {task!r}: pair_encoding must be 'bi' or 'cross', got {options['pair_encoding']!r}."
            )
        return options

    def input_encoding(self, options):
        return "pair_joint" if options.get("pair_encoding", "bi") == "cross" else "pair"

    def layer_mix_refusal(self, options):
        if options.get("pair_encoding", "bi") == "bi":
            return (
                "with pair_encoding bi its head reads the model's embeddings of the two texts (u, v, |u-v|, "
                "u*v), which stay the last layer's; use pair_encoding: cross to mix layers"
            )
        return None

    def head_in_features(self, spec, hidden_size, embedding_size):
        if spec.options["pair_encoding"] == "cross":
            return super().head_in_features(spec, hidden_size, embedding_size)
        return 4 * embedding_size

    def logits(self, head, spec, features):
        if spec.options["pair_encoding"] == "cross":
            return head(self.head_input(head, spec, features))
        rows, u, v = features.pairs()
        pair_logits = head(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
        return scatter_rows(pair_logits, rows, features.embeddings.shape[0])


class Similarity(TaskType):
    """A similarity score for a pair of texts, learnt on the cosine of their two embeddings (no head: the
    embedding itself is trained). The loss is CoSENT (Su, 2022) by default: it ranks the pairs of a batch by
    cosine in the order of their gold scores, so the gold scale does not matter and the cosine keeps its
    meaning; `loss: cosine_mse` regresses the cosine onto the score mapped from `score_range` to [0, 1]
    (SBERT's CosineSimilarityLoss). `score_range: [lo, hi]` declares the data's scale (a value outside it is
    refused); predictions give the cosine and, with a range, the score on that scale."""

    name = "similarity"
    hf_problem_type = "regression"  # its view's score is the cosine itself, as `decode`'s "similarity"
    options: ClassVar[dict[str, Any]] = {"score_range": None, "loss": "cosent", "cosent_scale": 20.0}
    input_kind = "pair"

    def default_labels(self):
        return ["similarity"]

    def check_labels(self, task, labels):
        if len(labels) != 1:
            raise ValueError(f"Task {task!r}: a similarity task has one output, got labels {labels}.")

    def check_options(self, task, options):
        options = super().check_options(task, options)
        score_range = options["score_range"]
        if score_range is not None:
            if (
                not isinstance(score_range, (list, tuple))
                or len(score_range) != 2
                or not all(is_finite_number(v) for v in score_range)
                or not score_range[0] < score_range[1]
            ):
                raise ValueError(
                    f"Task {task!r}: score_range must be [low, high], finite numbers with low < high, got "
                    f"{score_range!r}."
                )
            score_range = [float(score_range[0]), float(score_range[1])]
        if options["loss"] not in ("cosent", "cosine_mse"):
            raise ValueError(
                f"Task {task!r}: loss must be 'cosent' or 'cosine_mse', got {options['loss']!r}."
            )
        scale = options["cosent_scale"]
        if not is_finite_number(scale) or scale <= 0:
            raise ValueError(f"Task {task!r}: cosent_scale must be a positive finite number, got {scale!r}.")
        return {"score_range": score_range, "loss": options["loss"], "cosent_scale": float(scale)}

    def layer_mix_refusal(self, options):
        return "it has no head: it scores the model's embedding itself, which stays the last layer's"

    def head_in_features(self, spec, hidden_size, embedding_size):
        return None

    def logits(self, head, spec, features):
        rows, u, v = features.pairs()
        return scatter_rows(cosine(u, v).unsqueeze(-1), rows, features.embeddings.shape[0])

    def loss(self, spec, logits, labels, features=None):
        labels = labels.float().reshape(-1)
        scores = logits.float().reshape(-1)
        labelled = labels != IGNORE_INDEX
        if not labelled.any():
            return None
        scores, labels = scores[labelled], labels[labelled]
        if spec.options["loss"] == "cosine_mse":
            low, high = spec.options["score_range"] or (0.0, 1.0)
            return F.mse_loss(scores, (labels - low) / (high - low))
        return cosent_loss(scores, labels, spec.options["cosent_scale"])

    def distillation_loss(self, spec, logits, targets, features):
        """The student's cosine against the teacher's: CoSENT ranks the batch's pairs in the teacher's order
        (scale-free, as for the gold scores), cosine_mse regresses onto the teacher's cosine."""
        scores = logits.float().reshape(-1)
        targets = targets.float().reshape(-1)
        present = torch.isfinite(targets)
        if not present.any():
            return None
        if spec.options["loss"] == "cosine_mse":
            return F.mse_loss(scores[present], targets[present])
        return cosent_loss(scores[present], targets[present], spec.options["cosent_scale"])

    def decode(self, spec, logits, texts, encodings, top_k):
        score_range = spec.options["score_range"]
        predictions = []
        for value in logits.reshape(-1).tolist():
            prediction = {"similarity": value}
            if score_range is not None:
                low, high = score_range
                prediction["score"] = low + min(max(value, 0.0), 1.0) * (high - low)
            predictions.append(prediction)
        return predictions

    def postprocessing(self, spec):
        return {"activation": "cosine", "score_range": spec.options["score_range"]}


class Contrastive(TaskType):
    """Retrieval embeddings from (anchor, positive[, negative]) rows: each anchor must score its own positive
    above every other positive and negative of the batch (in-batch negatives, the Multiple Negatives Ranking
    loss of SBERT; `scale` multiplies the cosines). No head: the embedding is what trains. The training batches
    of a contrastive group hold each text once where the rows allow it (a repeated text would be a false
    negative; the sampler swaps rows between batches and warns about those it could not separate)."""

    name = "contrastive"
    hf_problem_type = "regression"  # its view's score is the cosine itself, as `decode`'s "similarity"
    options: ClassVar[dict[str, Any]] = {"scale": 20.0}
    input_kind = "pair"

    def default_labels(self):
        return ["positive"]

    def check_labels(self, task, labels):
        if len(labels) != 1:
            raise ValueError(
                f"Task {task!r}: a contrastive task has one implicit label, got labels {labels}."
            )

    def check_options(self, task, options):
        options = super().check_options(task, options)
        scale = options["scale"]
        if not is_finite_number(scale) or scale <= 0:
            raise ValueError(f"Task {task!r}: scale must be a positive finite number, got {scale!r}.")
        return {"scale": float(scale)}

    def layer_mix_refusal(self, options):
        return "it has no head: it scores the model's embedding itself, which stays the last layer's"

    def head_in_features(self, spec, hidden_size, embedding_size):
        return None

    def logits(self, head, spec, features):
        rows, u, v = features.pairs()
        return scatter_rows(torch.cat([u, v], dim=-1), rows, features.embeddings.shape[0])

    def loss(self, spec, logits, labels, features=None):
        rows, anchors, positives = features.pairs()
        keep = labels.reshape(-1)[rows] != IGNORE_INDEX
        if not keep.any():
            return None
        anchors, positives = (
            F.normalize(anchors[keep].float(), dim=-1),
            F.normalize(positives[keep].float(), dim=-1),
        )
        candidates = positives
        if features.negative_embeddings is not None and len(features.negative_embeddings):
            candidates = torch.cat([positives, F.normalize(features.negative_embeddings.float(), dim=-1)])
        scores = spec.options["scale"] * anchors @ candidates.T  # [anchors, candidates]
        return F.cross_entropy(scores, torch.arange(len(anchors), device=scores.device))

    def view_labels(self, spec):
        return ["similarity"]

    def view_logits(self, spec, logits):
        """The two embeddings `[batch, 2 * embedding_size]` -> their cosine `[batch, 1]`."""
        size = logits.shape[-1] // 2
        return cosine(logits[:, :size], logits[:, size:]).unsqueeze(-1)

    def decode(self, spec, logits, texts, encodings, top_k):
        return [{"similarity": value} for value in self.view_logits(spec, logits).reshape(-1).tolist()]

    def postprocessing(self, spec):
        return {"activation": "cosine"}


TASK_TYPES: dict[str, TaskType] = {
    task_type.name: task_type
    for task_type in (
        SequenceClassification(),
        MultiLabelClassification(),
        Regression(),
        TokenClassification(),
        PairClassification(),
        Similarity(),
        Contrastive(),
        LabelTextClassification(),
    )
}


# ---------------------------------------------------------------------------------------------- parsing
def parse_head_spec(task: str, head: Any) -> HeadSpec:
    head = {} if head is None else head
    if isinstance(head, HeadSpec):
        return head
    if isinstance(head, str):
        head = {"type": head}
    if not isinstance(head, dict):
        raise ValueError(f"Task {task!r}: `head` must be a head type name or a mapping, got {head!r}.")
    unknown = set(head) - {"type", "hidden_size", "activation", "dropout", "layers"}
    if unknown:
        raise ValueError(f"Task {task!r}: unknown head keys {sorted(unknown)}.")
    head = dict(head)
    head["layers"] = parse_head_layers(task, head.get("layers", "last"))
    spec = HeadSpec(**head)
    if spec.type not in HEAD_TYPES:
        raise ValueError(
            f"Task {task!r}: unknown head type {spec.type!r}; expected one of {list(HEAD_TYPES)}."
        )
    if spec.activation not in ACTIVATIONS:
        raise ValueError(
            f"Task {task!r}: unknown activation {spec.activation!r}; expected {list(ACTIVATIONS)}."
        )
    dropout = spec.dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"Task {task!r}: head dropout must be in [0, 1), got {dropout}.")
    hidden = spec.hidden_size
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"Task {task!r}: head hidden_size must be positive, got {hidden}.")
    return HeadSpec(
        type=spec.type,
        hidden_size=hidden,
        activation=spec.activation,
        dropout=float(dropout),
        layers=spec.layers,
    )


def parse_head_layers(task: str, layers: Any) -> str | tuple[int, ...]:
    """A head's `layers`: "last", "all", or a non-empty list of distinct hidden-state indices >= 0 (the
    upper bound, the encoder's layer count, is checked when the model is built: `HeadSpec.layer_indices`)."""
    if layers is None:
        return "last"
    if isinstance(layers, str):
        if layers in ("last", "all"):
            return layers
        raise ValueError(
            f"Task {task!r}: head layers must be 'last', 'all' or a list of hidden-state indices, got {layers!r}."
        )
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(
            f"Task {task!r}: head layers must be 'last', 'all' or a non-empty list of hidden-state indices "
            f"(0 = the embedding layer's output), got {layers!r}."
        )
    bad = [index for index in layers if isinstance(index, bool) or not isinstance(index, int) or index < 0]
    if bad:
        raise ValueError(
            f"Task {task!r}: head layers must be integers >= 0 (hidden-state indices, 0 = the embedding "
            f"layer's output), got {bad} in {list(layers)}."
        )
    duplicates = sorted({index for index in layers if list(layers).count(index) > 1})
    if duplicates:
        raise ValueError(f"Task {task!r}: head layers lists {duplicates} more than once: {list(layers)}.")
    return tuple(int(index) for index in layers)


def layer_mix_description(head: HeadSpec, token_level: bool) -> str:
    """What a layer-mixing head reads, for the model card."""
    which = (
        "all hidden layers (the embedding layer's output to the last layer)"
        if head.layers == "all"
        else f"hidden layers {list(head.layers)} (0 = the embedding layer's output)"
    )
    if token_level:
        return f"a learned softmax-weighted mix (times a learned scale) of each token's states in {which}"
    return (
        f"a learned softmax-weighted mix of the pooled {which}, L2-normalised when the embedding is, times "
        "a learned scale (no projection)"
    )


def check_task_name(name: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"Task name {name!r} is not a valid Python identifier (letters, digits, underscore)."
        )
    if name in RESERVED_TASK_NAMES:
        raise ValueError(
            f"Task name {name!r} is reserved: the heads are an nn.ModuleDict, which has an attribute of that "
            f"name. Rename the task (e.g. {name + '_task'!r})."
        )


def registered_task_type(name: str, type_name: Any) -> TaskType:
    """The registered type named `type_name` of task `name`; refuses any other, naming the registry."""
    if type_name not in TASK_TYPES:
        raise ValueError(
            f"Task {name!r}: unknown task type {type_name!r}; expected one of {list(TASK_TYPES)}."
        )
    return TASK_TYPES[type_name]


def parse_task_spec(name: str, spec: TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """Build and validate a `TaskSpec` from a mapping (as config.json or a training YAML gives it)."""
    check_task_name(name)
    if isinstance(spec, TaskSpec):
        if spec.checked:  # validated once already: the same spec (under this name)
            return spec if spec.name == name else checked_spec(replace(spec, name=name))
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ValueError(f"Task {name!r}: the spec must be a mapping, got {type(spec).__name__}.")
    spec = copy.deepcopy(dict(spec))
    type_name = spec.get("type")
    task_type = registered_task_type(name, type_name)
    options = {key: spec.pop(key) for key in list(spec) if key in task_type.options}
    for key, old_default in LEGACY_OPTIONS.items():
        if key in spec and key not in task_type.options:
            if spec[key] != old_default:
                owners = [t.name for t in TASK_TYPES.values() if key in t.options]
                raise ValueError(
                    f"Task {name!r}: `{key}` applies to {' and '.join(owners)} tasks, not {type_name}."
                )
            del spec[key]
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"Task {name!r}: unknown spec keys {sorted(unknown)}.")

    labels = spec.get("labels") or task_type.default_labels()
    if not isinstance(labels, (list, tuple)) or not labels:
        raise ValueError(f"Task {name!r}: `labels` must be a non-empty list of label names.")
    if any(not isinstance(label, (str, int)) or isinstance(label, bool) for label in labels):
        # 1.0 would become the name "1.0", which no data cell reading 1 matches.
        raise ValueError(f"Task {name!r}: label names must be strings or integers, got {list(labels)}.")
    labels = [str(label) for label in labels]
    if any(not label.strip() for label in labels):
        raise ValueError(f"Task {name!r}: label names must not be empty.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Task {name!r}: duplicate labels {duplicates}.")
    task_type.check_labels(name, labels)

    loss_weight = spec.get("loss_weight", 1.0)
    if not is_finite_number(loss_weight):
        raise ValueError(f"Task {name!r}: loss_weight must be a finite number, got {loss_weight!r}.")
    if loss_weight < 0:
        raise ValueError(f"Task {name!r}: loss_weight must be >= 0, got {loss_weight}.")
    options = task_type.check_options(name, options)
    task_type.check_label_options(name, labels, options)
    head = parse_head_spec(name, spec.get("head"))
    if head.mixes_layers:
        refusal = task_type.layer_mix_refusal(options)
        if refusal:
            raise ValueError(
                f"Task {name!r}: a {type_name} task cannot mix layers (head layers "
                f"{head.layers if isinstance(head.layers, str) else list(head.layers)!r}): {refusal}."
            )
    return checked_spec(
        TaskSpec(
            type=type_name,
            labels=labels,
            head=head,
            loss_weight=float(loss_weight),
            options=options,
            name=name,
        )
    )


# The specs parse_task_spec built, by id (an entry goes when its spec does). Kept outside the spec so that a
# spec's fields, its pickle and the data fingerprints built from it are the same whether or not it was parsed.
CHECKED_SPECS: weakref.WeakValueDictionary[int, TaskSpec] = weakref.WeakValueDictionary()


def checked_spec(spec: TaskSpec) -> TaskSpec:
    """`spec`, recorded as validated by `parse_task_spec`."""
    CHECKED_SPECS[id(spec)] = spec
    return spec


def parse_tasks(tasks: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, TaskSpec]:
    """Parse the ordered task specs, given as a mapping name -> spec or as a list of specs with `name`."""
    if isinstance(tasks, (list, tuple)):
        named = {}
        for position, spec in enumerate(tasks):
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ValueError(f"Task #{position}: a task given in a list needs a `name` key.")
            spec = dict(spec)
            name = spec.pop("name")
            if name in named:
                raise ValueError(f"Task {name!r} is declared twice.")
            named[name] = spec
        tasks = named
    if not isinstance(tasks, Mapping):
        raise ValueError(f"`tasks` must be a mapping of task name -> spec, got {type(tasks).__name__}.")
    return {name: parse_task_spec(name, spec) for name, spec in tasks.items()}


def entities(text: str, encoding: Any, logits: torch.Tensor, spec: TaskSpec) -> list[dict[str, Any]]:
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
    if not ordered:
        return []
    best = probabilities[[first for first, _, _ in ordered]].max(dim=-1)
    tags = [spec.labels[i] for i in best.indices.tolist()]
    scores = best.values.tolist()
    found = []
    for entity_type, first, last in extract_entities(tags):
        start, end = ordered[first][1], ordered[last - 1][2]
        found.append(
            {
                "entity": entity_type,
                "text": text[start:end],
                "start": start,
                "end": end,
                "score": sum(scores[first:last]) / (last - first),
            }
        )
    return found


__all__ = [
    "IGNORE_INDEX",
    "TASK_TYPES",
    "EncoderFeatures",
    "HeadSpec",
    "TaskSpec",
    "TaskType",
    "check_task_name",
    "parse_task_spec",
    "parse_tasks",
    "registered_task_type",
]
