"""Peak memory of a training run as its train file grows: `train.py --max_steps 2` on generated CSV files of
different sizes (2 sentence tasks sharing one file), each run in its own process, side by side.

The data is read through Arrow files on disk (memory-mapped), so the peak RSS should barely grow with the
file; a loader that holds the rows in Python lists grows by hundreds of bytes per row.

    python bench/train_data_memory.py --rows 20000 2000000
    python bench/train_data_memory.py --rows 20000 2000000 --pythonpath /path/to/other/checkout   # compare code

Reports, per size: peak RSS of the run (ru_maxrss of the child), wall time, and the rows it trained on.
Uses a 2-layer copy of the packaged all-MiniLM-L6-v2 (memory does not depend on the depth).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_predict_memory import WORDS  # the same vocabulary of short words  # noqa: E402
from reference import cpu_model  # noqa: E402

TOPICS = ("world", "sports", "business", "tech")
SENTIMENTS = ("negative", "neutral", "positive")


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` texts of 8-16 words with a topic and a sentiment label (about 90 bytes a row)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write("text,topic,sentiment\n")
        for _ in range(rows):
            text = " ".join(rng.choices(WORDS, k=rng.randint(8, 16)))
            f.write(f"{text},{rng.choice(TOPICS)},{rng.choice(SENTIMENTS)}\n")


def write_config(path: Path, train: Path, output_dir: Path) -> None:
    config = {
        "tasks": {
            "topic": {"type": "sequence_classification", "train": str(train)},
            "sentiment": {"type": "sequence_classification", "train": str(train)},
        },
        "output_dir": str(output_dir),
        "max_steps": 2,
        "per_device_train_batch_size": 16,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
    }
    path.write_text(json.dumps(config), encoding="utf-8")


def run(config: Path, backbone: str, cache: Path, pythonpath: str | None) -> dict:
    """train.py in a child process; its peak RSS from the kernel's accounting of finished children."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    script = str(Path(pythonpath) / "train.py") if pythonpath else str(REPO / "train.py")
    command = [sys.executable, script, str(config), "--backbone", backbone, "--data_cache_dir", str(cache)]
    code = (
        "import resource, subprocess, sys, json, time\n"
        "start = time.perf_counter()\n"
        "result = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'code': result.returncode, 'peak_mb': usage.ru_maxrss / 1024, "
        "'seconds': time.perf_counter() - start, 'tail': result.stderr[-1500:]}))\n"
    )
    # A fresh parent per run: RUSAGE_CHILDREN's maximum covers only this run's train.py.
    output = subprocess.run(
        [sys.executable, "-c", code, *command], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 2_000_000])
    parser.add_argument("--pythonpath", help="run another checkout's train.py and package (its root folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-data-memory-") as scratch:
        scratch = Path(scratch)
        backbone = build_tiny_backbone(scratch / "backbone")
        print(
            f"# python bench/train_data_memory.py --rows {' '.join(map(str, args.rows))}"
            + (f" --pythonpath {args.pythonpath}" if args.pythonpath else "")
        )
        print(f"# {cpu_model()}, {os.cpu_count()} CPUs; code: {args.pythonpath or REPO}")
        print("| train rows | file MB | peak RSS MB | seconds |")
        print("|---:|---:|---:|---:|")
        for rows in args.rows:
            train = scratch / f"train-{rows}.csv"
            write_csv(train, rows)
            config = scratch / f"config-{rows}.json"
            write_config(config, train, scratch / f"out-{rows}")
            result = run(config, backbone, scratch / f"cache-{rows}", args.pythonpath)
            if result["code"] != 0:
                raise SystemExit(f"train.py failed on {rows} rows:\n{result['tail']}")
            size = train.stat().st_size / 2**20
            print(
                f"| {rows:,} | {size:.0f} | {result['peak_mb']:.0f} | {result['seconds']:.0f} |", flush=True
            )


def build_tiny_backbone(folder: Path) -> str:
    """The first 2 layers of the packaged all-MiniLM-L6-v2 with its tokenizer (as tests/conftest.py builds it)."""
    import shutil

    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    from multitask_encoder.backbone import packaged_backbone_path

    source = packaged_backbone_path()
    config = BertConfig.from_pretrained(source)
    config.num_hidden_layers = 2
    model = BertModel(config)
    state = load_file(os.path.join(source, "model.safetensors"))
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True)
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(source, name), folder / name)
    return str(folder)


if __name__ == "__main__":
    main()
