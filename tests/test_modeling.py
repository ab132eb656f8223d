"""MultiTaskEncoderModel: forward outputs and losses (checked against torch.nn.functional by hand), pooling,
projection, normalisation, loss weighting, gradients, `encode`, `predict`, attention backends and dtypes,
and agreement of the full packaged MiniLM with sentence-transformers."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.model.configuration_multitask_encoder import POOLING_MODES

PREDICT_LOGGER = "multitask_encoder.model.predict_multitask_encoder"  # tokenisation and its warnings

TEXTS = [
    "Stocks rallied after the central bank held rates.",
    "A short one.",
    "The team won the championship in overtime, and the fans celebrated in the streets all night long.",
]


def build(backbone: str, tasks: dict[str, Any], seed: int = 0, **kwargs: Any) -> MultiTaskEncoderModel:
    """A model with seeded heads, in eval mode (dropout off, so outputs are deterministic)."""
    torch.manual_seed(seed)
    return MultiTaskEncoderModel.from_backbone(backbone, tasks=tasks, **kwargs).eval()


def tokenize(model: MultiTaskEncoderModel, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
    kwargs.setdefault("padding", True)
    return dict(model.tokenizer(texts, return_tensors="pt", **kwargs))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def model(tiny_backbone: str, example_tasks: dict) -> MultiTaskEncoderModel:
    """Shared read-only model; tests that change weights or config build their own."""
    return build(tiny_backbone, example_tasks)


# ----------------------------------------------------------------------------------------------------------
# forward: outputs
# ----------------------------------------------------------------------------------------------------------


def test_output_keys_and_shapes_per_task_type(model: MultiTaskEncoderModel) -> None:
    batch = tokenize(model, TEXTS)
    batch_size, seq_len = batch["input_ids"].shape
    with torch.no_grad():
        output = model(**batch)

    # Logits come in config.tasks order, after the embeddings; no loss without labels.
    assert list(output.keys()) == ["embeddings", "topic_logits", "tags_logits", "score_logits", "ner_logits"]
    assert output.loss is None and output.task_losses is None
    assert output.embeddings.shape == (batch_size, 384)
    assert output["topic_logits"].shape == (batch_size, 3)  # sequence_classification: [batch, labels]
    assert output["tags_logits"].shape == (batch_size, 3)  # multi_label: [batch, labels]
    assert output["score_logits"].shape == (batch_size, 1)  # regression: [batch, outputs]
    assert output["ner_logits"].shape == (batch_size, seq_len, 5)  # token: [batch, seq, tags]
    assert all(torch.isfinite(value).all() for value in output.values())


def test_tasks_argument_narrows_the_heads_that_run(model: MultiTaskEncoderModel) -> None:
    batch = tokenize(model, TEXTS)
    with torch.no_grad():
        full = model(**batch)
        narrowed = model(**batch, tasks=["ner", "topic"])
        single = model(**batch, tasks="score")
    # Config order, whatever the order asked for.
    assert [key for key in narrowed if key.endswith("_logits")] == ["topic_logits", "ner_logits"]
    assert [key for key in single if key.endswith("_logits")] == ["score_logits"]
    torch.testing.assert_close(narrowed["topic_logits"], full["topic_logits"])
    torch.testing.assert_close(narrowed["ner_logits"], full["ner_logits"])


def test_unknown_task_and_unknown_arguments_raise(model: MultiTaskEncoderModel) -> None:
    batch = tokenize(model, TEXTS[:2])
    with pytest.raises(ValueError, match="Unknown task"):
        model(**batch, tasks=["topic", "sentiment"])
    with pytest.raises(ValueError, match="labels_sentiment"):
        model(**batch, labels_sentiment=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Unexpected forward arguments"):
        model(**batch, labels=torch.tensor([0, 1]))  # the single-task HF convention is not ours
    with pytest.raises(ValueError, match="position_ids"):
        model(**batch, position_ids=torch.arange(batch["input_ids"].shape[1]))


# ----------------------------------------------------------------------------------------------------------
# forward: losses and gradients
# ----------------------------------------------------------------------------------------------------------

WEIGHTS = {"topic": 0.5, "tags": 2.0, "score": 1.5, "ner": 0.7}


def weighted_tasks(example_tasks: dict) -> dict:
    tasks = copy.deepcopy(example_tasks)
    for name, weight in WEIGHTS.items():
        tasks[name]["loss_weight"] = weight
    return tasks


def partial_labels(batch: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Labels for 3 rows where the middle row has no sentence labels, and token labels only on real,
    non-special tokens (as a NER collator would produce)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = batch["input_ids"]
    real_tokens = (batch["attention_mask"] == 1) & (input_ids != 101) & (input_ids != 102)  # not pad/CLS/SEP
    ner = torch.randint(0, 5, input_ids.shape, generator=generator)
    ner[~real_tokens] = -100
    return {
        "labels_topic": torch.tensor([0, -100, 2]),
        "labels_tags": torch.tensor([[1, 0, 1], [-100, -100, -100], [0, 1, 1]]),
        "labels_score": torch.tensor([0.5, -100.0, -1.0]),
        "labels_ner": ner,
    }


def detached_logits(output) -> dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in output.items() if key.endswith("_logits")}


def hand_losses(output, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-task losses, computed directly with torch.nn.functional over the labelled rows/tokens only."""
    rows = torch.tensor([0, 2])  # the labelled rows of partial_labels
    ner_labels = labels["labels_ner"]
    token_mask = ner_labels != -100
    return {
        "topic": F.cross_entropy(output["topic_logits"][rows], labels["labels_topic"][rows]),
        "tags": F.binary_cross_entropy_with_logits(
            output["tags_logits"][rows], labels["labels_tags"][rows].float()
        ),
        "score": F.mse_loss(output["score_logits"][rows, 0], labels["labels_score"][rows]),
        "ner": F.cross_entropy(output["ner_logits"][token_mask], ner_labels[token_mask]),
    }


