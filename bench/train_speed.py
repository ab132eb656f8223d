"""Training throughput: `MultiTaskTrainer` against a plain single-task Trainer, and the frozen-encoder fast
path against a frozen encoder that still runs every step.

(a) `MultiTaskTrainer` + `MultiTaskEncoderModel` with one head (AG News topic) and with two heads on the same
    rows (a second head reading the same labels: its cost is what is measured, not its task);
(b) the baseline a user would write: `AutoModelForSequenceClassification` + `Trainer` + `DataCollatorWithPadding`
    on the same packaged backbone (`multitask_encoder.backbone.default_backbone()`);
    same tokenised rows, max_seq_length, batch size, optimizer steps (one epoch: every run sees every row once,
    only the order differs). Target: (a) / (b) >= 0.9x.
(c) `--freeze_encoder` training, one epoch over the same rows: the encoder running (forward only) every step,
    against `--precompute_embeddings` (encode once, then train the heads on the stored vectors). The precompute
    encodes through `--precompute-mode` (default: the fastest mode within the serving guard that training
    picks, `precompute_mode`; its set-up time included), and in the exact mode for comparison. Targets: >= 20x
    per epoch with the precompute excluded, >= 3x for one epoch with it included.

Every method runs in one process, alternating and rotated (so drift hits all alike), after one untimed warm-up
each; the median of `--repeats` runs is reported. A run is a fresh model and Trainer; its time is the wall-clock
of the training epoch (on_epoch_begin to on_epoch_end: the Trainer's one-off set-up, the same for every method,
is left out), and of `precompute_features` for the fast path's encoding. Run r of every method uses seed r, so
the repeats see different batch orders and every method sees the same seeds; as the order changes the padding,
the padded tokens each method ran through are printed beside its time (and tokens/s).

    python bench/train_speed.py              # ~8 min on 2 cores (measured with 1 thread on a shared machine)
    python bench/train_speed.py --quick      # ~3 min
    python bench/train_speed.py --threads 1  # on a machine other jobs keep busy
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets
import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as transformers_logging

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.backbone import DEFAULT_BACKBONE_HUB_ID, default_backbone
from multitask_encoder.collator import MultiTaskCollator
from multitask_encoder.data import load_multitask_data
from multitask_encoder.optimization import apply_freezing
from multitask_encoder.precompute import PrecomputedCollator, precompute_features, precompute_mode
from multitask_encoder.trainer import MultiTaskTrainer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
AMORTISED_EPOCHS = 3  # the precompute-included ratio is also shown spread over this many epochs
PLAIN = "plain Trainer + AutoModelForSequenceClassification"
SLOW = "frozen encoder, run every step"
PRECOMPUTE = "precompute (encode every row once)"  # in the --precompute-mode mode, its set-up included
PRECOMPUTE_EXACT = "precompute in the exact mode (eager fp32, as before the serving modes)"
FAST = "fast path: heads on precomputed vectors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding ag_news/train.jsonl")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (= one epoch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per method (default 5, --quick 3); median reported",
    )
    parser.add_argument(
        "--precompute-batch-size",
        type=int,
        default=64,
        help="encoding batch of the fast path (eval batch size)",
    )
    parser.add_argument(
        "--precompute-mode",
        default="fastest",
        help="serving mode of the fast path's encoding: 'fastest' (what training picks, "
        "multitask_encoder.precompute.precompute_mode) or any optimize_for_inference mode",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's, i.e. OMP_NUM_THREADS or the cores); on a machine "
        "shared with other jobs, 1 avoids the stalls of oversubscribed threads",
    )
    parser.add_argument("--backbone", default=None, help="encoder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller steps: about 3 minutes")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.max_seq_length = 6, 8, 64
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (a median of fewer runs is not worth printing)")
    return args


def training_arguments(output_dir: str, batch_size: int, seed: int, max_steps: int = -1) -> TrainingArguments:
    """The same options for every method: one epoch (or max_steps), no logging, saving or evaluation."""
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        num_train_epochs=1,
        max_steps=max_steps,
        learning_rate=5e-5,
        use_cpu=True,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )


def load_data(args: argparse.Namespace, tokenizer, num_rows: int, cache_dir: str):
    """A seeded sample of `num_rows` AG News train rows, tokenised by the package, for one and for two heads."""
    path = args.data / "ag_news" / "train.jsonl"
    if not path.is_file():
        sys.exit(f"{path} not found: pass --data pointing at the shared benchmark data folder.")
    topic = {"type": "sequence_classification", "train": str(path), "max_train_examples": num_rows}
    one_head = {"topic": topic}
    two_heads = {"topic": topic, "topic_again": {**topic, "label_column": "topic"}}
    load = {"tokenizer": tokenizer, "max_seq_length": args.max_seq_length, "base_dir": str(REPO)}
    one = load_multitask_data(one_head, seed=0, cache_dir=cache_dir, **load)
    two = load_multitask_data(two_heads, seed=0, cache_dir=cache_dir, **load)
    assert list(two.group_sizes.values()) == [num_rows], two.group_sizes  # both heads label every row
    assert one.train["input_ids"] == two.train["input_ids"]
    return one, two


class Run(NamedTuple):
    seconds: float  # wall-clock of the training epoch (or of the precompute)
    padded_tokens: int  # batch x padded length, summed over the epoch's batches (0: no token input)


class EpochTimer(TrainerCallback):
    """Wall-clock seconds of the (one) training epoch."""

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


class CountingCollator:
    """A collator that also counts the padded tokens it hands out: batch order changes the padding, so the
    tokens each method really ran through are reported next to its time."""

    def __init__(self, collator: Callable) -> None:
        self.collator = collator
        self.padded_tokens = 0

    def __call__(self, rows):
        batch = self.collator(rows)
        if "input_ids" in batch:
            self.padded_tokens += batch["input_ids"].numel()
        return batch


def train_one_epoch(trainer: Trainer) -> Run:
    timer = EpochTimer()
    trainer.add_callback(timer)
    trainer.remove_callback(PrinterCallback)  # keep stdout for the table
    trainer.train()
    return Run(timer.seconds, trainer.data_collator.padded_tokens)


class Bench:
    """Builds a fresh model and Trainer for each run. `seed` picks the batch order: the repeats of a method
    differ, and every method sees the same seeds."""

    def __init__(self, args: argparse.Namespace, backbone: str, tokenizer, one, two, output_dir: str) -> None:
        self.args, self.backbone, self.tokenizer, self.output_dir = args, backbone, tokenizer, output_dir
        self.data = {1: one, 2: two}
        inputs = [c for c in one.train.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
        self.plain_dataset = one.train.select_columns(inputs).add_column("labels", one.train["labels_topic"])
        self.num_labels = len(one.task_specs["topic"].labels)
        self.features = None

    def model(self, heads: int, freeze_encoder: bool = False) -> MultiTaskEncoderModel:
        set_seed(0)  # the same initial heads every run
        model = MultiTaskEncoderModel.from_backbone(
            self.backbone, tasks=self.data[heads].task_specs, max_seq_length=self.args.max_seq_length
        )
        apply_freezing(model, freeze_encoder=freeze_encoder)
        return model

    def multitask_trainer(self, heads: int, model, train_dataset, collator, seed: int, max_steps: int):
        return MultiTaskTrainer(
            model=model,
            args=training_arguments(self.output_dir, self.args.batch_size, seed, max_steps),
            train_dataset=train_dataset,
            data_collator=CountingCollator(collator),
            group_sizes=self.data[heads].group_sizes,  # one group: every row carries every head's label
        )

    def run_plain(self, seed: int = 0, max_steps: int = -1) -> Run:
        set_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(self.backbone, num_labels=self.num_labels)
        trainer = Trainer(
            model=model,
            args=training_arguments(self.output_dir, self.args.batch_size, seed, max_steps),
            train_dataset=self.plain_dataset,
            data_collator=CountingCollator(DataCollatorWithPadding(self.tokenizer)),
        )
        return train_one_epoch(trainer)

    def run_multitask(
        self, heads: int, seed: int = 0, max_steps: int = -1, freeze_encoder: bool = False
    ) -> Run:
        model = self.model(heads, freeze_encoder)
        collator = MultiTaskCollator(self.tokenizer, model.config.tasks)
        trainer = self.multitask_trainer(heads, model, self.data[heads].train, collator, seed, max_steps)
        return train_one_epoch(trainer)

    def run_precompute(self, seed: int = 0, mode: str | None = None) -> Run:
        """The fast path's encoding in `mode` (default: --precompute-mode), the mode's set-up (an export for the
        runtime modes) included in the time, as training pays it."""
        model = self.model(1, freeze_encoder=True)
        collator = CountingCollator(MultiTaskCollator(self.tokenizer, model.config.tasks))
        batch_size = self.args.precompute_batch_size
        start = time.perf_counter()
        mode = mode or self.precompute_mode(model)
        model.optimize_for_inference(mode)
        self.features = precompute_features(model, self.data[1].train, collator, batch_size, "Encoding")
        return Run(time.perf_counter() - start, collator.padded_tokens)

    def precompute_mode(self, model: MultiTaskEncoderModel) -> str:
        mode = self.args.precompute_mode
        return precompute_mode(model, len(self.data[1].train)) if mode == "fastest" else mode

    def run_frozen_fast(self, seed: int = 0, max_steps: int = -1) -> Run:
        """An epoch of head training on the stored vectors (the precompute is timed separately)."""
        model = self.model(1, freeze_encoder=True)
        collator = PrecomputedCollator(model)
        return train_one_epoch(self.multitask_trainer(1, model, self.features, collator, seed, max_steps))


def median_runs(methods: dict[str, Callable[[int], Run]], repeats: int) -> dict[str, Run]:
    """Run every method `repeats` times, interleaved and rotated (A B C, B C A, ...), repeat r with seed r;
    per method the median seconds and the mean padded tokens."""
    names = list(methods)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            run = methods[name](repeat)
            runs[name].append(run)
            print(f"  run {repeat + 1}/{repeats}: {name}: {run.seconds:.2f} s", file=sys.stderr, flush=True)
    return {
        name: Run(
            statistics.median(r.seconds for r in rs), round(statistics.mean(r.padded_tokens for r in rs))
        )
        for name, rs in runs.items()
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()  # "weights newly initialised" etc. are expected here
    datasets.disable_progress_bars()
    backbone = args.backbone or default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    num_rows = args.steps * args.batch_size

    with tempfile.TemporaryDirectory() as scratch:
        one, two = load_data(args, tokenizer, num_rows, os.path.join(scratch, "cache"))
        bench = Bench(args, backbone, tokenizer, one, two, os.path.join(scratch, "out"))

        # Warm-up (allocator, kernels, lazy imports), untimed; the precompute also fills bench.features.
        bench.run_plain(max_steps=2)
        bench.run_multitask(1, max_steps=2)
        bench.run_multitask(1, max_steps=2, freeze_encoder=True)
        bench.run_precompute(mode="exact")
        bench.run_precompute()  # last: bench.features are the ones --precompute-mode computes
        bench.run_frozen_fast(max_steps=2)

        training = median_runs(
            {
                PLAIN: bench.run_plain,
                "MultiTaskTrainer, 1 head": lambda seed: bench.run_multitask(1, seed),
                "MultiTaskTrainer, 2 heads": lambda seed: bench.run_multitask(2, seed),
            },
            args.repeats,
        )
        frozen = median_runs(
            {
                SLOW: lambda seed: bench.run_multitask(1, seed, freeze_encoder=True),
                PRECOMPUTE_EXACT: lambda seed: bench.run_precompute(seed, mode="exact"),
                PRECOMPUTE: bench.run_precompute,
                FAST: bench.run_frozen_fast,
            },
            args.repeats,
        )

    lengths = [len(ids) for ids in one.train["input_ids"]]
    print(
        f"\nAG News train, {num_rows} texts (mean {np.mean(lengths):.1f} tokens, max {max(lengths)} after "
        f"truncation to {args.max_seq_length}), batch {args.batch_size}, {args.steps} optimizer steps = 1 epoch, "
        f"backbone {args.backbone or DEFAULT_BACKBONE_HUB_ID + ' (packaged copy)'}, {torch.get_num_threads()} "
        f"thread(s), torch {torch.__version__}. Median of {args.repeats} alternating runs (run r of every "
        "method with seed r) of the training epoch's wall-clock; padded tokens: mean per epoch.\n"
    )
    plain = training[PLAIN]
    print(
        "| (a)/(b) training, one epoch | median s | examples/s | vs plain | padded tokens | tokens/s | vs plain |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, run in training.items():
        speed, tokens_speed = num_rows / run.seconds, run.padded_tokens / run.seconds
        print(
            f"| {name} | {run.seconds:.2f} | {speed:.1f} | {plain.seconds / run.seconds:.2f}x | "
            f"{run.padded_tokens} | {tokens_speed:.0f} | {tokens_speed / (plain.padded_tokens / plain.seconds):.2f}x |"
        )
    for heads in ("1 head", "2 heads"):
        ratio = plain.seconds / training[f"MultiTaskTrainer, {heads}"].seconds
        print(f"multi-task ({heads}) / plain, examples/s: {ratio:.3f}x (target >= 0.9x)")

    slow, precompute, fast = (frozen[name].seconds for name in (SLOW, PRECOMPUTE, FAST))
    mode = bench.precompute_mode(bench.model(1, freeze_encoder=True))
    print(f"\nprecompute mode: {mode} (--precompute-mode {args.precompute_mode}; its set-up is in its time)")
    print("| (c) frozen encoder, one epoch | median s | examples/s | padded tokens |")
    print("|---|---:|---:|---:|")
    for name, run in frozen.items():
        print(f"| {name} | {run.seconds:.3f} | {num_rows / run.seconds:.0f} | {run.padded_tokens or '-'} |")
    print(f"fast path per epoch, precompute EXCLUDED: {slow / fast:.1f}x faster (target >= 20x)")
    print(
        f"fast path, first epoch, precompute INCLUDED: {slow / (precompute + fast):.2f}x faster (target >= 3x; "
        f"with the exact-mode precompute: {slow / (frozen[PRECOMPUTE_EXACT].seconds + fast):.2f}x)"
    )
    amortised = AMORTISED_EPOCHS * slow / (precompute + AMORTISED_EPOCHS * fast)
    print(
        f"fast path over {AMORTISED_EPOCHS} epochs, precompute INCLUDED once: {amortised:.2f}x faster "
        "(derived from the medians above)"
    )


if __name__ == "__main__":
    main()
