"""The `no_compromise` part of `bench/reference.py`: can one multi-task model be at least as good as each
single-task model and still a good sentence encoder? (Issue 19.) Tasks: topic (AG News), sentiment (SST-5's
3 classes), NER (CoNLL-2003) and similarity (STS-B train, CoSENT), at FACTOR x the reference budget per task
(`reference_parts.BUDGETS`: T steps of 32 rows, max_seq_length 128, lr 1e-4 / heads 1e-3); the embedding is
scored on STS-B test and SICK test (SICK is never trained on).

    key                    row
    original               the packaged encoder, untrained: its embedding's STS-B and SICK Spearman (always run)
    teachers               4 single-task models (this package, one task each, FACTOR x T steps): the teachers
    plain                  the 4 tasks in one model, 4 x FACTOR x T steps (per_task batches, uniform sampling)
    distillation           plain + the teachers (teacher annealing 1 -> 0)
    layer_mix              plain + topic, sentiment and NER heads reading a learned mix of all layers
    lp_ft                  plain + a linear probe first (LP_FT_EPOCHS epochs on the frozen encoder's fast path)
    combined               plain + the options given by --combined (default COMBINED: all three)
    wise_ft                WiSE-FT curve of `combined` (else `plain`): encoder interpolated with the original at
                           WISE_ALPHAS, heads kept, every test set and the embedding scored
    plain_3 / combined_3   topic + sentiment + NER only (no similarity task), plain and combined: the embedding
                           without a similarity task
    cross_domain_*         sentiment trained on SST-2 (binary) in the mix (topic, NER, similarity), scored on SST-2
                           test (in-domain) and multi_domain_sentiment test (cross-domain); `_plain`, `_combined`
                           and `_probe` (the encoder frozen, the sentiment head trained on the fast path)

`python bench/reference.py --part no_compromise --seed 0 [--rows teachers plain distillation] [--factor 4]`:
rows run in the order above (a row that needs the teachers, when `teachers` is not among the rows of this run,
takes those an earlier run of this seed and budget trained, else trains them); the results file is rewritten after every row, so a run stopped between rows keeps what it measured.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from reference_pairs import embedding_sets, original_row, stsb_similarity
from reference_parts import (
    TASKS3,
    Context,
    data_summary,
    load_data,
    multitask_row,
    planned_task_batches,
    reference_tasks,
    scaled_budget,
    task_scores,
    trained_before,
    warm_cache,
    with_caps,
)
from reference_report import NO_COMPROMISE_ROWS as ROWS

FACTOR = (
    4  # x the reference budget: where the longer part's single-task curves flatten (docs/discussion.md 7)
)
COMBINED = ("distillation", "layer_mix", "lp_ft")
LP_FT_EPOCHS = 3
PROBE_EPOCHS = 10
WISE_ALPHAS = (0.25, 0.5, 0.75)
TASKS4 = (*TASKS3, "similarity")


def four_tasks(ctx: Context, sentiment: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    budget = ctx.budget
    caps = dict.fromkeys(TASKS3, budget.max_train_examples)
    tasks = reference_tasks(ctx.data, caps, budget.max_test_examples)
    if sentiment is not None:
        tasks["sentiment"] = sentiment
    tasks["similarity"] = with_caps(
        stsb_similarity(ctx.data), budget.max_train_examples, budget.max_test_examples
    )
    return tasks


def sst2_sentiment(ctx: Context) -> dict[str, Any]:
    """SST-2 sentiment: validation = SST-2 test (in-domain), test = multi_domain_sentiment test (cross-domain)."""
    data = ctx.data
    entry = {
        "type": "sequence_classification",
        "train": str(data / "sst2" / "train.jsonl"),
        "validation": str(data / "sst2" / "test.jsonl"),
        "test": str(data / "multi_domain_sentiment" / "test.jsonl"),
        "label_column": "sentiment",
        "labels": ["negative", "positive"],
    }
    return with_caps(entry, ctx.budget.max_train_examples, ctx.budget.max_test_examples)


def with_layer_mix(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The tasks with a head (all but similarity) reading a learned mix of every layer."""
    return {
        name: entry if entry["type"] == "similarity" else {**entry, "head": {"layers": "all"}}
        for name, entry in tasks.items()
    }


