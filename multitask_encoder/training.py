"""The training job behind `train.py`: read a YAML/JSON config (tasks, data, model and `TrainingArguments`
options), let command-line flags override it, load and check the data, train with `MultiTaskTrainer`, and
write the model folder, `eval_results.json`, per-task test predictions and the model card.

    python train.py [CONFIG.yaml] [--output_dir DIR] [--max_steps N] [--any TrainingArguments flag] ...
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import yaml
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    HfArgumentParser,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .backbone import resolve_backbone
from .collator import MultiTaskCollator
from .data import load_multitask_data
from .modeling_multitask_encoder import IGNORE_INDEX, MultiTaskEncoderModel
from .optimization import apply_freezing
from .precompute import PrecomputedCollator, precompute_features, precompute_mode
from .trainer import MultiTaskTrainer, scalar_metrics

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "demo.yaml")


@dataclass
class ModelArguments:
    backbone: str | None = field(
        default=None,
        metadata={"help": "Encoder to start from (Hub id or folder). Default: packaged all-MiniLM-L6-v2."},
    )
    pooling: str = field(default="mean", metadata={"help": "mean | cls | max | mean_sqrt_len"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise the sentence embedding."})
    projection_dim: int | None = field(
        default=None, metadata={"help": "Project the pooled vector to this size."}
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Longest input in tokens (training and inference)."}
    )
    loss_weighting: str = field(
        default="static", metadata={"help": "static | uncertainty (Kendall et al. 2018)"}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "sdpa | eager (default: sdpa)"})


@dataclass
class MultiTaskArguments:
    composition: str = field(default="mixed", metadata={"help": "mixed (tasks share batches) | per_task"})
    sampling: str = field(default="proportional", metadata={"help": "proportional | uniform | temperature"})
    temperature: float = field(default=2.0, metadata={"help": "T for temperature sampling: p ~ n^(1/T)"})
    max_examples_per_group: int | None = field(
        default=None, metadata={"help": "Per-epoch cap on each data group."}
    )
    min_examples_per_group: int | None = field(
        default=None, metadata={"help": "Oversample small groups to this."}
    )
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the heads only."})
    freeze_embeddings: bool = field(default=False, metadata={"help": "Freeze the encoder's embedding layer."})
    freeze_bottom_layers: int = field(
        default=0, metadata={"help": "Freeze this many encoder layers from the bottom."}
    )
    encoder_learning_rate: float | None = field(default=None, metadata={"help": "Default: learning_rate."})
    head_learning_rate: float | None = field(default=None, metadata={"help": "Default: learning_rate."})
    layerwise_lr_decay: float = field(
        default=1.0, metadata={"help": "LR factor per encoder layer downwards."}
    )
    precompute_embeddings: bool = field(
        default=False, metadata={"help": "With freeze_encoder: encode the data once, train the heads on it."}
    )
    precompute_mode: str = field(
        default="fastest",
        metadata={
            "help": "Serving mode the precompute encodes through: 'fastest' (the fastest within the serving "
            "guard here, see multitask_encoder.precompute.precompute_mode) or an optimize_for_inference mode "
            "('exact': the eager fp32 numbers the slow path computes)."
        },
    )
    label_all_subtokens: bool = field(
        default=False, metadata={"help": "NER: label every word piece, not the first."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Evaluations without improvement."}
    )
    example_sentences: list[str] = field(
        default_factory=list, metadata={"help": "Sentences to predict and print at the end."}
    )
    data_cache_dir: str | None = field(default=None, metadata={"help": "Cache for tokenised datasets."})


ARGUMENT_CLASSES = (ModelArguments, MultiTaskArguments, TrainingArguments)


def load_config_file(path: str) -> dict[str, Any]:
    """A training config (YAML or JSON): flat option keys plus a `tasks:` mapping."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Training config {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(values, dict) or not isinstance(values.get("tasks"), dict) or not values["tasks"]:
        raise ValueError(f"{path}: a training config needs a non-empty `tasks:` mapping.")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)} | {"tasks"}
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            raise ValueError(
                f"{path}: unknown option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ".")
            )
    return values


