"""Checks multitask_encoder.metrics against scikit-learn, scipy and seqeval, and on hand-computed cases."""

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from multitask_encoder.task_types.metrics import (
    classification_metrics,
    entity_metrics,
    extract_entities,
    multi_label_metrics,
    regression_metrics,
)

# ----------------------------------------------------------------------------------------------------------
# classification_metrics
# ----------------------------------------------------------------------------------------------------------


def assert_matches_sklearn_classification(predictions, references, num_labels):
    labels = [f"class_{i}" for i in range(num_labels)]
    metrics = classification_metrics(predictions, references, labels)

    scored = references != -100
    y_true, y_pred = references[scored], predictions[scored]
    label_ids = list(range(num_labels))
    assert metrics["support"] == scored.sum()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for average in ("macro", "weighted"):
        expected = f1_score(y_true, y_pred, average=average, labels=label_ids, zero_division=0)
        assert metrics[f"{average}_f1"] == pytest.approx(expected), average
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=label_ids).tolist()


@pytest.mark.parametrize("seed", range(20))
def test_classification_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_labels = int(rng.integers(2, 8))
    num_examples = int(rng.integers(1, 200))
    references = rng.integers(0, num_labels, size=num_examples)
    predictions = rng.integers(0, num_labels, size=num_examples)
    references[rng.random(num_examples) < 0.2] = -100
    if (references == -100).all():
        references[0] = 0
    assert_matches_sklearn_classification(predictions, references, num_labels)