def test_loss_is_the_weighted_sum_of_hand_computed_task_losses(
    tiny_backbone: str, example_tasks: dict
) -> None:
    model = build(tiny_backbone, weighted_tasks(example_tasks))
    batch = tokenize(model, TEXTS)
    labels = partial_labels(batch)
    output = model(**batch, **labels)

    expected = hand_losses(detached_logits(output), labels)
    for name, value in expected.items():
        torch.testing.assert_close(output.task_losses[name], value, msg=name)
    expected_total = sum(WEIGHTS[name] * value for name, value in expected.items())
    torch.testing.assert_close(output.loss, expected_total)
    assert output["loss"] is output.loss  # the Trainer reads outputs["loss"]


def test_task_without_labels_contributes_nothing(tiny_backbone: str, example_tasks: dict) -> None:
    model = build(tiny_backbone, weighted_tasks(example_tasks))
    batch = tokenize(model, TEXTS)
    labels = partial_labels(batch)
    labels["labels_topic"] = torch.full((3,), -100)
    output = model(**batch, **labels)

    assert torch.isfinite(output.loss)
    assert set(output.task_losses) == {"tags", "score", "ner"}
    expected = hand_losses(detached_logits(output), labels)
    expected_total = sum(WEIGHTS[name] * expected[name] for name in ("tags", "score", "ner"))
    torch.testing.assert_close(output.loss, expected_total)


def test_all_labels_missing_gives_zero_loss_and_zero_gradients(
    tiny_backbone: str, example_tasks: dict
) -> None:
    model = build(tiny_backbone, example_tasks)
    batch = tokenize(model, TEXTS)
    seq_len = batch["input_ids"].shape[1]
    labels = {
        "labels_topic": torch.full((3,), -100),
        "labels_tags": torch.full((3, 3), -100),
        "labels_score": torch.full((3,), -100.0),
        "labels_ner": torch.full((3, seq_len), -100),
    }
    output = model(**batch, **labels)
    assert output.loss is not None and output.loss.item() == 0.0
    assert output.task_losses is None
    output.loss.backward()
    for name, parameter in model.heads.named_parameters():
        assert parameter.grad is not None, name
        assert torch.count_nonzero(parameter.grad) == 0, name


