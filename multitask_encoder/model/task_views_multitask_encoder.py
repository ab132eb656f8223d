"""Task views: one task of a multi-task model behind the standard single-task interface, so that
`AutoModelForSequenceClassification` / `AutoModelForTokenClassification`, the standard `text-classification` and
`token-classification` pipelines and a plain `Trainer` can use it. `save_pretrained` names them in `auto_map`.

Copied next to the weights with the other model files; imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from .configuration_multitask_encoder import MultiTaskEncoderConfig
from .modeling_multitask_encoder import MultiTaskEncoderModel, MultiTaskEncoderPreTrainedModel


class _MultiTaskEncoderTaskView(MultiTaskEncoderPreTrainedModel):
    """One task of a multi-task model behind the standard single-task interface (`logits`, `config.id2label`,
    `problem_type`), so the standard pipelines and a plain `Trainer` can use it. It holds the multi-task model
    as `multitask_encoder` (the `base_model_prefix`): the same weights file loads into it, without a copy.

    `serve_task` (or the config's `<kind>_task` field) picks the task; default: the first of the right kind.
    """

    token_level: ClassVar[bool] = False
    config_field: ClassVar[str] = ""
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
        view_config.id2label = dict(enumerate(spec.labels))
        view_config.label2id = spec.label2id
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
            raise ValueError(
                f"{cls.__name__} serves one of {candidates} (the model's tasks: {list(config.tasks)}), not {task!r}."
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
        task_labels = {} if labels is None else {f"labels_{self.served_task}": labels}
        output = self.multitask_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            tasks=[self.served_task],
            **task_labels,
        )
        return self.output_class(loss=output.loss, logits=output[f"{self.served_task}_logits"])

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """The multi-task model's folder (the canonical one: every view loads from it)."""
        self.multitask_encoder.save_pretrained(save_directory, *args, **kwargs)


class MultiTaskEncoderForSequenceClassification(_MultiTaskEncoderTaskView):
    token_level = False
    config_field = "sequence_classification_task"
    output_class = SequenceClassifierOutput


class MultiTaskEncoderForTokenClassification(_MultiTaskEncoderTaskView):
    token_level = True
    config_field = "token_classification_task"
    output_class = TokenClassifierOutput


TASK_VIEWS = {
    "AutoModelForSequenceClassification": MultiTaskEncoderForSequenceClassification,
    "AutoModelForTokenClassification": MultiTaskEncoderForTokenClassification,
}


__all__ = [
    "TASK_VIEWS",
    "MultiTaskEncoderForSequenceClassification",
    "MultiTaskEncoderForTokenClassification",
]
