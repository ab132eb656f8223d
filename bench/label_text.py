"""label_text_classification against a linear head, in domain and zero-shot.

    python bench/label_text.py --seed 0            # one seed per run; writes bench/results/label_text-seed0.json
    python bench/label_text.py report              # the markdown table over every seed's file, written into
                                                   # docs/benchmarks.md between its label-text markers

Rows (one encoder each, the packaged all-MiniLM-L6-v2 to start from):
    original     the packaged encoder untrained: zero-shot cosine between a text's embedding and each label
                 name's, on AG News test (its 4 labels) and BBC News test (its 5 labels)
    linear       AG News `topic` as a sequence_classification task (a linear head on the embedding)
    label_text   AG News `topic` as a label_text_classification task (cosine to the label names' embeddings,
                 softmax over the labels; no head), same steps, batch and encoder learning rate
For the trained rows: AG News test accuracy (the training job's test metrics) and zero-shot accuracy on BBC
News test, whose labels no row trains on (`predict(texts, labels={"topic": BBC labels})` for label_text; the
same cosine to label names, computed from `encode`, for the others).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
DOCS_PAGE = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- label-text:begin -->", "<!-- label-text:end -->"
STEPS = 200  # 2x the reference budget's 100 steps per task (docs/benchmarks.md), batch 32
BATCH = 32
LEARNING_RATE = 1e-4  # the encoder's, as in the reference budget
HEAD_LEARNING_RATE = 1e-3
MAX_SEQ_LENGTH = 128


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def zero_shot_accuracy(model, rows: list[dict[str, Any]], labels: list[str]) -> float:
    """Accuracy of the label whose name's embedding is the nearest (cosine) to the text's."""
    texts = [row["text"] for row in rows]
    gold = np.array([labels.index(row["topic"]) for row in rows])
    embeddings = model.encode(texts, batch_size=64, normalize=True)
    label_embeddings = model.encode(labels, normalize=True)
    return float((np.argmax(embeddings @ label_embeddings.T, axis=1) == gold).mean())


def predicted_accuracy(model, rows: list[dict[str, Any]], labels: list[str]) -> float:
    """Accuracy of `predict` with the task's labels replaced by `labels` (label_text_classification)."""
    predictions = model.predict([row["text"] for row in rows], tasks="topic", labels={"topic": labels})
    return float(np.mean([p["topic"]["label"] == row["topic"] for p, row in zip(predictions, rows)]))