def test_gradient_reaches_every_head_even_without_labels(tiny_backbone: str, example_tasks: dict) -> None:
    # Only `topic` has labels in this batch; the collator still sends -100 labels for the other tasks.
    model = build(tiny_backbone, example_tasks)
    batch = tokenize(model, TEXTS)
    labels = partial_labels(batch)
    labels["labels_tags"] = torch.full((3, 3), -100)
    labels["labels_score"] = torch.full((3,), -100.0)
    labels["labels_ner"] = torch.full_like(labels["labels_ner"], -100)
    model.train()  # as in training: head dropout active, so the check does not rely on eval mode
    model(**batch, **labels).loss.backward()

    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient (DDP would need find_unused_parameters)"
    for task in ("tags", "score", "ner"):
        for name, parameter in model.heads[task].named_parameters():
            assert torch.count_nonzero(parameter.grad) == 0, f"{task}.{name}"
    assert torch.count_nonzero(model.heads["topic"].out.weight.grad) > 0


def test_uncertainty_weighting_matches_kendall_formula(tiny_backbone: str, example_tasks: dict) -> None:
    model = build(tiny_backbone, weighted_tasks(example_tasks), loss_weighting="uncertainty")
    assert torch.equal(model.task_log_vars.detach(), torch.zeros(4))  # starts as plain weighting
    log_vars = torch.tensor([0.3, -0.2, 0.5, 0.1])
    with torch.no_grad():
        model.task_log_vars.copy_(log_vars)

    batch = tokenize(model, TEXTS)
    labels = partial_labels(batch)
    output = model(**batch, **labels)
    raw = hand_losses(detached_logits(output), labels)
    names = list(example_tasks)  # task_log_vars follows config.tasks order
    expected = sum(
        WEIGHTS[name] * (torch.exp(-log_vars[i]) * raw[name] + log_vars[i]) for i, name in enumerate(names)
    )
    torch.testing.assert_close(output.loss, expected)

    # d loss / d s_i = w_i * (1 - exp(-s_i) * L_i)
    output.loss.backward()
    expected_grad = torch.stack(
        [WEIGHTS[name] * (1 - torch.exp(-log_vars[i]) * raw[name]) for i, name in enumerate(names)]
    )
    torch.testing.assert_close(model.task_log_vars.grad, expected_grad)


def test_uncertainty_weighting_skips_tasks_without_labels(tiny_backbone: str, example_tasks: dict) -> None:
    # A task with no labels must not add its log-variance term s either (it would be pushed to -inf).
    model = build(tiny_backbone, example_tasks, loss_weighting="uncertainty")
    with torch.no_grad():
        model.task_log_vars.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    batch = tokenize(model, TEXTS)
    labels = partial_labels(batch)
    labels["labels_score"] = torch.full((3,), -100.0)
    output = model(**batch, **labels)
    output.loss.backward()
    assert model.task_log_vars.grad[2].item() == 0.0
    assert all(model.task_log_vars.grad[i].item() != 0.0 for i in (0, 1, 3))


# ----------------------------------------------------------------------------------------------------------
# Embeddings: pooling, projection, normalisation
# ----------------------------------------------------------------------------------------------------------


