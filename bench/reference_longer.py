"""The `longer` part of `bench/reference.py`: the headline rows at LONGER_FACTOR x the reference budget, with a
learning curve. Does multi-task training's NER gain (+11 F1 at T = 100 steps per task) survive once the
single-task model has trained enough?

    key         rows (the reference tasks: topic AG News, sentiment SST-5, NER CoNLL-2003)
    single      3 single-task HF models (AutoModelFor* + Trainer), 4T steps each
    multitask   one multi-task model, 3 x 4T steps (per_task batches, uniform sampling)

Everything else is the reference budget (`reference_parts.BUDGETS`: batch 32, max_seq_length 128, lr 1e-4 /
heads 1e-3, 10% warm-up then linear decay over the whole run); training rows grow with the steps (4T x 32 per
task: one pass, SST-5 has 8,544 so its rows repeat). Learning curve: at CURVE_FRACTIONS of each run (per-task
steps 50, 100, 200, 300, 400 at T = 100; the multi-task model at 3x those optimizer steps), both sides score
the same CURVE_TEST_ROWS seeded test rows per task; the time this takes is left out of train_s. The final
models are scored on the full official test splits. A point of the curve is a model in the middle of a 4T-step
schedule (its learning rate not yet decayed), not a model trained for that many steps on its own schedule:
those are the 1x rows of the `baselines` and `multitask` parts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reference_parts import (
    TASKS3,
    Context,
    data_summary,
    load_data,
    multitask_row,
    planned_task_batches,
    reference_tasks,
    scaled_budget,
    single_task_row,
    warm_cache,
)

LONGER_FACTOR = 4
CURVE_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)
CURVE_TEST_ROWS = 1000  # per task, seeded (the same rows on both sides)


def curve_steps(steps: int) -> list[int]:
    return sorted({max(1, round(fraction * steps)) for fraction in CURVE_FRACTIONS})


def main_score(scores: dict[str, Any]) -> float:
    """Accuracy for the sentence tasks, entity F1 for NER."""
    return scores["accuracy"] if "macro_f1" in scores else scores["f1"]


def part_longer(ctx: Context) -> dict[str, Any]:
    base = ctx.budget
    budget = scaled_budget(base, LONGER_FACTOR)
    ctx = dataclasses.replace(ctx, budget=budget)
    steps = budget.steps_per_task
    caps = dict.fromkeys(TASKS3, budget.max_train_examples)
    tasks = reference_tasks(ctx.data, caps, base.max_test_examples)
    data = warm_cache(ctx, tasks)
    curve_rows_cap = min(CURVE_TEST_ROWS, base.max_test_examples or CURVE_TEST_ROWS)
    curve_data = load_data(ctx, reference_tasks(ctx.data, caps, curve_rows_cap))
    single_points = curve_steps(steps)
    multi_points = [len(tasks) * s for s in single_points]

    single = single_task_row(
        ctx,
        "single",
        f"3 single-task models, {steps} steps each ({LONGER_FACTOR}x)",
        tasks,
        steps,
        single_points,
        curve_data.test,
    )
    batches = planned_task_batches(
        data.group_sizes, data.group_tasks, len(tasks) * steps, budget, "uniform", ctx.seed
    )
    multi = multitask_row(
        ctx,
        "multitask",
        f"multi-task, {len(tasks) * steps} steps ({LONGER_FACTOR}x)",
        tasks,
        len(tasks) * steps,
        {},
        batches,
        keep_weights=False,
        curve_steps=multi_points,
        curve_rows=curve_data.test,
    )
    for point in multi["learning_curve"]:
        point["task_batches"] = planned_task_batches(
            data.group_sizes, data.group_tasks, point["step"], budget, "uniform", ctx.seed
        )

    curve = {
        "steps_per_task": single_points,
        "test_rows": {task: len(rows) for task, rows in curve_data.test.items()},
        "single": {
            task: [main_score(p["tasks"][task]) for p in single["per_task"][task]["learning_curve"]]
            for task in tasks
        },
        "multitask": {
            task: [main_score(p["tasks"][task]) for p in multi["learning_curve"]] for task in tasks
        },
        "multitask_task_batches": [p["task_batches"] for p in multi["learning_curve"]],
    }
    summary = data_summary(data, tasks)
    summary["longer_factor"] = LONGER_FACTOR
    summary["steps_per_task"] = steps
    return {"rows": [single, multi], "data": summary, "learning_curve": curve, "inference": None}
