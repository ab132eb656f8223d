"""Throughput of `MultiTaskEncoderModel.encode` / `.predict` against a plain Hugging Face encoding loop.

All methods run in one process on the same texts, in alternating order (so drift in CPU frequency or
cache state hits every method alike), and each reports the median of `--repeats` runs. The baseline is
what a careful user would write by hand: `AutoModel` + masked mean pooling + L2 normalisation, with
length-sorted batches; the unsorted variant shows what sorting alone is worth.

    python bench/encode_speed.py --n 2000 --batch-size 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from multitask_encoder import MultiTaskEncoderModel, default_backbone
from multitask_encoder.backbone import DEFAULT_BACKBONE_HUB_ID

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

# Random heads are enough to measure speed: their cost does not depend on their weights.
BENCH_TASKS = {
    "topic": {"type": "sequence_classification", "labels": ["World", "Sports", "Business", "Sci/Tech"]},
    "sentiment": {"type": "sequence_classification", "labels": ["negative", "neutral", "positive"]},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding ag_news/test.jsonl")
    parser.add_argument("--n", type=int, default=2000, help="number of texts (the first n of AG News test)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per method; the median is reported"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--backbone", default=None, help="encoder to benchmark (default: packaged MiniLM)")
    return parser.parse_args(argv)


def load_texts(data: Path, n: int) -> list[str]:
    path = data / "ag_news" / "test.jsonl"
    if not path.is_file():
        sys.exit(f"{path} not found: pass --data pointing at the shared benchmark data folder.")
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    return (token_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@torch.inference_mode()
def plain_encode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int,
    max_length: int,
    sort_by_length: bool,
) -> np.ndarray:
    """The hand-written baseline: tokenise, (optionally) sort by length, run, mean-pool, normalise."""
    embeddings = torch.empty(len(texts), model.config.hidden_size)
    if sort_by_length:
        # Tokenise once without padding, then pad each batch of similar lengths: the least padding.
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer.pad(
                [{key: encoded[key][i] for key in encoded} for i in indices], return_tensors="pt"
            )
            states = model(**batch).last_hidden_state
            embeddings[indices] = F.normalize(mean_pool(states, batch["attention_mask"]), dim=-1)
    else:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            states = model(**batch).last_hidden_state
            embeddings[start : start + batch_size] = F.normalize(
                mean_pool(states, batch["attention_mask"]), dim=-1
            )
    return embeddings.numpy()


def median_seconds(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Time every method `repeats` times, interleaved and rotated (A B C D, B C D A, ...) so that no method
    always runs first or right after the same neighbour, and take medians."""
    names = list(methods)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            methods[name]()
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = load_texts(args.data, args.n)
    backbone = args.backbone or default_backbone()

    torch.manual_seed(0)
    ours = MultiTaskEncoderModel.from_backbone(backbone, tasks=BENCH_TASKS).eval()
    plain = AutoModel.from_pretrained(backbone).eval()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    max_length = ours.max_seq_length  # the same truncation for everyone (256 for all-MiniLM-L6-v2)
    batch_size = args.batch_size

    methods: dict[str, Callable[[], object]] = {
        "plain HF, length-sorted": lambda: plain_encode(
            plain, tokenizer, texts, batch_size, max_length, True
        ),
        "plain HF, unsorted": lambda: plain_encode(plain, tokenizer, texts, batch_size, max_length, False),
        "model.encode": lambda: ours.encode(texts, batch_size=batch_size),
        "model.predict (2 heads)": lambda: ours.predict(texts, batch_size=batch_size),
    }

    # Same numbers from every path, or the comparison is meaningless.
    reference = plain_encode(plain, tokenizer, texts, batch_size, max_length, True)
    unsorted = plain_encode(plain, tokenizer, texts, batch_size, max_length, False)
    encoded = ours.encode(texts, batch_size=batch_size)
    max_difference = max(np.abs(encoded - reference).max(), np.abs(unsorted - reference).max())
    # The calls above also served as warm-up (allocator, kernels); warm predict up too.
    ours.predict(texts[:batch_size], batch_size=batch_size)

    seconds = median_seconds(methods, args.repeats)
    throughput = {name: len(texts) / value for name, value in seconds.items()}
    baseline = throughput["plain HF, length-sorted"]

    tokens = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    print(
        f"{len(texts)} AG News test texts (mean {np.mean(tokens):.1f} tokens, max {max(tokens)}), "
        f"backbone {args.backbone or DEFAULT_BACKBONE_HUB_ID + ' (packaged copy)'}, batch size {batch_size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats} runs"
    )
    print(f"max |embedding difference| between the plain loops and model.encode: {max_difference:.2e}\n")
    print("| method | median s | sentences/s | vs plain sorted |")
    print("|---|---:|---:|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {throughput[name]:.0f} | {throughput[name] / baseline:.2f}x |")
    print()
    print(f"encode / plain (sorted): {throughput['model.encode'] / baseline:.3f}")
    print(f"predict / plain (sorted): {throughput['model.predict (2 heads)'] / baseline:.3f}")


if __name__ == "__main__":
    main()