def hand_pool(mode: str, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pooling written row by row over the real tokens only, independent of the model's vectorised code."""
    rows = []
    for row_states, row_mask in zip(states, mask):
        real = row_states[row_mask.bool()]  # [length, hidden]
        if mode == "cls":
            rows.append(row_states[0])
        elif mode == "mean":
            rows.append(real.sum(0) / len(real))
        elif mode == "max":
            rows.append(real.max(0).values)
        elif mode == "mean_sqrt_len":
            rows.append(real.sum(0) / math.sqrt(len(real)))
        else:
            raise AssertionError(mode)
    return torch.stack(rows)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_matches_hand_computation_and_ignores_padding(
    tiny_backbone: str, example_tasks: dict, mode: str
) -> None:
    model = build(tiny_backbone, example_tasks, pooling=mode, normalize=False)
    batch = tokenize(model, TEXTS)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        states = model.encoder(**batch).last_hidden_state
        embeddings = model(**batch).embeddings
    torch.testing.assert_close(
        embeddings, hand_pool(mode, states, batch["attention_mask"]), atol=1e-5, rtol=1e-5
    )

    # The short text alone and with 40 extra padding tokens gives the same embedding.
    alone = tokenize(model, [TEXTS[1]])
    padded = tokenize(model, [TEXTS[1]], padding="max_length", max_length=alone["input_ids"].shape[1] + 40)
    with torch.no_grad():
        torch.testing.assert_close(
            model(**padded).embeddings, model(**alone).embeddings, atol=1e-5, rtol=1e-5
        )
    # encode (sorted, re-padded batches) agrees with forward.
    np.testing.assert_allclose(model.encode(TEXTS), embeddings.numpy(), atol=1e-5)


def test_normalize_gives_unit_norm_of_the_same_direction(tiny_backbone: str, example_tasks: dict) -> None:
    normalised = build(tiny_backbone, example_tasks, normalize=True).encode(TEXTS)
    raw = build(tiny_backbone, example_tasks, normalize=False).encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)
    np.testing.assert_allclose(normalised, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_projection_dim_changes_the_embedding_size(tiny_backbone: str, example_tasks: dict) -> None:
    model = build(tiny_backbone, example_tasks, projection_dim=16)
    batch = tokenize(model, TEXTS)
    with torch.no_grad():
        output = model(**batch)
        pooled = hand_pool("mean", model.encoder(**batch).last_hidden_state, batch["attention_mask"])
        expected = F.normalize(model.projection(pooled), dim=-1)
    assert model.config.embedding_size == 16
    assert output.embeddings.shape == (3, 16)
    torch.testing.assert_close(output.embeddings, expected, atol=1e-5, rtol=1e-5)
    assert output["topic_logits"].shape == (3, 3)
    assert output["ner_logits"].shape[-1] == 5  # token heads read the token states, not the projection
    assert model.encode(TEXTS).shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(model.encode(TEXTS), axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# encode
# ----------------------------------------------------------------------------------------------------------

VARIED_TEXTS = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog.",
    "Oil prices rose sharply on Monday after supply concerns in the Middle East deepened further.",
    "Goal!",
    "Scientists discover a new species of frog in the Amazon rainforest.",
    "Apple unveils its latest phone.",
    "It rained.",
    "Parliament passed the budget bill late on Thursday night after a long debate about taxes and spending.",
    "Chess champion retains title.",
    "Markets were flat.",
    "A very long sentence " + "with many repeated words " * 6 + "at the end.",
    "Why?",
]


def test_encode_restores_input_order(model: MultiTaskEncoderModel) -> None:
    permutation = np.random.default_rng(0).permutation(len(VARIED_TEXTS))
    shuffled = [VARIED_TEXTS[i] for i in permutation]
    # batch_size 4 forces several length-sorted batches with different padding.
    batched = model.encode(shuffled, batch_size=4)
    one_by_one = np.stack([model.encode(text) for text in VARIED_TEXTS])
    assert batched.shape == (len(VARIED_TEXTS), 384) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one[permutation], atol=1e-5)


def test_encode_single_string_and_tensor_output(model: MultiTaskEncoderModel) -> None:
    single = model.encode("Just one sentence.")
    assert single.shape == (384,)
    as_tensor = model.encode(["Just one sentence."], return_tensors="pt")
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (1, 384)
    np.testing.assert_allclose(as_tensor[0].numpy(), single, atol=1e-6)


