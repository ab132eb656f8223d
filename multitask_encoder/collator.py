"""Batches of multi-task rows: dynamic padding plus every task's labels, as `MultiTaskEncoderModel.forward`
takes them.

    rows (dicts of lists, as in `MultiTaskData` sets)
      input_ids/attention_mask/token_type_ids [seq_i] ─► tokenizer.pad ─► [batch, seq]
      labels_<task>                                 ─► its task type's collate_labels (sentence tasks
                                                       [batch] or [batch, n]; token tasks [batch, seq], aligned
                                                       to the word pieces by the rows' word_ids; -100 = missing)
      pair_input_ids/... [seq2_i] (second texts)   ─► pair_inputs: padded [pairs, seq2] + rows [pairs] (the batch row
      negative_input_ids/... (contrastive)          ─► negative_inputs   of each), only the rows that have one
      teacher_<task> (train rows, with a teacher)   ─► teacher_targets[task]: collate_teacher (logits' shape, NaN = none)
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

from .model.inputs_multitask_encoder import SECOND_TEXTS
from .model.modeling_multitask_encoder import MODEL_INPUT_NAMES
from .model.tasks_multitask_encoder import IGNORE_INDEX, TaskSpec, parse_task_spec
from .task_types import task_type
from .task_types.types import LabelBatch, as_list


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

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{key: as_list(row[key]) for key in MODEL_INPUT_NAMES if key in row} for row in rows]
        batch = dict(
            self.tokenizer.pad(
                inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
        )
        context = LabelBatch(
            rows=rows,
            length=batch["input_ids"].shape[1],
            padding_side=self.tokenizer.padding_side,
            label_all_subtokens=self.label_all_subtokens,
        )
        for name, spec in self.task_specs.items():
            values = [row.get(f"labels_{name}") for row in rows]
            batch[f"labels_{name}"] = task_type(spec).collate_labels(spec, values, context)
        # Single-task teachers' targets (teachers.py), on the train rows of the tasks that have a teacher.
        teacher = {
            name: task_type(spec).collate_teacher(spec, [row.get(f"teacher_{name}") for row in rows], context)
            for name, spec in self.task_specs.items()
            if f"teacher_{name}" in rows[0]
        }
        if teacher:
            batch["teacher_targets"] = teacher
        for prefix in SECOND_TEXTS:
            second = self.second_texts(rows, prefix)
            if second is not None:
                batch[f"{prefix}_inputs"] = second
        return batch

    def second_texts(self, rows: list[Mapping[str, Any]], prefix: str) -> dict[str, torch.Tensor] | None:
        """The `<prefix>_input_ids` etc. of the rows that have them, padded, with `rows` (their batch rows)."""
        keys = [name for name in MODEL_INPUT_NAMES if f"{prefix}_{name}" in rows[0]]
        present = [i for i, row in enumerate(rows) if keys and len(as_list(row[f"{prefix}_input_ids"]))]
        if not present:
            return None
        inputs = [{key: as_list(rows[i][f"{prefix}_{key}"]) for key in keys} for i in present]
        padded = dict(
            self.tokenizer.pad(
                inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
        )
        padded["rows"] = torch.tensor(present, dtype=torch.long)
        return padded


def tasks_present(batch: Mapping[str, torch.Tensor]) -> list[str]:
    """The tasks with at least one label (not -100) in a collated batch."""
    return [
        key[len("labels_") :]
        for key, value in batch.items()
        if key.startswith("labels_") and bool((value != IGNORE_INDEX).any())
    ]


__all__ = ["MultiTaskCollator", "tasks_present"]
