"""The runs behind `bench/reference.py`: the parts of the reference multi-task benchmark.

Every compared row of a part gets the same budget (`Budget`): optimizer steps per task, batch size,
max_seq_length, learning rates, training rows and test rows. Multi-task rows go through the package's
training job (`multitask_encoder.train.prepare_run` + `train_and_save`, what `run_training` does, on a
generated YAML config); single-task rows are plain Hugging Face `AutoModelFor{Sequence,Token}Classification`
+ `Trainer`; every row is scored with the package's metrics (`classification_metrics`, `entity_metrics`) on
the same test rows.

    part         rows
    baselines    3 single-task models (T steps each) | frozen-encoder linear probe (LogisticRegression)
    multitask    multi-task (3T steps, per_task batches, uniform) | encoder frozen | bottom 3 layers frozen
                 + serving speed: one multi-task `predict` vs the three single-task models one after another
    ablations    imbalanced mix (sentiment at 10% of its rows), 3T steps: proportional | uniform |
                 temperature sampling, static loss weights | uniform with uncertainty loss weights
    multidomain  multi_domain_sentiment, `domain` and `sentiment` on every text: one multi-task model
                 (T steps, both heads from one encoder pass) | two single-task models (T steps each)
                 + serving speed
    pairs        sentence pairs and the embedding itself (reference_pairs.py)
    embedding    what limits the pairs part's row (c): the similarity task alone, and with distillation
    longer       the baselines' and multitask's headline rows at 4x the steps, with a learning curve
                 (reference_longer.py)

Training time (`train_s`) is wall time from the start of a row to its trained model: reading the data
(tokenised once beforehand, so every row reads the same cache), building the model, the frozen-encoder
encoding pass over the training rows, and the optimizer steps. Test evaluation is not part of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of tokenising, encoding, weight loading: log noise

import numpy as np
import torch
import yaml
from encode_speed import median_seconds
from safetensors import safe_open
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    pipeline,
    set_seed,
)

import multitask_encoder.train as training_job
import multitask_encoder.trainer as trainer_module
from multitask_encoder import MultiTaskEncoderConfig, MultiTaskEncoderModel, default_backbone
from multitask_encoder.collator import MultiTaskCollator
from multitask_encoder.data import load_multitask_data
from multitask_encoder.precompute import precompute_features
from multitask_encoder.sampling import MultiTaskBatchSampler
from multitask_encoder.task_types.metrics import classification_metrics, entity_metrics

REPO = Path(__file__).resolve().parents[1]
IGNORE_INDEX = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ---------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """What every compared row of a part gets. `None` caps mean "all rows" (full official test splits)."""

    steps_per_task: int  # T: baselines/multitask (single-task: T steps each; multi-task: 3T steps)
    max_train_examples: int | None  # training rows per task (baselines/multitask)
    max_test_examples: int | None  # test rows per task; None = the full official test split
    ablation_steps_per_task: int  # ablations: 3 x this many steps per run
    ablation_pool: int | None  # ablations: rows of topic and ner (sentiment: 10% of its own rows)
    multidomain_steps: int  # multidomain: multi-task and each single-task model
    multidomain_max_train: int | None
    inference_texts: int  # serving-speed texts (a third from each reference test split)
    multidomain_inference_texts: int
    inference_repeats: int  # timed runs per serving method (median reported)
    batch_size: int = 32
    eval_batch_size: int = 16  # small batches pad less (test sets are in file order)
    inference_batch_size: int = 64  # serving: every method batches 64 texts
    max_seq_length: int = 128
    learning_rate: float = 1e-4  # encoder (both sides)
    head_learning_rate: float = 1e-3  # heads / classifiers (both sides)
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    temperature: float = 2.0  # ablations: temperature sampling, p ~ n^(1/T)
    probe_c: float = 1.0  # LogisticRegression C (features standardised)


# Full budgets are sized for <= 60 minutes per part on 2 cores. Throughput measured on the 2-core AMD EPYC
# dev machine (CPU time of one thread, scaled to two; the machine was shared, so these are estimates): a
# MiniLM-L6 training step of 32 rows at max_seq_length 128 takes ~3.2 s on AG News and on the reviews,
# ~1.35 s on SST-5 and on CoNLL; inference runs at ~3,400 padded tokens/s. One pass over the three
# reference test splits (520k tokens, ~900k padded in batches of 16) takes ~4.5 min, and every
# `run_training` makes two (its test evaluation, then the test predictions it writes). Estimated parts:
#   baselines   3 x 100 steps + 3 test passes + probe (encode 9.6k train rows + the test sets)   ~20 min
#   multitask   300 steps full + 300 steps bottom-frozen + frozen (encode once) + 6 test passes
#               + serving (600 texts x 3 methods x 3 repeats)                                     ~46 min
#   ablations   4 runs x (90 steps + 2 test passes): the test passes are ~70% of this part         ~50 min
#   multidomain 200 + 2 x 200 steps on 128-token reviews + 4 short test passes + serving         ~40 min
BUDGETS = {
    "full": Budget(
        steps_per_task=100,
        max_train_examples=100 * 32,  # one pass over each task's training rows
        max_test_examples=None,
        ablation_steps_per_task=30,
        ablation_pool=None,
        multidomain_steps=200,
        multidomain_max_train=None,
        inference_texts=600,
        multidomain_inference_texts=400,
        inference_repeats=3,
    ),
    "quick": Budget(
        steps_per_task=6,
        max_train_examples=6 * 32,
        max_test_examples=100,
        ablation_steps_per_task=4,
        ablation_pool=1000,
        multidomain_steps=6,
        multidomain_max_train=6 * 32,
        inference_texts=60,
        multidomain_inference_texts=40,
        inference_repeats=1,
    ),
    "smoke": Budget(
        steps_per_task=2,
        max_train_examples=64,
        max_test_examples=24,
        ablation_steps_per_task=2,
        ablation_pool=200,
        multidomain_steps=2,
        multidomain_max_train=64,
        inference_texts=12,
        multidomain_inference_texts=8,
        inference_repeats=1,
    ),
}


def scaled_budget(budget: Budget, factor: int) -> Budget:
    """`factor` x the steps per task and the training rows (one pass over them still), the rest unchanged."""
    rows = budget.max_train_examples
    return dataclasses.replace(
        budget,
        steps_per_task=factor * budget.steps_per_task,
        max_train_examples=None if rows is None else factor * rows,
    )


@dataclass
class Context:
    """One part run: where things are, what budget, which seed."""

    part: str
    mode: str
    seed: int
    budget: Budget
    data: Path
    run_root: Path  # outputs/reference/<mode>/<part>-seed<N>
    cache_dir: Path  # tokenised datasets, shared by every row and run
    backbone: str
    tokenizer: Any
    options: dict[str, Any] = field(
        default_factory=dict
    )  # the part's own options (no_compromise: rows, factor)
    save_partial: Callable[[dict[str, Any]], None] | None = None  # saves the results of the rows done so far

    def run_dir(self, key: str) -> Path:
        path = self.run_root / key
        if path.exists():
            shutil.rmtree(path)  # a fresh start: run_training would resume from an old checkpoint
        path.mkdir(parents=True)
        return path


# ---------------------------------------------------------------------------------------------- tasks
def reference_tasks(
    data: Path, train_caps: dict[str, int | None], test_cap: int | None
) -> dict[str, dict[str, Any]]:
    """Task entries (as in a training config) for topic (AG News), 3-class sentiment (SST-5) and NER
    (CoNLL-2003), with official test splits; `train_caps` gives each task's training rows (None = all)."""
    entries = {
        "topic": {
            "type": "sequence_classification",
            "train": str(data / "ag_news" / "train.jsonl"),
            "test": str(data / "ag_news" / "test.jsonl"),
            "text_column": "text",
            "label_column": "topic",
        },
        "sentiment": {
            "type": "sequence_classification",
            "train": str(data / "sst5" / "train.jsonl"),
            "test": str(data / "sst5" / "test.jsonl"),
            "text_column": "text",
            "label_column": "sentiment",
        },
        "ner": {
            "type": "token_classification",
            "train": str(data / "conll2003" / "train.jsonl"),
            "test": str(data / "conll2003" / "test.jsonl"),
            "tokens_column": "tokens",
            "tags_column": "ner_tags",
        },
    }
    return {name: with_caps(entry, train_caps.get(name), test_cap) for name, entry in entries.items()}