def train(
    kind: str, data: Path, output_dir: Path, seed: int, steps: int, test_cap: int | None
) -> tuple[Path, dict[str, Any], float]:
    from multitask_encoder.train import run_training

    config = {
        "max_seq_length": MAX_SEQ_LENGTH,
        "tasks": {
            "topic": {
                "type": kind,
                "train": str(data / "ag_news" / "train.jsonl"),
                "test": str(data / "ag_news" / "test.jsonl"),
                "text_column": "text",
                "label_column": "topic",
                "max_train_examples": steps * BATCH,
                **({"max_eval_examples": test_cap} if test_cap else {}),
            }
        },
        "output_dir": str(output_dir),
        "max_steps": steps,
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": 64,
        "learning_rate": LEARNING_RATE,
        "head_learning_rate": HEAD_LEARNING_RATE,
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 50,
        "seed": seed,
        "report_to": "none",
        "overwrite_output_dir": True,
        "disable_tqdm": True,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir.parent / f"{output_dir.name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    start = time.perf_counter()
    results = run_training([str(config_path), "--data_cache_dir", str(output_dir.parent / "cache")])
    return output_dir, results, time.perf_counter() - start


def run(args: argparse.Namespace) -> None:
    import torch

    from multitask_encoder import MultiTaskEncoderModel

    torch.set_num_threads(args.threads)
    ag_labels = ["World", "Sports", "Business", "Sci/Tech"]
    bbc_labels = ["business", "entertainment", "politics", "sport", "tech"]
    ag_test = read_rows(args.data / "ag_news" / "test.jsonl")[: args.test_cap]
    bbc_test = read_rows(args.data / "bbc_news" / "test.jsonl")[: args.test_cap]
    rows: dict[str, Any] = {}
    results_path = args.results_dir / f"label_text-seed{args.seed}.json"

    def save() -> None:
        record = {
            "command": f"python bench/label_text.py --seed {args.seed} --steps {args.steps}",
            "cpu": cpu_name(),
            "threads": args.threads,
            "seed": args.seed,
            "budget": {"steps": args.steps, "batch": BATCH, "learning_rate": LEARNING_RATE},
            "test_rows": {"ag_news": len(ag_test), "bbc_news": len(bbc_test)},
            "rows": rows,
        }
        args.results_dir.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    original = MultiTaskEncoderModel.from_backbone(
        None, tasks={"topic": {"type": "label_text_classification", "labels": ag_labels}}
    ).eval()
    rows["original"] = {
        "ag_news": zero_shot_accuracy(original, ag_test, ag_labels),
        "bbc_news_zero_shot": zero_shot_accuracy(original, bbc_test, bbc_labels),
        # The same zero-shot through the task's own predict path (must agree with the cosine above).
        "bbc_news_zero_shot_predict": predicted_accuracy(original, bbc_test, bbc_labels),
    }
    print("original", rows["original"], flush=True)
    save()
    for key, kind in (("linear", "sequence_classification"), ("label_text", "label_text_classification")):
        folder, results, seconds = train(
            kind, args.data, args.output_dir / f"seed{args.seed}" / key, args.seed, args.steps, args.test_cap
        )
        model = MultiTaskEncoderModel.from_pretrained(str(folder)).eval()
        row = {
            "ag_news": results["test"]["topic"]["accuracy"],
            "ag_news_macro_f1": results["test"]["topic"]["macro_f1"],
            "bbc_news_zero_shot": zero_shot_accuracy(model, bbc_test, bbc_labels),
            "train_seconds": round(seconds, 1),
        }
        if kind == "label_text_classification":
            row["bbc_news_zero_shot_predict"] = predicted_accuracy(model, bbc_test, bbc_labels)
        rows[key] = row
        print(key, row, flush=True)
        save()
    print(f"wrote {results_path}")


ROW_NAMES = {
    "original": "packaged encoder, untrained (cosine to label names)",
    "linear": "linear head (sequence_classification)",
    "label_text": "label_text_classification (cosine to label names)",
}


def report() -> str:
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("label_text-seed*.json"))]
    if not records:
        return "No results yet: python bench/label_text.py --seed 0"
    seeds = [r["seed"] for r in records]
    budget = records[0]["budget"]
    lines = [
        f"AG News topic trained for {budget['steps']} steps of {budget['batch']} rows (encoder learning rate "
        f"{budget['learning_rate']}); test accuracy on the full AG News test ({records[0]['test_rows']['ag_news']:,} "
        f"rows) and zero-shot accuracy on BBC News test ({records[0]['test_rows']['bbc_news']} rows, its 5 labels, "
        f"never trained on). Seeds {seeds} (mean, and min-max when more than one); CPU: {records[0]['cpu']}.",
        "",
        "| row | AG News accuracy | BBC News zero-shot accuracy |",
        "|---|---|---|",
    ]

    def cell(key: str, metric: str) -> str:
        values = [
            100 * r["rows"][key][metric] for r in records if key in r["rows"] and metric in r["rows"][key]
        ]
        if not values:
            return ""
        text = f"{statistics.mean(values):.1f}"
        return text + (f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else "")

    for key, name in ROW_NAMES.items():
        lines.append(f"| {name} | {cell(key, 'ag_news')} | {cell(key, 'bbc_news_zero_shot')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        table = report()
        print(table)
        page = DOCS_PAGE.read_text(encoding="utf-8")
        if BEGIN in page and END in page:
            before, rest = page.split(BEGIN, 1)
            after = rest.split(END, 1)[1]
            DOCS_PAGE.write_text(f"{before}{BEGIN}\n{table}\n{END}{after}", encoding="utf-8")
            print(f"wrote {DOCS_PAGE}")
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output-dir", type=Path, default=REPO / "outputs" / "label_text")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--test-cap", type=int, default=None, help=argparse.SUPPRESS)  # smoke runs only
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from multitask_encoder.cli import configure_logging

    configure_logging()  # the training job's progress lines, as the command prints them
    run(args)


if __name__ == "__main__":
    main()
