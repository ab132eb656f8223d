"""Every interface serves every task type exactly as `predict` does, or refuses it naming the task, its type and
what to use instead. One saved model with one task of each type (pair_classification twice: bi and cross
encoding), untrained seeded heads; the answers are checked against `predict` (atol 1e-5) and for not being
constant across inputs.

    interface                          serves                                        refuses
    text-classification (pipeline)     single-text tasks on texts; pair tasks on     token tasks; a pair given to a
                                       {"text", "text_pair"} (bi and cross);         single-text task; a single text
                                       similarity/contrastive: the cosine            given to a pair task
    token-classification (pipeline)    token_classification                          every other type
    feature-extraction (pipeline)      the embedding (what similarity, contrastive   (serves no head)
                                       and label_text_classification score)
    zero-shot-classification           pair_classification with an entailment label single-text tasks, token tasks
                                       (bi, cross); similarity/contrastive: softmax
                                       over the cosines (single-label)
    multitask-text-classification      texts -> single-text tasks, pairs -> pair     a task of the other kind, by name
    SentenceTransformer / CrossEncoder encode == model.encode / pair tasks as above  single-text tasks given pairs
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModel, pipeline

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.model.pipeline_multitask_encoder import PIPELINE_TASK

NLI_LABELS = ["entailment", "neutral", "contradiction"]
TASKS: dict[str, dict[str, Any]] = {
    "topic": {"type": "sequence_classification", "labels": ["world", "sports", "business"]},
    "topic_by_name": {"type": "label_text_classification", "labels": ["sport", "business", "science"]},
    "tags": {"type": "multi_label_classification", "labels": ["politics", "economy", "science"]},
    "score": {"type": "regression"},
    "ner": {"type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
    "nli": {"type": "pair_classification", "labels": NLI_LABELS},
    "nli_cross": {"type": "pair_classification", "labels": NLI_LABELS, "pair_encoding": "cross"},
    "sts": {"type": "similarity", "score_range": [0, 5]},
    "retrieval": {"type": "contrastive"},
}
SINGLE_TEXT_TASKS = ["topic", "topic_by_name", "tags", "score"]
PAIR_TASKS = ["nli", "nli_cross", "sts", "retrieval"]
ALL_TASKS = list(TASKS)
TEXTS = [
    "Arnold Schwarzenegger visited Paris on Monday.",
    "Stocks fell sharply in Tokyo.",
    "Why is the sky blue?",
]
PAIRS = [
    ("A man is playing a guitar.", "Someone plays music."),
    ("Stocks fell sharply in Tokyo.", "The cat sleeps on the sofa."),
    ("The committee met in Brussels.", "A meeting took place in Belgium."),
]
PAIR_DICTS = [{"text": a, "text_pair": b} for a, b in PAIRS]


@pytest.fixture(scope="module")
def folder(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=TASKS)
    path = tmp_path_factory.mktemp("every_type")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(folder: Path) -> MultiTaskEncoderModel:
    return AutoModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def text_predictions(model) -> list[dict[str, Any]]:
    return model.predict(TEXTS)


@pytest.fixture(scope="module")
def pair_predictions(model) -> list[dict[str, Any]]:
    return model.predict(PAIRS)


def scores_of(prediction: dict[str, Any]) -> dict[str, float]:
    """A `predict` answer as the text-classification pipeline's {label: score}."""
    if "scores" in prediction:
        return prediction["scores"]
    if "value" in prediction:
        return {"value": prediction["value"]}
    return {"similarity": prediction["similarity"]}


def assert_not_constant(rows: list[dict[str, float]]) -> None:
    """Different inputs get different answers (a head that ignores its input would pass any equality)."""
    first = rows[0]
    assert any(abs(row[label] - first[label]) > 1e-4 for row in rows[1:] for label in first), rows


def build(task_name: str, kind: str, **kwargs: Any):
    return pipeline(kind, model=str(kwargs.pop("folder")), model_kwargs={"serve_task": task_name}, **kwargs)