def test_classification_class_never_predicted_and_class_never_seen():
    # Class 2 is gold but never predicted; class 3 is neither: both count as F1 = 0 in the macro average.
    references = np.array([0, 0, 1, 2, 2, -100])
    predictions = np.array([0, 1, 1, 0, 1, 2])
    assert_matches_sklearn_classification(predictions, references, num_labels=4)

    metrics = classification_metrics(predictions, references, ["a", "b", "c", "d"])
    # Per-class F1: class 0 = 2*1/(2+2) = 0.5, class 1 = 2*1/(3+1) = 0.5, classes 2 and 3 = 0.
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.5) / 4)
    assert metrics["accuracy"] == pytest.approx(2 / 5)
    assert metrics["support"] == 5
    assert metrics["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_classification_all_rows_missing_scores_zero():
    metrics = classification_metrics(np.array([0, 1]), np.array([-100, -100]), ["a", "b"])
    assert metrics == {
        "accuracy": 0.0,
        "macro_f1": 0.0,
        "weighted_f1": 0.0,
        "confusion_matrix": [[0, 0], [0, 0]],
        "support": 0,
    }


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(np.array([0, 1]), np.array([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="same shape"):
        classification_metrics(np.array([0, 1]), np.array([0]), ["a", "b"])


# ----------------------------------------------------------------------------------------------------------
# multi_label_metrics
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_multi_label_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    # At least 2 labels: sklearn reads a single-column indicator matrix as binary targets (see below).
    num_labels = int(rng.integers(2, 7))
    num_examples = int(rng.integers(2, 100))
    references = (rng.random((num_examples, num_labels)) < 0.3).astype(int)
    predictions = (rng.random((num_examples, num_labels)) < 0.3).astype(int)
    missing_rows = rng.random(num_examples) < 0.2
    missing_rows[0] = False
    references[missing_rows] = -100
    labels = [f"label_{i}" for i in range(num_labels)]

    metrics = multi_label_metrics(predictions, references, labels)

    y_true, y_pred = references[~missing_rows], predictions[~missing_rows]
    assert metrics["support"] == len(y_true)
    assert metrics["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=0))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert metrics["exact_match"] == pytest.approx(accuracy_score(y_true, y_pred))


def test_multi_label_single_label_is_the_positive_class_f1():
    # sklearn's f1_score(average="micro") on an [n, 1] matrix treats it as binary and returns accuracy;
    # for a multi-label head with one label the meaningful number is the positive-class F1.
    rng = np.random.default_rng(0)
    references = rng.integers(0, 2, size=(50, 1))
    predictions = rng.integers(0, 2, size=(50, 1))
    metrics = multi_label_metrics(predictions, references, ["only"])
    expected = f1_score(references[:, 0], predictions[:, 0], average="binary", zero_division=0)
    assert metrics["micro_f1"] == pytest.approx(expected)
    assert metrics["macro_f1"] == pytest.approx(expected)


def test_multi_label_hand_computed_with_an_empty_label():
    # Label 2 is never gold nor predicted, so it contributes F1 = 0 to the macro average.
    references = np.array([[1, 0, 0], [1, 1, 0], [-100, -100, -100], [0, 1, 0]])
    predictions = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [1, 1, 0]])
    metrics = multi_label_metrics(predictions, references, ["a", "b", "c"])
    # Label a: tp=1, predicted=2, gold=2 -> 0.5. Label b: tp=2, predicted=2, gold=2 -> 1.0.
    assert metrics["macro_f1"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (4 + 4))
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["support"] == 3


def test_multi_label_rejects_partly_missing_rows_and_wrong_width():
    with pytest.raises(ValueError, match="only some labels"):
        multi_label_metrics(np.zeros((2, 2)), np.array([[1, -100], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        multi_label_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------------
# regression_metrics
# ----------------------------------------------------------------------------------------------------------


def test_regression_hand_computed():
    metrics = regression_metrics(np.array([1.0, 2.0, 5.0, 7.0]), np.array([1.0, 2.0, 3.0, -100]))
    assert metrics["support"] == 3
    assert metrics["mse"] == pytest.approx(4 / 3)
    assert metrics["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert metrics["mae"] == pytest.approx(2 / 3)
    # Same order -> Spearman 1. Pearson by hand: centered predictions (-5/3, -2/3, 7/3), centered
    # references (-1, 0, 1), so sum of products 4, sums of squares 26/3 and 2.
    assert metrics["spearman"] == pytest.approx(1.0)
    assert metrics["pearson"] == pytest.approx(4 / np.sqrt(2 * (26 / 3)))


@pytest.mark.parametrize("seed", range(10))
def test_regression_matches_scipy_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 5, size=60).astype(float)  # few distinct values -> many ties
    predictions = np.round(references + rng.normal(size=60), 0)
    references[rng.random(60) < 0.2] = -100

    metrics = regression_metrics(predictions, references)

    scored = references != -100
    y_true, y_pred = references[scored], predictions[scored]
    assert metrics["support"] == scored.sum()
    assert metrics["mse"] == pytest.approx(np.mean((y_pred - y_true) ** 2))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(y_pred - y_true)))
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(y_pred, y_true).statistic)
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(y_pred, y_true).statistic)


def test_regression_two_targets_are_averaged_per_column():
    rng = np.random.default_rng(0)
    references = np.stack([rng.normal(size=40), 1000 * rng.normal(size=40)], axis=1)
    predictions = references + rng.normal(size=(40, 2))
    references[:5, 0] = -100  # missing elements drop only that target, not the whole example

    metrics = regression_metrics(predictions, references)

    columns = [(predictions[5:, 0], references[5:, 0]), (predictions[:, 1], references[:, 1])]
    assert metrics["support"] == 35 + 40
    assert metrics["mse"] == pytest.approx(np.mean([np.mean((p - r) ** 2) for p, r in columns]))
    assert metrics["rmse"] == pytest.approx(np.sqrt(metrics["mse"]))
    assert metrics["pearson"] == pytest.approx(np.mean([stats.pearsonr(p, r).statistic for p, r in columns]))
    assert metrics["spearman"] == pytest.approx(
        np.mean([stats.spearmanr(p, r).statistic for p, r in columns])
    )


def test_regression_constant_input_gives_zero_correlation_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = regression_metrics(np.full(4, 0.1), np.array([1.0, 2.0, 3.0, 4.0]))
        single = regression_metrics(np.array([2.0]), np.array([1.0]))
        empty = regression_metrics(np.array([2.0]), np.array([-100.0]))
    assert metrics["pearson"] == 0.0 and metrics["spearman"] == 0.0
    assert single["pearson"] == 0.0 and single["mse"] == pytest.approx(1.0)
    assert empty == {"mse": 0.0, "rmse": 0.0, "mae": 0.0, "pearson": 0.0, "spearman": 0.0, "support": 0}


# ----------------------------------------------------------------------------------------------------------
# extract_entities / entity_metrics: hand-written cases
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([], []),
        (["O", "O"], []),
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),  # I- after O starts an entity
        (["I-PER"], [("PER", 0, 1)]),  # I- at the start of a sentence too
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # a type change ends the chunk
        (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
        (["B-ORG", "I-ORG", "B-ORG-X"], [("ORG", 0, 2), ("ORG-X", 2, 3)]),  # type is everything after "B-"
        (["S-PER", "B-LOC", "E-LOC", "E-LOC"], [("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)]),  # IOBES
    ],
)
def test_extract_entities_hand_written(tags, expected):
    assert extract_entities(tags) == expected


@pytest.mark.parametrize("bad_tag", ["PER", "B-", "X-PER", "o", ""])
def test_extract_entities_rejects_malformed_tags(bad_tag):
    with pytest.raises(ValueError, match="is not 'O'"):
        extract_entities(["O", bad_tag])


def test_entity_metrics_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["O"]]
    metrics = entity_metrics(predicted, gold)
    # Gold: PER(0,2), LOC(3,4), PER in sentence 1. Predicted: PER(0,2), ORG(3,4). One correct.
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert metrics["support"] == 3
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
        "PER": {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2},
    }