@pytest.mark.parametrize("method", ["encode", "predict"])
def test_empty_input_gives_empty_output(model: MultiTaskEncoderModel, method: str) -> None:
    if method == "encode":
        embeddings = model.encode([])
        assert isinstance(embeddings, np.ndarray) and embeddings.shape == (0, 384)
    else:
        assert model.predict([]) == []


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (["fine", None], TypeError, "Text #1 is NoneType"),
        (["fine", "also fine", 3], TypeError, "Text #2 is int"),
        (["fine", ""], ValueError, "Text #1 is empty"),
        (["   \n\t", "fine"], ValueError, "Text #0 is empty or whitespace"),
    ],
)
@pytest.mark.parametrize("method", ["encode", "predict"])
def test_invalid_texts_raise_naming_the_index(
    model, method: str, texts: list, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        getattr(model, method)(texts)


def test_long_text_is_truncated_with_one_warning(
    tiny_backbone: str, example_tasks: dict, caplog: pytest.LogCaptureFixture
) -> None:
    model = build(tiny_backbone, example_tasks)  # fresh: the warning is given once per model
    assert model.max_seq_length == 256  # from the backbone's sentence_bert_config.json
    long_text = "word " * 600
    caplog.set_level(logging.WARNING, logger=PREDICT_LOGGER)

    embeddings = model.encode([long_text, "short", long_text])
    predictions = model.predict([long_text])  # token offsets of a truncated text
    model.encode([long_text])

    warnings = [record for record in caplog.records if record.name == PREDICT_LOGGER]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert "truncated" in warnings[0].getMessage() and "2 text(s)" in warnings[0].getMessage()
    assert np.isfinite(embeddings).all()
    assert isinstance(predictions[0]["ner"]["entities"], list)
    # Truncation keeps the first 254 words ([CLS] + 254 + [SEP] = 256 tokens).
    np.testing.assert_allclose(embeddings[0], model.encode("word " * 254), atol=1e-5)
    np.testing.assert_allclose(embeddings[2], embeddings[0], atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------------------


def force_sentence_heads(model: MultiTaskEncoderModel) -> None:
    """Zero the sentence heads' weights so their outputs are their biases: known, text-independent answers."""
    with torch.no_grad():
        for name, bias in {"topic": [0.0, 3.0, 1.0], "tags": [4.0, -4.0, 0.2], "score": [0.42]}.items():
            model.heads[name].out.weight.zero_()
            model.heads[name].out.bias.copy_(torch.tensor(bias))


def test_predict_structure_per_task_type(tiny_backbone: str, example_tasks: dict) -> None:
    model = build(tiny_backbone, example_tasks)
    force_sentence_heads(model)
    result = model.predict("Stocks rallied after the central bank held rates.")
    assert list(result) == ["topic", "tags", "score", "ner"]

    topic_probabilities = torch.softmax(torch.tensor([0.0, 3.0, 1.0]), dim=0).tolist()
    assert set(result["topic"]) == {"label", "score", "scores"}
    assert result["topic"]["label"] == "sports"
    assert result["topic"]["score"] == pytest.approx(topic_probabilities[1], abs=1e-6)
    assert list(result["topic"]["scores"]) == ["sports", "business", "world"]  # best first
    assert list(result["topic"]["scores"].values()) == pytest.approx(
        [topic_probabilities[1], topic_probabilities[2], topic_probabilities[0]], abs=1e-6
    )

    tag_probabilities = torch.sigmoid(torch.tensor([4.0, -4.0, 0.2])).tolist()
    assert set(result["tags"]) == {"labels", "scores"}
    assert result["tags"]["labels"] == ["politics", "science"]  # sigmoid >= 0.5
    assert result["tags"]["scores"] == pytest.approx(
        {"politics": tag_probabilities[0], "science": tag_probabilities[2], "economy": tag_probabilities[1]},
        abs=1e-6,
    )
    assert list(result["tags"]["scores"]) == ["politics", "science", "economy"]

    assert result["score"] == {"value": pytest.approx(0.42, abs=1e-6)}
    assert isinstance(result["score"]["value"], float)

    assert set(result["ner"]) == {"entities"}
    text = "Stocks rallied after the central bank held rates."
    for entity in result["ner"]["entities"]:
        assert set(entity) == {"entity", "text", "start", "end", "score"}
        assert entity["entity"] in {"PER", "LOC"}
        assert entity["text"] == text[entity["start"] : entity["end"]]
        assert 0.0 < entity["score"] <= 1.0


def test_predict_top_k_and_threshold(tiny_backbone: str, example_tasks: dict) -> None:
    tasks = copy.deepcopy(example_tasks)
    tasks["tags"]["threshold"] = 0.6  # sigmoid(0.2) = 0.55 is now below it
    model = build(tiny_backbone, tasks)
    force_sentence_heads(model)
    result = model.predict(["One.", "Two."], tasks=["topic", "tags"], top_k=2)
    assert len(result) == 2
    for row in result:
        assert list(row) == ["topic", "tags"]
        assert list(row["topic"]["scores"]) == ["sports", "business"]
        assert row["topic"]["label"] == "sports"
        assert list(row["tags"]["scores"]) == ["politics", "science"]
        assert row["tags"]["labels"] == ["politics"]
    with pytest.raises(ValueError, match="top_k"):
        model.predict("One.", top_k=0)


def test_predict_unknown_task_raises(model: MultiTaskEncoderModel) -> None:
    with pytest.raises(ValueError, match="sentiment"):
        model.predict(["One."], tasks=["topic", "sentiment"])
    with pytest.raises(ValueError, match="sentiment"):
        model.predict("One.", tasks="sentiment")


def test_predict_multi_output_regression(tiny_backbone: str) -> None:
    model = build(tiny_backbone, {"affect": {"type": "regression", "labels": ["valence", "arousal"]}})
    with torch.no_grad():
        model.heads["affect"].out.weight.zero_()
        model.heads["affect"].out.bias.copy_(torch.tensor([0.25, -1.5]))
    result = model.predict("Calm water.")
    assert result == {"affect": {"values": {"valence": pytest.approx(0.25), "arousal": pytest.approx(-1.5)}}}


def test_predict_matches_forward_in_input_order(model: MultiTaskEncoderModel) -> None:
    results = model.predict(VARIED_TEXTS, tasks=["topic", "score"], batch_size=3)
    for text, result in zip(VARIED_TEXTS, results):
        with torch.no_grad():
            output = model(**tokenize(model, [text]), tasks=["topic", "score"])
        probabilities = torch.softmax(output["topic_logits"][0], dim=-1)
        labels = model.config.tasks["topic"].labels
        assert result["topic"]["label"] == labels[int(probabilities.argmax())]
        for label, probability in zip(labels, probabilities.tolist()):
            assert result["topic"]["scores"][label] == pytest.approx(probability, abs=1e-5)
        assert result["score"]["value"] == pytest.approx(output["score_logits"][0, 0].item(), abs=1e-5)


# Per token tags to force on these texts. The non-first word pieces of "Schwarzenegger" get deliberately
# wrong tags: a word takes the tag of its first piece, so they must not split the entity.
NER_CASES = [
    (
        "Yesterday Arnold Schwarzenegger visited Paris.",
        ["O", "O", "B-PER", "I-PER", "B-LOC", "O", "O", "B-LOC", "O", "O"],
        [("PER", "Arnold Schwarzenegger"), ("LOC", "Paris")],
    ),
    (
        "Schwarzenegger spoke in Los Angeles today.",
        ["O", "B-PER", "O", "I-LOC", "O", "O", "B-LOC", "I-LOC", "O", "O", "O"],
        [("PER", "Schwarzenegger"), ("LOC", "Los Angeles")],
    ),
]


def test_entity_offsets_cover_multi_piece_words(tiny_backbone: str, example_tasks: dict) -> None:
    model = build(tiny_backbone, example_tasks)
    tokenizer = model.tokenizer
    assert len(tokenizer.tokenize("Schwarzenegger")) >= 3  # the point of the test: several word pieces
    labels = model.config.tasks["ner"].labels

    # Fit the (linear) NER head exactly to the wanted tags: least squares on the real token states gives
    # logits of +10 for the wanted tag and 0 for the others. Rows < features, so the fit is exact.
    features, targets = [], []
    for text, tags, _ in NER_CASES:
        encoded = tokenizer(text, return_tensors="pt")
        assert encoded["input_ids"].shape[1] == len(tags), tokenizer.convert_ids_to_tokens(
            encoded["input_ids"][0]
        )
        with torch.no_grad():
            states = model.encoder(**encoded).last_hidden_state[0]
        features.append(torch.cat([states, torch.ones(len(tags), 1)], dim=1))
        targets.append(10.0 * F.one_hot(torch.tensor([labels.index(tag) for tag in tags]), len(labels)))
    x, y = torch.cat(features).double(), torch.cat(targets).double()
    solution = torch.linalg.lstsq(x, y, driver="gelsd").solution  # [hidden + 1, tags]
    torch.testing.assert_close(x @ solution, y, atol=1e-3, rtol=0)
    head = model.heads["ner"].out
    with torch.no_grad():
        head.weight.copy_(solution[:-1].T.float())
        head.bias.copy_(solution[-1].float())

    # Interleave an unrelated text, so the cases land in different sorted/padded positions.
    texts = [
        NER_CASES[0][0],
        "An unrelated and rather longer sentence about nothing in particular.",
        NER_CASES[1][0],
    ]
    results = model.predict(texts, tasks="ner", batch_size=2)
    for (text, _, expected), result in zip(NER_CASES, [results[0], results[2]]):
        entities = result["ner"]["entities"]
        assert [(entity["entity"], entity["text"]) for entity in entities] == expected
        for entity in entities:
            assert text[entity["start"] : entity["end"]] == entity["text"]
            assert entity["start"] == text.index(entity["text"])
            assert entity["score"] > 0.99  # softmax of a +10 margin over 4 others


# ----------------------------------------------------------------------------------------------------------
# Attention backends and dtypes
# ----------------------------------------------------------------------------------------------------------


def test_sdpa_and_eager_agree(tiny_checkpoint) -> None:
    outputs = {}
    for implementation in ("sdpa", "eager"):
        loaded = AutoModel.from_pretrained(tiny_checkpoint, attn_implementation=implementation).eval()
        assert loaded.encoder.config._attn_implementation == implementation
        batch = tokenize(loaded, TEXTS)
        with torch.no_grad():
            outputs[implementation] = (loaded.encode(VARIED_TEXTS), loaded(**batch))
    np.testing.assert_allclose(outputs["sdpa"][0], outputs["eager"][0], atol=1e-5)
    for key in ("topic_logits", "tags_logits", "score_logits", "ner_logits"):
        torch.testing.assert_close(outputs["sdpa"][1][key], outputs["eager"][1][key], atol=1e-5, rtol=1e-5)


def test_bfloat16_runs_and_stays_close_to_float32(tiny_checkpoint) -> None:
    full = AutoModel.from_pretrained(tiny_checkpoint).eval()
    half = AutoModel.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16).eval()
    assert {parameter.dtype for parameter in half.parameters()} == {torch.bfloat16}

    reference, reduced = full.encode(VARIED_TEXTS), half.encode(VARIED_TEXTS)
    assert reduced.dtype == np.float32  # encode always returns float32
    assert cosine(reference, reduced).min() > 0.99

    predictions = half.predict(VARIED_TEXTS[:3])
    assert [set(row) for row in predictions] == [{"topic", "tags", "score", "ner"}] * 3
    batch = tokenize(half, TEXTS)
    output = half(**batch, **partial_labels(batch))
    assert output["topic_logits"].dtype == torch.bfloat16
    assert torch.isfinite(output.loss) and output.loss.dtype == torch.float32  # losses are computed in fp32
    output.loss.backward()


# ----------------------------------------------------------------------------------------------------------
# The full packaged all-MiniLM-L6-v2
# ----------------------------------------------------------------------------------------------------------

STS_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market crashed today.",
    "A man is riding a horse.",
    "A woman is playing the violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is so great!",
    "Do you like pizza?",
    "Central banks raised interest rates again to fight inflation.",
    "The Lakers beat the Celtics 102-99 in overtime.",
    "Photosynthesis converts light energy into chemical energy.",
    "I forgot my umbrella at the office.",
    "Quantum computers could break today's public-key cryptography.",
    "She sells sea shells by the sea shore.",
    "Parliament passed the budget bill after a long debate.",
    "x",
]


@pytest.fixture(scope="module")
def default_model(minilm_path: str) -> MultiTaskEncoderModel:
    model = build(None, {"score": {"type": "regression"}})  # None -> the packaged default backbone
    # The packaged copy is recorded by its Hub id: no local site-packages path is published with the model.
    assert model.config.base_model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert minilm_path not in model.config.to_json_string()
    assert (model.config.pooling, model.config.normalize) == ("mean", True)
    return model


def test_default_backbone_embeddings_are_semantic(default_model: MultiTaskEncoderModel) -> None:
    food, bread, stocks = default_model.encode(STS_SENTENCES[:3])
    assert float(food @ bread) > 0.7
    assert float(food @ stocks) < 0.2


def test_default_backbone_matches_sentence_transformers(default_model, minilm_path: str) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(minilm_path, device="cpu").encode(STS_SENTENCES, batch_size=8)
    ours = default_model.encode(STS_SENTENCES, batch_size=8)
    assert ours.shape == reference.shape == (len(STS_SENTENCES), 384)
    assert cosine(ours, reference).min() > 0.9999