def parse_arguments(argv: list[str] | None = None):
    """(model_args, multitask_args, training_args, tasks, config_path): the file's values, then the flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = DEFAULT_CONFIG
    if argv and not argv[0].startswith("-"):
        config_path = argv.pop(0)
    parser = HfArgumentParser(ARGUMENT_CLASSES, description=__doc__.split("\n\n")[0])
    parser.usage = "train.py [CONFIG.yaml] [--flags]  (flags override the config file)"
    if "-h" in argv or "--help" in argv:
        parser.parse_args_into_dataclasses(args=argv)  # prints help and exits
    values = load_config_file(config_path)
    tasks = values.pop("tasks")
    parser.set_defaults(**values)
    model_args, multitask_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, multitask_args, training_args, tasks, os.path.abspath(config_path)


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
            if spec.type == "sequence_classification":
                probabilities = np.exp(row_logits - row_logits.max())
                probabilities /= probabilities.sum()
                best = int(probabilities.argmax())
                gold = spec.labels[int(row_labels)] if row_labels != IGNORE_INDEX else ""
                writer.writerow([text, gold, spec.labels[best], f"{probabilities[best]:.4f}"])
            elif spec.type == "multi_label_classification":
                probabilities = 1.0 / (1.0 + np.exp(-row_logits))
                predicted = [label for label, p in zip(spec.labels, probabilities) if p >= spec.threshold]
                gold = [label for label, y in zip(spec.labels, row_labels) if y == 1]
                writer.writerow([text, "|".join(gold), "|".join(predicted), f"{probabilities.max():.4f}"])
            elif spec.type == "regression":
                writer.writerow([text, float(np.ravel(row_labels)[0]), float(np.ravel(row_logits)[0]), ""])
            else:  # token_classification: word-level tags, space-separated
                scored = row_labels != IGNORE_INDEX
                gold = " ".join(spec.labels[i] for i in row_labels[scored])
                predicted = " ".join(spec.labels[i] for i in row_logits[: len(row_labels)].argmax(-1)[scored])
                writer.writerow([text, gold, predicted, ""])


def run_training(
    argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Train, evaluate and save; returns the metrics per split and task. `callbacks` are extra Trainer
    callbacks for programmatic use (e.g. to inspect every process's model in a distributed run)."""
    model_args, mt_args, training_args, tasks, config_path = parse_arguments(argv)
    if training_args.prediction_loss_only or training_args.batch_eval_metrics:
        # Both skip compute_metrics over the whole set, which scores each task and keeps its logits.
        raise ValueError(
            "prediction_loss_only and batch_eval_metrics are not supported: the multi-task evaluation "
            "scores every task on its whole evaluation set."
        )
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
            cache_dir=mt_args.data_cache_dir,
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
    apply_freezing(model, mt_args.freeze_encoder, mt_args.freeze_embeddings, mt_args.freeze_bottom_layers)

    collator = MultiTaskCollator(
        tokenizer, model.config.tasks, label_all_subtokens=mt_args.label_all_subtokens
    )
    train_dataset, eval_datasets, test_datasets = data.train, data.validation, data.test
    if mt_args.precompute_embeddings:
        if not mt_args.freeze_encoder:
            raise ValueError(
                "precompute_embeddings needs freeze_encoder: a training encoder changes its output."
            )
        batch = training_args.per_device_eval_batch_size
        rows = len(data.train) + sum(len(d) for d in (*data.validation.values(), *data.test.values()))
        mode = mt_args.precompute_mode
        if mode == "fastest":
            mode = precompute_mode(model, rows)
        logger.info(f"Precomputing {rows} rows in the {mode!r} serving mode.")
        model.optimize_for_inference(mode)
        train_dataset = precompute_features(model, data.train, collator, batch, "Encoding train")
        eval_datasets = {
            t: precompute_features(model, d, collator, batch, f"Encoding {t}")
            for t, d in eval_datasets.items()
        }
        test_datasets = {
            t: precompute_features(model, d, collator, batch, f"Encoding {t}")
            for t, d in test_datasets.items()
        }
        model.optimize_for_inference("exact")  # the saved and evaluated model serves as any other
        collator = PrecomputedCollator(model)

    trainer_callbacks: list[TrainerCallback] = [EpochPrinter(), *(callbacks or [])]
    if mt_args.early_stopping_patience:
        trainer_callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=mt_args.early_stopping_patience)
        )
    trainer = MultiTaskTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=trainer_callbacks,
        group_sizes=data.group_sizes,
        sampler_kwargs={
            "composition": mt_args.composition,
            "sampling": mt_args.sampling,
            "temperature": mt_args.temperature,
            "max_examples": _per_group(mt_args.max_examples_per_group, data.group_sizes),
            "min_examples": _per_group(mt_args.min_examples_per_group, data.group_sizes),
            "drop_last": training_args.dataloader_drop_last,
        },
        encoder_learning_rate=mt_args.encoder_learning_rate,
        head_learning_rate=mt_args.head_learning_rate,
        layerwise_lr_decay=mt_args.layerwise_lr_decay,
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
    if eval_datasets:
        trainer.evaluate()
        results["validation"] = dict(trainer.detailed_metrics)
    test_predictions: dict[str, tuple[Any, Any]] = {}
    if test_datasets:
        # The prediction files are written from this pass's logits, not from a second pass over the test sets.
        trainer.evaluate(test_datasets, metric_key_prefix="test")
        results["test"] = dict(trainer.detailed_metrics)
        test_predictions = {task: trainer.task_outputs[task] for task in test_datasets}

    if trainer.is_world_process_zero():
        for task, (logits, labels) in test_predictions.items():
            path = os.path.join(output_dir, f"predictions_{task}.csv")
            write_predictions_csv(path, model, task, data.test[task], logits, labels)
        results["label_counts"] = data.label_counts
        with open(os.path.join(output_dir, "eval_results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=float)
        _render_card(output_dir, model, results, training_args, mt_args, model_args, tasks)
        _print_summary(results)
        if mt_args.example_sentences:
            _print_examples(model, mt_args.example_sentences)
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


def _per_group(limit: int | None, group_sizes: dict[str, int]) -> dict[str, int] | None:
    return None if limit is None else dict.fromkeys(group_sizes, limit)


def _render_card(output_dir, model, results, training_args, mt_args, model_args, tasks) -> None:
    try:
        from .model_card import write_model_card
    except ImportError:  # the card renderer is optional for a training run
        return
    write_model_card(output_dir, model.config, results, training_args, mt_args, model_args, tasks)


def _print_summary(results: dict[str, Any]) -> None:
    for split in ("validation", "test"):
        for task, metrics in results.get(split, {}).items():
            line = "  ".join(f"{k} {v:.4f}" for k, v in scalar_metrics(metrics).items() if k != "support")
            print(f"{split} {task}: {line}", flush=True)


def _print_examples(model: MultiTaskEncoderModel, sentences: list[str]) -> None:
    print("\nPredictions on example sentences:")
    for sentence, prediction in zip(sentences, model.predict(sentences)):
        parts = []
        for task, result in prediction.items():
            if "label" in result:
                parts.append(f"{task}={result['label']} ({result['score']:.2f})")
            elif "entities" in result:
                parts.append(f"{task}=" + ", ".join(f"{e['text']}:{e['entity']}" for e in result["entities"]))
            elif "labels" in result:
                parts.append(f"{task}={'|'.join(result['labels'])}")
            else:
                parts.append(f"{task}={result.get('value', result.get('values'))}")
        print(f"  {sentence!r}\n    -> " + "  ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    run_training(argv)
