"""Throughput of prediction on Ray Data against the single-process command, on the same texts, and the peak
memory of each worker process.

    python bench/distributed_predict.py                       # 100k texts, 1 and 2 Ray workers, the command
    python bench/distributed_predict.py --rows 5000 --workers 1 2 --model path/to/saved_model

Each run is its own process, timed from start to finish (model loads included; for Ray also the start of a
local Ray, reported apart as "startup", the time to the first row predicted is not separated):

    local    multitask-encoder-predict MODEL texts.jsonl -o out.jsonl        (one process, torch's threads)
    ray N    multitask-encoder-predict MODEL texts.jsonl -o out --engine ray --workers N   (N actors, 1 thread)

Peak memory: the largest RSS and USS seen (sampled every 0.2 s with psutil) of each Ray model worker (its
process title starts with "ray::MapWorker"), and of the command's process for the local run. USS is what the
process alone holds (its private pages); RSS also counts shared pages, mostly the libraries' (~170 MiB).
Ray's object store (a /dev/shm mapping of several GiB in each worker) is in neither: its blocks pass through the
worker without staying resident (/proc/<pid>/smaps of a worker at 40,000 rows: 0 MiB private, 1-4 MiB resident
there); what grew with the rows before BatchPredictor trimmed glibc's heap after each batch was the worker's
anonymous memory (see `batch_predictor.return_freed_heap_to_os`). Without --model it builds a 2-layer copy of
the packaged all-MiniLM-L6-v2 with a classification and a regression head (bench/batch_predict_memory.py's
model); texts are 8-24 words.

On a cluster (on paper; not measured here). The work is embarrassingly parallel: rows are independent, each
worker holds one model, and nothing is shuffled, so with W workers on W free cores throughput should grow
close to W times one worker's until something shared saturates. The encoder (6 layers of MiniLM, ~10 ms per
64 short texts per core) is the bottleneck up to tens of workers; tokenising (Rust, inside the worker) is a
few percent of it. Reading is one task per file: a single huge file is read by one task, which streams
blocks to all workers and becomes the bottleneck near ~50-100 CPU workers (JSON parsing in Python, ~100k
rows/s per reader), so split large inputs into many files (or Parquet row groups) to read in parallel.
Writing is per block and parallel. A GPU worker (--engine ray with num_gpus, or a Spark executor with a GPU)
runs the encoder 10-50x faster than a core: the bottleneck then moves to tokenising and reading on the CPUs
feeding it (give each GPU worker several CPUs and big batches, --batch-size 256+, a token-budget mode), and
to the driver's and object store's block traffic when rows are tiny. At 100x the data (5 billion rows) what
breaks first is not the model but the bookkeeping: millions of blocks in the driver's plan (use bigger
blocks and many input files), the output's file count, and a retried task re-reading its whole file (keep
files small enough that a retry is cheap).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
WORDS = [
    "the",
    "team",
    "won",
    "lost",
    "a",
    "match",
    "in",
    "paris",
    "stocks",
    "fell",
    "rose",
    "after",
    "the",
    "report",
    "on",
    "rain",
    "today",
    "this",
    "week",
]


def write_texts(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(8, 24)))}) + "\n")


class PeakMemory:
    """Samples the memory of the processes `select` picks every 0.2 s in a thread: `peaks` pid -> max RSS and
    `unique_peaks` pid -> max USS (memory the process alone holds; RSS also counts the shared libraries'
    pages)."""

    def __init__(self, select) -> None:
        self.select = select
        self.peaks: dict[int, int] = {}
        self.unique_peaks: dict[int, int] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import psutil

        while not self.stopped.wait(0.2):
            for process in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if self.select(process):
                        memory = process.memory_full_info()
                        self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), memory.rss)
                        self.unique_peaks[process.pid] = max(
                            self.unique_peaks.get(process.pid, 0), memory.uss
                        )
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def run(command: list[str], select) -> tuple[float, PeakMemory, str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with PeakMemory(select) as memory:
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, memory, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="saved model folder (default: a 2-layer MiniLM built on the fly)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-local", action="store_true", help="do not run the single-process command")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="distributed_predict_"))
    try:
        if args.model:
            model = args.model
        else:
            from batch_predict_memory import build_tiny_model

            model = str(build_tiny_model(scratch))
        texts = scratch / "texts.jsonl"
        write_texts(texts, args.rows)
        command = [
            sys.executable,
            "-m",
            "multitask_encoder.batch_predict",
            model,
            str(texts),
            "--no-progress",
        ]
        command += ["--batch-size", str(args.batch_size)]
        results = []
        if not args.skip_local:
            seconds, memory, _ = run(
                [*command, "-o", str(scratch / "local.jsonl")],
                lambda p: "multitask_encoder.batch_predict" in " ".join(p.info["cmdline"] or []),
            )
            results.append(("local (1 process)", seconds, memory))
        for workers in args.workers:
            seconds, memory, _ = run(
                [
                    *command,
                    "-o",
                    str(scratch / f"ray{workers}"),
                    "--engine",
                    "ray",
                    "--workers",
                    str(workers),
                ],
                lambda p: (p.info["cmdline"] or [""])[0].startswith("ray::MapWorker"),
            )
            results.append((f"ray, {workers} worker(s)", seconds, memory))
        print(f"{args.rows} texts, batch size {args.batch_size}, {os.cpu_count()} CPUs, model {model}")
        print(
            f"{'run':<22} {'seconds':>8} {'rows/s':>8} {'peak RSS per worker':>20} {'peak USS per worker':>20}"
        )
        for name, seconds, memory in results:
            rss, uss = (
                max(peaks.values(), default=0) / 2**20 for peaks in (memory.peaks, memory.unique_peaks)
            )
            print(
                f"{name:<22} {seconds:8.1f} {args.rows / seconds:8.0f} {rss:16.0f} MiB {uss:16.0f} MiB"
                f" ({len(memory.peaks)})"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