# ------------------------------------------------------------------------------ text-classification
@pytest.mark.parametrize("task", ALL_TASKS)
def test_text_classification_pipeline(task: str, folder: Path, text_predictions, pair_predictions) -> None:
    task_type = TASKS[task]["type"]
    if task == "ner":
        with pytest.raises(
            ValueError, match=r"task 'ner' is a token_classification task, served by AutoModelFor"
        ):
            build(task, "text-classification", folder=folder)
        return
    classify = build(task, "text-classification", folder=folder)
    if task in SINGLE_TEXT_TASKS:
        got = classify(TEXTS, top_k=None)
        expected = [scores_of(prediction[task]) for prediction in text_predictions]
        with pytest.raises(
            ValueError, match=rf"Task '{task}' is a {task_type} task: it reads single texts, but"
        ):
            classify(PAIR_DICTS[0])
    else:
        got = classify(PAIR_DICTS, top_k=None, batch_size=2)  # padded batches are split row by row
        expected = [scores_of(prediction[task]) for prediction in pair_predictions]
        with pytest.raises(
            ValueError, match=rf"Task '{task}' is a {task_type} task: it reads pairs of texts, but"
        ):
            classify(TEXTS[0])
    got = [{row["label"]: row["score"] for row in rows} for rows in got]
    for answer, reference in zip(got, expected):
        assert answer == pytest.approx(reference, abs=1e-5)
    assert_not_constant(got)


# ------------------------------------------------------------------------------ token-classification
@pytest.mark.parametrize("task", ALL_TASKS)
def test_token_classification_pipeline(task: str, folder: Path, text_predictions) -> None:
    if task != "ner":
        with pytest.raises(
            ValueError,
            match=rf"not '{task}': task '{task}' is a {TASKS[task]['type']} task, served by "
            r"AutoModelForSequenceClassification",
        ):
            build(task, "token-classification", folder=folder)
        return
    tag = build(task, "token-classification", folder=folder, aggregation_strategy="first")
    for entities, prediction in zip(tag(TEXTS), text_predictions):
        expected = prediction["ner"]["entities"]
        assert [(e["entity_group"], e["start"], e["end"]) for e in entities] == [
            (e["entity"], e["start"], e["end"]) for e in expected
        ]
        assert [float(e["score"]) for e in entities] == pytest.approx(
            [e["score"] for e in expected], abs=1e-5
        )
    assert len({json.dumps(p["ner"]["entities"]) for p in text_predictions}) > 1


# ------------------------------------------------------------------------------ feature-extraction
@pytest.mark.parametrize("task", ALL_TASKS)
def test_feature_extraction_pipeline(
    task: str, folder: Path, model, text_predictions, pair_predictions
) -> None:
    """The embedding, for every type (no head is served); what similarity, contrastive and label-text tasks
    score is that embedding, so their answers follow from it exactly."""
    extract = pipeline("feature-extraction", model=str(folder))

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([extract(text)[0] for text in texts])

    embeddings = embed(TEXTS)
    np.testing.assert_allclose(embeddings, model.encode(TEXTS), atol=1e-5, rtol=0)
    if task in ("sts", "retrieval"):
        firsts, seconds = embed([a for a, _ in PAIRS]), embed([b for _, b in PAIRS])
        cosines = (
            (firsts * seconds).sum(-1) / np.linalg.norm(firsts, axis=-1) / np.linalg.norm(seconds, axis=-1)
        )
        expected = [prediction[task]["similarity"] for prediction in pair_predictions]
        np.testing.assert_allclose(cosines, expected, atol=1e-5, rtol=0)
        assert np.ptp(cosines) > 1e-3
    elif task == "topic_by_name":
        labels = TASKS[task]["labels"]
        label_embeddings = embed(labels)
        normalise = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        logits = 20.0 * normalise(embeddings) @ normalise(label_embeddings).T  # the task's default scale
        probabilities = torch.softmax(torch.tensor(logits), dim=-1).numpy()
        expected = [
            [prediction[task]["scores"][label] for label in labels] for prediction in text_predictions
        ]
        np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ zero-shot-classification
CANDIDATES = ["music", "finance", "politics"]
TEMPLATE = "This example is {}."


