"""The reference multi-task benchmark: topic (AG News), 3-class sentiment (SST-5) and NER (CoNLL-2003) on
one packaged all-MiniLM-L6-v2 encoder, against single-task models and a frozen-encoder linear probe, on the
official test splits; plus a second benchmark where every text carries two labels (multi_domain_sentiment).

    python bench/reference.py --part baselines --seed 0   # 3 single-task HF models + linear probe
    python bench/reference.py --part multitask --seed 0   # multi-task, encoder frozen, bottom half frozen,
                                                          # serving speed (run after baselines)
    python bench/reference.py --part ablations --seed 0   # sampling x loss weighting, imbalanced mix
    python bench/reference.py --part multidomain --seed 0 # two labels per text vs two single-task models
    python bench/reference.py --part pairs --seed 0       # sentence pairs and the embedding (reference_pairs.py)
    python bench/reference.py --part embedding --seed 0   # what limits the pairs part's (c) row (~15 min)
    python bench/reference.py --part longer --seed 0      # the headline rows at 4x the budget, learning curve
                                                          # (reference_longer.py; ~45 min)
    python bench/reference.py --part no_compromise --seed 0 [--rows teachers plain ...] [--factor 4]
                                                          # distillation, layer mixing, LP-FT, WiSE-FT vs the
                                                          # single-task teachers (reference_no_compromise.py;
                                                          # hours at 4x: the file is rewritten after every row)
    python bench/reference.py --quick                     # every part, tiny budgets, test subsets
    python bench/reference.py report                      # merge all results into tables and plots

Each full part is sized for <= 60 minutes on 2 idle CPU cores (estimated from measured training-step and
inference throughput, see `reference_parts.BUDGETS`; a shared CPU is several times slower). The budgets
(steps, rows, lengths, learning rates) are written into every results file
(bench/results/reference-<part>-seed<N>[-quick].json), with the git commit, the machine and the seed.
Model folders and the tokenisation cache go to outputs/reference (gitignored). See reference_parts.py for
what each row is and how its cost is measured, reference_report.py for the report.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import reference_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUTPUT = REPO / "outputs" / "reference"
PARTS = (
    "baselines",
    "multitask",
    "ablations",
    "multidomain",
    "pairs",
    "embedding",
    "longer",
    "no_compromise",
)  # baselines first: multitask reuses its models
SCHEMA_VERSION = 1


def parse_run_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", nargs="+", choices=[*PARTS, "all"], default=["all"], help="parts to run (default: all)"
    )
    parser.add_argument("--seed", nargs="+", type=int, default=[0], help="one results file per part and seed")
    parser.add_argument(
        "--quick", action="store_true", help="tiny budgets and test subsets (every part in < 15 min)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help=argparse.SUPPRESS
    )  # a handful of steps, for development
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared benchmark data folder")
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT, help="models and cache (gitignored)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help=f"results JSON folder (default {reference_report.DEFAULT_RESULTS.relative_to(REPO)}; "
        "smoke runs: <output-dir>/results)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument(
        "--rows", nargs="+", default=None, help="no_compromise: the rows to run (default: all)"
    )
    parser.add_argument("--factor", type=int, default=None, help="no_compromise: x the reference budget (4)")
    parser.add_argument(
        "--combined",
        nargs="+",
        choices=["distillation", "layer_mix", "lp_ft"],
        default=None,
        help="no_compromise: the options the combined rows use (default: all three)",
    )
    args = parser.parse_args(argv)
    if args.quick and args.smoke:
        parser.error("--quick and --smoke are exclusive")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.parts = list(PARTS) if "all" in args.part else [p for p in PARTS if p in args.part]
    if args.results_dir is None:
        args.results_dir = args.output_dir / "results" if args.smoke else reference_report.DEFAULT_RESULTS
    return args


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "nproc": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_info() -> dict[str, Any]:
    def git(*command: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *command], capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD") or None, "dirty_files": len(changed)}


def results_path(results_dir: Path, part: str, seed: int, mode: str) -> Path:
    suffix = "" if mode == "full" else f"-{mode}"
    return results_dir / f"reference-{part}-seed{seed}{suffix}.json"


def save_record(path: Path, header: dict[str, Any], context: dict[str, Any], result: dict[str, Any]) -> dict:
    """Write one part's results file (also after every row of a part that saves as it goes); returns it."""
    record = {
        **header,
        "wall_s": time.perf_counter() - context["start"],
        "git": context["git"],  # the code the run started with (commits made while it runs are not its code)
        "machine": {
            **machine_info(),
            "loadavg_start": list(context["load"]),
            "loadavg_end": list(os.getloadavg()),
        },
        "data_dir": context["data"],
        **result,
    }
    earlier = context.get("earlier")
    if earlier is not None:
        if earlier.get("budget") != record.get("budget"):
            raise SystemExit(f"{path} holds rows of another budget: move it away to measure at this one.")
        # Rows of several runs in one file: each keeps the run (commit, CPU, start) that measured it, since the
        # file's own `git` / `machine` are the last run's.
        for run_record, rows in ((earlier, earlier["rows"]), (record, record["rows"])):
            for row in rows:
                row.setdefault("measured_by", run_provenance(run_record))
        keys = {row["key"] for row in record["rows"]}
        record["rows"] = [row for row in earlier["rows"] if row["key"] not in keys] + record["rows"]
        record["wall_s"] += earlier.get("wall_s", 0.0)
        record["complete"] = False  # --rows: the part's rows, not all of them, in some order
    path.write_text(json.dumps(record, indent=1, default=float) + "\n", encoding="utf-8")
    return record


def run_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """What identifies the run that wrote a results record: its start, commit and CPU."""
    machine = record.get("machine") or {}
    return {
        "started_at": record.get("started_at"),
        "git": record.get("git"),
        "cpu_model": machine.get("cpu_model"),
        "loadavg_start": machine.get("loadavg_start"),
    }


def run(argv: list[str]) -> None:
    args = parse_run_args(argv)
    import reference_parts  # torch, transformers and the package: loaded for runs only, not for `report`
    import torch

    torch.set_num_threads(args.threads)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    written = []
    for seed in args.seed:
        for part in args.parts:
            part_start = time.perf_counter()
            load_before = os.getloadavg()
            began = datetime.now(timezone.utc).isoformat(timespec="seconds")
            path = results_path(args.results_dir, part, seed, args.mode)
            header = {
                "benchmark": "reference",
                "schema": SCHEMA_VERSION,
                "part": part,
                "seed": seed,
                "mode": args.mode,
                "started_at": began,
            }
            context = {"start": part_start, "load": load_before, "data": str(args.data), "git": git_info()}
            if args.rows and path.exists():  # a run of some rows adds them to the rows measured before
                context["earlier"] = json.loads(path.read_text(encoding="utf-8"))
            save = functools.partial(save_record, path, header, context)
            options = {"rows": args.rows, "factor": args.factor, "combined": args.combined}
            result = reference_parts.run_part(
                part, args.mode, seed, args.data, args.output_dir, options, save
            )
            record = save(result)
            written.append(path)
            print(
                f"\n### {part} (seed {seed}, {args.mode}): {record['wall_s'] / 60:.1f} min -> {path}",
                flush=True,
            )
    print(f"\nAll done in {(time.perf_counter() - started) / 60:.1f} min:")
    for path in written:
        print(f"  {path}")
    print("Merge them with: python bench/reference.py report")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        reference_report.main(argv[1:])
    else:
        from multitask_encoder.cli import configure_logging

        configure_logging()  # the training job's progress lines, as the command prints them
        run(argv)


if __name__ == "__main__":
    main()
