"""`MultiTaskTrainer`: the HF `Trainer`, taught four multi-task things:

0. the options (arguments.py): freezing, the frozen-encoder fast path, early stopping, the default collator;
1. batches come from `MultiTaskBatchSampler` (mixed or per-task batches, proportional/uniform/temperature
   task sampling), the same on every process;
2. each task is evaluated on its own split with its own metrics, logged as `eval_<task>_<metric>`, plus
   `eval_combined_score` (the mean of each task's main metric) for best-checkpoint selection and early stopping;
3. per-task training losses are logged as `<task>_loss` (in the config's task order), the name evaluation gives
   each task's loss (`eval_<task>_loss`): trackers show the two side by side;
4. the optimizer can give heads and encoder separate learning rates, with layer-wise decay.

Its options are `MultiTaskTrainingArguments` (arguments.py).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import EarlyStoppingCallback, ProgressCallback, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .arguments import MultiTaskTrainingArguments
from .checkpoints import saving_into, write_manifest
from .collator import MultiTaskCollator
from .optimization import apply_freezing, parameter_groups
from .precompute import PrecomputedCollator, PrecomputedFeatures, precompute_features, precompute_mode
from .sampling import MultiTaskBatchSampler
from .task_types import task_type
from .task_types.metrics import regression_metrics


class TaskEvaluation(NamedTuple):
    """What one `MultiTaskTrainer.evaluate_tasks` call measured: the scalar `metrics` it logged
    (`<prefix>_<task>_<metric>`, `<prefix>_combined_score`, embedding scores), each task's full metrics
    (`per_task`, non-scalar parts included) and its gathered logits and labels (`outputs`, for prediction files)."""

    metrics: dict[str, float]
    per_task: dict[str, dict[str, Any]]
    outputs: dict[str, tuple[np.ndarray, np.ndarray]]


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The loggable part of a metrics dict (confusion matrices and per-type tables are kept elsewhere)."""
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float))}


logger = logging.getLogger(__name__)


def embedding_spearman(model, pairs, batch_size: int = 64) -> float:
    """Spearman correlation of the cosine of the two texts' embeddings with the gold scores (`pairs`:
    data.EmbeddingPairs), from -1 to 1: the scale of every other Spearman the package reports (a similarity
    task's `spearman` among them)."""
    a = model.encode(pairs.texts, batch_size=batch_size, return_tensors="pt")
    b = model.encode(pairs.text_pairs, batch_size=batch_size, return_tensors="pt")
    cosines = torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()
    return regression_metrics(cosines, np.asarray(pairs.scores, dtype=np.float64))["spearman"]