@pytest.mark.parametrize("task", ALL_TASKS)
def test_zero_shot_classification_pipeline(task: str, folder: Path, model) -> None:
    task_type = TASKS[task]["type"]
    if task == "ner":
        with pytest.raises(
            ValueError, match=r"task 'ner' is a token_classification task, served by AutoModelFor"
        ):
            build(task, "zero-shot-classification", folder=folder)
        return
    zero_shot = build(task, "zero-shot-classification", folder=folder)
    if task in SINGLE_TEXT_TASKS:
        with pytest.raises(
            ValueError, match=rf"Task '{task}' is a {task_type} task: it reads single texts, but"
        ):
            zero_shot(TEXTS[0], candidate_labels=CANDIDATES)
        return
    answers = []
    for text in TEXTS:
        hypotheses = [(text, TEMPLATE.format(label)) for label in CANDIDATES]
        predicted = [prediction[task] for prediction in model.predict(hypotheses, tasks=task)]
        if task_type == "pair_classification":
            # multi_label: entailment vs contradiction of each hypothesis, which predict's probabilities give.
            got = zero_shot(text, candidate_labels=CANDIDATES, hypothesis_template=TEMPLATE, multi_label=True)
            expected = [
                p["scores"]["entailment"] / (p["scores"]["entailment"] + p["scores"]["contradiction"])
                for p in predicted
            ]
        else:
            # similarity / contrastive (no entailment label: the one column, the cosine): softmax over the
            # candidates' cosines.
            got = zero_shot(text, candidate_labels=CANDIDATES, hypothesis_template=TEMPLATE)
            expected = torch.softmax(torch.tensor([p["similarity"] for p in predicted]), dim=0).tolist()
        answer = dict(zip(got["labels"], got["scores"]))
        assert answer == pytest.approx(dict(zip(CANDIDATES, expected)), abs=1e-5)
        answers.append(answer)
    assert_not_constant(answers)


# ------------------------------------------------------------------------------ multitask-text-classification
@pytest.mark.parametrize("task", ALL_TASKS)
def test_package_pipeline_reads_what_predict_reads(
    task: str, model, text_predictions, pair_predictions
) -> None:
    classify = pipeline(PIPELINE_TASK, model=model)
    if task in PAIR_TASKS:
        for inputs in (PAIRS, PAIR_DICTS, tuple(PAIRS)):  # tuples and dicts, as predict takes them
            got = classify(inputs, tasks=task)
            for answer, reference in zip(got, pair_predictions):
                assert scores_of(answer[task]) == pytest.approx(scores_of(reference[task]), abs=1e-5)
        assert scores_of(classify(PAIRS[0], tasks=task)[task]) == pytest.approx(
            scores_of(pair_predictions[0][task]), abs=1e-5
        )  # one bare pair: one dict, as predict
        with pytest.raises(ValueError, match=rf"Task\(s\) \['{task}'\] read pairs of texts"):
            classify(TEXTS[0], tasks=task)
        return
    got = classify(TEXTS, tasks=task)
    for answer, reference in zip(got, text_predictions):
        if task == "ner":
            spans = [
                [(e["entity"], e["start"], e["end"], e["score"]) for e in p[task]["entities"]]
                for p in (answer, reference)
            ]
            assert [s[:3] for s in spans[0]] == [s[:3] for s in spans[1]]
            assert [s[3] for s in spans[0]] == pytest.approx([s[3] for s in spans[1]], abs=1e-5)
        else:
            assert scores_of(answer[task]) == pytest.approx(scores_of(reference[task]), abs=1e-5)
    with pytest.raises(ValueError, match=rf"Task\(s\) \['{task}'\] read single texts, not pairs"):
        classify(PAIRS, tasks=task)


def test_package_pipeline_runs_the_single_text_tasks_of_a_model_with_pair_tasks(
    model, text_predictions
) -> None:
    """Texts run the tasks that read texts and skip the pair tasks (no `<pair task>_logits` KeyError)."""
    classify = pipeline(PIPELINE_TASK, model=model)
    for got in (classify(TEXTS[0]), classify(TEXTS, batch_size=2)[0]):
        assert list(got) == [*SINGLE_TEXT_TASKS, "ner"]
        for task in SINGLE_TEXT_TASKS:
            assert scores_of(got[task]) == pytest.approx(scores_of(text_predictions[0][task]), abs=1e-5)


