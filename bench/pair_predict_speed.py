"""What `predict` on pairs of texts encoded apart costs against encoding their texts.

A bi-encoded pair task (similarity, pair_classification with `pair_encoding: bi`) encodes each text of a pair
on its own, so a pair prediction can cost no less than `encode` of all its texts (the heads and the result
dicts are small). This times, in one process, on the same pairs, calls alternating, medians of `--repeats`:

    predict pairs     model.predict(pairs, tasks=[similarity, match])
    encode texts      model.encode(firsts + seconds)  (every text once, length-sorted by the one batcher)

and the time inside the encoder of each with the padded tokens it ran (padding wasted by batching shows
there, and the token count does not move with the machine's load). Pairs: STS-B test (1379).

    python bench/pair_predict_speed.py [--repeats 5] [--batch-size 64] [--mode exact]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from reference import cpu_model
from serve_speed import DEFAULT_DATA

from multitask_encoder import MultiTaskEncoderModel

TASKS = {
    "similarity": {"type": "similarity"},
    "match": {"type": "pair_classification", "labels": ["entailment", "neutral", "contradiction"]},
}


class EncoderClock:
    """Wraps a model's `encoder_states` (an instance attribute shadows the method): its time and the padded
    tokens (`input_ids` elements) it ran."""

    def __init__(self, model: MultiTaskEncoderModel) -> None:
        self.seconds, self.tokens = 0.0, 0
        self.encoder_states = model.encoder_states
        model.encoder_states = self

    def __call__(self, inputs, *args, **kwargs):
        self.tokens += inputs["input_ids"].numel()
        start = time.perf_counter()
        try:
            return self.encoder_states(inputs, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def read_pairs(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(row["text"], row["text_pair"]) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with stsb/")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mode", default="exact", help="the serving mode (optimize_for_inference)")
    args = parser.parse_args()

    pairs = read_pairs(args.data / "stsb" / "test.jsonl")
    texts = [first for first, _ in pairs] + [second for _, second in pairs]
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(None, tasks=TASKS).eval()
    model.optimize_for_inference(args.mode)
    model.predict(pairs[:128], batch_size=args.batch_size)  # warm-up
    model.encode(texts[:256], batch_size=args.batch_size)
    clock = EncoderClock(model)
    calls = {
        "predict pairs": lambda: model.predict(pairs, batch_size=args.batch_size),
        "encode texts": lambda: model.encode(texts, batch_size=args.batch_size),
    }
    runs: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "encoder": [], "tokens": []} for name in calls
    }
    for repeat in range(args.repeats):
        for name in sorted(calls, reverse=repeat % 2 == 1):
            clock.seconds, clock.tokens = 0.0, 0
            start = time.perf_counter()
            calls[name]()
            runs[name]["wall"].append(time.perf_counter() - start)
            runs[name]["encoder"].append(clock.seconds)
            runs[name]["tokens"].append(clock.tokens)
    median = {name: {k: statistics.median(v) for k, v in run.items()} for name, run in runs.items()}
    print(
        f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {len(pairs)} STS-B "
        f"test pairs ({len(texts)} texts), mode {args.mode}, batch size {args.batch_size}, medians of "
        f"{args.repeats} alternating calls\n"
    )
    print("| call | wall s | in the encoder s | padded tokens |")
    print("|---|---:|---:|---:|")
    for name, values in median.items():
        print(f"| {name} | {values['wall']:.2f} | {values['encoder']:.2f} | {values['tokens']:,.0f} |")
    ratio = {
        key: median["predict pairs"][key] / median["encode texts"][key] - 1 for key in median["encode texts"]
    }
    print(
        f"\npredict on pairs against encoding their texts: wall {ratio['wall']:+.1%}, encoder time "
        f"{ratio['encoder']:+.1%}, padded tokens {ratio['tokens']:+.1%}"
    )


if __name__ == "__main__":
    main()
