"""`python bench/reference.py report`: merge every results file of the reference benchmark into markdown
tables and PNG plots.

Results files (bench/results/reference-<part>-seed<N>[-quick].json) are grouped by mode (full budgets,
quick) and part; rows with the same key are merged over seeds (mean, and "± standard deviation" when
there are several seeds). The markdown goes between the markers below in docs/benchmarks.md when that
page exists, else to bench/results/reference.md; plots go to docs/img/. Only the standard library is
needed, plus matplotlib for the plots (skipped with a note when it is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "bench" / "results"
DEFAULT_IMG = REPO / "docs" / "img"
DOCS_PAGE = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- reference-benchmark:begin -->"
END = "<!-- reference-benchmark:end -->"
MODES = ("full", "quick", "smoke")
MODE_TITLES = {
    "full": "Full budgets",
    "quick": "Quick mode (tiny budgets and test subsets: a smoke check of the pipeline, not a result)",
    "smoke": "Smoke mode (a handful of steps: development only)",
}
REFERENCE_PARTS = ("baselines", "multitask")  # one table: same tasks, same budget


class ResultsError(ValueError):
    """A results file that cannot be merged (bad JSON, not a reference-benchmark file, missing fields)."""


# ---------------------------------------------------------------------------------------------- loading
def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every reference-*.json in `results_dir`, checked, sorted by (mode, part, seed)."""
    records = []
    for path in sorted(results_dir.glob("reference-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ResultsError(f"{path}: invalid JSON ({error}).") from None
        if not isinstance(record, dict) or record.get("benchmark") != "reference":
            raise ResultsError(f"{path}: not a reference-benchmark results file (no benchmark: reference).")
        missing = [key for key in ("part", "seed", "mode", "rows", "budget") if key not in record]
        if missing:
            raise ResultsError(f"{path}: missing field(s) {missing}.")
        if record["mode"] not in MODES:
            raise ResultsError(f"{path}: unknown mode {record['mode']!r}; expected one of {list(MODES)}.")
        record["_path"] = str(path)
        records.append(record)
    order = {mode: i for i, mode in enumerate(MODES)}
    return sorted(records, key=lambda r: (order[r["mode"]], r["part"], r["seed"]))


def by_mode_and_part(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[record["mode"]][record["part"]].append(record)
    return grouped


# ---------------------------------------------------------------------------------------------- merging
def is_entity_task(scores: dict[str, Any]) -> bool:
    return "macro_f1" not in scores and "f1" in scores


def main_scores(scores: dict[str, Any]) -> dict[str, float]:
    """The numbers a table shows for one task: accuracy and macro-F1, or entity F1."""
    if is_entity_task(scores):
        return {"entity F1": scores["f1"]}
    return {"acc": scores["accuracy"], "macro-F1": scores["macro_f1"]}


def merge_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of several records (seeds, or parts sharing a table), merged by key in order of appearance.

    Each merged row holds lists over seeds: `scores[task][metric]`, `train_s`, `train_examples_per_s`,
    plus `params_to_serve`, `task_batches`, `seeds` and `confusion[task]` (labels, matrix summed over seeds).
    """
    merged: dict[str, dict[str, Any]] = {}
    for record in records:
        for row in record["rows"]:
            entry = merged.setdefault(
                row["key"],
                {
                    "key": row["key"],
                    "name": row["name"],
                    "kind": row.get("kind"),
                    "scores": defaultdict(lambda: defaultdict(list)),
                    "train_s": [],
                    "train_examples_per_s": [],
                    "params_to_serve": row.get("params_to_serve"),
                    "task_batches": row.get("task_batches"),
                    "seeds": [],
                    "confusion": {},
                },
            )
            entry["seeds"].append(record["seed"])
            entry["train_s"].append(row["train_s"])
            entry["train_examples_per_s"].append(row["train_examples_per_s"])
            for task, scores in row["tasks"].items():
                for metric, value in main_scores(scores).items():
                    entry["scores"][task][metric].append(value)
                if "confusion_matrix" in scores and "labels" in scores:
                    add_confusion(entry["confusion"], task, scores)
    return list(merged.values())


def add_confusion(confusion: dict[str, Any], task: str, scores: dict[str, Any]) -> None:
    matrix = scores["confusion_matrix"]
    if task not in confusion:
        confusion[task] = {"labels": list(scores["labels"]), "matrix": [list(r) for r in matrix]}
        return
    if confusion[task]["labels"] != scores["labels"]:
        raise ResultsError(f"Task {task!r}: the label order differs between results files.")
    total = confusion[task]["matrix"]
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            total[i][j] += value


def merge_inference(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Serving-speed rows merged over seeds (sentences/s lists by key), or None when no record has any."""
    runs = [record["inference"] for record in records if record.get("inference")]
    if not runs:
        return None
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        for row in run["rows"]:
            entry = rows.setdefault(row["key"], {**row, "sentences_per_s": []})
            entry["sentences_per_s"].append(row["sentences_per_s"])
    return {**{k: v for k, v in runs[0].items() if k != "rows"}, "rows": list(rows.values())}


# ---------------------------------------------------------------------------------------------- formatting
def mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "–"
    scaled = [v * scale for v in values]
    text = f"{statistics.fmean(scaled):.{digits}f}"
    if len(scaled) > 1:
        text += f" ± {statistics.stdev(scaled):.{digits}f}"
    return text


def millions(count: int | None) -> str:
    return "–" if count is None else f"{count / 1e6:.1f} M"


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def task_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(task, metric) columns in order of first appearance."""
    columns: list[tuple[str, str]] = []
    for row in rows:
        for task, metrics in row["scores"].items():
            for metric in metrics:
                if (task, metric) not in columns:
                    columns.append((task, metric))
    return columns


def score_table(rows: list[dict[str, Any]], with_batches: bool = False) -> list[str]:
    columns = task_columns(rows)
    header = ["model", *(f"{task} {metric}" for task, metric in columns)]
    header += ["train s", "train examples/s", "params to serve"]
    if with_batches:
        header.insert(1, "batches per task")
    body = []
    for row in rows:
        cells = [row["name"]]
        if with_batches:
            batches = row.get("task_batches") or {}
            cells.append(" / ".join(f"{task} {count}" for task, count in batches.items()) or "–")
        for task, metric in columns:
            cells.append(mean_sd(row["scores"].get(task, {}).get(metric, []), scale=100))
        cells += [
            mean_sd(row["train_s"], digits=0),
            mean_sd(row["train_examples_per_s"]),
            millions(row["params_to_serve"]),
        ]
        body.append(cells)
    align = ["---", *(["---"] if with_batches else []), *["---:"] * (len(header) - 1 - with_batches)]
    return table(header, body, align)


def inference_table(inference: dict[str, Any]) -> list[str]:
    base = next((r for r in inference["rows"] if r["key"] == "multitask_predict"), None)
    base_speed = statistics.fmean(base["sentences_per_s"]) if base else None
    body = []
    for row in inference["rows"]:
        speed = statistics.fmean(row["sentences_per_s"])
        ratio = f"{speed / base_speed:.2f}x" if base_speed else "–"
        body.append(
            [row["name"], mean_sd(row["sentences_per_s"]), ratio, str(row["models"]), millions(row["params"])]
        )
    return table(["method", "sentences/s", "vs multi-task predict", "models", "parameters"], body)


def budget_line(records: list[dict[str, Any]], part: str) -> str:
    budget = records[0]["budget"]
    data = records[0].get("data") or {}
    test_rows = data.get("test_rows") or {}
    groups = data.get("group_sizes") or {}
    if part == "ablations":
        steps = f"{3 * budget['ablation_steps_per_task']} optimizer steps per run (per_task batches)"
    elif part == "longer":
        t = data.get("steps_per_task")
        steps = (
            f"{t} optimizer steps per task ({data.get('longer_factor')}x the reference T = "
            f"{budget['steps_per_task']}; single-task: {t} each; multi-task: {3 * t} per_task batches, uniform "
            "sampling)"
        )
    elif part == "multidomain":
        steps = (
            f"{budget['multidomain_steps']} optimizer steps for the multi-task model (both heads every step) and "
            "for each single-task model"
        )
    else:
        steps = (
            f"T = {budget['steps_per_task']} optimizer steps per task (single-task: T each; multi-task: "
            f"{3 * budget['steps_per_task']} per_task batches, uniform sampling)"
        )
    full_test = all(cap is None for cap in (data.get("max_eval_examples") or {}).values())
    test = "full official test splits" if full_test else "test SUBSETS"
    parts = [
        steps,
        f"batch {budget['batch_size']}",
        f"max_seq_length {budget['max_seq_length']}",
        f"lr {budget['learning_rate']:g} encoder / {budget['head_learning_rate']:g} heads (both sides), "
        f"warmup {budget['warmup']:g}, weight decay {budget['weight_decay']:g}",
        "training rows " + ", ".join(f"{g} {n}" for g, n in groups.items()) if groups else "",
        f"{test} (" + ", ".join(f"{t} {n}" for t, n in test_rows.items()) + ")" if test_rows else test,
    ]
    if data.get("imbalance"):
        parts.append(data["imbalance"])
    line = "Budget: " + "; ".join(p for p in parts if p) + "."
    line += budget_warning(records)
    return line


def budget_warning(records: list[dict[str, Any]]) -> str:
    """A warning to append to a part's budget line when its merged results files were run with different budgets."""
    budget = records[0]["budget"]
    if any(record["budget"] != budget for record in records):
        return " **Warning: the merged results files have different budgets.**"
    return ""


def machine_line(records: list[dict[str, Any]]) -> str:
    machine = records[0].get("machine") or {}
    git = records[0].get("git") or {}
    loads = [r["machine"]["loadavg_start"][0] for r in records if r.get("machine", {}).get("loadavg_start")]
    nproc = machine.get("nproc")
    contended = loads and nproc and max(loads) > nproc
    # A file whose rows several runs measured names each row's run (`measured_by`): every CPU and commit counts.
    runs = [row["measured_by"] for r in records for row in r.get("rows", []) if "measured_by" in row]
    cpus = sorted({machine.get("cpu_model") or "?", *(run.get("cpu_model") or "?" for run in runs)})
    commits = sorted(
        {(r.get("git") or {}).get("commit") or "unknown" for r in records}
        | {(run.get("git") or {}).get("commit") or "unknown" for run in runs}
    )
    seeds = sorted({r["seed"] for r in records})
    walls = ", ".join(
        f"{r['part']} seed {r['seed']} {r['wall_s'] / 60:.1f} min" for r in records if "wall_s" in r
    )
    text = (
        f"Machine: {nproc} × {' / '.join(cpus)}, torch {machine.get('torch', '?')}, "
        f"torch threads {machine.get('torch_threads', '?')}"
    )
    if loads:
        text += f", load average at start {min(loads):.1f}–{max(loads):.1f}"
        text += " (**CPU shared with other work: timings are pessimistic**)" if contended else ""
    text += f". Commit {', '.join(c[:10] for c in commits)}"
    if git.get("dirty_files"):
        text += f" (+{git['dirty_files']} uncommitted file(s))"
    text += f"; seeds {', '.join(map(str, seeds))}; wall time {walls}."
    return text


# ---------------------------------------------------------------------------------------------- report
def render(records: list[dict[str, Any]], markdown_dir: Path, images: dict[str, dict[str, Path]]) -> str:
    """The markdown section (markers included) for all records; image links relative to `markdown_dir`."""
    lines = [
        BEGIN,
        "## Reference multi-task benchmark",
        "",
        f"_Generated by `python bench/reference.py report` from {len(records)} results file(s); do not edit "
        "by hand. Scores are percentages on the test rows (accuracy and macro-F1; entity-level F1 for NER, "
        "seqeval rules), mean ± standard deviation over seeds. Train s: wall time to a trained model (data "
        "from the tokenisation cache, model build, the frozen-encoder encoding pass, optimizer steps); "
        "train examples/s: training rows (steps × batch; probe: rows encoded) per train second._",
        "",
    ]
    for mode, parts in by_mode_and_part(records).items():
        lines += [f"### {MODE_TITLES[mode]}", ""]
        reference = [r for part in REFERENCE_PARTS for r in parts.get(part, [])]
        if reference:
            lines += [
                "#### Topic (AG News) + sentiment (SST-5, 3 classes) + NER (CoNLL-2003), one encoder",
                "",
            ]
            for part in REFERENCE_PARTS:
                if parts.get(part):
                    lines += [f"`{part}`: " + budget_line(parts[part], part), ""]
            lines += [machine_line(reference), ""]
            lines += [*score_table(merge_rows(reference)), ""]
            inference = merge_inference(parts.get("multitask", []))
            if inference:
                lines += [serving_caption(inference), "", *inference_table(inference), ""]
            for name, path in images.get(mode, {}).items():
                if name != CURVE_CAPTION:
                    lines += [f"![{name}]({os.path.relpath(path, markdown_dir)})", ""]
        if parts.get("longer"):
            records_ = parts["longer"]
            factor = (records_[0].get("data") or {}).get("longer_factor")
            lines += [f"#### The headline rows at {factor}x the budget, with a learning curve", ""]
            lines += [budget_line(records_, "longer"), "", machine_line(records_), ""]
            lines += [*score_table(merge_rows(records_)), ""]
            lines += [*curve_table(records_), ""]
            if CURVE_CAPTION in images.get(mode, {}):
                path = images[mode][CURVE_CAPTION]
                lines += [f"![{CURVE_CAPTION}]({os.path.relpath(path, markdown_dir)})", ""]
        if parts.get("ablations"):
            records_ = parts["ablations"]
            lines += ["#### Ablations: task sampling and loss weighting on an imbalanced mix", ""]
            lines += [budget_line(records_, "ablations"), "", machine_line(records_), ""]
            lines += [*score_table(merge_rows(records_), with_batches=True), ""]
            lines += loss_weight_notes(records_)
        if parts.get("pairs"):
            records_ = parts["pairs"]
            lines += ["#### Sentence pairs and the embedding itself: STS-B, SICK", ""]
            lines += [pairs_budget_line(records_), "", machine_line(records_), ""]
            lines += [*pairs_table(records_), ""]
            lines += add_task_notes(records_)
        if parts.get("embedding"):
            records_ = parts["embedding"]
            lines += [
                "#### What limits the embedding of row (c): the similarity task alone, and with distillation",
                "",
            ]
            lines += [embedding_budget_line(records_), "", machine_line(records_), ""]
            lines += [*pairs_table(records_), ""]
        if parts.get("no_compromise"):
            records_ = parts["no_compromise"]
            lines += [
                "#### No compromise: distillation, layer mixing, LP-FT, WiSE-FT (4 tasks, one encoder)",
                "",
            ]
            lines += [no_compromise_budget_line(records_), "", machine_line(records_), ""]
            main = [
                {
                    **record,
                    "rows": sorted(
                        (
                            r
                            for r in record["rows"]
                            if r["kind"] != "curve" and not r["key"].startswith("cross")
                        ),
                        key=lambda r: (
                            NO_COMPROMISE_ORDER.index(r["key"]) if r["key"] in NO_COMPROMISE_ORDER else 99
                        ),
                    ),  # the part's order, whatever order the runs of some rows merged them in
                }
                for record in records_
            ]
            lines += [*pairs_table(main), ""]
            lines += wise_ft_table(records_)
            lines += cross_domain_table(records_)
        if parts.get("multidomain"):
            records_ = parts["multidomain"]
            lines += ["#### Two labels on every text: multi_domain_sentiment (domain + sentiment)", ""]
            lines += [budget_line(records_, "multidomain"), "", machine_line(records_), ""]
            lines += [*score_table(merge_rows(records_)), ""]
            inference = merge_inference(records_)
            if inference:
                lines += [serving_caption(inference), "", *inference_table(inference), ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


PAIR_COLUMNS = (  # (header, task, metric) of the pairs table; "embedding" tasks are embedding_evaluation sets
    ("STS-B test, embedding Spearman", "embedding", "stsb_test"),
    ("SICK test, embedding Spearman", "embedding", "sick_test"),
    ("topic acc", "topic", "accuracy"),
    ("sentiment acc", "sentiment", "accuracy"),
    ("NER entity F1", "ner", "f1"),
    ("STS-B similarity task Spearman", "similarity", "spearman"),
    ("SICK entailment acc", "entailment", "accuracy"),
    ("SICK relatedness Spearman", "relatedness", "spearman"),
)


def pairs_table(records: list[dict[str, Any]]) -> list[str]:
    """The `pairs` part: one line per row key, each number the mean ± sd over seeds (percentages)."""
    merged: dict[str, dict[str, Any]] = {}
    for record in records:
        for row in record["rows"]:
            entry = merged.setdefault(
                row["key"], {"name": row["name"], "values": defaultdict(list), "train_s": []}
            )
            if row.get("train_s") is not None:
                entry["train_s"].append(row["train_s"])
            for header, task, metric in PAIR_COLUMNS:
                if task == "embedding":
                    value = (row.get("embedding") or {}).get(metric, {}).get("after")
                    value = None if value is None else value / 100
                else:
                    value = row["tasks"].get(task, {}).get(metric)
                if value is not None:
                    entry["values"][header].append(value)
    used = [c for c in PAIR_COLUMNS if any(e["values"].get(c[0]) for e in merged.values())]
    body = [
        [
            entry["name"],
            *(mean_sd(entry["values"].get(header, []), scale=100) for header, _, _ in used),
            mean_sd(entry["train_s"], digits=0),
        ]
        for entry in merged.values()
    ]
    return table(["model", *(header for header, _, _ in used), "train s"], body)


CURVE_CAPTION = "learning curve"
CURVE_TASKS = (("topic", "topic acc"), ("sentiment", "sentiment acc"), ("ner", "NER entity F1"))


def curve_table(records: list[dict[str, Any]]) -> list[str]:
    """The `longer` part's learning curve: per-task steps down, single-task vs multi-task score per task
    (mean ± sd over seeds, percentages) on the curve's test subsets."""
    first = records[0]["learning_curve"]
    steps = first["steps_per_task"]
    if any(record["learning_curve"]["steps_per_task"] != steps for record in records):
        raise ResultsError("The longer part's results files have different learning-curve steps.")
    header = ["steps per task", "multi-task batches (topic / sentiment / NER)"]
    for _, title in CURVE_TASKS:
        header += [f"{title}, single", f"{title}, multi"]
    body = []
    for i, step in enumerate(steps):
        batches = first["multitask_task_batches"][i]
        cells = [str(step), " / ".join(str(batches[task]) for task, _ in CURVE_TASKS)]
        for task, _ in CURVE_TASKS:
            for side in ("single", "multitask"):
                cells.append(mean_sd([record["learning_curve"][side][task][i] for record in records], 100))
        body.append(cells)
    rows = ", ".join(f"{task} {n}" for task, n in first["test_rows"].items())
    caption = (
        f"Learning curve on seeded test subsets ({rows} rows), scored mid-run: a point is a model part-way "
        "through its schedule, not one trained for that many steps on its own."
    )
    return [caption, "", *table(header, body)]


def plot_learning_curve(plt, records: list[dict[str, Any]], path: Path, mode: str) -> None:
    steps = records[0]["learning_curve"]["steps_per_task"]
    figure, axes = plt.subplots(1, len(CURVE_TASKS), figsize=(4.2 * len(CURVE_TASKS), 3.6), squeeze=False)
    for axis, (task, title) in zip(axes[0], CURVE_TASKS):
        for side, label, marker in (("single", "single-task", "o"), ("multitask", "multi-task", "s")):
            values = [
                100 * statistics.fmean(record["learning_curve"][side][task][i] for record in records)
                for i in range(len(steps))
            ]
            axis.plot(steps, values, marker=marker, label=label)
        axis.set_xlabel("optimizer steps on this task")
        axis.set_ylabel(f"{title} (%)")
        axis.set_title(task)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    factor = (records[0].get("data") or {}).get("longer_factor")
    figure.suptitle(f"Reference benchmark ({mode}), {factor}x budget: learning curve on test subsets")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def pairs_budget_line(records: list[dict[str, Any]]) -> str:
    budget = records[0]["budget"]
    data = records[0].get("data") or {}
    t = budget["steps_per_task"]
    text = (
        f"Budget: T = {t} optimizer steps per task (reference 3T, + similarity 4T, SICK rows T, per_task batches, "
        f"uniform sampling), batch {budget['batch_size']}, max_seq_length {budget['max_seq_length']}, lr "
        f"{budget['learning_rate']:g} encoder / {budget['head_learning_rate']:g} heads, training rows capped at "
        f"{budget['max_train_examples']} per task; test rows "
        + ", ".join(f"{task} {n}" for task, n in (data.get("test_rows") or {}).items())
        + f"; embedding distillation weight {data.get('distillation_weight')}. Embedding Spearman: cosine of the "
        "two texts' embeddings against the gold score, on the "
        + (
            "full STS-B and SICK test sets"
            if budget["max_test_examples"] is None
            else "STS-B and SICK test SUBSETS"
        )
        + " (x 100)."
    )
    text += budget_warning(records)
    return text


def embedding_budget_line(records: list[dict[str, Any]]) -> str:
    budget = records[0]["budget"]
    data = records[0].get("data") or {}
    t = budget["steps_per_task"]
    text = (
        f"Budget: T = {t}; similarity on STS-B train alone for T steps ({budget['max_train_examples']} training "
        f"rows) and for 4T steps (4x the rows); (c) + distillation: topic, sentiment, NER and similarity, 4T "
        f"per_task batches, uniform sampling, embedding distillation weight {data.get('distillation_weight')}; "
        f"batch {budget['batch_size']}, max_seq_length {budget['max_seq_length']}, lr "
        f"{budget['learning_rate']:g} encoder / {budget['head_learning_rate']:g} heads; test rows "
        + ", ".join(f"{task} {n}" for task, n in (data.get("test_rows") or {}).items())
        + "."
    )
    text += budget_warning(records)
    return text


def no_compromise_budget_line(records: list[dict[str, Any]]) -> str:
    budget = records[0]["budget"]
    data = records[0].get("data") or {}
    rows = sorted({row["key"] for record in records for row in record["rows"]})
    text = (
        f"Budget: {data.get('factor')}x the reference, {budget['steps_per_task']} steps of {budget['batch_size']} "
        f"rows per task (each single-task model {budget['steps_per_task']} steps; a multi-task model that many per "
        f"task, per_task batches, uniform sampling), {budget['max_train_examples']} training rows per task, "
        f"max_seq_length {budget['max_seq_length']}, lr {budget['learning_rate']:g} encoder / "
        f"{budget['head_learning_rate']:g} heads; combined = {' + '.join(records[0].get('combined') or [])}; "
        f"rows measured: {', '.join(rows)}; seeds "
        + ", ".join(str(r["seed"]) for r in records)
        + "; test rows "
        + ", ".join(f"{task} {n}" for task, n in (data.get("test_rows") or {}).items())
        + (" (an unfinished run: rows missing)" if any(not r.get("complete", True) for r in records) else "")
        + "."
    )
    return text + budget_warning(records)


# The rows of the no_compromise part, in the order it runs them (reference_no_compromise reads them here: this
# module loads without torch); its table lists them in this order after the always-run `original`.
NO_COMPROMISE_ROWS = (
    "teachers",
    "plain",
    "distillation",
    "layer_mix",
    "lp_ft",
    "combined",
    "wise_ft",
    "plain_3",
    "combined_3",
    "cross_domain_plain",
    "cross_domain_combined",
    "cross_domain_probe",
)
NO_COMPROMISE_ORDER = ("original", *NO_COMPROMISE_ROWS)


def wise_ft_table(records: list[dict[str, Any]]) -> list[str]:
    """The WiSE-FT curve (`no_compromise` part): one line per alpha, mean ± sd over seeds."""
    values: dict[float, dict[str, list[float]]] = {}
    source = None
    for record in records:
        for row in record["rows"]:
            if row["kind"] != "curve":
                continue
            source = row["source"]
            for point in row["curve"]:
                entry = values.setdefault(point["alpha"], defaultdict(list))
                for header, task, metric in PAIR_COLUMNS:
                    value = (
                        (point["embedding"].get(metric) or {}).get("after", None)
                        if task == "embedding"
                        else (point["tasks"].get(task) or {}).get(metric)
                    )
                    if value is not None:
                        entry[header].append(value / 100 if task == "embedding" else value)
    if not values:
        return []
    used = [c for c in PAIR_COLUMNS if any(v.get(c[0]) for v in values.values())]
    body = [
        [f"{alpha:g}", *(mean_sd(entry.get(header, []), scale=100) for header, _, _ in used)]
        for alpha, entry in sorted(values.items())
    ]
    caption = (
        f"WiSE-FT of `{source}`: its encoder interpolated with the original, (1 - alpha) x original + alpha x "
        f"trained, heads kept (alpha 1 is the `{source}` row, alpha 0 the packaged encoder's row)."
    )
    return [caption, "", *table(["alpha", *(header for header, _, _ in used)], body), ""]


def cross_domain_table(records: list[dict[str, Any]]) -> list[str]:
    """Sentiment trained on SST-2: in-domain (SST-2 test) and cross-domain (multi_domain_sentiment test)."""
    merged: dict[str, dict[str, Any]] = {}
    for record in records:
        for row in record["rows"]:
            if not row["key"].startswith("cross_domain"):
                continue
            entry = merged.setdefault(row["key"], {"name": row["name"], "in": [], "cross": [], "train_s": []})
            entry["in"].append(((row.get("validation") or {}).get("sentiment") or {}).get("accuracy"))
            entry["cross"].append((row["tasks"].get("sentiment") or {}).get("accuracy"))
            entry["train_s"].append(row.get("train_s"))
    if not merged:
        return []
    body = [
        [
            e["name"],
            mean_sd([v for v in e["in"] if v is not None], scale=100),
            mean_sd([v for v in e["cross"] if v is not None], scale=100),
            mean_sd([v for v in e["train_s"] if v is not None], digits=0),
        ]
        for e in merged.values()
    ]
    header = ["sentiment trained on SST-2", "SST-2 test acc", "multi_domain_sentiment test acc", "train s"]
    return [*table(header, body), ""]


def add_task_notes(records: list[dict[str, Any]]) -> list[str]:
    """Per seed: did the old tasks' predictions stay identical, and how much faster an epoch trained."""
    notes = []
    for record in records:
        for row in record["rows"]:
            speed = row.get("speed")
            if row["key"] != "add-task" or not speed:
                continue
            identical = ", ".join(
                f"{task} {'identical' if same else 'CHANGED'}"
                for task, same in row["old_predictions_identical"].items()
            )
            compared = sum(row["compared_texts"].values())
            notes.append(
                f"- add-task (seed {record['seed']}): old tasks' predictions on {compared} test texts: {identical}; "
                f"an epoch ({speed['steps_per_epoch']} steps) on the fast path {speed['fast_epoch_s']:.1f} s after "
                f"one {speed['encode_once_s']:.0f} s encoding pass, vs {speed['full_epoch_s']:.0f} s for the full "
                f"fine-tune (sick-bi's optimizer loop per step): {speed['per_epoch_speedup']:.0f}x per epoch, "
                f"{speed['first_epoch_speedup']:.1f}x for the first epoch with its encoding."
            )
    return [*notes, ""] if notes else []


def loss_weight_notes(records: list[dict[str, Any]]) -> list[str]:
    """One line per uncertainty-weighted run: the loss weights exp(-s) it ended with, per seed."""
    notes = []
    for record in records:
        for row in record["rows"]:
            weights = row.get("learned_loss_weights")
            if weights:
                values = ", ".join(f"{task} {value:.3f}" for task, value in weights.items())
                notes.append(
                    f"- {row['name']} (seed {record['seed']}): learned loss weights exp(-s) {values}."
                )
    return [*notes, ""] if notes else []


def serving_caption(inference: dict[str, Any]) -> str:
    weights = inference.get("single_task_weights") or {}
    untrained = [task for task, how in weights.items() if how.startswith("untrained")]
    text = (
        f"Serving {', '.join(inference['tasks'])} on the same {inference['texts']} texts "
        f"({inference['text_source']}), batch {inference['batch_size']}, max_seq_length "
        f"{inference['max_seq_length']}, median of {inference['repeats']} interleaved run(s):"
    )
    if untrained:
        text += f" single-task models for {', '.join(untrained)} had untrained classifiers (cost only)."
    return text


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of `path` (or append it; or create the file)."""
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            text = head + section.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = section
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- plots
def plot_all(records: list[dict[str, Any]], img_dir: Path) -> dict[str, dict[str, Path]]:
    """Per mode: score vs training time (reference rows), the topic/sentiment confusion matrices and the
    `longer` part's learning curve.
    Returns {mode: {caption: path}}; empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib).")
        return {}
    img_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, dict[str, Path]] = {}
    for mode, parts in by_mode_and_part(records).items():
        suffix = "" if mode == "full" else f"-{mode}"
        images[mode] = {}
        if parts.get("longer"):
            path = img_dir / f"reference-learning-curve{suffix}.png"
            plot_learning_curve(plt, parts["longer"], path, mode)
            images[mode][CURVE_CAPTION] = path
        rows = merge_rows([r for part in REFERENCE_PARTS for r in parts.get(part, [])])
        if not rows:
            continue
        path = img_dir / f"reference-score-vs-time{suffix}.png"
        plot_score_vs_time(plt, rows, path, mode)
        images[mode]["score vs training time"] = path
        path = img_dir / f"reference-confusion{suffix}.png"
        if plot_confusions(plt, rows, path, mode):
            images[mode]["confusion matrices"] = path
    return images


def plot_score_vs_time(plt, rows: list[dict[str, Any]], path: Path, mode: str) -> None:
    tasks = [task for task, _ in task_columns(rows) if task in ("topic", "sentiment", "ner")]
    tasks = list(dict.fromkeys(tasks))
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    markers = "osD^vP*X"
    for axis, task in zip(axes[0], tasks):
        for index, row in enumerate(rows):
            metrics = row["scores"].get(task)
            if not metrics:
                continue
            metric = "entity F1" if "entity F1" in metrics else "acc"
            axis.scatter(
                statistics.fmean(row["train_s"]),
                100 * statistics.fmean(metrics[metric]),
                marker=markers[index % len(markers)],
                s=60,
                label=row["name"],
            )
            axis.set_ylabel(f"{task} {metric} (%)")
        axis.set_xlabel("training wall time, all tasks (s)")
        axis.set_title(task)
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.suptitle(f"Reference benchmark ({mode}): test score vs training time")
    figure.tight_layout(rect=(0, 0.08 + 0.03 * ((len(labels) + 1) // 2), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_confusions(plt, rows: list[dict[str, Any]], path: Path, mode: str) -> bool:
    """Topic and sentiment confusion matrices (summed over seeds), single-task vs multi-task."""
    chosen = [row for row in rows if row["key"] in ("single", "multitask")] or rows[:2]
    tasks = [t for t in ("topic", "sentiment") if any(t in row["confusion"] for row in chosen)]
    if not tasks:
        return False
    figure, axes = plt.subplots(
        len(tasks), len(chosen), figsize=(4.2 * len(chosen), 3.9 * len(tasks)), squeeze=False
    )
    for i, task in enumerate(tasks):
        for j, row in enumerate(chosen):
            axis = axes[i][j]
            confusion = row["confusion"].get(task)
            if confusion is None:
                axis.axis("off")
                continue
            matrix = confusion["matrix"]
            totals = [max(1, sum(r)) for r in matrix]
            shares = [[value / total for value in r] for r, total in zip(matrix, totals)]
            axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
            labels = confusion["labels"]
            axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            axis.set_yticks(range(len(labels)), labels, fontsize=8)
            for a, r in enumerate(matrix):
                for b, value in enumerate(r):
                    axis.text(
                        b,
                        a,
                        str(value),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if shares[a][b] > 0.5 else "black",
                    )
            axis.set_xlabel("predicted")
            axis.set_ylabel("gold")
            axis.set_title(f"{task}: {row['name']}", fontsize=9)
    figure.suptitle(f"Reference benchmark ({mode}): test confusion matrices (rows = gold)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reference.py report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help=f"page to write (default: {DOCS_PAGE.relative_to(REPO)} if it exists, else "
        f"{(DEFAULT_RESULTS / 'reference.md').relative_to(REPO)})",
    )
    parser.add_argument("--img-dir", type=Path, default=DEFAULT_IMG)
    parser.add_argument("--no-plots", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    records = load_results(args.results_dir)
    if not records:
        raise SystemExit(f"No reference-*.json results in {args.results_dir}: run bench/reference.py first.")
    markdown = args.markdown or (DOCS_PAGE if DOCS_PAGE.is_file() else args.results_dir / "reference.md")
    images = {} if args.no_plots else plot_all(records, args.img_dir)
    section = render(records, markdown.resolve().parent, images)
    write_section(markdown, section)
    print(section)
    print(f"Wrote {markdown}" + "".join(f"\n      {p}" for m in images.values() for p in m.values()))
    return section
