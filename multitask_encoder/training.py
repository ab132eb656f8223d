"""The training job behind `train.py`: read a YAML/JSON config (tasks, data, model and `TrainingArguments`
options), let command-line flags override it, load and check the data, train with `MultiTaskTrainer`, and
write the model folder, `eval_results.json`, per-task test predictions and the model card.

    python train.py [CONFIG.yaml] [--output_dir DIR] [--max_steps N] [--any TrainingArguments flag] ...
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import logging
import os
import re
import sys
from dataclasses import fields
from typing import Any

import numpy as np
import yaml
from transformers import AutoTokenizer, HfArgumentParser, TrainerCallback, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .arguments import ARGUMENT_CLASSES, tasks_help
from .backbone import resolve_backbone
from .data import load_multitask_data
from .model_card import write_model_card
from .modeling_multitask_encoder import MultiTaskEncoderModel
from .trainer import MultiTaskTrainer, scalar_metrics

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "demo.yaml")


def load_config_file(path: str) -> dict[str, Any]:
    """A training config (YAML or JSON): flat option keys plus a `tasks:` mapping."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Training config {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(values, dict) or not isinstance(values.get("tasks"), dict) or not values["tasks"]:
        raise ValueError(f"{path}: a training config needs a non-empty `tasks:` mapping.")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init} | {"tasks"}
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            raise ValueError(
                f"{path}: unknown option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ".")
            )
    return values


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        ARGUMENT_CLASSES,
        description=__doc__.split("\n\n")[0],
        epilog=tasks_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.usage = "train.py [CONFIG.yaml] [--flags]  (flags override the config file)"
    return parser


def parse_arguments(argv: list[str] | None = None):
    """(model_args, training_args, job_args, tasks, config_path): the file's values, then the flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = DEFAULT_CONFIG
    if argv and not argv[0].startswith("-"):
        config_path = argv.pop(0)
    parser = build_parser()
    if "-h" in argv or "--help" in argv:
        parser.parse_args_into_dataclasses(args=argv)  # prints help and exits
    values = load_config_file(config_path)
    tasks = values.pop("tasks")
    parser.set_defaults(**values)
    model_args, training_args, job_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, training_args, job_args, tasks, os.path.abspath(config_path)


class EpochPrinter(TrainerCallback):
    """Print one line per epoch: training loss and every task's main metrics (as the seed designs do)."""

    def __init__(self) -> None:
        self.last_loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self.last_loss = logs["loss"]
        scores = {
            k[5:]: v for k, v in logs.items() if k.startswith("eval_") and k.endswith(("accuracy", "_f1"))
        }
        if scores:
            epoch = f"epoch {state.epoch:.2f}" if state.epoch is not None else "final"
            loss = f"train loss {self.last_loss:.4f}  " if self.last_loss is not None else ""
            print(
                f"[{epoch}] {loss}" + "  ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())), flush=True
            )


def write_predictions_csv(
    path: str, model, task: str, dataset, logits: np.ndarray, labels: np.ndarray
) -> None:
    """Per-example test predictions of one task: text, gold, predicted, score."""
    spec = model.config.tasks[task]
    texts = dataset["text"] if "text" in dataset.column_names else [""] * len(dataset)
    if not len(texts) == len(logits) == len(labels):
        raise ValueError(
            f"Task {task!r}: {len(logits)} test logits and {len(labels)} labels for {len(texts)} test rows."
        )
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "gold", "predicted", "score"])
        for text, row_logits, row_labels in zip(texts, logits, labels):
            writer.writerow([text, *spec.task_type.prediction_row(spec, row_logits, row_labels)])


