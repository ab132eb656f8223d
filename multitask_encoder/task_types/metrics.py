"""Offline evaluation metrics for every task type the multitask encoder trains.

Everything here is plain numpy on already-decoded predictions (class ids, 0/1 label matrices, floats, tag
strings), so it runs without the network (no `evaluate.load`) and without torch. Missing gold values use the
same sentinel as the training labels, -100, and are dropped before scoring.

Conventions shared by all functions:
    - Undefined ratios (nothing predicted, nothing gold, constant input) are 0.0, never nan and never a
      warning: scikit-learn's `zero_division=0` semantics.
    - Every number returned is a plain Python `int`/`float`, so the dicts are JSON-serialisable as they are.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..model.tasks_multitask_encoder import IGNORE_INDEX, extract_entities


def _safe_divide(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> np.ndarray:
    """Element-wise numerator / denominator, with 0.0 wherever the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def _f1_from_counts(
    true_positives: np.ndarray | int, num_predicted: np.ndarray | int, num_gold: np.ndarray | int
) -> np.ndarray:
    # 2PR / (P + R) simplifies to 2TP / (predicted + gold), which is 0 (not nan) when both are empty.
    return _safe_divide(2 * true_positives, num_predicted + num_gold)


# ----------------------------------------------------------------------------------------------------------
# Single-label classification
# ----------------------------------------------------------------------------------------------------------


