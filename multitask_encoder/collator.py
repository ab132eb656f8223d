"""Batches of multi-task rows: dynamic padding plus every task's labels, as `MultiTaskEncoderModel.forward`
takes them.

    rows (dicts of lists, as in `MultiTaskData` sets)
      input_ids/attention_mask/token_type_ids [seq_i] ─► tokenizer.pad ─► [batch, seq]
      labels_<sentence task>                        ─► [batch] or [batch, n] (-100 where missing)
      labels_<token task> (word tags) + word_ids    ─► [batch, seq] tag per word piece (-100 elsewhere)
      word_ids, group, text, ...                    ─► dropped (the model's forward takes no other keys)

Every task's `labels_<task>` is emitted for every batch, even when no row of the batch has that task's
labels (all -100): the Trainer only treats a batch as labelled when all its `label_names` are present.
With the HF Trainer, set `remove_unused_columns=False` (else it strips `word_ids` before the collator runs)
and `label_names=[f"labels_{task}" for task in tasks]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .configuration_multitask_encoder import TaskSpec, parse_task_spec
from .modeling_multitask_encoder import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def as_list(value: Any) -> list:
    """A list cell, whether a row came as Python lists or as tensors (`set_format("torch")`)."""
    if value is None:
        return []
    return value.tolist() if hasattr(value, "tolist") else list(value)


def continuation_tags(spec: TaskSpec) -> list[int]:
    """For each tag id, the tag of a word's later word pieces: B-X -> I-X (when I-X exists), else itself."""
    label2id = spec.label2id
    return [
        label2id.get("I-" + tag[2:], i) if tag.startswith("B-") else i for i, tag in enumerate(spec.labels)
    ]


def align_word_tags(
    word_ids: list[int], word_tags: list[int], length: int, offset: int, continuation: list[int] | None
) -> list[int]:
    """Word-level tag ids -> one label per position of a padded row of `length` tokens.

    The row's pieces start at `offset` (left padding). The first piece of each word gets the word's tag; the
    later pieces get -100, or with `continuation` (label_all_subtokens) the word's continuation tag.
    Special tokens (word id -1), padding and rows without tags get -100.
    """
    labels = [IGNORE_INDEX] * length
    previous = None
    for position, word in enumerate(word_ids):
        if 0 <= word < len(word_tags):
            if word != previous:
                labels[offset + position] = word_tags[word]
            elif continuation is not None:
                labels[offset + position] = continuation[word_tags[word]]
        previous = word
    return labels


class MultiTaskCollator:
    """Rows -> a padded batch with `labels_<task>` for every task (see the module docstring for shapes).

    Args:
        tokenizer: pads the model inputs (its `padding_side` and pad token).
        task_specs: task name -> `TaskSpec` (or its dict), in model order.
        label_all_subtokens: label every word piece of a word (B-X becomes I-X after the first piece)
            instead of the first piece only.
        pad_to_multiple_of: pad the sequence length up to a multiple of this (e.g. 8 for tensor cores).
    """

    def __init__(
        self,
        tokenizer,
        task_specs: Mapping[str, TaskSpec | dict[str, Any]],
        label_all_subtokens: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.task_specs = {name: parse_task_spec(name, spec) for name, spec in task_specs.items()}
        self.label_all_subtokens = label_all_subtokens
        self.pad_to_multiple_of = pad_to_multiple_of
        self.continuations = {name: continuation_tags(spec) for name, spec in self.task_specs.items()}

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{key: as_list(row[key]) for key in MODEL_INPUTS if key in row} for row in rows]
        batch = dict(
            self.tokenizer.pad(
                inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
        )
        for name, spec in self.task_specs.items():
            values = [row.get(f"labels_{name}") for row in rows]
            if spec.is_token_level:
                batch[f"labels_{name}"] = self.token_labels(name, rows, values, batch["input_ids"].shape[1])
            else:
                batch[f"labels_{name}"] = self.sentence_labels(spec, values)
        return batch

    def sentence_labels(self, spec: TaskSpec, values: list[Any]) -> torch.Tensor:
        """Class ids -> LongTensor [batch]; multi-hot rows -> FloatTensor [batch, n]; regression -> FloatTensor
        [batch] (one output) or [batch, n]. A row without the key, or with None, is all -100."""
        if spec.type == "sequence_classification":
            return torch.tensor([IGNORE_INDEX if v is None else int(v) for v in values], dtype=torch.long)
        width = spec.num_outputs
        if spec.type == "regression" and width == 1:
            return torch.tensor([float(IGNORE_INDEX) if v is None else as_scalar(v) for v in values])
        missing = [float(IGNORE_INDEX)] * width
        return torch.tensor([as_list(v) or missing for v in values], dtype=torch.float)

    def token_labels(
        self, name: str, rows: list[Mapping[str, Any]], values: list[Any], length: int
    ) -> torch.Tensor:
        """Word-level tag ids + word_ids -> LongTensor [batch, length], aligned to the padded word pieces."""
        continuation = self.continuations[name] if self.label_all_subtokens else None
        labels = []
        for row, tags in zip(rows, values):
            if "word_ids" not in row and len(as_list(tags)):
                # The Trainer drops columns its model's forward does not name, unless told otherwise; the
                # tags could then not be aligned and would silently become -100.
                raise ValueError(
                    f"A row has labels_{name} but no word_ids to align them to word pieces. With the HF "
                    "Trainer, set TrainingArguments(remove_unused_columns=False)."
                )
            word_ids = as_list(row.get("word_ids"))
            offset = length - len(word_ids) if self.tokenizer.padding_side == "left" else 0
            labels.append(align_word_tags(word_ids, as_list(tags), length, offset, continuation))
        return torch.tensor(labels, dtype=torch.long)


def as_scalar(value: Any) -> float:
    """A one-output regression value, given as a number, a one-element list or a tensor."""
    return float(value[0]) if isinstance(value, (list, tuple)) else float(value)


def tasks_present(batch: Mapping[str, torch.Tensor]) -> list[str]:
    """The tasks with at least one label (not -100) in a collated batch."""
    return [
        key[len("labels_") :]
        for key, value in batch.items()
        if key.startswith("labels_") and bool((value != IGNORE_INDEX).any())
    ]


__all__ = ["MultiTaskCollator", "align_word_tags", "tasks_present"]