def test_entity_metrics_same_span_in_two_sentences_counts_twice():
    gold = [["B-PER"], ["B-PER"]]
    metrics = entity_metrics([["B-PER"], ["O"]], gold)
    assert metrics["recall"] == pytest.approx(0.5)


def test_entity_metrics_no_entities_anywhere():
    metrics = entity_metrics([["O", "O"]], [["O", "O"]])
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["support"]) == (0.0, 0.0, 0.0, 0)
    assert metrics["accuracy"] == 1.0
    assert metrics["per_type"] == {}


def test_entity_metrics_length_mismatch_names_the_sentence():
    with pytest.raises(ValueError, match="Sentence 1: 1 predicted tags but 2 gold tags"):
        entity_metrics([["O"], ["O"]], [["O"], ["O", "B-PER"]])
    with pytest.raises(ValueError, match="2 predicted sentences but 1 gold"):
        entity_metrics([["O"], ["O"]], [["O"]])


# ----------------------------------------------------------------------------------------------------------
# extract_entities / entity_metrics: against seqeval on random (often malformed) sequences
# ----------------------------------------------------------------------------------------------------------

ENTITY_TYPES = ("PER", "LOC", "ORG")


def tag_vocabulary(prefixes=("B", "I")):
    return ["O", *(f"{prefix}-{entity_type}" for prefix in prefixes for entity_type in ENTITY_TYPES)]


def random_tag_sequences(rng, num_sentences, prefixes=("B", "I")):
    """Uniformly drawn tags, so I- after O, type switches and B-B runs are all common."""
    vocabulary = tag_vocabulary(prefixes)
    lengths = rng.integers(0, 12, size=num_sentences)
    return [[vocabulary[i] for i in rng.integers(0, len(vocabulary), size=length)] for length in lengths]


def corrupt(rng, sentences):
    """A 'prediction': each gold tag replaced by a random one with probability 0.35 (lengths kept)."""
    vocabulary = tag_vocabulary()
    return [
        [vocabulary[rng.integers(len(vocabulary))] if rng.random() < 0.35 else tag for tag in sentence]
        for sentence in sentences
    ]


@pytest.mark.parametrize("prefixes", [("B", "I"), ("B", "I", "E", "S")], ids=["IOB2", "IOBES"])
def test_extract_entities_matches_seqeval_get_entities(prefixes):
    sequence_labeling = pytest.importorskip("seqeval.metrics.sequence_labeling")
    rng = np.random.default_rng(0)
    for tags in random_tag_sequences(rng, 2000, prefixes):
        # seqeval's end index is inclusive; ours is exclusive.
        expected = [
            (entity_type, start, end + 1) for entity_type, start, end in sequence_labeling.get_entities(tags)
        ]
        assert extract_entities(tags) == expected, tags


@pytest.mark.parametrize("seed", range(15))
def test_entity_metrics_matches_seqeval(seed):
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(seed)
    gold = random_tag_sequences(rng, int(rng.integers(1, 30)))
    predicted = corrupt(rng, gold)

    metrics = entity_metrics(predicted, gold)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on zero divisions, which we score as 0 too
        report = seqeval_metrics.classification_report(gold, predicted, output_dict=True, zero_division=0)
        accuracy = seqeval_metrics.accuracy_score(gold, predicted) if any(gold) else 0.0
    assert metrics["accuracy"] == pytest.approx(accuracy)
    micro = report.pop("micro avg")
    for name in ("macro avg", "weighted avg"):
        report.pop(name)
    assert metrics["precision"] == pytest.approx(micro["precision"])
    assert metrics["recall"] == pytest.approx(micro["recall"])
    assert metrics["f1"] == pytest.approx(micro["f1-score"])
    assert metrics["support"] == micro["support"]
    assert set(metrics["per_type"]) == set(report)
    for entity_type, expected in report.items():
        ours = metrics["per_type"][entity_type]
        assert ours["precision"] == pytest.approx(expected["precision"]), entity_type
        assert ours["recall"] == pytest.approx(expected["recall"]), entity_type
        assert ours["f1"] == pytest.approx(expected["f1-score"]), entity_type
        assert ours["support"] == expected["support"], entity_type