def options_for(methods: tuple[str, ...], teachers: dict[str, str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "distillation" in methods:
        options["teachers"] = dict(teachers or {})
    if "lp_ft" in methods:
        options["linear_probe_epochs"] = LP_FT_EPOCHS
    return options


def student_plan(
    ctx: Context, tasks: dict, methods: tuple[str, ...], teachers: dict | None
) -> tuple[dict, int, dict[str, Any], dict[str, int]]:
    """A multi-task row's run: its tasks (with the methods' head options), optimizer steps, options and the
    planned batches per task."""
    steps = len(tasks) * ctx.budget.steps_per_task
    data = warm_cache(ctx, tasks, single_tasks=False)
    batches = planned_task_batches(data.group_sizes, data.group_tasks, steps, ctx.budget, "uniform", ctx.seed)
    if "layer_mix" in methods:
        tasks = with_layer_mix(tasks)
    options = {
        "embedding_evaluation": embedding_sets(ctx.data, ctx.budget.max_test_examples),
        **options_for(methods, {t: p for t, p in (teachers or {}).items() if t in tasks}),
    }
    return tasks, steps, options, batches


def student_row(
    ctx: Context, key: str, name: str, tasks: dict, methods: tuple[str, ...], teachers: dict | None
) -> dict[str, Any]:
    tasks, steps, options, batches = student_plan(ctx, tasks, methods, teachers)
    row = multitask_row(ctx, key, name, tasks, steps, options, batches)
    row["methods"] = list(methods)
    return row


def teachers_row(
    ctx: Context, tasks: dict[str, dict[str, Any]], measure: bool = True
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """One single-task model per task (the teachers), trained by the package on the same rows and budget.
    `measure=False` (a row that only needs their models): the teachers an earlier run of this seed and budget
    trained with the same configs are taken as they are (no row then), the others trained."""
    per_task, folders, train_s = {}, {}, 0.0
    for task, entry in tasks.items():
        options = {"embedding_evaluation": embedding_sets(ctx.data, ctx.budget.max_test_examples)}
        options = options if task == "similarity" else {}
        folder = (
            None
            if measure
            else trained_before(ctx, f"teacher-{task}", {task: entry}, ctx.budget.steps_per_task, options)
        )
        if folder is not None:
            print(f"--> teacher of {task}: {folder} (trained before with this config)", flush=True)
            folders[task] = str(folder)
            continue
        row = multitask_row(
            ctx,
            f"teacher-{task}",
            f"single-task {task}",
            {task: entry},
            ctx.budget.steps_per_task,
            options,
        )
        per_task[task] = row
        folders[task] = row["model_dir"]
        train_s += row["train_s"]
    if len(per_task) < len(tasks):
        return None, folders
    combined = {
        "key": "teachers",
        "name": f"{len(tasks)} single-task models (the teachers), {ctx.budget.steps_per_task} steps each",
        "kind": "single-task",
        "tasks": {task: row["tasks"][task] for task, row in per_task.items()},
        "embedding": per_task["similarity"].get("embedding") if "similarity" in per_task else None,
        "train_s": train_s,
        "per_task": {task: {k: v for k, v in row.items() if k != "tasks"} for task, row in per_task.items()},
    }
    return combined, folders


def wise_ft_row(ctx: Context, source: dict[str, Any], tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The encoder of `source`'s model interpolated with the original at WISE_ALPHAS (heads kept); each point
    scored on every test set and the embedding sets, through the training job's evaluation."""
    import yaml

    from multitask_encoder.interpolate import interpolate_encoder
    from multitask_encoder.train import prepare_run
    from multitask_encoder.trainer import embedding_spearman

    run_dir = ctx.run_dir("wise_ft")
    config = {
        "max_seq_length": ctx.budget.max_seq_length,
        "tasks": tasks,
        "embedding_evaluation": embedding_sets(ctx.data, ctx.budget.max_test_examples),
        "init_from": source["model_dir"],
        "output_dir": str(run_dir / "evaluation"),
        "per_device_eval_batch_size": ctx.budget.eval_batch_size,
        "report_to": "none",
        "disable_tqdm": True,
        "data_cache_dir": str(ctx.cache_dir),
        "seed": ctx.seed,
    }
    path = run_dir / "wise_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    run = prepare_run([str(path)], use_teachers=False)
    # A copy: each point's weights are loaded into run.model, and every point interpolates the trained ones.
    trained = copy.deepcopy(run.model)
    points = []
    for alpha in WISE_ALPHAS:
        model = interpolate_encoder(trained, ctx.backbone, alpha)
        run.model.load_state_dict(model.state_dict(), strict=True)
        run.model.eval()
        evaluation = run.trainer.evaluate_tasks(run.data.test, metric_key_prefix="test")
        point = {
            "alpha": alpha,
            "tasks": {task: task_scores(m) for task, m in evaluation.per_task.items()},
            "embedding": {
                name: {"after": 100 * embedding_spearman(run.model, pairs), "support": len(pairs.scores)}
                for name, pairs in run.embedding_sets.items()
            },
        }
        print(f"--> WiSE-FT alpha {alpha}: {point}", flush=True)
        points.append(point)
    return {
        "key": "wise_ft",
        "name": f"WiSE-FT of {source['key']}: encoder (1 - a) * original + a * trained, heads kept",
        "kind": "curve",
        "source": source["key"],
        "tasks": {},
        "curve": points,
    }


def part_no_compromise(ctx: Context) -> dict[str, Any]:
    base = ctx.budget
    factor = ctx.options.get("factor") or FACTOR
    budget = scaled_budget(base, factor)
    ctx = dataclasses.replace(ctx, budget=budget)
    wanted = [row for row in ROWS if row in (ctx.options.get("rows") or ROWS)]
    combined = tuple(m for m in COMBINED if m in (ctx.options.get("combined") or COMBINED))
    tasks = four_tasks(ctx)
    data = warm_cache(ctx, tasks)
    result: dict[str, Any] = {
        "rows": [],
        "data": {**data_summary(data, tasks), "factor": factor, "steps_per_task": budget.steps_per_task},
        "combined": list(combined),
        "inference": None,
        "budget": dataclasses.asdict(budget),
        "complete": False,
    }

    def done(row: dict[str, Any]) -> None:
        result["rows"].append(row)
        if ctx.save_partial is not None:
            ctx.save_partial(result)

    done(original_row(ctx))  # the embedding every row is compared with (a minute)
    teachers: dict[str, str] = {}
    needs_teachers = "distillation" in wanted or (
        "distillation" in combined
        and any(r.startswith(("combined", "cross_domain_combined")) for r in wanted)
    )
    if "teachers" in wanted or needs_teachers:
        row, teachers = teachers_row(ctx, tasks, measure="teachers" in wanted)
        if "teachers" in wanted:
            done(row)
    students = {
        "plain": ("multi-task, 4 tasks", ()),
        "distillation": ("+ distillation from the teachers", ("distillation",)),
        "layer_mix": ("+ layer mixing (topic, sentiment, NER heads)", ("layer_mix",)),
        "lp_ft": (f"+ linear probe first ({LP_FT_EPOCHS} epochs)", ("lp_ft",)),
        "combined": (f"+ {' + '.join(combined)}", combined),
    }
    finished: dict[str, dict[str, Any]] = {}
    for key, (name, methods) in students.items():
        if key in wanted:
            finished[key] = student_row(ctx, key, name, tasks, methods, teachers)
            done(finished[key])
    if "wise_ft" in wanted:
        source = finished.get("combined") or finished.get("plain")
        if source is None:  # the combined model an earlier run of this seed and budget trained, if it kept it
            # (its config names its teachers' folders, which are where this seed's teachers are trained)
            folders = teachers or {task: str(ctx.run_root / f"teacher-{task}") for task in tasks}
            folder = trained_before(ctx, "combined", *student_plan(ctx, tasks, combined, folders)[:3])
            source = None if folder is None else {"key": "combined", "model_dir": str(folder)}
        if source is None:
            source = student_row(ctx, "plain", students["plain"][0], tasks, (), teachers)
            done(source)
        done(wise_ft_row(ctx, source, tasks))
    three = {name: entry for name, entry in tasks.items() if name in TASKS3}
    for key, methods in (("plain_3", ()), ("combined_3", combined)):
        if key in wanted:
            label = "topic + sentiment + NER" + (f", + {' + '.join(methods)}" if methods else "")
            done(student_row(ctx, key, label, three, methods, teachers))
    cross = four_tasks(ctx, sentiment=sst2_sentiment(ctx))
    for key, methods in (("cross_domain_plain", ()), ("cross_domain_combined", combined)):
        if key in wanted:
            label = "sentiment on SST-2 in the mix" + (f", + {' + '.join(methods)}" if methods else "")
            sources = {
                t: p for t, p in teachers.items() if t != "sentiment"
            }  # the SST-5 teacher cannot teach SST-2
            done(student_row(ctx, key, label, cross, methods, sources))
    if "cross_domain_probe" in wanted:
        probe_task = {"sentiment": cross["sentiment"]}
        rows = len(load_data(ctx, probe_task).train)
        epochs = {"freeze_encoder": True, "precompute_embeddings": True}  # PROBE_EPOCHS passes, in steps
        steps = PROBE_EPOCHS * -(-rows // budget.batch_size)
        done(
            multitask_row(
                ctx, "cross_domain_probe", "SST-2 sentiment, frozen encoder", probe_task, steps, epochs
            )
        )
    result["complete"] = True
    return result
