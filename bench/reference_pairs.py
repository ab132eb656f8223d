"""The `pairs` part of `bench/reference.py`: sentence pairs and the embedding itself.

Every row trains from the packaged all-MiniLM-L6-v2 with the reference budget (`reference_parts.BUDGETS`:
T optimizer steps per task, batch 32, max_seq_length 128, lr 1e-4 / heads 1e-3) and is scored on the official
test splits. The embedding is scored as in `embedding_evaluation:` (Spearman of the cosine of the two texts'
embeddings with the gold score; x 100 in the bench's rows) on STS-B test and SICK test.

    key                 rows
    original            the packaged encoder, untrained: embedding Spearman on STS-B test and SICK test
    reference           topic + sentiment + NER (3T steps), embedding scored before and after      (b)
    similarity          + `similarity` on STS-B train, score_range [0, 5] (4T steps)               (c)
    distillation        reference + embedding_distillation_weight (3T steps)                      (d)
    sick-bi / sick-cross  SICK entailment as `pair_classification`, bi and cross encoding (T steps)
    sick-hf             plain HF AutoModelForSequenceClassification on the same joint pair inputs (T steps)
    sick-relatedness    SICK relatedness as `similarity`, score_range [1, 5] (T steps)
    add-task            init_from the reference model + SICK entailment (bi) with freeze_existing, encoder
                        frozen, precomputed embeddings, ADD_TASK_EPOCHS epochs: the old tasks' predictions are
                        compared bit for bit, and the time per epoch with the full fine-tune's (sick-bi)

The `embedding` part (`part_embedding`) asks what limits row (c):

    key                       rows
    stsb-alone                `similarity` on STS-B train alone, T steps: (c)'s similarity share without the rest
    stsb-alone-4T             the same, 4T steps (4x the training rows: all 5,749 STS-B pairs)
    similarity-distillation   (c) with embedding_distillation_weight DISTILLATION_WEIGHT (4T steps)

SICK overlaps STS-B test (see ../shared/data/sick/SOURCE.md): no row that reports STS-B trains on SICK, and
the SICK rows carry no embedding evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from reference_parts import (
    TASKS3,
    Context,
    load_data,
    multitask_row,
    planned_task_batches,
    reference_tasks,
    single_task_run,
    warm_cache,
    with_caps,
)

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.data import load_embedding_eval_set
from multitask_encoder.trainer import embedding_spearman

DISTILLATION_WEIGHT = (
    1.0  # embedding_distillation_weight of row (d): the distance is ~0.1-0.3, the task losses ~1
)
ADD_TASK_EPOCHS = 5
COMPARED_TEXTS = 500  # test texts per old task whose predictions must not move when a task is added


def check_pair_data(data: Path) -> None:
    for folder in ("stsb", "sick"):
        for split in ("train", "test"):
            path = data / folder / f"{split}.jsonl"
            if not path.is_file():
                raise SystemExit(
                    f"{path} not found: pass --data pointing at the shared benchmark data folder."
                )


def embedding_sets(data: Path, cap: int | None) -> dict[str, dict[str, Any]]:
    """The `embedding_evaluation:` section of every row that reports STS-B (`cap`: the budget's test rows)."""
    sets = {
        "stsb_test": {"data": str(data / "stsb" / "test.jsonl"), "score_column": "similarity"},
        "sick_test": {"data": str(data / "sick" / "test.jsonl"), "score_column": "relatedness"},
    }
    return {name: {**entry, "max_examples": cap} if cap else entry for name, entry in sets.items()}


def similarity_task(data: Path, folder: str, score_column: str, score_range: list[float]) -> dict[str, Any]:
    return {
        "type": "similarity",
        "train": str(data / folder / "train.jsonl"),
        "test": str(data / folder / "test.jsonl"),
        "label_column": score_column,
        "score_range": score_range,
    }


def stsb_similarity(data: Path) -> dict[str, Any]:
    return similarity_task(data, "stsb", "similarity", [0, 5])


def sick_entailment(data: Path, encoding: str) -> dict[str, Any]:
    return {
        "type": "pair_classification",
        "pair_encoding": encoding,
        "train": str(data / "sick" / "train.jsonl"),
        "test": str(data / "sick" / "test.jsonl"),
        "label_column": "entailment",
    }


def sick_relatedness(data: Path) -> dict[str, Any]:
    return similarity_task(data, "sick", "relatedness", [1, 5])


def original_row(ctx: Context) -> dict[str, Any]:
    """The packaged encoder as it comes: what every other row's embedding is compared with."""
    # A similarity task has no head: this model is the encoder, its pooling and normalisation.
    specs = load_data(ctx, {"similarity": stsb_similarity(ctx.data)}).task_specs
    model = MultiTaskEncoderModel.from_backbone(
        ctx.backbone, tasks=specs, max_seq_length=ctx.budget.max_seq_length
    ).eval()
    sets = {
        name: load_embedding_eval_set(name, entry, ".", str(ctx.cache_dir))
        for name, entry in embedding_sets(ctx.data, ctx.budget.max_test_examples).items()
    }
    embedding = {  # x 100, as every row of the bench reports the embedding
        name: {"after": 100 * embedding_spearman(model, pairs), "support": len(pairs.scores)}
        for name, pairs in sets.items()
    }
    print(f"--> original encoder: embedding {embedding}", flush=True)
    return {
        "key": "original",
        "name": "the packaged encoder, untrained",
        "kind": "original",
        "tasks": {},
        "embedding": embedding,
    }


def compared_predictions(model, ctx: Context, data) -> dict[str, list]:
    """Predictions of the old tasks on the first COMPARED_TEXTS test texts of each."""
    predictions = {}
    for task, rows in data.test.items():
        texts = rows.select(range(min(COMPARED_TEXTS, len(rows))))["text"]
        predictions[task] = model.predict(list(texts), tasks=task)
    return predictions


def add_task_row(ctx: Context, reference: dict[str, Any], full_row: dict[str, Any], reference_data) -> dict:
    """SICK entailment added to the trained reference model, everything it had frozen."""
    folder = Path(reference["model_dir"])
    trained = MultiTaskEncoderModel.from_pretrained(folder).eval()
    before = compared_predictions(trained, ctx, reference_data)
    del trained
    steps_per_epoch = math.ceil(
        len(load_data(ctx, {"entailment": sick_entailment(ctx.data, "bi")}).train) / ctx.budget.batch_size
    )
    steps = ADD_TASK_EPOCHS * steps_per_epoch
    options = {
        "init_from": str(folder),
        "freeze_existing": True,
        "freeze_encoder": True,
        "precompute_embeddings": True,
    }
    row = multitask_row(
        ctx,
        "add-task",
        f"SICK entailment (bi) added to the reference model, {ADD_TASK_EPOCHS} epochs on the fast path",
        {"entailment": sick_entailment(ctx.data, "bi")},
        steps,
        options,
    )
    grown = MultiTaskEncoderModel.from_pretrained(row["model_dir"]).eval()
    after = compared_predictions(grown, ctx, reference_data)
    row["old_predictions_identical"] = {task: after[task] == before[task] for task in before}
    row["compared_texts"] = {task: len(p) for task, p in before.items()}
    fast_epoch = row["train_loop_s"] / ADD_TASK_EPOCHS
    full_epoch = full_row["train_loop_s"] / full_row["optimizer_steps"] * steps_per_epoch
    row["speed"] = {
        "steps_per_epoch": steps_per_epoch,
        "encode_once_s": row["encode_train_s"],
        "fast_epoch_s": fast_epoch,
        "full_epoch_s": full_epoch,  # sick-bi's optimizer loop, per step, times the steps of an epoch
        "per_epoch_speedup": full_epoch / fast_epoch,
        "first_epoch_speedup": full_epoch / (fast_epoch + row["encode_train_s"]),
        f"{ADD_TASK_EPOCHS}_epochs_speedup": ADD_TASK_EPOCHS
        * full_epoch
        / (ADD_TASK_EPOCHS * fast_epoch + row["encode_train_s"]),
    }
    print(
        f"    old predictions identical: {row['old_predictions_identical']}; speed {row['speed']}", flush=True
    )
    return row


def hf_cross_row(ctx: Context, steps: int) -> dict[str, Any]:
    """The plain HF cross-encoder: AutoModelForSequenceClassification on the joint `[CLS] a [SEP] b` inputs
    the package's loader tokenises for cross encoding (same rows, caps, seed, steps, learning rates)."""
    entry = sick_entailment(ctx.data, "cross")
    run = single_task_run(ctx, "entailment", with_caps(entry, ctx.budget.max_train_examples, None), steps)
    return {
        "key": "sick-hf",
        "name": "SICK entailment, HF AutoModelForSequenceClassification on the pairs",
        "kind": "single-task",
        "tasks": {"entailment": run["scores"]},
        "train_s": run["train_s"],
        "train_loop_s": run["train_loop_s"],
        "eval_s": run["eval_s"],
        "optimizer_steps": steps,
        "train_examples": steps * ctx.budget.batch_size,
        "params_to_serve": run["params"],
    }


def part_pairs(ctx: Context) -> dict[str, Any]:
    check_pair_data(ctx.data)
    budget, data = ctx.budget, ctx.data
    T = budget.steps_per_task
    caps = dict.fromkeys(TASKS3, budget.max_train_examples)
    reference = reference_tasks(data, caps, budget.max_test_examples)
    evaluation = {"embedding_evaluation": embedding_sets(data, budget.max_test_examples)}
    reference_data = warm_cache(ctx, reference, single_tasks=False)
    with_stsb = {
        **reference,
        "similarity": with_caps(stsb_similarity(data), budget.max_train_examples, budget.max_test_examples),
    }
    stsb_data = warm_cache(ctx, with_stsb, single_tasks=False)

    rows = [original_row(ctx)]
    batches = planned_task_batches(
        reference_data.group_sizes, reference_data.group_tasks, 3 * T, budget, "uniform", ctx.seed
    )
    rows.append(
        multitask_row(ctx, "reference", "topic + sentiment + NER (b)", reference, 3 * T, evaluation, batches)
    )
    batches = planned_task_batches(
        stsb_data.group_sizes, stsb_data.group_tasks, 4 * T, budget, "uniform", ctx.seed
    )
    rows.append(
        multitask_row(
            ctx,
            "similarity",
            "+ similarity on STS-B train (c)",
            with_stsb,
            4 * T,
            evaluation,
            batches,
            keep_weights=False,
        )
    )
    batches = planned_task_batches(
        reference_data.group_sizes, reference_data.group_tasks, 3 * T, budget, "uniform", ctx.seed
    )
    rows.append(
        multitask_row(
            ctx,
            "distillation",
            f"topic + sentiment + NER, embedding_distillation_weight {DISTILLATION_WEIGHT:g} (d)",
            reference,
            3 * T,
            {**evaluation, "embedding_distillation_weight": DISTILLATION_WEIGHT},
            batches,
            keep_weights=False,
        )
    )

    def sick(task: str, entry: dict[str, Any]) -> dict[str, Any]:
        return {task: with_caps(entry, budget.max_train_examples, budget.max_test_examples)}

    sick_bi = multitask_row(
        ctx,
        "sick-bi",
        "SICK entailment, pair_classification bi",
        sick("entailment", sick_entailment(data, "bi")),
        T,
        {},
        keep_weights=False,
    )
    rows += [
        sick_bi,
        multitask_row(
            ctx,
            "sick-cross",
            "SICK entailment, pair_classification cross",
            sick("entailment", sick_entailment(data, "cross")),
            T,
            {},
            keep_weights=False,
        ),
        hf_cross_row(ctx, T),
        multitask_row(
            ctx,
            "sick-relatedness",
            "SICK relatedness, similarity",
            sick("relatedness", sick_relatedness(data)),
            T,
            {},
            keep_weights=False,
        ),
        add_task_row(ctx, rows[1], sick_bi, reference_data),
    ]
    summary = {
        "reference_tasks": {task: entry["train"] for task, entry in reference.items()},
        "test_rows": {task: len(rows_) for task, rows_ in stsb_data.test.items()},
        "distillation_weight": DISTILLATION_WEIGHT,
        "add_task_epochs": ADD_TASK_EPOCHS,
    }
    return {"rows": rows, "data": summary, "inference": None}


def part_embedding(ctx: Context) -> dict[str, Any]:
    """What limits the embedding of row (c): the similarity task alone at (c)'s share and at 4x it, and (c)
    with the distillation of row (d) added."""
    check_pair_data(ctx.data)
    budget, data = ctx.budget, ctx.data
    T = budget.steps_per_task
    evaluation = {"embedding_evaluation": embedding_sets(data, budget.max_test_examples)}
    reference = reference_tasks(
        data, dict.fromkeys(TASKS3, budget.max_train_examples), budget.max_test_examples
    )
    four_times = None if budget.max_train_examples is None else 4 * budget.max_train_examples
    alone = {
        "similarity": with_caps(stsb_similarity(data), budget.max_train_examples, budget.max_test_examples)
    }
    alone_4t = {"similarity": with_caps(stsb_similarity(data), four_times, budget.max_test_examples)}
    with_stsb = {**reference, **alone}
    stsb_data = warm_cache(ctx, with_stsb, single_tasks=False)
    for tasks in (alone, alone_4t):
        warm_cache(ctx, tasks, single_tasks=False)
    batches = planned_task_batches(
        stsb_data.group_sizes, stsb_data.group_tasks, 4 * T, budget, "uniform", ctx.seed
    )
    rows = [
        multitask_row(
            ctx,
            "stsb-alone",
            f"similarity on STS-B train alone, {T} steps",
            alone,
            T,
            evaluation,
            keep_weights=False,
        ),
        multitask_row(
            ctx,
            "stsb-alone-4T",
            f"similarity on STS-B train alone, {4 * T} steps",
            alone_4t,
            4 * T,
            evaluation,
            keep_weights=False,
        ),
        multitask_row(
            ctx,
            "similarity-distillation",
            f"(c) + embedding_distillation_weight {DISTILLATION_WEIGHT:g}",
            with_stsb,
            4 * T,
            {**evaluation, "embedding_distillation_weight": DISTILLATION_WEIGHT},
            batches,
            keep_weights=False,
        ),
    ]
    summary = {
        "test_rows": {task: len(rows_) for task, rows_ in stsb_data.test.items()},
        "distillation_weight": DISTILLATION_WEIGHT,
    }
    return {"rows": rows, "data": summary, "inference": None}