class MultiTaskTrainer(Trainer):
    """HF `Trainer` for a [`MultiTaskEncoderModel`].

    Args (besides the `Trainer`'s own):
        args: `MultiTaskTrainingArguments` (plain `TrainingArguments` are copied into them, with the
            multi-task defaults; the caller's object is never changed).
        group_sizes: rows per data group of `train_dataset`, in concatenation order (without it, batches
            are the plain Trainer's).
        run_fingerprint: what makes this run this run (checkpoints.run_fingerprint), recorded in every
            checkpoint's manifest so that only this run resumes from it.
        eval_dataset: a dict task name -> that task's evaluation split.
    """

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *more: Any,
        group_sizes: dict[str, int] | None = None,
        distinct_text_keys: dict[str, np.ndarray] | None = None,
        embedding_eval_sets: dict[str, Any] | None = None,
        run_fingerprint: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("compute_metrics", self._compute_task_metrics)
        args = MultiTaskTrainingArguments.from_training_arguments(
            args if args is not None else TrainingArguments(output_dir="trainer_output")
        )
        if model is not None:
            apply_freezing(model, args.freeze_encoder, args.freeze_embeddings, args.freeze_bottom_layers)
        if data_collator is None and processing_class is not None and model is not None:
            data_collator = MultiTaskCollator(
                processing_class, model.config.tasks, label_all_subtokens=args.label_all_subtokens
            )
        self.precomputed = args.precompute_embeddings
        if self.precomputed:
            # The frozen encoder's output, computed once: the heads then train at the cost of their own layers.
            rows = len(train_dataset) + sum(len(d) for d in (eval_dataset or {}).values())
            self.precompute_serving_mode = (
                precompute_mode(model, rows) if args.precompute_mode == "fastest" else args.precompute_mode
            )
            logger.info(f"Precomputing {rows} rows in the {self.precompute_serving_mode!r} serving mode.")
            train_dataset = self._precompute(model, data_collator, {"train": train_dataset}, args)["train"]
            eval_dataset = self._precompute(model, data_collator, eval_dataset, args)
            self.text_collator, data_collator = data_collator, PrecomputedCollator(model)
        super().__init__(
            model, args, data_collator, train_dataset, eval_dataset, processing_class, *more, **kwargs
        )
        if args.early_stopping_patience:
            self.add_callback(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
        tasks = self.model.config.tasks
        self.label_names = [f"labels_{name}" for name in tasks]
        self.group_sizes = group_sizes
        self.distinct_text_keys = distinct_text_keys or {}
        self.embedding_eval_sets = embedding_eval_sets or {}
        # The embedding the model starts from, kept frozen, when the option keeps the trained one close to it.
        self.teacher = None
        if self.args.embedding_distillation_weight > 0:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.run_fingerprint = run_fingerprint or {"digest": None}
        # What `compute_metrics` measures for each task during one `evaluate_tasks` call (returned by it).
        self._task_results: dict[str, dict[str, Any]] = {}
        self._task_outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._eval_task: str | None = None
        self._task_loss_sums: dict[str, float] = defaultdict(float)
        self._task_loss_counts: dict[str, int] = defaultdict(int)
        self._last_teacher_weight: float | None = None  # logged with the training loss
        self.batch_sampler: MultiTaskBatchSampler | None = None

    def _precompute(self, model, collator, datasets, args):
        """A dict of tokenised sets (task -> set) as precomputed features, encoded in the precompute's serving
        mode (the model serves in the exact mode again afterwards)."""
        if not isinstance(datasets, dict):
            return datasets
        model.optimize_for_inference(self.precompute_serving_mode)
        try:
            return {
                name: dataset
                if isinstance(dataset, PrecomputedFeatures)
                else precompute_features(
                    model, dataset, collator, args.per_device_eval_batch_size, f"Encoding {name}"
                )
                for name, dataset in datasets.items()
            }
        finally:
            model.optimize_for_inference("exact")  # the saved and evaluated model serves as any other

    # ------------------------------------------------------------------ training data
    def get_train_dataloader(self) -> DataLoader:
        if self.group_sizes is None:
            return super().get_train_dataloader()
        if self.batch_sampler is None:
            args = self.args
            per_group = {
                name: None if limit is None else dict.fromkeys(self.group_sizes, limit)
                for name, limit in (
                    ("max", args.max_examples_per_group),
                    ("min", args.min_examples_per_group),
                )
            }
            self.batch_sampler = MultiTaskBatchSampler(
                self.group_sizes,
                batch_size=self._train_batch_size,
                composition=args.composition,
                sampling=args.sampling,
                temperature=args.temperature,
                max_examples=per_group["max"],
                min_examples=per_group["min"],
                seed=args.seed,
                drop_last=args.dataloader_drop_last,
                distinct_keys=self.distinct_text_keys,
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
        if "teacher_targets" in inputs:
            if model.training:  # teacher annealing: a function of the step, so a resumed run continues it
                inputs = {**inputs, "teacher_weight": self.teacher_weight()}
                self._last_teacher_weight = inputs["teacher_weight"]
            else:
                inputs = {key: value for key, value in inputs.items() if key != "teacher_targets"}
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if self.teacher is not None and model.training:
            distance = self._embedding_distance(outputs.embeddings, inputs)
            self._task_loss_sums["embedding_distillation"] += float(distance.detach())
            self._task_loss_counts["embedding_distillation"] += 1
            loss = loss + self.args.embedding_distillation_weight * distance
        if model.training and outputs.get("task_losses"):
            for name, value in outputs["task_losses"].items():
                self._task_loss_sums[name] += float(value)
                self._task_loss_counts[name] += 1
        return (loss, outputs) if return_outputs else loss

    def teacher_weight(self) -> float:
        """The weight of the teachers' targets at this step: linear from `teacher_weight_start` at step 0 to
        `teacher_weight_end` at the last step (Clark et al. 2019's teacher annealing: 1 -> 0)."""
        start, end = self.args.teacher_weight_start, self.args.teacher_weight_end
        total = max(self.state.max_steps or 1, 1)
        progress = min(self.state.global_step / total, 1.0)
        return start + (end - start) * progress

    def _embedding_distance(self, embeddings, inputs) -> torch.Tensor:
        """Mean cosine distance of the batch's embeddings to the embeddings the original model gives the same
        texts: keeps what made the backbone a good sentence encoder while the heads train."""
        teacher = self.teacher.to(embeddings.device)
        with torch.no_grad():
            target = teacher.embed(
                {
                    key: inputs[key]
                    for key in ("input_ids", "attention_mask", "token_type_ids")
                    if key in inputs
                }
            )
        return (
            1.0 - torch.nn.functional.cosine_similarity(embeddings.float(), target.float(), dim=-1)
        ).mean()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if (
            "loss" in logs and self._task_loss_counts
        ):  # a training log: add the per-task means since the last one
            order = {task: index for index, task in enumerate(self.model.config.tasks)}
            for name in sorted(self._task_loss_sums, key=lambda name: order.get(name, len(order))):
                logs[f"{name}_loss"] = self._task_loss_sums[name] / self._task_loss_counts[name]
            self._task_loss_sums.clear()
            self._task_loss_counts.clear()
        if "loss" in logs and self._last_teacher_weight is not None:
            logs["teacher_weight"] = self._last_teacher_weight
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
                encoder_learning_rate=self.args.encoder_learning_rate,
                head_learning_rate=self.args.head_learning_rate,
                layerwise_lr_decay=self.args.layerwise_lr_decay,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)  # every group carries its own
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then its manifest (checkpoints.py), and only then the rotation that deletes
        older checkpoints: a run killed while saving still has its previous, intact checkpoint."""
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # (our own copy of the arguments, restored below)
        checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            with saving_into(self._get_output_dir(trial=trial), f"the checkpoint {checkpoint}"):
                super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            write_manifest(
                os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"),
                self.run_fingerprint,
            )
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """The Trainer's evaluation: every task on its own split (see `evaluate_tasks`); returns the scalar
        metrics `<prefix>_<task>_<metric>` and `<prefix>_combined_score`."""
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(datasets, dict):
            return super().evaluate(datasets, ignore_keys, metric_key_prefix)
        return self.evaluate_tasks(datasets, ignore_keys, metric_key_prefix).metrics

    def evaluate_tasks(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> TaskEvaluation:
        """Evaluate every task on its own split ({task: dataset}, default the validation splits): the scalar
        metrics are logged once and passed once to the callbacks (early stopping); returns them with each
        task's full metrics and its gathered logits and labels."""
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if self.precomputed:
            datasets = self._precompute(self.model, self.text_collator, datasets, self.args)
        metrics: dict[str, float] = {}
        main_scores = []
        # This evaluation's only: never an earlier split's metrics or logits under the same task name.
        self._task_results, self._task_outputs = {}, {}
        label_names = self.label_names
        for task, dataset in datasets.items():
            # Only this task's head runs, and only its labels are gathered.
            self._eval_task, self.label_names = task, [f"labels_{task}"]
            dataloader = self.get_eval_dataloader(dataset)
            self._open_prediction_bars(f"{metric_key_prefix} {task}", dataloader)
            try:
                output = self.evaluation_loop(
                    dataloader,
                    description=f"Evaluation ({task})",
                    ignore_keys=ignore_keys,
                    metric_key_prefix=f"{metric_key_prefix}_{task}",
                )
            finally:
                self._eval_task, self.label_names = None, label_names
                self._close_prediction_bars()  # one bar per task, with that task's total
            metrics.update(output.metrics)
            spec = self.model.config.tasks[task]
            main = output.metrics.get(f"{metric_key_prefix}_{task}_{task_type(spec).main_metric}")
            if main is not None:
                main_scores.append(main)
        if main_scores:
            metrics[f"{metric_key_prefix}_combined_score"] = float(np.mean(main_scores))
        # The embedding itself: cosine of the two texts' embeddings against the gold score (not in the combined
        # score: it is a property to keep, not a task). Its sets are the config's own named sets, not the split
        # being evaluated, so only the validation evaluations score them (eval_embedding_<name>_spearman): a test
        # pass logging the same number as test_embedding_<name>_spearman would pass it off as a test score.
        if metric_key_prefix == "eval":
            for name, pairs in self.embedding_eval_sets.items():
                score = embedding_spearman(self.model, pairs, self.args.per_device_eval_batch_size)
                metrics[f"eval_embedding_{name}_spearman"] = score
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return TaskEvaluation(metrics, self._task_results, self._task_outputs)

    def _open_prediction_bars(self, description: str, dataloader: DataLoader) -> None:
        """The progress bar of one task's evaluation, named by split and task (ProgressCallback would open
        an unnamed one at the first step)."""
        if not self.is_world_process_zero():
            return
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and callback.prediction_bar is None:
                callback.prediction_bar = tqdm(
                    total=len(dataloader),
                    desc=description,
                    leave=callback.training_bar is None,
                    dynamic_ncols=True,
                )

    def _close_prediction_bars(self) -> None:
        for callback in self.callback_handler.callbacks:
            bar = (
                getattr(callback, "prediction_bar", None) if isinstance(callback, ProgressCallback) else None
            )
            if bar is not None:
                bar.close()
                callback.prediction_bar = None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self._eval_task is not None:
            inputs = {**inputs, "tasks": [self._eval_task]}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def _compute_task_metrics(self, eval_prediction) -> dict[str, float]:
        """`compute_metrics` for the task being evaluated (its head's logits, its labels); keeps the full
        result and the arrays for `evaluate_tasks` to return."""
        task = self._eval_task
        if task is None:
            return {}
        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
        labels = np.asarray(labels[0] if isinstance(labels, (tuple, list)) else labels)
        spec = self.model.config.tasks[task]
        result = task_type(spec).metrics(spec, logits, labels)
        self._task_results[task] = result
        self._task_outputs[task] = (logits, labels)
        return scalar_metrics(result)