def run_training(
    argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Train, evaluate and save; returns the metrics per split and task. `callbacks` are extra Trainer
    callbacks for programmatic use (e.g. to inspect every process's model in a distributed run)."""
    model_args, training_args, job_args, tasks, config_path = parse_arguments(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    backbone = resolve_backbone(model_args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    # In a distributed run the main process tokenises and writes the cache files first; the others then
    # read them (all writing the same files at once would race).
    with training_args.main_process_first(desc="loading and tokenising the tasks' data"):
        data = load_multitask_data(
            tasks,
            tokenizer,
            max_seq_length=model_args.max_seq_length,
            base_dir=os.path.dirname(config_path),
            seed=training_args.seed,
            cache_dir=job_args.data_cache_dir,
        )
    model = MultiTaskEncoderModel.from_backbone(
        backbone,
        tasks=data.task_specs,
        pooling=model_args.pooling,
        normalize=model_args.normalize,
        projection_dim=model_args.projection_dim,
        loss_weighting=model_args.loss_weighting,
        max_seq_length=model_args.max_seq_length,
        attn_implementation=model_args.attn_implementation,
    )
    trainer = MultiTaskTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation or None,
        processing_class=tokenizer,  # the trainer's default collator pads with it (and saves it)
        callbacks=[EpochPrinter(), *(callbacks or [])],
        group_sizes=data.group_sizes,
    )

    # Never lose work: a run killed mid-way picks up from its last checkpoint in output_dir.
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir):
        resume = last_complete_checkpoint(training_args.output_dir)
        if resume:
            logger.info(f"Resuming from {resume}")
    train_result = trainer.train(resume_from_checkpoint=resume)
    # Saved before anything else can fail. Saving and evaluating are collective in a distributed run (all
    # processes take part; evaluation gathers every process's share); only the main process writes.
    output_dir = training_args.output_dir
    trainer.save_model(output_dir)  # weights, config, code files and tokenizer

    results: dict[str, Any] = {"train": train_result.metrics, "validation": {}, "test": {}}
    if data.validation:
        trainer.evaluate()
        results["validation"] = dict(trainer.detailed_metrics)
    test_predictions: dict[str, tuple[Any, Any]] = {}
    if data.test:
        # The prediction files are written from this pass's logits, not from a second pass over the test sets.
        trainer.evaluate(data.test, metric_key_prefix="test")
        results["test"] = dict(trainer.detailed_metrics)
        test_predictions = {task: trainer.task_outputs[task] for task in data.test}

    if trainer.is_world_process_zero():
        for task, (logits, labels) in test_predictions.items():
            path = os.path.join(output_dir, f"predictions_{task}.csv")
            write_predictions_csv(path, model, task, data.test[task], logits, labels)
        results["label_counts"] = data.label_counts
        with open(os.path.join(output_dir, "eval_results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=float)
        examples = list(zip(job_args.example_sentences, model.predict(job_args.example_sentences)))
        write_model_card(output_dir, model.config, results, training_args, model_args, tasks, examples)
        _print_summary(results)
        if examples:
            _print_examples(model, examples)
    return results


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-<step>` folder of `output_dir` that was written to the end, or None.

    The Trainer writes a checkpoint's trainer_state.json last, so a run killed while saving leaves a folder
    without it (or with a truncated one), and resuming from that folder fails. Such folders are skipped, with
    a warning, for the previous checkpoint, which save_total_limit deletes only once the next is complete."""
    steps = {}
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = int(match.group(1))
    for checkpoint in sorted(steps, key=steps.get, reverse=True):
        try:
            with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as f:
                json.load(f)
            return checkpoint
        except (OSError, ValueError):
            logger.warning(
                f"Not resuming from {checkpoint}: its {TRAINER_STATE_NAME} is missing or incomplete."
            )
    return None


def _print_summary(results: dict[str, Any]) -> None:
    for split in ("validation", "test"):
        for task, metrics in results.get(split, {}).items():
            line = "  ".join(f"{k} {v:.4f}" for k, v in scalar_metrics(metrics).items() if k != "support")
            print(f"{split} {task}: {line}", flush=True)


def _print_examples(model: MultiTaskEncoderModel, examples: list[tuple[str, dict[str, Any]]]) -> None:
    print("\nPredictions on example sentences:")
    tasks = model.config.tasks
    for sentence, prediction in examples:
        parts = [f"{task}={tasks[task].task_type.summarize(result)}" for task, result in prediction.items()]
        print(f"  {sentence!r}\n    -> " + "  ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    run_training(argv)