def multidomain_tasks(data: Path, train_cap: int | None, test_cap: int | None) -> dict[str, dict[str, Any]]:
    """`domain` and `sentiment` from the same multi_domain_sentiment rows: one data group, so every batch
    carries both labels and one encoder pass trains both heads."""
    entries = {
        task: {
            "type": "sequence_classification",
            "train": str(data / "multi_domain_sentiment" / "train.jsonl"),
            "test": str(data / "multi_domain_sentiment" / "test.jsonl"),
            "text_column": "text",
            "label_column": task,
        }
        for task in ("domain", "sentiment")
    }
    return {name: with_caps(entry, train_cap, test_cap) for name, entry in entries.items()}


def with_caps(entry: dict[str, Any], train_cap: int | None, test_cap: int | None) -> dict[str, Any]:
    entry = dict(entry)
    if train_cap is not None:
        entry["max_train_examples"] = train_cap
    if test_cap is not None:
        entry["max_eval_examples"] = test_cap
    return entry


def count_rows(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def check_data(data: Path, part: str) -> None:
    folders = ("multi_domain_sentiment",) if part == "multidomain" else ("ag_news", "sst5", "conll2003")
    if part in ("pairs", "embedding", "no_compromise"):
        folders += ("stsb", "sick")
    if part == "no_compromise":
        folders += ("sst2", "multi_domain_sentiment")
    for folder in folders:
        for split in ("train", "test"):
            path = data / folder / f"{split}.jsonl"
            if not path.is_file():
                raise SystemExit(
                    f"{path} not found: pass --data pointing at the shared benchmark data folder."
                )


def load_data(ctx: Context, tasks: dict[str, dict[str, Any]]):
    """`load_multitask_data` with the benchmark's tokenizer, length, seed and cache (absolute paths)."""
    return load_multitask_data(
        tasks,
        ctx.tokenizer,
        max_seq_length=ctx.budget.max_seq_length,
        base_dir=str(REPO),
        seed=ctx.seed,
        cache_dir=str(ctx.cache_dir),
    )


def warm_cache(ctx: Context, tasks: dict[str, dict[str, Any]], single_tasks: bool = True) -> Any:
    """Tokenise the multi-task (and each single-task) variant once, before anything is timed, so every row
    reads its rows from the same cache. Returns the multi-task data (group sizes, test rows)."""
    for name, entry in tasks.items() if single_tasks else ():
        load_data(ctx, {name: entry})
    return load_data(ctx, tasks)


# ---------------------------------------------------------------------------------------------- helpers
def checkpoint_parameters(folder: Path) -> int:
    """Parameters a served model loads: every tensor in the saved model.safetensors."""
    total = 0
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            total += math.prod(f.get_slice(key).get_shape())
    return total


def learned_loss_weights(folder: Path, tasks: list[str]) -> dict[str, float] | None:
    """Uncertainty weighting: the weight exp(-s_t) each task's loss ended with (None for static weights)."""
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        if "task_log_vars" not in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            return None
        log_vars = f.get_tensor("task_log_vars").tolist()
    return {task: math.exp(-value) for task, value in zip(tasks, log_vars)}


def task_scores(metrics: dict[str, Any], labels: list[str] | None = None) -> dict[str, Any]:
    """The part of a task's metrics the results keep (confusion matrices included, with their labels)."""
    keep = (
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "precision",
        "recall",
        "f1",
        "support",
        "confusion_matrix",
        "per_type",
        "pearson",
        "spearman",
    )
    scores = {key: metrics[key] for key in keep if key in metrics}
    if labels is not None and "confusion_matrix" in scores:
        scores["labels"] = list(labels)
    return scores


def token_tag_sequences(
    predicted_ids: np.ndarray, label_ids: np.ndarray, labels: list[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Per-position predictions and labels (-100 where unscored) -> word-level tag sequences, as the
    package's trainer scores token tasks: one tag per first sub-token."""
    predicted, gold = [], []
    for row_predictions, row_labels in zip(predicted_ids, label_ids):
        scored = row_labels != IGNORE_INDEX
        if not scored.any():
            continue
        predicted.append([labels[i] for i in row_predictions[scored]])
        gold.append([labels[i] for i in row_labels[scored]])
    return predicted, gold


def by_length(dataset):
    """The rows longest first: encoding batches of similar lengths pads least."""
    lengths = np.array([len(ids) for ids in dataset["input_ids"]])
    return dataset.select(np.argsort(-lengths, kind="stable"))


class TrainingClock(TrainerCallback):
    """Wall-clock times of the start and end of the optimizer loop."""

    def __init__(self) -> None:
        self.train_begin: float | None = None
        self.train_end: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.train_end = time.perf_counter()


class LearningCurve(TrainerCallback):
    """Scores the model being trained at chosen optimizer steps: `score(trainer)` -> {task: scores}, from
    inside the training loop (evaluation switches the model to eval mode; the next training step switches it
    back). Its seconds are left out of the row's training time."""

    def __init__(self, steps: list[int], score) -> None:
        self.steps = set(steps)
        self.score = score
        self.trainer: Trainer | None = None  # set once the trainer exists
        self.points: list[dict[str, Any]] = []
        self.seconds = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            start = time.perf_counter()
            self.points.append({"step": state.global_step, "tasks": self.score(self.trainer)})
            self.seconds += time.perf_counter() - start
            print(f"    learning curve, step {state.global_step}: " + curve_text(self.points[-1]), flush=True)


@contextlib.contextmanager
def timed_precompute(passes: list[tuple[str, float, float]]):
    """Time the trainer's frozen-encoder encoding passes: (description, start, seconds) of each ("Encoding
    train", "Encoding <task>"), so the encoding of evaluation sets is not counted as training time."""
    original = trainer_module.precompute_features

    def timed(model, dataset, collator, batch_size=64, description="Encoding"):
        start = time.perf_counter()
        try:
            return original(model, dataset, collator, batch_size, description)
        finally:
            passes.append((description, start, time.perf_counter() - start))

    trainer_module.precompute_features = timed
    try:
        yield passes
    finally:
        trainer_module.precompute_features = original


def planned_task_batches(
    group_sizes: dict[str, int],
    group_tasks: dict[str, list[str]],
    steps: int,
    budget: Budget,
    sampling: str,
    seed: int,
) -> dict[str, int]:
    """Batches each task gets in `steps` optimizer steps, from the sampler the training job builds
    (per_task composition: every batch holds one group's rows)."""
    sampler = MultiTaskBatchSampler(
        group_sizes,
        budget.batch_size,
        composition="per_task",
        sampling=sampling,
        temperature=budget.temperature,
        seed=seed,
    )
    counts: Counter[str] = Counter()
    taken, epoch = 0, 0
    while taken < steps:
        sampler.set_epoch(epoch)
        for batch in sampler:
            group = int(np.searchsorted(sampler.group_starts, batch[0], side="right") - 1)
            counts[sampler.group_names[group]] += 1
            taken += 1
            if taken == steps:
                break
        epoch += 1
    return {task: counts[group] for group, names in group_tasks.items() for task in names}


# ---------------------------------------------------------------------------------------------- multi-task
def run_config(
    ctx: Context, run_dir: Path, tasks: dict[str, dict[str, Any]], steps: int, options: dict[str, Any]
) -> dict[str, Any]:
    """The training config of one row (`multitask_row`): the budget's, with the row's tasks and options."""
    budget = ctx.budget
    return {
        "max_seq_length": budget.max_seq_length,
        "tasks": tasks,
        "composition": "per_task",
        "sampling": "uniform",
        "temperature": budget.temperature,
        "output_dir": str(run_dir),
        "max_steps": steps,
        "per_device_train_batch_size": budget.batch_size,
        "per_device_eval_batch_size": budget.eval_batch_size,
        "learning_rate": budget.learning_rate,
        "head_learning_rate": budget.head_learning_rate,
        "warmup_steps": budget.warmup,
        "weight_decay": budget.weight_decay,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": max(1, steps // 10),
        "seed": ctx.seed,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "report_to": "none",
        "disable_tqdm": True,
        "data_cache_dir": str(ctx.cache_dir),
        **options,
    }


def trained_before(
    ctx: Context, key: str, tasks: dict[str, dict[str, Any]], steps: int, options: dict
) -> Path | None:
    """The folder of row `key` when an earlier run of this seed and budget trained it with the same config
    and kept its model (a row that only needs the model, such as the teachers of a student row); else None."""
    run_dir = ctx.run_root / key
    saved = run_dir / "reference_config.yaml"
    if not (run_dir / "model.safetensors").is_file() or not saved.is_file():
        return None
    wanted = json.loads(json.dumps(run_config(ctx, run_dir, tasks, steps, options)))
    return run_dir if yaml.safe_load(saved.read_text(encoding="utf-8")) == wanted else None


def multitask_row(
    ctx: Context,
    key: str,
    name: str,
    tasks: dict[str, dict[str, Any]],
    steps: int,
    options: dict[str, Any],
    task_batches: dict[str, int] | None = None,
    keep_weights: bool = True,
    curve_steps: list[int] | None = None,
    curve_rows: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and test one multi-task model through the training job (`prepare_run`, `train_and_save`) with a
    generated config; with `curve_steps`, also score it on `curve_rows` (task -> tokenised test rows) at
    those optimizer steps."""
    run_dir = ctx.run_dir(key)
    config = run_config(ctx, run_dir, tasks, steps, options)
    config_path = run_dir / "reference_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    print(f"\n=== {ctx.part} / {name}: run_training {config_path}", flush=True)
    budget = ctx.budget

    clock = TrainingClock()
    encode_passes: list[tuple[str, float, float]] = []
    start = time.perf_counter()
    curve = None
    if curve_steps:

        def score(trainer) -> dict[str, Any]:
            evaluation = trainer.evaluate_tasks(curve_rows, metric_key_prefix="curve")
            return {task: task_scores(m) for task, m in evaluation.per_task.items()}

        curve = LearningCurve(curve_steps, score)
    with timed_precompute(encode_passes):
        run = training_job.prepare_run([str(config_path)], callbacks=[clock])
        if curve is not None:
            curve.trainer = run.trainer
            run.trainer.add_callback(curve)
        results = training_job.train_and_save(run)
    end = time.perf_counter()
    curve_s = curve.seconds if curve else 0.0
    # The frozen-encoder path encodes the validation sets before training (evaluation, not training); the
    # test sets are encoded after training, outside train_s already.
    eval_encoding = sum(
        s
        for description, began, s in encode_passes
        if description != "Encoding train" and began < clock.train_begin
    )
    train_s = clock.train_end - start - eval_encoding - curve_s

    labels = {
        task: spec.labels for task, spec in MultiTaskEncoderConfig.from_pretrained(run_dir).tasks.items()
    }  # in model order, as the task_log_vars
    row = {
        "key": key,
        "name": name,
        "kind": "multi-task",
        "tasks": {task: task_scores(m, labels[task]) for task, m in results["test"].items()},
        "validation": {task: task_scores(m, labels[task]) for task, m in results["validation"].items()},
        "linear_probe": results.get("linear_probe"),
        "train_s": train_s,
        "setup_s": clock.train_begin - start - eval_encoding,  # data, model, frozen-encoder encoding pass
        "train_loop_s": results["train"].get("train_runtime") - curve_s,
        "encode_train_s": sum(s for description, _, s in encode_passes if description == "Encoding train"),
        "eval_s": end - clock.train_end + eval_encoding,  # test sets (their encoding included)
        "optimizer_steps": steps,
        "train_examples": steps * budget.batch_size,
        "train_examples_per_s": steps * budget.batch_size / train_s,
        "task_batches": task_batches,
        "train_loss": results["train"].get("train_loss"),
        "params_to_serve": checkpoint_parameters(run_dir),
        "learned_loss_weights": learned_loss_weights(run_dir, list(labels)),
        "settings": {k: v for k, v in config.items() if k not in ("tasks", "output_dir", "data_cache_dir")},
        "label_counts": results.get("label_counts"),
        # embedding_evaluation sets: Spearman before and after, x 100 as the bench reports it (the run: -1 to 1)
        "embedding": {
            name: {**scores, "before": 100 * scores["before"], "after": 100 * scores["after"]}
            for name, scores in (results.get("embedding") or {}).items()
        }
        or None,
        "model_dir": str(run_dir),
    }
    if curve is not None:
        row["learning_curve"] = curve.points
        row["learning_curve_s"] = curve_s
    if not keep_weights:
        (run_dir / "model.safetensors").unlink()
    print_row(row)
    return row


# ---------------------------------------------------------------------------------------------- single-task
class HeadLearningRateTrainer(Trainer):
    """The plain HF `Trainer`, with the classifier at its own learning rate (the multi-task runs give their
    heads `head_learning_rate`, so both sides train with the same two rates)."""

    def __init__(self, *args: Any, head_learning_rate: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            encoder_prefix = model.base_model_prefix + "."
            decay = set(self.get_decay_parameter_names(model))
            groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
            for name, parameter in model.named_parameters():
                if not parameter.requires_grad:
                    continue
                lr = self.args.learning_rate if name.startswith(encoder_prefix) else self.head_learning_rate
                weight_decay = self.args.weight_decay if name in decay else 0.0
                groups.setdefault((lr, weight_decay), []).append(parameter)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(
                [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                lr=self.args.learning_rate,
                **optimizer_kwargs,
            )
        return self.optimizer


def first_subtoken_labels(dataset, task: str):
    """Word-level tags + word_ids -> one label per word piece: the word's tag on its first piece, -100 on
    later pieces and special tokens (the HF token-classification recipe; the package does the same)."""

    def align(row):
        tags, labels, previous = row[f"labels_{task}"], [], None
        for word in row["word_ids"]:
            labels.append(tags[word] if word >= 0 and word != previous else IGNORE_INDEX)
            previous = word
        return {"labels": labels}

    inputs = [c for c in MODEL_INPUTS if c in dataset.column_names]
    return dataset.map(align, remove_columns=[c for c in dataset.column_names if c not in inputs])


def sentence_labels(dataset, task: str):
    inputs = [c for c in MODEL_INPUTS if c in dataset.column_names]
    return dataset.rename_column(f"labels_{task}", "labels").select_columns([*inputs, "labels"])


def single_task_model(backbone: str, token_level: bool, labels: list[str]):
    model_class = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    return model_class.from_pretrained(
        backbone,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def single_task_scores(trainer: Trainer, rows, labels: list[str], token_level: bool) -> dict[str, Any]:
    """A single-task model's metrics on converted rows, scored as the package scores its tasks."""
    output = trainer.predict(rows)
    predicted = np.asarray(output.predictions).argmax(-1)
    if token_level:
        return entity_metrics(*token_tag_sequences(predicted, np.asarray(output.label_ids), labels))
    return classification_metrics(predicted, output.label_ids, labels)


def single_task_run(
    ctx: Context,
    task: str,
    entry: dict[str, Any],
    steps: int,
    curve_steps: list[int] | None = None,
    curve_rows=None,
) -> dict[str, Any]:
    """One plain HF single-task model: the same rows (the package's loader, same caps and seed), the same
    tokenisation, batch size, length, steps and learning rates as the multi-task runs; with `curve_steps`,
    also scored on `curve_rows` (this task's tokenised test rows) at those optimizer steps."""
    budget = ctx.budget
    run_dir = ctx.run_dir(f"single-{task}")
    print(f"\n=== {ctx.part} / single-task {task}: HF Trainer, {steps} steps", flush=True)
    token_level = entry["type"] == "token_classification"
    start = time.perf_counter()
    data = load_data(ctx, {task: entry})
    labels = data.task_specs[task].labels
    convert = first_subtoken_labels if token_level else sentence_labels
    train = convert(data.train, task)
    set_seed(ctx.seed)  # the classifier's initialisation
    model = single_task_model(ctx.backbone, token_level, labels)
    collator = (DataCollatorForTokenClassification if token_level else DataCollatorWithPadding)(ctx.tokenizer)
    args = TrainingArguments(
        output_dir=str(run_dir),
        max_steps=steps,
        per_device_train_batch_size=budget.batch_size,
        per_device_eval_batch_size=budget.eval_batch_size,
        learning_rate=budget.learning_rate,
        warmup_steps=budget.warmup,
        weight_decay=budget.weight_decay,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, steps // 10),
        seed=ctx.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = HeadLearningRateTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collator,
        processing_class=ctx.tokenizer,
        head_learning_rate=budget.head_learning_rate,
    )
    curve = None
    if curve_steps:
        converted = convert(curve_rows, task)
        curve = LearningCurve(
            curve_steps, lambda t: {task: task_scores(single_task_scores(t, converted, labels, token_level))}
        )
        curve.trainer = trainer
        trainer.add_callback(curve)
    result = trainer.train()
    curve_s = curve.seconds if curve else 0.0
    train_s = time.perf_counter() - start - curve_s

    metrics = single_task_scores(trainer, convert(data.test[task], task), labels, token_level)
    trainer.save_model(str(run_dir))
    eval_s = time.perf_counter() - start - train_s - curve_s
    print(f"    {task}: train {train_s:.0f} s, test " + score_text(metrics), flush=True)
    run = {
        "scores": task_scores(metrics, labels),
        "train_s": train_s,
        "train_loop_s": result.metrics.get("train_runtime") - curve_s,
        "eval_s": eval_s,
        "steps": steps,
        "train_loss": result.metrics.get("train_loss"),
        "params": checkpoint_parameters(run_dir),
        "model_dir": str(run_dir),
    }
    if curve is not None:
        run["learning_curve"] = curve.points
        run["learning_curve_s"] = curve_s
    return run


def single_task_row(
    ctx: Context,
    key: str,
    name: str,
    tasks: dict[str, dict[str, Any]],
    steps: int,
    curve_steps: list[int] | None = None,
    curve_rows: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One single-task model per task, trained one after another; the row sums their cost. With
    `curve_steps`, each model's learning curve on its `curve_rows` is in the row's `per_task`."""
    runs = {
        task: single_task_run(ctx, task, entry, steps, curve_steps, (curve_rows or {}).get(task))
        for task, entry in tasks.items()
    }
    train_s = sum(run["train_s"] for run in runs.values())
    examples = steps * ctx.budget.batch_size * len(tasks)
    row = {
        "key": key,
        "name": name,
        "kind": "single-task",
        "tasks": {task: run["scores"] for task, run in runs.items()},
        "train_s": train_s,
        "train_loop_s": sum(run["train_loop_s"] or 0.0 for run in runs.values()),
        "eval_s": sum(run["eval_s"] for run in runs.values()),
        "optimizer_steps": steps * len(tasks),
        "train_examples": examples,
        "train_examples_per_s": examples / train_s,
        "task_batches": dict.fromkeys(tasks, steps),
        "params_to_serve": sum(run["params"] for run in runs.values()),
        "per_task": {task: {k: v for k, v in run.items() if k != "scores"} for task, run in runs.items()},
        "settings": {
            "model": "AutoModelForTokenClassification / AutoModelForSequenceClassification + Trainer",
            "max_steps_each": steps,
            "per_device_train_batch_size": ctx.budget.batch_size,
            "learning_rate": ctx.budget.learning_rate,
            "head_learning_rate": ctx.budget.head_learning_rate,
            "warmup_steps": ctx.budget.warmup,
            "weight_decay": ctx.budget.weight_decay,
            "max_seq_length": ctx.budget.max_seq_length,
        },
    }
    print_row(row)
    return row


# ---------------------------------------------------------------------------------------------- linear probe
def probe_row(ctx: Context, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Frozen MiniLM + scikit-learn LogisticRegression: sentence tasks on the pooled, L2-normalised
    embedding (what `model.encode` returns: encoder -> mean pooling -> normalise), NER per word on the
    encoder state of its first sub-token. Features are standardised; C is fixed (no tuning on test)."""
    budget = ctx.budget
    print(f"\n=== {ctx.part} / linear probe", flush=True)
    start = time.perf_counter()
    data = load_data(ctx, tasks)
    model = MultiTaskEncoderModel.from_backbone(
        ctx.backbone, tasks=data.task_specs, max_seq_length=budget.max_seq_length
    ).eval()
    collator = MultiTaskCollator(ctx.tokenizer, model.config.tasks)
    train_rows = precompute_features(model, by_length(data.train), collator, budget.inference_batch_size)
    classifiers, train_counts = {}, {}
    for task, spec in model.config.tasks.items():
        features, targets, _ = probe_features(model, train_rows, task, spec.is_token_level)
        classifier = make_pipeline(
            StandardScaler(), LogisticRegression(C=budget.probe_c, max_iter=2000, random_state=ctx.seed)
        )
        classifiers[task] = classifier.fit(features, targets)
        train_counts[task] = len(targets)
    train_s = time.perf_counter() - start

    scores = {}
    for task, spec in model.config.tasks.items():
        rows = precompute_features(model, by_length(data.test[task]), collator, budget.inference_batch_size)
        features, targets, lengths = probe_features(model, rows, task, spec.is_token_level)
        predicted = classifiers[task].predict(features)
        if spec.is_token_level:
            bounds = np.cumsum([0, *lengths])
            predicted_tags = [[spec.labels[i] for i in predicted[a:b]] for a, b in itertools.pairwise(bounds)]
            gold_tags = [[spec.labels[i] for i in targets[a:b]] for a, b in itertools.pairwise(bounds)]
            metrics = entity_metrics(predicted_tags, gold_tags)
        else:
            metrics = classification_metrics(predicted, targets, spec.labels)
        scores[task] = task_scores(metrics, spec.labels)
    eval_s = time.perf_counter() - start - train_s

    head_parameters = sum(
        c[-1].coef_.size + c[-1].intercept_.size + c[0].mean_.size + c[0].scale_.size
        for c in classifiers.values()
    )
    encoder_parameters = sum(p.numel() for p in model.encoder.parameters())
    examples = len(data.train)
    row = {
        "key": "probe",
        "name": "linear probe (frozen encoder + LogisticRegression)",
        "kind": "probe",
        "tasks": scores,
        "train_s": train_s,
        "eval_s": eval_s,
        "optimizer_steps": None,
        "train_examples": examples,
        "train_examples_per_s": examples / train_s,
        "probe_train_targets": train_counts,  # sentences per sentence task, words for NER
        "params_to_serve": encoder_parameters + head_parameters,
        "settings": {
            "features": "sentence tasks: model.encode embeddings (mean pooled, L2-normalised); ner: "
            "first-sub-token encoder states",
            "classifier": f"StandardScaler + LogisticRegression(C={budget.probe_c}, lbfgs)",
        },
    }
    print_row(row)
    return row


def probe_features(
    model: MultiTaskEncoderModel, rows, task: str, token_level: bool
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Precomputed rows -> (features, targets, words per row) of one task, rows without its labels skipped.
    Sentence features: the embedding `model.encode` gives (`project` normalises the pooled vector)."""
    key = f"labels_{task}"
    if token_level:
        features, targets, lengths = [], [], []
        for row in rows:
            if "token_states" not in row:
                continue
            scored = row[key] != IGNORE_INDEX
            if not scored.any():
                continue
            features.append(row["token_states"][scored].float().numpy())
            targets.append(row[key][scored].numpy())
            lengths.append(int(scored.sum()))
        return np.concatenate(features), np.concatenate(targets), lengths
    labelled = [row for row in rows if int(row[key]) != IGNORE_INDEX]
    with torch.inference_mode():
        embeddings = model.project(torch.stack([row["pooled_embeddings"] for row in labelled]))
    targets = np.array([int(row[key]) for row in labelled])
    return embeddings.numpy(), targets, []


# ---------------------------------------------------------------------------------------------- serving
@torch.inference_mode()
def sorted_loop(model, tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[np.ndarray]:
    """A careful hand-written single-task serving loop: tokenise once, length-sorted batches, forward,
    argmax (per token for token models; no entity grouping)."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
    predictions: list[np.ndarray] = [np.empty(0)] * len(texts)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = tokenizer.pad([{k: encoded[k][i] for k in encoded} for i in indices], return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).numpy()
        for index, value in zip(indices, predicted):
            predictions[index] = value
    return predictions


def serving_benchmark(
    ctx: Context,
    multitask_dir: Path,
    single_task_dirs: dict[str, Path | None],
    token_tasks: set[str],
    texts: list[str],
    text_source: str,
) -> dict[str, Any]:
    """Sentences/s for serving every task on `texts`: one multi-task `predict` (one encoder pass, all
    heads, entities decoded) vs the single-task models one after another, as HF pipelines and as a
    length-sorted loop. Interleaved, median of `inference_repeats` runs. A single-task folder of None
    means "not trained in this run": the model is built from the backbone with an untrained classifier
    (the cost of a forward pass does not depend on the weights)."""
    budget = ctx.budget
    batch_size, max_length = budget.inference_batch_size, budget.max_seq_length
    print(f"\n=== {ctx.part} / serving speed on {len(texts)} texts", flush=True)
    multitask = MultiTaskEncoderModel.from_pretrained(str(multitask_dir)).eval()
    singles, weights = {}, {}
    for task, folder in single_task_dirs.items():
        token_level = task in token_tasks
        if folder is not None:
            model_class = (
                AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
            )
            model = model_class.from_pretrained(str(folder)).eval()
            weights[task] = f"trained ({folder.relative_to(ctx.run_root.parent)})"
        else:
            model = single_task_model(ctx.backbone, token_level, multitask.config.tasks[task].labels).eval()
            weights[task] = "untrained classifier on the backbone (cost only)"
        tokenizer = AutoTokenizer.from_pretrained(ctx.backbone)
        tokenizer.model_max_length = max_length  # the pipelines truncate to the same length
        singles[task] = (model, tokenizer, token_level)
    pipelines = {
        task: pipeline(
            "token-classification" if token_level else "text-classification",
            model=model,
            tokenizer=tokenizer,
            device=-1,
            **({"aggregation_strategy": "first"} if token_level else {}),
        )
        for task, (model, tokenizer, token_level) in singles.items()
    }

    def run_multitask(batch: list[str]) -> None:
        multitask.predict(batch, batch_size=batch_size)

    def run_pipelines(batch: list[str]) -> None:
        for task, pipe in pipelines.items():
            options = {} if singles[task][2] else {"truncation": True}
            list(pipe(batch, batch_size=batch_size, **options))

    def run_loops(batch: list[str]) -> None:
        for model, tokenizer, _ in singles.values():
            sorted_loop(model, tokenizer, batch, batch_size, max_length)

    methods = {
        "multitask_predict": run_multitask,
        "single_pipelines": run_pipelines,
        "single_sorted_loops": run_loops,
    }
    names = {
        "multitask_predict": f"multi-task model.predict ({len(singles)} heads, one encoder pass)",
        "single_pipelines": f"{len(singles)} single-task HF pipelines, one after another",
        "single_sorted_loops": f"{len(singles)} single-task models, length-sorted loop (argmax only)",
    }
    for method in methods.values():  # warm-up: allocator, kernels, lazy imports
        method(texts[:batch_size])
    timed = {key: functools.partial(method, texts) for key, method in methods.items()}
    seconds = median_seconds(timed, budget.inference_repeats)
    single_params = sum(sum(p.numel() for p in model.parameters()) for model, _, _ in singles.values())
    multitask_params = sum(p.numel() for p in multitask.parameters())
    rows = []
    for key, value in seconds.items():
        is_multitask = key == "multitask_predict"
        rows.append(
            {
                "key": key,
                "name": names[key],
                "seconds": value,
                "sentences_per_s": len(texts) / value,
                "models": 1 if is_multitask else len(singles),
                "params": multitask_params if is_multitask else single_params,
            }
        )
    for row in rows:
        print(f"    {row['name']}: {row['sentences_per_s']:.1f} sentences/s", flush=True)
    return {
        "texts": len(texts),
        "text_source": text_source,
        "tasks": list(singles),
        "batch_size": batch_size,
        "max_seq_length": max_length,
        "repeats": budget.inference_repeats,
        "single_task_weights": weights,
        "rows": rows,
    }


def serving_texts(data, tasks: list[str], count: int, seed: int) -> list[str]:
    """`count` test texts, an equal share from each task's test rows (seeded sample, file order kept)."""
    share = -(-count // len(tasks))
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for task in tasks:
        rows = data.test[task]["text"]
        keep = np.sort(rng.choice(len(rows), size=min(share, len(rows)), replace=False))
        texts.extend(rows[i] for i in keep)
    return texts[:count]


# ---------------------------------------------------------------------------------------------- parts
def part_baselines(ctx: Context) -> dict[str, Any]:
    budget = ctx.budget
    tasks = reference_tasks(
        ctx.data, dict.fromkeys(TASKS3, budget.max_train_examples), budget.max_test_examples
    )
    data = warm_cache(ctx, tasks)
    rows = [
        single_task_row(
            ctx, "single", "3 single-task models (HF AutoModelFor* + Trainer)", tasks, budget.steps_per_task
        ),
        probe_row(ctx, tasks),
    ]
    return {"rows": rows, "data": data_summary(data, tasks), "inference": None}


TASKS3 = ("topic", "sentiment", "ner")


def part_multitask(ctx: Context) -> dict[str, Any]:
    budget = ctx.budget
    tasks = reference_tasks(
        ctx.data, dict.fromkeys(TASKS3, budget.max_train_examples), budget.max_test_examples
    )
    data = warm_cache(ctx, tasks)
    steps = budget.steps_per_task * len(tasks)
    batches = planned_task_batches(data.group_sizes, data.group_tasks, steps, budget, "uniform", ctx.seed)
    variants = [
        ("multitask", "multi-task (one encoder, 3 heads)", {}),
        (
            "multitask-frozen",
            "multi-task, encoder frozen (heads only, precomputed embeddings)",
            {"freeze_encoder": True, "precompute_embeddings": True},
        ),
        ("multitask-bottom3", "multi-task, bottom 3 of 6 layers frozen", {"freeze_bottom_layers": 3}),
    ]
    rows = [
        multitask_row(ctx, key, name, tasks, steps, options, batches, keep_weights=key == "multitask")
        for key, name, options in variants
    ]

    baselines = ctx.run_root.parent / f"baselines-seed{ctx.seed}"
    single_dirs = {
        task: (
            baselines / f"single-{task}"
            if (baselines / f"single-{task}" / "model.safetensors").is_file()
            else None
        )
        for task in tasks
    }
    texts = serving_texts(data, list(tasks), budget.inference_texts, ctx.seed)
    inference = serving_benchmark(
        ctx,
        Path(rows[0]["model_dir"]),
        single_dirs,
        {"ner"},
        texts,
        "equal shares of the AG News, SST-5 and CoNLL-2003 test rows (CoNLL tokens joined by spaces)",
    )
    return {"rows": rows, "data": data_summary(data, tasks), "inference": inference}


def part_ablations(ctx: Context) -> dict[str, Any]:
    budget = ctx.budget
    pool = budget.ablation_pool
    sentiment_rows = count_rows(str(ctx.data / "sst5" / "train.jsonl"))
    sentiment_cap = max(1, round(0.1 * (min(pool, sentiment_rows) if pool else sentiment_rows)))
    caps = {"topic": pool, "sentiment": sentiment_cap, "ner": pool}
    tasks = reference_tasks(ctx.data, caps, budget.max_test_examples)
    data = warm_cache(ctx, tasks, single_tasks=False)
    steps = budget.ablation_steps_per_task * len(tasks)
    variants = [
        ("proportional-static", "proportional sampling, static loss weights", "proportional", "static"),
        ("uniform-static", "uniform sampling, static loss weights", "uniform", "static"),
        (
            "temperature-static",
            f"temperature sampling (T={budget.temperature:g}), static loss weights",
            "temperature",
            "static",
        ),
        ("uniform-uncertainty", "uniform sampling, uncertainty loss weights", "uniform", "uncertainty"),
    ]
    rows = []
    for key, name, sampling, weighting in variants:
        batches = planned_task_batches(data.group_sizes, data.group_tasks, steps, budget, sampling, ctx.seed)
        options = {"sampling": sampling, "loss_weighting": weighting}
        rows.append(multitask_row(ctx, key, name, tasks, steps, options, batches, keep_weights=False))
    summary = data_summary(data, tasks)
    summary["imbalance"] = f"sentiment capped at 10% of its training rows ({sentiment_cap})"
    return {"rows": rows, "data": summary, "inference": None}


def part_multidomain(ctx: Context) -> dict[str, Any]:
    budget = ctx.budget
    tasks = multidomain_tasks(ctx.data, budget.multidomain_max_train, budget.max_test_examples)
    data = warm_cache(ctx, tasks)
    steps = budget.multidomain_steps
    batches = dict.fromkeys(tasks, steps)  # one group: every batch trains both heads
    rows = [
        multitask_row(
            ctx,
            "multitask",
            "multi-task (domain + sentiment heads, one encoder pass)",
            tasks,
            steps,
            {},
            batches,
        ),
        single_task_row(
            ctx,
            "single",
            "2 single-task models (HF AutoModelForSequenceClassification + Trainer)",
            tasks,
            steps,
        ),
    ]
    texts = serving_texts(data, ["domain"], budget.multidomain_inference_texts, ctx.seed)
    inference = serving_benchmark(
        ctx,
        Path(rows[0]["model_dir"]),
        {task: Path(rows[1]["per_task"][task]["model_dir"]) for task in tasks},
        set(),
        texts,
        "multi_domain_sentiment test reviews",
    )
    return {"rows": rows, "data": data_summary(data, tasks), "inference": inference}


def part_pairs(ctx: Context) -> dict[str, Any]:
    import reference_pairs  # it builds on this module's rows

    return reference_pairs.part_pairs(ctx)


def part_embedding(ctx: Context) -> dict[str, Any]:
    import reference_pairs

    return reference_pairs.part_embedding(ctx)


def part_longer(ctx: Context) -> dict[str, Any]:
    import reference_longer  # it builds on this module's rows

    return reference_longer.part_longer(ctx)


def part_no_compromise(ctx: Context) -> dict[str, Any]:
    import reference_no_compromise  # it builds on this module's rows

    return reference_no_compromise.part_no_compromise(ctx)


PART_FUNCTIONS = {
    "baselines": part_baselines,
    "multitask": part_multitask,
    "ablations": part_ablations,
    "multidomain": part_multidomain,
    "pairs": part_pairs,
    "embedding": part_embedding,
    "longer": part_longer,
    "no_compromise": part_no_compromise,
}


def data_summary(data, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "group_sizes": dict(data.group_sizes),
        "test_rows": {task: len(dataset) for task, dataset in data.test.items()},
        "train_files": {task: entry["train"] for task, entry in tasks.items()},
        "test_files": {task: entry["test"] for task, entry in tasks.items()},
        "max_train_examples": {task: entry.get("max_train_examples") for task, entry in tasks.items()},
        "max_eval_examples": {task: entry.get("max_eval_examples") for task, entry in tasks.items()},
    }


def run_part(
    part: str,
    mode: str,
    seed: int,
    data: Path,
    output_dir: Path,
    options: dict[str, Any] | None = None,
    save_partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one part; returns its results (rows, data summary, serving speed, budget). `options`: the part's
    own (no_compromise: rows, factor); `save_partial(result)`: called by parts that save after every row."""
    check_data(data, part)
    backbone = default_backbone()
    budget = BUDGETS[mode]
    ctx = Context(
        part=part,
        mode=mode,
        seed=seed,
        budget=budget,
        data=data,
        run_root=output_dir / mode / f"{part}-seed{seed}",
        cache_dir=output_dir / "cache",
        backbone=backbone,
        tokenizer=AutoTokenizer.from_pretrained(backbone),
        options=dict(options or {}),
        save_partial=None,
    )
    if save_partial is not None:

        def save(
            result: dict[str, Any],
        ) -> None:  # the budget of the rows so far, as a finished part records it
            save_partial({"budget": asdict(ctx.budget), **result, "backbone": backbone})

        ctx.save_partial = save
    ctx.run_root.mkdir(parents=True, exist_ok=True)
    result = PART_FUNCTIONS[part](ctx)
    result.setdefault("budget", asdict(budget))  # a part that scales the budget records its own
    result["backbone"] = backbone
    return result


# ---------------------------------------------------------------------------------------------- printing
def score_text(metrics: dict[str, Any]) -> str:
    if "spearman" in metrics:
        return f"Spearman {metrics['spearman']:.4f}"
    if "macro_f1" in metrics:
        return f"accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f}"
    return f"entity F1 {metrics['f1']:.4f}"


def curve_text(point: dict[str, Any]) -> str:
    return "; ".join(f"{task} {score_text(m)}" for task, m in point["tasks"].items())


def print_row(row: dict[str, Any]) -> None:
    scores = "; ".join(f"{task} {score_text(m)}" for task, m in row["tasks"].items())
    if row.get("embedding"):
        scores += "; embedding " + ", ".join(
            f"{name} {e['before']:.2f} -> {e['after']:.2f}" for name, e in row["embedding"].items()
        )
    print(
        f"--> {row['name']}: {scores}; train {row['train_s']:.1f} s "
        f"({row['train_examples_per_s']:.1f} examples/s), {row['params_to_serve'] / 1e6:.1f} M parameters to serve",
        flush=True,
    )