def classification_metrics(
    predictions: npt.ArrayLike, references: npt.ArrayLike, labels: list[str]
) -> dict[str, float | int | list[list[int]]]:
    """Accuracy, macro/weighted F1 and the confusion matrix for single-label classification.

    Args:
        predictions: int array of shape [num_examples], predicted class ids in [0, len(labels)).
        references: int array of shape [num_examples], gold class ids; -100 marks a missing label and the row
            is dropped.
        labels: class names in id order; only its length is used, so that classes that never occur still get
            a row, a column and a zero F1 (as `f1_score(labels=range(len(labels)))` does).

    Returns:
        accuracy, macro_f1, weighted_f1 (weighted by gold support), confusion_matrix (list of lists,
        rows = gold, columns = predicted, in label-id order) and support (number of scored rows).
    """
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    num_labels = len(labels)
    if predictions.ndim != 1 or predictions.shape != references.shape:
        raise ValueError(
            f"Expected 1-D predictions and references of the same shape, got {predictions.shape} "
            f"and {references.shape}."
        )

    scored = references != IGNORE_INDEX
    predictions = predictions[scored].astype(np.int64)
    references = references[scored].astype(np.int64)
    for name, ids in (("references", references), ("predictions", predictions)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
            raise ValueError(f"{name} contain class ids outside [0, {num_labels}) (labels: {labels}).")

    # One bincount over (gold, predicted) pairs builds the whole confusion matrix.
    confusion = np.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    confusion = confusion.reshape(num_labels, num_labels)

    true_positives = np.diag(confusion)
    num_gold = confusion.sum(axis=1)
    num_predicted = confusion.sum(axis=0)
    per_class_f1 = _f1_from_counts(true_positives, num_predicted, num_gold)
    support = int(references.size)

    return {
        "accuracy": float(_safe_divide(true_positives.sum(), support)),
        "macro_f1": float(per_class_f1.mean()) if num_labels else 0.0,
        "weighted_f1": float(_safe_divide((per_class_f1 * num_gold).sum(), support)),
        "confusion_matrix": confusion.tolist(),
        "support": support,
    }


# ----------------------------------------------------------------------------------------------------------
# Multi-label classification
# ----------------------------------------------------------------------------------------------------------


def multi_label_metrics(
    predictions: npt.ArrayLike, references: npt.ArrayLike, labels: list[str]
) -> dict[str, float | int]:
    """Micro/macro F1 and exact match for multi-label classification.

    Args:
        predictions: 0/1 array of shape [num_examples, num_labels] (already thresholded).
        references: 0/1 array of shape [num_examples, num_labels]; a row that is entirely -100 is a missing
            example and is dropped. A row that is only partly -100 is rejected, since which of its labels
            to score would be a guess.
        labels: label names in column order; used to check the number of columns.

    Returns:
        micro_f1, macro_f1 (unweighted mean over all labels, 0 for labels never gold nor predicted),
        exact_match (fraction of rows whose whole label set is right, i.e. subset accuracy) and support
        (number of scored rows).
    """
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    if predictions.ndim != 2 or predictions.shape != references.shape or predictions.shape[1] != len(labels):
        raise ValueError(
            f"Expected predictions and references of shape [num_examples, {len(labels)}], got "
            f"{predictions.shape} and {references.shape}."
        )

    missing = references == IGNORE_INDEX
    missing_rows = missing.all(axis=1)
    partly_missing_rows = np.flatnonzero(missing.any(axis=1) & ~missing_rows)
    if partly_missing_rows.size:
        raise ValueError(f"Rows {partly_missing_rows[:10].tolist()} have only some labels set to -100.")

    predictions = predictions[~missing_rows].astype(bool)
    references = references[~missing_rows]
    if not np.isin(references, (0, 1)).all():
        raise ValueError("Multi-label references must be 0, 1 or (for a whole missing row) -100.")
    references = references.astype(bool)

    true_positives = (predictions & references).sum(axis=0)
    num_predicted = predictions.sum(axis=0)
    num_gold = references.sum(axis=0)
    per_label_f1 = _f1_from_counts(true_positives, num_predicted, num_gold)
    support = int(references.shape[0])

    return {
        "micro_f1": float(_f1_from_counts(true_positives.sum(), num_predicted.sum(), num_gold.sum())),
        "macro_f1": float(per_label_f1.mean()) if len(labels) else 0.0,
        "exact_match": float(_safe_divide((predictions == references).all(axis=1).sum(), support)),
        "support": support,
    }


# ----------------------------------------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D arrays; 0.0 when either is constant (correlation is undefined)."""
    # ptp is exact, unlike a std computed around a rounded mean, which can be a tiny non-zero on constants.
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    x_centered = x - x.mean()
    y_centered = y - y.mean()
    correlation = (x_centered * y_centered).sum() / np.sqrt((x_centered**2).sum() * (y_centered**2).sum())
    return float(np.clip(correlation, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank_of_value = np.cumsum(counts)
    mean_rank_of_value = last_rank_of_value - (counts - 1) / 2
    return mean_rank_of_value[inverse]


def regression_metrics(predictions: npt.ArrayLike, references: npt.ArrayLike) -> dict[str, float | int]:
    """Error and correlation metrics for (possibly multi-target) regression.

    Args:
        predictions: float array of shape [num_examples] or [num_examples, num_targets].
        references: float array of the same shape; an element equal to -100 is missing and dropped on its own
            (the other targets of that example are still scored).

    Returns:
        mse, rmse, mae, pearson, spearman (average ranks for ties) and support (number of scored elements).
        With several targets each metric is computed per target column and then averaged uniformly over the
        columns that have at least one scored element (scikit-learn's multioutput="uniform_average"), so
        targets on different scales do not inflate the correlations. rmse is the square root of that mse.
        Correlations of a constant column are 0.0.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    if predictions.shape != references.shape or predictions.ndim not in (1, 2):
        raise ValueError(
            f"Expected predictions and references of the same 1-D or 2-D shape, got {predictions.shape} "
            f"and {references.shape}."
        )
    if predictions.ndim == 1:
        predictions, references = predictions[:, None], references[:, None]

    per_target = []
    for target in range(references.shape[1]):
        scored = references[:, target] != IGNORE_INDEX
        prediction, reference = predictions[scored, target], references[scored, target]
        if reference.size == 0:
            continue
        error = prediction - reference
        per_target.append(
            {
                "mse": float(np.mean(error**2)),
                "mae": float(np.mean(np.abs(error))),
                "pearson": _pearson(prediction, reference),
                "spearman": _pearson(_average_ranks(prediction), _average_ranks(reference)),
            }
        )

    support = int((references != IGNORE_INDEX).sum())
    if not per_target:
        return {"mse": 0.0, "rmse": 0.0, "mae": 0.0, "pearson": 0.0, "spearman": 0.0, "support": 0}
    metrics = {name: float(np.mean([scores[name] for scores in per_target])) for name in per_target[0]}
    metrics["rmse"] = float(np.sqrt(metrics["mse"]))
    metrics["support"] = support
    return metrics


# ----------------------------------------------------------------------------------------------------------
# Token classification (entities)
# ----------------------------------------------------------------------------------------------------------


def entity_metrics(predicted_tags: list[list[str]], gold_tags: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1 (micro over all entities) and token accuracy, like seqeval.

    Args:
        predicted_tags: per sentence, one predicted tag per scored token (padding and sub-word positions
            already removed).
        gold_tags: per sentence, the gold tags, aligned with `predicted_tags`.

    Returns:
        precision, recall, f1 (an entity counts only if its type, start and end all match), support (number of
        gold entities), accuracy (fraction of tokens whose tag is right) and per_type: {type: {precision,
        recall, f1, support}} for every type that is gold or predicted at least once.
    """
    if len(predicted_tags) != len(gold_tags):
        raise ValueError(
            f"Got {len(predicted_tags)} predicted sentences but {len(gold_tags)} gold sentences."
        )

    predicted_entities, gold_entities = set(), set()
    num_correct_tokens, num_tokens = 0, 0
    for sentence_index, (predicted, gold) in enumerate(zip(predicted_tags, gold_tags)):
        if len(predicted) != len(gold):
            raise ValueError(
                f"Sentence {sentence_index}: {len(predicted)} predicted tags but {len(gold)} gold tags."
            )
        # The sentence index keeps identical spans in different sentences apart.
        predicted_entities.update((sentence_index, *entity) for entity in extract_entities(predicted))
        gold_entities.update((sentence_index, *entity) for entity in extract_entities(gold))
        num_correct_tokens += sum(p == g for p, g in zip(predicted, gold))
        num_tokens += len(gold)

    correct_entities = predicted_entities & gold_entities

    def scores(num_correct: int, num_predicted: int, num_gold: int) -> dict[str, float | int]:
        return {
            "precision": float(_safe_divide(num_correct, num_predicted)),
            "recall": float(_safe_divide(num_correct, num_gold)),
            "f1": float(_f1_from_counts(num_correct, num_predicted, num_gold)),
            "support": num_gold,
        }

    def count_of_type(entities: set, entity_type: str) -> int:
        return sum(entity[1] == entity_type for entity in entities)

    entity_types = sorted({entity[1] for entity in predicted_entities | gold_entities})
    per_type = {
        entity_type: scores(
            count_of_type(correct_entities, entity_type),
            count_of_type(predicted_entities, entity_type),
            count_of_type(gold_entities, entity_type),
        )
        for entity_type in entity_types
    }
    return {
        **scores(len(correct_entities), len(predicted_entities), len(gold_entities)),
        "accuracy": float(_safe_divide(num_correct_tokens, num_tokens)),
        "per_type": per_type,
    }
