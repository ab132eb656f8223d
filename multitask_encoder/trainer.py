"""`MultiTaskTrainer`: the HF `Trainer`, taught four multi-task things:

1. batches come from `MultiTaskBatchSampler` (mixed or per-task batches, proportional/uniform/temperature
   task sampling), the same on every process;
2. each task is evaluated on its own split with its own metrics, logged as `eval_<task>_<metric>`, plus
   `eval_combined_score` (the mean of each task's main metric) for best-checkpoint selection and early stopping;
3. per-task training losses are logged as `loss_<task>`;
4. the optimizer can give heads and encoder separate learning rates, with layer-wise decay.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from transformers import Trainer

from .configuration_multitask_encoder import TaskSpec
from .metrics import classification_metrics, entity_metrics, multi_label_metrics, regression_metrics
from .modeling_multitask_encoder import IGNORE_INDEX
from .optimization import parameter_groups
from .sampling import MultiTaskBatchSampler

# The metric that stands for each task type in the combined score (higher is better for all of them).
MAIN_METRIC = {
    "sequence_classification": "accuracy",
    "multi_label_classification": "micro_f1",
    "regression": "spearman",
    "token_classification": "f1",
}


def task_metrics(spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Metrics of one task from its gathered logits and labels (shapes as in `task_loss`)."""
    if spec.type == "sequence_classification":
        return classification_metrics(logits.argmax(-1), labels, spec.labels)
    if spec.type == "multi_label_classification":
        predicted = (1.0 / (1.0 + np.exp(-logits)) >= spec.threshold).astype(np.int64)
        return multi_label_metrics(predicted, labels, spec.labels)
    if spec.type == "regression":
        return regression_metrics(logits.reshape(labels.shape), labels)
    # token_classification: score words (first sub-token positions carry the labels), as seqeval does.
    predicted_ids = logits.argmax(-1)
    predicted_tags, gold_tags = [], []
    for row_predictions, row_labels in zip(predicted_ids, labels):
        scored = row_labels != IGNORE_INDEX
        if not scored.any():
            continue
        predicted_tags.append([spec.labels[i] for i in row_predictions[scored]])
        gold_tags.append([spec.labels[i] for i in row_labels[scored]])
    return entity_metrics(predicted_tags, gold_tags)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The loggable part of a metrics dict (confusion matrices and per-type tables are kept elsewhere)."""
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float))}


class MultiTaskTrainer(Trainer):
    """HF `Trainer` for a [`MultiTaskEncoderModel`].

    Args (besides the `Trainer`'s own):
        group_sizes: rows per data group of `train_dataset`, in concatenation order.
        sampler_kwargs: `MultiTaskBatchSampler` options (composition, sampling, temperature, caps...).
        eval_dataset: a dict task name -> that task's evaluation split.
        encoder_learning_rate, head_learning_rate, layerwise_lr_decay: see `optimization.parameter_groups`.
    """

    def __init__(
        self,
        *args: Any,
        group_sizes: dict[str, int] | None = None,
        sampler_kwargs: dict[str, Any] | None = None,
        encoder_learning_rate: float | None = None,
        head_learning_rate: float | None = None,
        layerwise_lr_decay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("compute_metrics", self._compute_task_metrics)
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.ddp_find_unused_parameters is None:
            # The model gives every trainable parameter a gradient each step (heads without labels in the
            # batch get a zero one), so DDP needs no unused-parameter search. The Trainer would turn it on,
            # and DDP then rebuilds the output from its keys, which fails on the per-task `<task>_logits`.
            training_args.ddp_find_unused_parameters = False
        super().__init__(*args, **kwargs)
        # Our collator needs word_ids/group columns that the model's forward does not take.
        self.args.remove_unused_columns = False
        tasks = self.model.config.tasks
        self.label_names = [f"labels_{name}" for name in tasks]
        self.group_sizes = group_sizes
        self.sampler_kwargs = sampler_kwargs or {}
        self.encoder_learning_rate = encoder_learning_rate
        self.head_learning_rate = head_learning_rate
        self.layerwise_lr_decay = layerwise_lr_decay
        self.detailed_metrics: dict[str, dict[str, Any]] = {}  # last evaluation, non-scalar parts included
        # Last evaluation's logits and labels per task (gathered from every process), for prediction files.
        self.task_outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._eval_task: str | None = None
        self._task_loss_sums: dict[str, float] = defaultdict(float)
        self._task_loss_counts: dict[str, int] = defaultdict(int)
        self.batch_sampler: MultiTaskBatchSampler | None = None

    # ------------------------------------------------------------------ training data
    def get_train_dataloader(self) -> DataLoader:
        if self.group_sizes is None:
            return super().get_train_dataloader()
        if self.batch_sampler is None:
            self.batch_sampler = MultiTaskBatchSampler(
                self.group_sizes,
                batch_size=self._train_batch_size,
                seed=self.args.seed,
                **self.sampler_kwargs,
            )
        dataloader = DataLoader(
            self.train_dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(dataloader)

    def _run_epoch(self, model, epoch, *args, **kwargs):
        # Under DDP accelerate wraps our sampler in a BatchSamplerShard (and, when resuming mid-epoch, in a
        # SkipBatchSampler too) and not every set_epoch call reaches it; set the epoch here, exactly.
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    # ------------------------------------------------------------------ loss logging
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        encoder = getattr(self.accelerator.unwrap_model(model), "encoder", None)
        if model.training and encoder is not None and not any(p.requires_grad for p in encoder.parameters()):
            # A frozen encoder is a fixed feature extractor: run it without dropout, so the heads learn from
            # the features they will see at inference, exactly as on the precomputed fast path.
            encoder.eval()
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training and outputs.get("task_losses"):
            for name, value in outputs["task_losses"].items():
                self._task_loss_sums[name] += float(value)
                self._task_loss_counts[name] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if (
            "loss" in logs and self._task_loss_counts
        ):  # a training log: add the per-task means since the last one
            for name, total in self._task_loss_sums.items():
                logs[f"loss_{name}"] = total / self._task_loss_counts[name]
            self._task_loss_sums.clear()
            self._task_loss_counts.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = parameter_groups(
                opt_model,
                learning_rate=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                decay_parameter_names=set(self.get_decay_parameter_names(opt_model)),
                encoder_learning_rate=self.encoder_learning_rate,
                head_learning_rate=self.head_learning_rate,
                layerwise_lr_decay=self.layerwise_lr_decay,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)  # every group carries its own
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluate every task on its own split; returns `<prefix>_<task>_<metric>` and
        `<prefix>_combined_score`, logged once and passed once to the callbacks (early stopping)."""
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(datasets, dict):
            return super().evaluate(datasets, ignore_keys, metric_key_prefix)
        metrics: dict[str, float] = {}
        main_scores = []
        # This evaluation's only: never an earlier split's metrics or logits under the same task name.
        self.detailed_metrics, self.task_outputs = {}, {}
        for task, dataset in datasets.items():
            self._eval_task = task
            try:
                output = self.evaluation_loop(
                    self.get_eval_dataloader(dataset),
                    description=f"Evaluation ({task})",
                    ignore_keys=ignore_keys,
                    metric_key_prefix=f"{metric_key_prefix}_{task}",
                )
            finally:
                self._eval_task = None
            metrics.update(output.metrics)
            main = output.metrics.get(
                f"{metric_key_prefix}_{task}_{MAIN_METRIC[self.model.config.tasks[task].type]}"
            )
            if main is not None:
                main_scores.append(main)
        if main_scores:
            metrics[f"{metric_key_prefix}_combined_score"] = float(np.mean(main_scores))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _compute_task_metrics(self, eval_prediction) -> dict[str, float]:
        """`compute_metrics` for the task being evaluated: picks its logits and labels out of the tuples
        (ordered as `config.tasks`), keeps the full result in `self.detailed_metrics`."""
        task = self._eval_task
        tasks = list(self.model.config.tasks)
        if task is None:
            return {}
        predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        predictions = predictions if isinstance(predictions, tuple) else (predictions,)
        label_ids = label_ids if isinstance(label_ids, (tuple, list)) else (label_ids,)
        position = tasks.index(task)
        logits, labels = np.asarray(predictions[position]), np.asarray(label_ids[position])
        result = task_metrics(self.model.config.tasks[task], logits, labels)
        self.detailed_metrics[task] = result
        self.task_outputs[task] = (logits, labels)
        return scalar_metrics(result)
