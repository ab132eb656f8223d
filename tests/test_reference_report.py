"""The merge logic of `python bench/reference.py report` on synthetic results files: seeds averaged, confusion
matrices summed, modes kept apart, the marked section of a page replaced in place, bad files named."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

REPORT_PATH = Path(__file__).resolve().parents[1] / "bench" / "reference_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("reference_report", REPORT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUDGET = {
    "steps_per_task": 100,
    "ablation_steps_per_task": 30,
    "multidomain_steps": 200,
    "batch_size": 32,
    "max_seq_length": 128,
    "learning_rate": 1e-4,
    "head_learning_rate": 1e-3,
    "warmup": 0.1,
    "weight_decay": 0.01,
}
TOPIC_LABELS = ["Business", "Sci/Tech", "Sports", "World"]


def classification(accuracy: float, macro_f1: float, diagonal: int = 5) -> dict:
    matrix = [[diagonal if i == j else 1 for j in range(4)] for i in range(4)]
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "support": 32,
        "confusion_matrix": matrix,
        "labels": TOPIC_LABELS,
    }


def row(key: str, topic_accuracy: float, ner_f1: float, train_s: float) -> dict:
    return {
        "key": key,
        "name": f"{key} model",
        "tasks": {
            "topic": classification(topic_accuracy, topic_accuracy - 0.05),
            "ner": {"precision": ner_f1, "recall": ner_f1, "f1": ner_f1, "support": 10, "per_type": {}},
        },
        "train_s": train_s,
        "train_examples_per_s": 9600 / train_s,
        "params_to_serve": 22_700_000,
        "task_batches": {"topic": 100, "ner": 100},
    }


def record(part: str, seed: int, rows: list[dict], mode: str = "full", **extra) -> dict:
    return {
        "benchmark": "reference",
        "schema": 1,
        "part": part,
        "seed": seed,
        "mode": mode,
        "wall_s": 600.0,
        "git": {"commit": "0123456789abcdef", "dirty_files": 0},
        "machine": {
            "nproc": 2,
            "cpu_model": "Test CPU",
            "torch": "2.13.0",
            "torch_threads": 2,
            "loadavg_start": [0.5],
        },
        "budget": dict(BUDGET),
        "data": {
            "group_sizes": {"topic": 3200, "ner": 3200},
            "test_rows": {"topic": 7600, "ner": 3453},
            "max_eval_examples": {"topic": None, "ner": None},
        },
        "rows": rows,
        "inference": None,
        **extra,
    }


def write(folder: Path, name: str, content: dict) -> None:
    (folder / name).write_text(json.dumps(content), encoding="utf-8")


def serving(multitask_speed: float, single_speed: float) -> dict:
    return {
        "texts": 600,
        "text_source": "test rows",
        "tasks": ["topic", "ner"],
        "batch_size": 64,
        "max_seq_length": 128,
        "repeats": 3,
        "single_task_weights": {"topic": "trained", "ner": "trained"},
        "rows": [
            {
                "key": "multitask_predict",
                "name": "multi-task predict",
                "sentences_per_s": multitask_speed,
                "models": 1,
                "params": 22_700_000,
            },
            {
                "key": "single_sorted_loops",
                "name": "single-task loops",
                "sentences_per_s": single_speed,
                "models": 2,
                "params": 45_400_000,
            },
        ],
    }


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    write(
        folder, "reference-baselines-seed0.json", record("baselines", 0, [row("single", 0.80, 0.60, 100.0)])
    )
    write(
        folder, "reference-baselines-seed1.json", record("baselines", 1, [row("single", 0.90, 0.70, 300.0)])
    )
    write(
        folder,
        "reference-multitask-seed0.json",
        record("multitask", 0, [row("multitask", 0.85, 0.65, 50.0)], inference=serving(30.0, 10.0)),
    )
    write(
        folder,
        "reference-multitask-seed0-quick.json",
        record("multitask", 0, [row("multitask", 0.25, 0.05, 5.0)], mode="quick"),
    )
    uncertainty = row("uniform-uncertainty", 0.70, 0.50, 80.0)
    uncertainty["learned_loss_weights"] = {"topic": 0.95, "ner": 1.1}
    write(folder, "reference-ablations-seed0.json", record("ablations", 0, [uncertainty]))
    write(folder, "notes.json", {"not": "a results file, ignored by its name"})
    return folder


def test_seeds_are_averaged_and_modes_kept_apart(report, results_dir: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    section = report.main(["--results-dir", str(results_dir), "--markdown", str(page), "--no-plots"])

    full, quick = section.split("### Quick mode")
    # Two seeds: mean ± sample standard deviation, in percent (topic 80 and 90; NER 60 and 70; 100 and 300 s).
    single = next(line for line in full.splitlines() if line.startswith("| single model"))
    assert single.split(" | ")[1:4] == ["85.0 ± 7.1", "80.0 ± 7.1", "65.0 ± 7.1"]
    assert "| 200 ± 141 |" in single
    multitask = next(line for line in full.splitlines() if line.startswith("| multitask model"))
    assert multitask.split(" | ")[1:4] == ["85.0", "80.0", "65.0"]
    # Serving: the ratio is computed against the multi-task predict row.
    assert "| single-task loops | 10.0 | 0.33x | 2 | 45.4 M |" in full
    assert "full official test splits (topic 7600, ner 3453)" in full
    # Ablations: the batches each task got, and the loss weights uncertainty weighting learned.
    assert "| uniform-uncertainty model | topic 100 / ner 100 | 70.0 | 65.0 | 50.0 |" in full
    assert "learned loss weights exp(-s) topic 0.950, ner 1.100" in full
    # The quick result stays in its own, labelled section.
    assert "not a result" in quick
    assert "| multitask model | 25.0 | 20.0 | 5.0 |" in quick
    assert "25.0" not in full
    assert page.read_text(encoding="utf-8") == section


def test_confusion_matrices_are_summed_over_seeds(report, results_dir: Path) -> None:
    records = [r for r in report.load_results(results_dir) if r["part"] == "baselines"]
    (merged,) = report.merge_rows(records)
    assert merged["seeds"] == [0, 1]
    assert merged["confusion"]["topic"]["labels"] == TOPIC_LABELS
    assert merged["confusion"]["topic"]["matrix"][0] == [10, 2, 2, 2]


def test_marked_section_is_replaced_in_place(report, results_dir: Path, tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(
        f"# Benchmarks\n\nIntro.\n\n{report.BEGIN}\nold table\n{report.END}\n\n## Other section\n",
        encoding="utf-8",
    )
    report.main(["--results-dir", str(results_dir), "--markdown", str(page), "--no-plots"])
    first = page.read_text(encoding="utf-8")
    assert first.startswith("# Benchmarks\n\nIntro.\n\n" + report.BEGIN)
    assert first.endswith(report.END + "\n\n## Other section\n")
    assert "old table" not in first
    assert first.count(report.BEGIN) == 1

    report.main(["--results-dir", str(results_dir), "--markdown", str(page), "--no-plots"])
    assert page.read_text(encoding="utf-8") == first  # idempotent

    unmarked = tmp_path / "unmarked.md"
    unmarked.write_text("# Notes\n", encoding="utf-8")
    report.main(["--results-dir", str(results_dir), "--markdown", str(unmarked), "--no-plots"])
    assert unmarked.read_text(encoding="utf-8").startswith("# Notes\n\n" + report.BEGIN)


def test_budget_mismatch_is_flagged(report, results_dir: Path, tmp_path: Path) -> None:
    other = record("baselines", 2, [row("single", 0.85, 0.65, 200.0)])
    other["budget"] = {**copy.deepcopy(BUDGET), "steps_per_task": 50}
    write(results_dir, "reference-baselines-seed2.json", other)
    section = report.main(
        ["--results-dir", str(results_dir), "--markdown", str(tmp_path / "p.md"), "--no-plots"]
    )
    assert "different budgets" in section


def test_bad_results_file_is_named(report, results_dir: Path) -> None:
    bad = results_dir / "reference-ablations-seed0.json"
    bad.write_text('{"benchmark": "reference", "part": "ablations"', encoding="utf-8")
    with pytest.raises(report.ResultsError, match=r"reference-ablations-seed0\.json: invalid JSON"):
        report.load_results(results_dir)
    bad.write_text(json.dumps({"benchmark": "reference", "part": "ablations", "seed": 0}), encoding="utf-8")
    with pytest.raises(report.ResultsError, match=r"reference-ablations-seed0\.json: missing field\(s\)"):
        report.load_results(results_dir)


def test_plots_are_written(report, results_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (results_dir / "reference-multitask-seed0-quick.json").unlink()  # one mode: half the figures to draw
    page = tmp_path / "docs" / "benchmarks.md"
    img = tmp_path / "docs" / "img"
    section = report.main(["--results-dir", str(results_dir), "--markdown", str(page), "--img-dir", str(img)])
    for name in ("reference-score-vs-time.png", "reference-confusion.png"):
        assert (img / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in img.iterdir()) == ["reference-confusion.png", "reference-score-vs-time.png"]
    assert "![score vs training time](img/reference-score-vs-time.png)" in section


def longer_record(seed: int, ner_curve: dict[str, list[float]], steps: list[int] | None = None) -> dict:
    """A `longer` part results file: final rows and a learning curve of 2 points per side."""
    curve_steps = steps or [50, 400]
    curve = {
        "steps_per_task": curve_steps,
        "test_rows": {"topic": 1000, "sentiment": 1000, "ner": 1000},
        "single": {"topic": [0.80, 0.90], "sentiment": [0.60, 0.70], "ner": ner_curve["single"]},
        "multitask": {"topic": [0.82, 0.91], "sentiment": [0.61, 0.69], "ner": ner_curve["multitask"]},
        "multitask_task_batches": [
            {"topic": 48, "sentiment": 51, "ner": 51},
            {"topic": 399, "sentiment": 402, "ner": 399},
        ],
    }
    content = record(
        "longer",
        seed,
        [row("single", 0.90, ner_curve["single"][-1], 1200.0), row("multitask", 0.91, 0.80, 1100.0)],
        learning_curve=curve,
    )
    content["data"].update({"longer_factor": 4, "steps_per_task": 400})
    return content


def longer_results(tmp_path: Path, ner_curves: list[dict[str, list[float]]]) -> Path:
    """A results folder with one `longer` results file per NER curve (seeds 0, 1, ...)."""
    folder = tmp_path / "longer"
    folder.mkdir()
    for seed, ner_curve in enumerate(ner_curves):
        write(folder, f"reference-longer-seed{seed}.json", longer_record(seed, ner_curve))
    return folder


def test_longer_part_reports_the_learning_curve(report, tmp_path: Path) -> None:
    folder = longer_results(
        tmp_path,
        [
            {"single": [0.20, 0.70], "multitask": [0.50, 0.80]},
            {"single": [0.30, 0.80], "multitask": [0.50, 0.90]},
        ],
    )
    section = report.main(["--results-dir", str(folder), "--markdown", str(tmp_path / "p.md"), "--no-plots"])
    assert "#### The headline rows at 4x the budget, with a learning curve" in section
    assert "400 optimizer steps per task (4x the reference T = 100" in section
    assert "multi-task: 1200 per_task batches" in section
    # The curve: per-task steps down, single vs multi per task, mean ± sd over the two seeds (percent).
    first = next(line for line in section.splitlines() if line.startswith("| 50 |"))
    assert (
        first
        == "| 50 | 48 / 51 / 51 | 80.0 ± 0.0 | 82.0 ± 0.0 | 60.0 ± 0.0 | 61.0 ± 0.0 | 25.0 ± 7.1 | 50.0 ± 0.0 |"
    )
    last = next(line for line in section.splitlines() if line.startswith("| 400 |"))
    assert last.endswith("| 75.0 ± 7.1 | 85.0 ± 7.1 |")
    assert "(topic 1000, sentiment 1000, ner 1000 rows)" in section

    # Seeds with different curve steps cannot be merged into one table.
    write(
        folder,
        "reference-longer-seed2.json",
        longer_record(2, {"single": [0.2, 0.7], "multitask": [0.5, 0.8]}, steps=[25, 400]),
    )
    with pytest.raises(report.ResultsError, match="different learning-curve steps"):
        report.main(["--results-dir", str(folder), "--markdown", str(tmp_path / "p.md"), "--no-plots"])


def test_longer_part_plots_its_curve(report, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    folder = longer_results(tmp_path, [{"single": [0.20, 0.70], "multitask": [0.50, 0.80]}])
    img = tmp_path / "docs" / "img"
    section = report.main(
        ["--results-dir", str(folder), "--markdown", str(tmp_path / "docs" / "b.md"), "--img-dir", str(img)]
    )
    assert (img / "reference-learning-curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![learning curve](img/reference-learning-curve.png)" in section


def test_embedding_part_gets_its_own_table(report, tmp_path: Path) -> None:
    folder = tmp_path / "embedding"
    folder.mkdir()
    alone = {
        "key": "stsb-alone",
        "name": "similarity alone",
        "tasks": {"similarity": {"pearson": 0.84, "spearman": 0.83, "support": 1379}},
        "embedding": {
            "stsb_test": {"before": 82.0, "after": 83.0},
            "sick_test": {"before": 77.1, "after": 70.0},
        },
        "train_s": 60.0,
    }
    for seed, after in ((0, 83.0), (1, 85.0)):
        content = record("embedding", seed, [copy.deepcopy(alone)])
        content["rows"][0]["embedding"]["stsb_test"]["after"] = after
        content["data"] = {"test_rows": {"similarity": 1379}, "distillation_weight": 1.0}
        content["budget"]["max_train_examples"] = 3200
        write(folder, f"reference-embedding-seed{seed}.json", content)
    section = report.main(["--results-dir", str(folder), "--markdown", str(tmp_path / "p.md"), "--no-plots"])
    assert "#### What limits the embedding of row (c)" in section
    assert "embedding distillation weight 1.0" in section
    line = next(line for line in section.splitlines() if line.startswith("| similarity alone"))
    # STS-B embedding 83 and 85 -> 84.0 ± 1.4; SICK 70.0 on both seeds; the task's own Spearman 83.0.
    assert line.split(" | ")[1:4] == ["84.0 ± 1.4", "70.0 ± 0.0", "83.0 ± 0.0"]


def test_no_compromise_part_gets_its_tables(report, tmp_path: Path) -> None:
    folder = tmp_path / "no_compromise"
    folder.mkdir()

    def student(key: str, topic: float, stsb: float) -> dict:
        return {
            "key": key,
            "name": f"{key} row",
            "kind": "multi-task",
            "tasks": {"topic": classification(topic, topic - 0.05)},
            "embedding": {"stsb_test": {"before": 82.0, "after": stsb}},
            "train_s": 100.0,
        }

    curve = {
        "key": "wise_ft",
        "name": "WiSE-FT",
        "kind": "curve",
        "source": "combined",
        "tasks": {},
        "curve": [
            {
                "alpha": 0.5,
                "tasks": {"topic": {"accuracy": 0.80}},
                "embedding": {"stsb_test": {"after": 83.0}},
            }
        ],
    }
    cross = {
        "key": "cross_domain_plain",
        "name": "sentiment on SST-2",
        "kind": "multi-task",
        "tasks": {"sentiment": {"accuracy": 0.70}},
        "validation": {"sentiment": {"accuracy": 0.90}},
        "train_s": 50.0,
    }
    for seed, topic in ((0, 0.90), (1, 0.92)):
        rows = [student("plain", topic, 78.0), student("combined", topic + 0.01, 84.0), curve, cross]
        content = record("no_compromise", seed, copy.deepcopy(rows), combined=["distillation", "lp_ft"])
        content["data"]["factor"] = 4
        content["budget"]["max_train_examples"] = 12800
        content["complete"] = seed == 0
        write(folder, f"reference-no_compromise-seed{seed}.json", content)
    section = report.main(["--results-dir", str(folder), "--markdown", str(tmp_path / "p.md"), "--no-plots"])
    assert "#### No compromise" in section
    assert "Budget: 4x the reference" in section and "combined = distillation + lp_ft" in section
    assert "(an unfinished run: rows missing)" in section
    combined = next(line for line in section.splitlines() if line.startswith("| combined row"))
    assert combined.split(" | ")[1:3] == ["84.0 ± 0.0", "92.0 ± 1.4"]  # STS-B embedding, topic accuracy
    wise = next(line for line in section.splitlines() if line.startswith("| 0.5 |"))
    assert wise.rstrip(" |").split(" | ")[1:3] == ["83.0 ± 0.0", "80.0 ± 0.0"]
    assert "WiSE-FT of `combined`" in section
    cross_line = next(line for line in section.splitlines() if line.startswith("| sentiment on SST-2"))
    assert cross_line.split(" | ")[1:3] == ["90.0 ± 0.0", "70.0 ± 0.0"]
    assert "| WiSE-FT |" not in section and "| sentiment on SST-2 |" not in section.split("WiSE-FT of")[0]


def test_a_run_of_some_rows_keeps_the_rows_measured_before(tmp_path: Path, monkeypatch, report) -> None:
    bench = REPORT_PATH.parent
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("reference_bench", bench / "reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    path = tmp_path / "reference-no_compromise-seed0.json"
    earlier = record("no_compromise", 0, [row("teachers", 0.9, 0.8, 10.0), row("plain", 0.8, 0.7, 10.0)])
    path.write_text(json.dumps(earlier), encoding="utf-8")
    header = {"part": "no_compromise", "seed": 0, "mode": "full"}
    started_at = {
        "commit": "fedcba9876543210",
        "dirty_files": 0,
    }  # HEAD when the run started, not when it saves
    context = {
        "start": 0.0,
        "load": [0.0],
        "data": "data",
        "git": started_at,
        "earlier": json.loads(path.read_text()),
    }
    result = {"budget": dict(BUDGET), "rows": [row("plain", 0.85, 0.75, 12.0), row("lp_ft", 0.9, 0.7, 11.0)]}
    saved = reference.save_record(path, header, context, result)
    assert [r["key"] for r in saved["rows"]] == ["teachers", "plain", "lp_ft"]
    assert saved["rows"][1]["train_s"] == 12.0  # the new measurement replaces the old one
    assert json.loads(path.read_text())["rows"] == saved["rows"] and saved["complete"] is False
    # Each row names the run that measured it: the earlier file's for "teachers", this run's for the others.
    assert saved["rows"][0]["measured_by"]["git"]["commit"] == "0123456789abcdef"
    assert saved["rows"][0]["measured_by"]["cpu_model"] == "Test CPU"
    assert saved["rows"][2]["measured_by"]["git"] == saved["git"] == started_at
    assert saved["rows"][2]["measured_by"]["cpu_model"] == saved["machine"]["cpu_model"]
    line = report.machine_line([saved])
    assert "Test CPU" in line and saved["machine"]["cpu_model"] in line and "0123456789" in line
    other = {**result, "budget": {**BUDGET, "steps_per_task": 400}}
    with pytest.raises(SystemExit, match="rows of another budget"):
        reference.save_record(path, header, context, other)
