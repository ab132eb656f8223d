"""Task views: one task of a multi-task model behind the standard single-task interface, so that
`AutoModelForSequenceClassification` / `AutoModelForTokenClassification`, the standard `text-classification` and
`token-classification` pipelines and a plain `Trainer` can use it. `save_pretrained` names them in `auto_map`.

Copied next to the weights with the other model files; imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from .configuration_multitask_encoder import MultiTaskEncoderConfig
from .modeling_multitask_encoder import MultiTaskEncoderModel, MultiTaskEncoderPreTrainedModel


class _MultiTaskEncoderTaskView(MultiTaskEncoderPreTrainedModel):
    """One task of a multi-task model behind the standard single-task interface (`logits`, `config.id2label`,
    `problem_type`), so the standard pipelines and a plain `Trainer` can use it. It holds the multi-task model
    as `multitask_encoder` (the `base_model_prefix`): the same weights file loads into it, without a copy.

    `serve_task` (or the config's `<kind>_task` field) picks the task; default: the first of the right kind.

    What the view reads depends on the task (its `input_kind`): a single-text task reads one text per
    row and refuses a pair (a second segment in `token_type_ids`: a `text_pair`, or the zero-shot-classification
    pipeline's hypotheses); a pair task reads the joint `[CLS] a [SEP] b [SEP]` input the tokenizer makes of
    `(text, text_pair)` and refuses a row without a second text. A cross-encoded pair task runs on that joint
    input as it is; a bi-encoded one (pair_classification with `pair_encoding: bi`, similarity, contrastive)
    is split back into `[CLS] a [SEP]` and `[CLS] b [SEP]`, each encoded on its own as `predict` encodes them.
    The logits are the type's `view_logits` (contrastive: the cosine of the two embeddings).
    """

    token_level: ClassVar[bool] = False
    config_field: ClassVar[str] = ""
    other_interface: ClassVar[str] = ""  # what serves the tasks of the other level, for refusals
    output_class: ClassVar[type] = SequenceClassifierOutput
    accepts_loss_kwargs = False  # the Trainer must not pass num_items_in_batch

    def __init__(
        self,
        config: MultiTaskEncoderConfig,
        serve_task: str | None = None,
        multitask_model: MultiTaskEncoderModel | None = None,
    ) -> None:
        task = self.choose_task(config, serve_task or getattr(config, self.config_field, None))
        view_config = copy.deepcopy(config)  # the multi-task model's own config is left as it is
        spec = config.tasks[task]
        view_labels = spec.task_type.view_labels(spec)
        view_config.id2label = dict(enumerate(view_labels))
        view_config.label2id = {label: index for index, label in enumerate(view_labels)}
        view_config.problem_type = spec.task_type.hf_problem_type
        setattr(view_config, self.config_field, task)
        super().__init__(view_config)
        self.served_task = task
        self.multitask_encoder = (
            multitask_model if multitask_model is not None else MultiTaskEncoderModel(config)
        )
        self.post_init()

    @classmethod
    def choose_task(cls, config: MultiTaskEncoderConfig, task: str | None) -> str:
        candidates = [name for name, spec in config.tasks.items() if spec.is_token_level == cls.token_level]
        if task is None and candidates:
            return candidates[0]
        if task not in candidates:
            reason = ""
            if task in config.tasks:  # a task of the other level
                reason = (
                    f": task {task!r} is a {config.tasks[task].type} task, served by {cls.other_interface}"
                )
            raise ValueError(
                f"{cls.__name__} serves one of {candidates} (the model's tasks: {list(config.tasks)}), not "
                f"{task!r}{reason}."
            )
        return task

    @classmethod
    def from_multitask(cls, model: MultiTaskEncoderModel, serve_task: str | None = None):
        """A view of a loaded multi-task model (sharing its weights)."""
        return cls(model.config, serve_task=serve_task, multitask_model=model)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        return_dict=None,
        **kwargs,
    ):
        """`[batch, seq]` inputs -> the served task's `logits` (`[batch, n]`, or `[batch, seq, n]` for a token
        task) and, with `labels`, its loss."""
        name = self.served_task
        spec = self.multitask_encoder.config.tasks[name]
        kind = spec.input_kind
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        # Rows with a second text: the tokenizer marks it with token type 1 (BERT-like tokenizers; without
        # token_type_ids nothing tells a pair from a single text).
        has_pair = None
        if token_type_ids is not None and input_ids is not None:
            has_pair = ((token_type_ids == 1) & attention_mask.bool()).any(dim=1)
        described = f"Task {name!r} is a {spec.type} task"
        pair_inputs = None
        if not kind.reads_pairs:
            if has_pair is not None and bool(has_pair.any()):
                instead = (
                    "; to score other labels, use model.predict(texts, labels={task: [...]})"
                    if spec.task_type.embeds_label_texts
                    else ""
                )
                raise ValueError(
                    f"{described}: it reads single texts, but was given pairs of texts (a text_pair, or the "
                    f"hypotheses of the zero-shot-classification pipeline). Give it single texts{instead}."
                )
        elif has_pair is not None and not bool(has_pair.all()):
            raise ValueError(
                f"{described}: it reads pairs of texts, but was given a single text. Give it "
                '{"text": ..., "text_pair": ...} (text-classification pipeline) or pass (text, text_pair) '
                "pairs to model.predict."
            )
        elif kind.apart:
            if has_pair is None:
                raise ValueError(
                    f"{described} that encodes each text of a pair on its own: its view needs the "
                    "token_type_ids the tokenizer gives a (text, text_pair) input, to find where the second "
                    "text starts. Use model.predict with (text, text_pair) pairs."
                )
            input_ids, attention_mask, token_type_ids, pair_inputs = split_pair_rows(
                input_ids, attention_mask, token_type_ids
            )
        task_labels = {} if labels is None else {f"labels_{name}": labels}
        output = self.multitask_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pair_inputs=pair_inputs,
            tasks=[name],
            **task_labels,
        )
        logits = spec.task_type.view_logits(spec, output[f"{name}_logits"])
        return self.output_class(loss=output.loss, logits=logits)

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """The multi-task model's folder (the canonical one: every view loads from it)."""
        self.multitask_encoder.save_pretrained(save_directory, *args, **kwargs)


def split_pair_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Joint pair inputs `[CLS] a [SEP] b [SEP]` `[batch, seq]` (second text: token type 1) -> the first
    texts' inputs `[CLS] a [SEP]` and, as `pair_inputs` (with `rows`), the second texts' `[CLS] b [SEP]`: the
    inputs the tokenizer gives each text alone, right-padded."""
    real = attention_mask.bool()
    firsts, seconds = [], []
    for row in range(input_ids.shape[0]):
        ids = input_ids[row]
        firsts.append(ids[real[row] & (token_type_ids[row] == 0)])
        seconds.append(torch.cat([ids[:1], ids[real[row] & (token_type_ids[row] == 1)]]))

    def padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = pad_sequence(rows, batch_first=True, padding_value=0)  # masked out: the pad id does not matter
        mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_value=0)
        return ids, mask, torch.zeros_like(ids)

    first_ids, first_mask, first_types = padded(firsts)
    second_ids, second_mask, second_types = padded(seconds)
    pair_inputs = {
        "input_ids": second_ids,
        "attention_mask": second_mask,
        "token_type_ids": second_types,
        "rows": torch.arange(len(seconds), device=input_ids.device),
    }
    return first_ids, first_mask, first_types, pair_inputs


class MultiTaskEncoderForSequenceClassification(_MultiTaskEncoderTaskView):
    token_level = False
    config_field = "sequence_classification_task"
    output_class = SequenceClassifierOutput
    other_interface = "AutoModelForTokenClassification (the token-classification pipeline)"


class MultiTaskEncoderForTokenClassification(_MultiTaskEncoderTaskView):
    token_level = True
    config_field = "token_classification_task"
    output_class = TokenClassifierOutput
    other_interface = "AutoModelForSequenceClassification (the text-classification pipeline) or model.predict"


TASK_VIEWS = {
    "AutoModelForSequenceClassification": MultiTaskEncoderForSequenceClassification,
    "AutoModelForTokenClassification": MultiTaskEncoderForTokenClassification,
}


__all__ = [
    "TASK_VIEWS",
    "MultiTaskEncoderForSequenceClassification",
    "MultiTaskEncoderForTokenClassification",
]