# ------------------------------------------------------------------------------ predict's bare tuple rule
def test_a_bare_tuple_of_two_strings_is_one_pair(model, pair_predictions) -> None:
    got = model.predict(PAIRS[0])
    assert list(got) == PAIR_TASKS
    for task in PAIR_TASKS:
        assert scores_of(got[task]) == pytest.approx(scores_of(pair_predictions[0][task]), abs=1e-5)
    with pytest.raises(
        ValueError, match=r"A bare tuple of two strings is one \(text, text_pair\) pair, but .*topic"
    ):
        model.predict(PAIRS[0], tasks="topic")
    assert len(model.predict(tuple(TEXTS), tasks="topic")) == 3  # any other tuple of strings: texts
    assert len(model.predict(list(PAIRS[0]), tasks="topic")) == 2  # two texts: a list


# ------------------------------------------------------------------------------ model.similarity
def test_similarity_reads_texts_as_predict_does(model) -> None:
    expected = model.similarity(list(TEXTS), [PAIRS[0][1]])
    embeddings = model.encode(TEXTS)
    assert expected.shape == (3, 1) and float(expected.std()) > 1e-3
    as_given = (embeddings, torch.tensor(embeddings), embeddings.tolist(), list(torch.tensor(embeddings)))
    for texts in (tuple(TEXTS), (text for text in TEXTS), np.array(TEXTS), *as_given):
        torch.testing.assert_close(model.similarity(texts, [PAIRS[0][1]]), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.similarity(TEXTS[0], PAIRS[0][1]), expected[:1], atol=1e-5, rtol=0)
    one_vector = embeddings[0].tolist()  # a list of numbers: one row
    torch.testing.assert_close(model.similarity(one_vector, PAIRS[0][1]), expected[:1], atol=1e-5, rtol=0)
    assert model.similarity([], TEXTS).shape == (0, 3)
    with pytest.raises(TypeError, match=r"texts must be a string or a list of strings, got NoneType"):
        model.similarity(None, TEXTS)
    with pytest.raises(TypeError, match=r"Text #1 is int, not str"):
        model.similarity(["a text", 3], TEXTS)
    with pytest.raises(TypeError, match=r"Text #0 is NoneType, not str"):
        model.similarity([None, "a text"], TEXTS)
    with pytest.raises(ValueError, match=r"Text #0 is empty"):
        model.similarity([" "], TEXTS)
    with pytest.raises(ValueError, match=r"embeddings_a has 3 dimensions and embeddings_b 384"):
        model.similarity(torch.ones(2, 3), TEXTS)


# ------------------------------------------------------------------------------ sentence-transformers
def test_sentence_transformers_encodes_as_encode_and_cross_encodes_only_pair_tasks(
    folder: Path, model
) -> None:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    np.testing.assert_allclose(
        SentenceTransformer(str(folder)).encode(TEXTS), model.encode(TEXTS), atol=1e-5, rtol=0
    )
    # A CrossEncoder loads the sequence view (its first task, a single-text one): pairs are refused by name.
    with pytest.raises(
        ValueError, match=r"Task 'topic' is a sequence_classification task: it reads single texts"
    ):
        CrossEncoder(str(folder)).predict(PAIRS)


# ------------------------------------------------------------------------------ the folder's own code
def test_pair_views_in_a_fresh_process_without_the_package(
    run_without_package, folder: Path, pair_predictions
) -> None:
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        f"PAIRS = {PAIR_DICTS!r}\n"
        "out = {}\n"
        "for task in ('nli', 'sts', 'retrieval'):\n"
        "    classify = pipeline('text-classification', model=sys.argv[1], trust_remote_code=True,\n"
        "                        model_kwargs={'serve_task': task})\n"
        "    out[task] = [{r['label']: r['score'] for r in rows} for rows in classify(PAIRS, top_k=None)]\n"
        "    try:\n"
        "        classify(PAIRS[0]['text'])\n"
        "    except ValueError as error:\n"
        "        out[task + '_refusal'] = str(error)\n"
        "print(json.dumps(out))\n"
    )
    result = run_without_package(script, str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for task in ("nli", "sts", "retrieval"):
        for answer, reference in zip(got[task], pair_predictions):
            assert answer == pytest.approx(scores_of(reference[task]), abs=1e-5)
        assert "reads pairs of texts, but was given a single text" in got[task + "_refusal"]
    assert not any(math.isclose(got["sts"][0]["similarity"], row["similarity"]) for row in got["sts"][1:])
