"""Sentence pairs and the embedding itself: the pair_classification (bi and cross), similarity and contrastive
task types (losses against hand computations, data, batches that never repeat a text), pair inference
(predict, the pipeline, the batch CLI), training them beside single-text tasks, the frozen fast path, the
embedding's evaluation and its distillation, and tasks added to a trained model with the old predictions kept
bit for bit."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from test_training import job_flags
from transformers import AutoModel, AutoTokenizer, TrainerCallback

import multitask_encoder  # noqa: F401  (the Auto classes: saved folders load without remote code)
from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.collator import MultiTaskCollator
from multitask_encoder.data import DataError, load_embedding_eval_set, load_multitask_data
from multitask_encoder.model.tasks_multitask_encoder import EncoderFeatures, parse_task_spec
from multitask_encoder.sampling import MultiTaskBatchSampler
from multitask_encoder.task_types.types import TASK_TYPES
from multitask_encoder.train import run_training
from multitask_encoder.trainer import embedding_spearman

REPO = Path(__file__).resolve().parents[1]
TOPICS = {
    "sport": ["match", "striker", "goal", "league", "race", "final"],
    "business": ["market", "shares", "profits", "bank", "merger", "stocks"],
}
PAIR_TASKS = {
    "same_topic": {"type": "pair_classification", "labels": ["different", "same"]},
    "same_topic_cross": {
        "type": "pair_classification",
        "labels": ["different", "same"],
        "pair_encoding": "cross",
        "label_column": "same_topic",
    },
    "relatedness": {"type": "similarity", "score_range": [0, 5]},
    "retrieval": {"type": "contrastive"},
}


# ---------------------------------------------------------------------------------------------- toy data
def sentence(topic: str, rng: random.Random) -> str:
    return f"The {rng.choice(TOPICS[topic])} was {rng.choice(['great', 'awful', 'dull', 'fine'])} {rng.choice(['today', 'yesterday', 'this week'])}"


def pair_rows(count: int, rng: random.Random) -> list[dict]:
    """Pairs of the same or of different topics: `same_topic` the class, `relatedness` 5 or 1."""
    rows = []
    for _ in range(count):
        first, second = rng.choice(list(TOPICS)), rng.choice(list(TOPICS))
        a, b = sentence(first, rng), sentence(second, rng)
        rows.append(
            {
                "text": a,
                "text_pair": b,
                "same_topic": "same" if first == second else "different",
                "relatedness": 5.0 if first == second else 1.0,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pair_data")
    rng = random.Random(0)
    for split, size in (("train", 96), ("validation", 24), ("test", 24)):
        write_jsonl(folder / f"{split}.jsonl", pair_rows(size, rng))
        # Retrieval: an anchor and a paraphrase-like positive (same topic words), every anchor distinct.
        retrieval = []
        for i in range(size):
            topic = list(TOPICS)[i % 2]
            word = TOPICS[topic][i % 6]
            retrieval.append(
                {"text": f"The {word} number {i} {split}", "text_pair": f"A {word} called {i} {split}"}
            )
        write_jsonl(folder / f"retrieval_{split}.jsonl", retrieval)
        with open(folder / f"topic_{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["text", "topic"])
            writer.writeheader()
            for _ in range(size):
                topic = rng.choice(list(TOPICS))
                writer.writerow({"text": sentence(topic, rng), "topic": topic})
    (folder / "cache").mkdir()
    return folder


def pair_tasks(data: Path, names=("same_topic", "relatedness")) -> dict:
    tasks = {}
    for name in names:
        prefix = "retrieval_" if name == "retrieval" else ""
        tasks[name] = {
            **PAIR_TASKS[name],
            **{s: str(data / f"{prefix}{s}.jsonl") for s in ("train", "validation", "test")},
        }
    return tasks


def topic_task(data: Path) -> dict:
    return {
        "topic": {
            "type": "sequence_classification",
            **{s: str(data / f"topic_{s}.csv") for s in ("train", "validation", "test")},
        }
    }


def features_for(batch: int, pairs: list[int], dim: int = 8, seed: int = 0) -> EncoderFeatures:
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    pair_embeddings = F.normalize(torch.randn(len(pairs), dim, generator=generator), dim=-1)
    return EncoderFeatures(None, None, embeddings, pair_embeddings, torch.tensor(pairs))


# ---------------------------------------------------------------------------------------------- task types
def test_bi_pair_head_reads_u_v_difference_and_product_of_the_pair_rows() -> None:
    spec = parse_task_spec("nli", {"type": "pair_classification", "labels": ["a", "b", "c"]})
    head = torch.nn.Linear(32, 3)
    features = features_for(batch=4, pairs=[0, 2])
    logits = TASK_TYPES["pair_classification"].logits(head, spec, features)
    u, v = features.embeddings[[0, 2]], features.pair_embeddings
    expected = head(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
    torch.testing.assert_close(logits[[0, 2]], expected)
    assert torch.equal(
        logits[[1, 3]], torch.zeros(2, 3)
    )  # rows without a pair: no output, their labels are -100


def test_cosent_loss_is_the_hand_computed_ranking_loss() -> None:
    spec = parse_task_spec("sts", {"type": "similarity"})
    features = features_for(batch=3, pairs=[0, 1, 2], seed=1)
    logits = TASK_TYPES["similarity"].logits(None, spec, features)
    cos = F.cosine_similarity(features.embeddings, features.pair_embeddings, dim=-1)
    torch.testing.assert_close(logits[:, 0], cos)
    labels = torch.tensor([4.0, 1.0, 2.5])
    terms = [20 * (cos[j] - cos[i]) for i in range(3) for j in range(3) if labels[i] > labels[j]]
    expected = torch.log(1 + torch.exp(torch.stack(terms)).sum())
    torch.testing.assert_close(TASK_TYPES["similarity"].loss(spec, logits, labels, features), expected)
    mse = parse_task_spec("sts", {"type": "similarity", "loss": "cosine_mse", "score_range": [0, 5]})
    torch.testing.assert_close(
        TASK_TYPES["similarity"].loss(mse, logits, labels, features), F.mse_loss(cos, labels / 5)
    )


def test_contrastive_loss_is_cross_entropy_over_in_batch_positives_and_negatives() -> None:
    spec = parse_task_spec("retrieval", {"type": "contrastive", "scale": 10})
    base = features_for(batch=3, pairs=[0, 1, 2], seed=2)
    negatives = F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    features = base._replace(negative_embeddings=negatives, negative_rows=torch.tensor([0, 1]))
    labels = torch.tensor([1, 1, 1])
    loss = TASK_TYPES["contrastive"].loss(spec, None, labels, features)
    scores = 10 * features.embeddings @ torch.cat([features.pair_embeddings, negatives]).T
    torch.testing.assert_close(loss, F.cross_entropy(scores, torch.arange(3)))
    metrics = TASK_TYPES["contrastive"].metrics(
        spec, torch.cat([base.embeddings, base.embeddings], dim=-1).numpy(), np.ones(3)
    )
    assert metrics["accuracy"] == 1.0 and metrics["mrr"] == 1.0  # each anchor finds itself first


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"type": "pair_classification", "labels": ["a", "b"], "pair_encoding": "late"},
            "pair_encoding must be 'bi' or 'cross'",
        ),
        (
            {"type": "similarity", "score_range": [5, 0]},
            r"score_range must be \[low, high\], finite numbers with low < high",
        ),
        ({"type": "similarity", "loss": "mse"}, "loss must be 'cosent' or 'cosine_mse'"),
        ({"type": "contrastive", "scale": 0}, "scale must be a positive finite number"),
        ({"type": "similarity", "labels": ["a", "b"]}, "a similarity task has one output"),
        # Non-finite numbers would pass `low < high` or `> 0` and reach every weight as NaN.
        (
            {"type": "similarity", "score_range": [float("-inf"), 5]},
            r"score_range must be \[low, high\], finite",
        ),
        (
            {"type": "similarity", "cosent_scale": float("inf")},
            "cosent_scale must be a positive finite number",
        ),
        ({"type": "contrastive", "scale": float("nan")}, "scale must be a positive finite number"),
        ({"type": "contrastive", "loss_weight": float("inf")}, "loss_weight must be a finite number"),
    ],
)
def test_pair_task_options_are_checked(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_task_spec("task", spec)


# ---------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def tokenizer(tiny_backbone: str):
    return AutoTokenizer.from_pretrained(tiny_backbone)


def test_pairs_are_tokenised_apart_or_jointly_as_the_task_says(pair_data: Path, tokenizer) -> None:
    tasks = pair_tasks(pair_data, ("same_topic", "same_topic_cross"))
    data = load_multitask_data(tasks, tokenizer, 32, str(pair_data), cache_dir=str(pair_data / "cache"))
    assert data.group_tasks == {"same_topic": ["same_topic"], "same_topic_cross": ["same_topic_cross"]}
    apart, joint = (
        data.train.filter(lambda r: r["group"] == 0)[0],
        data.train.filter(lambda r: r["group"] == 1)[0],
    )
    rows = [json.loads(line) for line in (pair_data / "train.jsonl").read_text().splitlines()]
    assert apart["input_ids"] == tokenizer(rows[0]["text"])["input_ids"]
    assert apart["pair_input_ids"] == tokenizer(rows[0]["text_pair"])["input_ids"]
    assert joint["input_ids"] == tokenizer(rows[0]["text"], rows[0]["text_pair"])["input_ids"]
    assert joint["pair_input_ids"] == [] and 1 in joint["token_type_ids"]
    assert (
        data.test["same_topic"]["text_pair"][0]
        == json.loads((pair_data / "test.jsonl").read_text().splitlines()[0])["text_pair"]
    )

    collator = MultiTaskCollator(tokenizer, {name: data.task_specs[name] for name in tasks})
    batch = collator([data.train[0], data.train[len(data.train) - 1], data.train[1]])
    assert batch["pair_inputs"]["rows"].tolist() == [0, 2]  # the joint row has no second text
    assert batch["pair_inputs"]["input_ids"].shape[0] == 2


def test_pair_data_problems_name_the_file_row_and_column(pair_data: Path, tmp_path: Path, tokenizer) -> None:
    bad = tmp_path / "bad.jsonl"
    write_jsonl(
        bad,
        [
            {"text": "a b", "text_pair": "c d", "relatedness": 3},
            {"text": "e", "text_pair": " ", "relatedness": 2},
        ],
    )
    task = {"relatedness": {"type": "similarity", "score_range": [0, 5], "train": str(bad)}}
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: empty text in column 'text_pair'"):
        load_multitask_data(task, tokenizer, 32, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    write_jsonl(bad, [{"text": "a b", "text_pair": "c d", "relatedness": 7.5}])
    with pytest.raises(DataError, match=r"line 1: similarity 7\.5 is outside score_range \[0\.0, 5\.0\]"):
        load_multitask_data(task, tokenizer, 32, str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_contrastive_batches_never_hold_a_text_twice() -> None:
    # 40 rows over 10 distinct anchors (each 4 times): random batches of 8 would repeat some.
    keys = np.array([[1 + i % 10, 100 + i] for i in range(40)], dtype=np.uint64)
    sampler = MultiTaskBatchSampler(
        {"retrieval": 40, "topic": 24}, batch_size=8, seed=0, distinct_keys={"retrieval": keys}
    )
    plain = MultiTaskBatchSampler({"retrieval": 40, "topic": 24}, batch_size=8, seed=0)

    def repeats(batches) -> int:
        count = 0
        for batch in batches:
            anchors = [int(keys[row][0]) for row in batch if row < 40]
            count += len(anchors) - len(set(anchors))
        return count

    assert repeats(list(plain)) > 0  # the case exists
    batches = list(sampler)
    assert repeats(batches) == 0 and sampler.unseparated_rows == 0
    assert sorted(row for batch in batches for row in batch) == sorted(
        row for batch in plain for row in batch
    )


def test_rows_that_cannot_be_separated_are_counted_and_the_run_says_so(caplog) -> None:
    # 16 rows over 2 anchors in batches of 8: at most 2 distinct anchors per batch, most rows must repeat one.
    keys = np.array([[1 + i % 2, 100 + i] for i in range(16)], dtype=np.uint64)
    sampler = MultiTaskBatchSampler(
        {"retrieval": 16}, batch_size=8, seed=0, distinct_keys={"retrieval": keys}
    )
    with caplog.at_level("WARNING", logger="multitask_encoder.sampling"):
        batches = list(sampler)
    anchors = [[int(keys[row][0]) for row in batch] for batch in batches]
    repeated = sum(1 for batch in anchors for anchor in batch if batch.count(anchor) > 1)
    assert sampler.unseparated_rows == repeated > 0
    assert (
        f"Epoch 0: {repeated} row(s) of 'retrieval' share a text with another row of their batch"
        in caplog.text
    )


def test_contrastive_rows_whose_anchor_is_their_positive_are_counted_with_the_first_named(
    tmp_path: Path, tokenizer, caplog
) -> None:
    rows = [{"text": f"anchor {i}", "text_pair": f"positive {i}"} for i in range(6)]
    rows[2]["text_pair"] = "anchor  2"  # the same text, whitespace aside
    rows[4]["text_pair"] = rows[4]["text"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    task = {"retrieval": {"type": "contrastive", "train": str(tmp_path / "train.jsonl")}}
    with caplog.at_level("WARNING", logger="multitask_encoder.data.loading"):
        load_multitask_data(task, tokenizer, 32, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert (
        "Task 'retrieval': 2 train row(s) have the same text as anchor and positive (the first: "
        f"{tmp_path / 'train.jsonl'}, line 3)"
    ) in caplog.text
    # A similarity pair of one text twice is a legitimate (top-score) example: no warning.
    caplog.clear()
    for row in rows:
        row["score"] = 1.0
    write_jsonl(tmp_path / "train.jsonl", rows)
    similarity = {
        "sts": {"type": "similarity", "train": str(tmp_path / "train.jsonl"), "label_column": "score"}
    }
    with caplog.at_level("WARNING", logger="multitask_encoder.data.loading"):
        load_multitask_data(similarity, tokenizer, 32, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert "same text as anchor" not in caplog.text


# ---------------------------------------------------------------------------------------------- training
def write_config(path: Path, tasks: dict, **options) -> str:
    values = {
        "max_seq_length": 32,
        "seed": 0,
        "learning_rate": 3e-4,
        "head_learning_rate": 1e-2,
        "per_device_train_batch_size": 8,
        "dataloader_num_workers": 0,
        **options,
        "tasks": tasks,
    }
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return str(path)


def flags(backbone: str, output_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [*job_flags(backbone, output_dir, cache), *extra]


@pytest.fixture(scope="module")
def pair_run(pair_data: Path, tiny_backbone: str, tmp_path_factory):
    """One mixed run: a sentence task and every pair task type, evaluated, the embedding scored on a set."""
    folder = tmp_path_factory.mktemp("pair_run")
    tasks = {
        **topic_task(pair_data),
        **pair_tasks(pair_data, ("same_topic", "same_topic_cross", "relatedness", "retrieval")),
    }
    config = write_config(
        folder / "config.yaml",
        tasks,
        embedding_evaluation={
            "toy_sts": {"data": str(pair_data / "test.jsonl"), "score_column": "relatedness"}
        },
    )
    output_dir = folder / "out"
    logs = LogRecorder()
    results = run_training(
        [
            config,
            *flags(
                tiny_backbone, output_dir, pair_data / "cache", "--max_steps", "160", "--eval_strategy", "no"
            ),
        ],
        callbacks=[logs],
    )
    return output_dir, results, logs.keys


class LogRecorder(TrainerCallback):
    """Every metric name the run logged (to its trackers and printed lines)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.keys |= set(logs or {})


def test_pair_tasks_train_beside_a_sentence_task(pair_run, pair_data: Path) -> None:
    output_dir, results, _ = pair_run
    test = results["test"]
    # Each kind learns its toy signal (chance: 0.5 / 0.6 majority for the pair classes, mrr ~0.16 at 24 rows).
    assert test["same_topic"]["accuracy"] >= 0.9 and test["same_topic_cross"]["accuracy"] >= 0.9, test
    assert test["relatedness"]["spearman"] > 0.8
    assert test["retrieval"]["mrr"] > 0.5
    assert test["topic"]["accuracy"] >= 0.9
    embedding = results["embedding"]["toy_sts"]
    assert embedding["after"] > embedding["before"]  # the similarity task taught the embedding the toy topics
    # "after" is the score of the model the folder holds (taken from the validation evaluation, not recomputed).
    pairs = load_embedding_eval_set(
        "toy_sts", {"data": str(pair_data / "test.jsonl"), "score_column": "relatedness"}, "."
    )
    saved = MultiTaskEncoderModel.from_pretrained(output_dir)
    assert embedding["after"] == pytest.approx(embedding_spearman(saved, pairs), abs=1e-6)
    # One scale for every Spearman: the set is the relatedness task's test file, so the embedding's number is
    # that task's test Spearman (-1 to 1, not x 100).
    assert embedding["after"] == pytest.approx(test["relatedness"]["spearman"], abs=1e-4)

    card = (output_dir / "README.md").read_text()
    assert "### The embedding" in card and "`toy_sts`" in card
    header = (output_dir / "predictions_same_topic.csv").read_text().splitlines()[0]
    assert header == "text,text_pair,gold,predicted,score"


def test_the_embedding_sets_are_logged_as_validation_scores_only(pair_run) -> None:
    """The embedding sets are the config's own named sets: scored by the validation evaluation, never logged
    under the test pass's prefix as if they were test scores."""
    _, _, logged = pair_run
    assert "eval_embedding_toy_sts_spearman" in logged
    assert not [key for key in logged if key.startswith("test_embedding")], sorted(logged)
    assert "test_relatedness_spearman" in logged


def test_pairs_are_predicted_and_single_texts_refused_for_pair_tasks(pair_run, pair_data: Path) -> None:
    output_dir, results, _ = pair_run
    model = AutoModel.from_pretrained(output_dir)
    rows = [json.loads(line) for line in (pair_data / "test.jsonl").read_text().splitlines()]
    pairs = [(row["text"], row["text_pair"]) for row in rows]
    predicted = model.predict(pairs)
    assert set(predicted[0]) == {
        "same_topic",
        "same_topic_cross",
        "relatedness",
        "retrieval",
    }  # the pair tasks
    accuracy = np.mean([p["same_topic"]["label"] == row["same_topic"] for p, row in zip(predicted, rows)])
    assert accuracy == pytest.approx(results["test"]["same_topic"]["accuracy"], abs=1e-6)
    cosines = model.similarity([a for a, _ in pairs], [b for _, b in pairs]).diagonal()
    torch.testing.assert_close(
        torch.tensor([p["relatedness"]["similarity"] for p in predicted]), cosines, atol=1e-5, rtol=0
    )
    assert 0 <= predicted[0]["relatedness"]["score"] <= 5
    single = model.predict({"text": rows[0]["text"], "text_pair": rows[0]["text_pair"]})  # one pair, one dict
    assert (
        single.keys() == predicted[0].keys()
        and single["same_topic"]["label"] == predicted[0]["same_topic"]["label"]
    )
    assert single["relatedness"]["similarity"] == pytest.approx(
        predicted[0]["relatedness"]["similarity"], abs=1e-5
    )
    assert set(model.predict(rows[0]["text"])) == {"topic"}  # texts: the single-text tasks
    with pytest.raises(ValueError, match=r"Task\(s\) \['relatedness'\] read pairs of texts"):
        model.predict(rows[0]["text"], tasks="relatedness")
    with pytest.raises(ValueError, match=r"Task\(s\) \['topic'\] read single texts, not pairs"):
        model.predict(pairs[:2], tasks=["topic"])
    with pytest.raises(TypeError, match=r"Input #1 is str, not a \(text, text_pair\) pair"):
        model.predict([pairs[0], "a text"])


def test_pairs_encoded_apart_encode_each_distinct_text_once(pair_run, pair_data: Path) -> None:
    """One query against many candidates: the query is encoded once, and the scores are those of the pairs
    predicted one by one."""
    output_dir, _, _ = pair_run
    model = AutoModel.from_pretrained(output_dir)
    rows = [json.loads(line) for line in (pair_data / "test.jsonl").read_text().splitlines()]
    query, candidates = rows[0]["text"], [row["text_pair"] for row in rows]
    encoded = []
    encoder_states = model.encoder_states
    model.encoder_states = lambda inputs, *a, **k: (
        encoded.append(len(inputs["input_ids"])) or encoder_states(inputs, *a, **k)
    )
    predicted = model.predict([(query, c) for c in candidates], tasks=["relatedness", "same_topic"])
    assert sum(encoded) == len({query, *candidates})
    del model.encoder_states
    alone = [model.predict((query, c), tasks=["relatedness", "same_topic"]) for c in candidates[:4]]
    for together, one in zip(predicted, alone):
        assert together["same_topic"]["label"] == one["same_topic"]["label"]
        assert together["relatedness"]["similarity"] == pytest.approx(
            one["relatedness"]["similarity"], abs=1e-5
        )


def test_the_pipeline_and_the_batch_command_take_pairs(pair_run, pair_data: Path, tmp_path: Path) -> None:
    from transformers import pipeline

    output_dir, _, _ = pair_run
    model = AutoModel.from_pretrained(output_dir)
    row = json.loads((pair_data / "test.jsonl").read_text().splitlines()[0])
    classify = pipeline("multitask-text-classification", model=model)
    pair = {"text": row["text"], "text_pair": row["text_pair"]}
    assert classify(pair)["same_topic"] == model.predict(pair)["same_topic"]
    source = tmp_path / "pairs.jsonl"
    source.write_text((pair_data / "test.jsonl").read_text())
    out = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        "-m",
        "multitask_encoder.batch_predict",
        str(output_dir),
        str(source),
        "-o",
        str(out),
    ]
    command += ["--text-pair-column", "text_pair", "--tasks", "same_topic,relatedness", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = [(line["text"], line["text_pair"]) for line in lines]
    expected = model.predict(pairs, tasks=["same_topic", "relatedness"])
    assert [line["predictions"]["same_topic"]["label"] for line in lines] == [
        p["same_topic"]["label"] for p in expected
    ]


def test_pair_folder_serves_pairs_without_the_package(run_without_package, pair_run, pair_data: Path) -> None:
    output_dir, _, _ = pair_run
    row = json.loads((pair_data / "test.jsonl").read_text().splitlines()[0])
    script = (
        "import json, sys\n"
        "from transformers import AutoModel\n"
        "model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "print(json.dumps(model.predict([(sys.argv[2], sys.argv[3])])[0]))\n"
    )
    result = run_without_package(script, str(output_dir), row["text"], row["text_pair"])
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    expected = AutoModel.from_pretrained(output_dir).predict([(row["text"], row["text_pair"])])[0]
    assert got["same_topic"]["label"] == expected["same_topic"]["label"]
    assert got["relatedness"]["similarity"] == pytest.approx(expected["relatedness"]["similarity"], abs=1e-5)


def test_bi_pairs_train_on_the_frozen_fast_path_as_on_the_slow_one(
    pair_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    tasks = pair_tasks(pair_data, ("same_topic",))
    tasks["same_topic"]["head"] = {"dropout": 0.0}
    config = write_config(tmp_path / "config.yaml", tasks)
    heads = {}
    for name, extra in (("fast", ["--precompute_embeddings", "--precompute_mode", "exact"]), ("slow", [])):
        out = tmp_path / name
        run_training(
            [
                config,
                *flags(
                    tiny_backbone,
                    out,
                    pair_data / "cache",
                    "--freeze_encoder",
                    "--max_steps",
                    "6",
                    "--eval_strategy",
                    "no",
                    *extra,
                ),
            ]
        )
        weights = load_file(out / "model.safetensors")
        heads[name] = {k: v for k, v in weights.items() if k.startswith("heads.")}
    for key in heads["fast"]:
        torch.testing.assert_close(heads["fast"][key], heads["slow"][key], atol=1e-5, rtol=0)


def test_distillation_keeps_the_embedding_closer_to_the_original(
    pair_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", topic_task(pair_data), learning_rate=5e-3)
    texts = [json.loads(line)["text"] for line in (pair_data / "test.jsonl").read_text().splitlines()]
    original = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks={"x": {"type": "regression"}}).encode(
        texts, return_tensors="pt"
    )
    drift = {}
    for name, extra in (("plain", []), ("distilled", ["--embedding_distillation_weight", "5.0"])):
        out = tmp_path / name
        run_training(
            [
                config,
                *flags(
                    tiny_backbone,
                    out,
                    pair_data / "cache",
                    "--max_steps",
                    "20",
                    "--eval_strategy",
                    "no",
                    *extra,
                ),
            ]
        )
        trained = AutoModel.from_pretrained(out).encode(texts, return_tensors="pt")
        drift[name] = float(1 - F.cosine_similarity(trained, original, dim=-1).mean())
    assert drift["distilled"] < 0.5 * drift["plain"], drift


def test_a_task_added_to_a_trained_model_leaves_the_old_predictions_bit_identical(
    pair_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    run_training(
        [
            write_config(tmp_path / "a.yaml", topic_task(pair_data)),
            *flags(tiny_backbone, first, pair_data / "cache", "--max_steps", "6", "--eval_strategy", "no"),
        ]
    )
    texts = [json.loads(line)["text"] for line in (pair_data / "test.jsonl").read_text().splitlines()]
    before = AutoModel.from_pretrained(first)
    old = before.predict(texts, tasks="topic")
    # A multi-task folder is not a backbone: a clear message, not an AttributeError.
    with pytest.raises(
        ValueError, match=r"is a trained multitask-encoder model, not a backbone.*add_task.*init_from"
    ):
        MultiTaskEncoderModel.from_backbone(str(first), tasks={"x": {"type": "regression"}})

    second = tmp_path / "second"
    config = write_config(
        tmp_path / "b.yaml",
        pair_tasks(pair_data, ("same_topic",)),
        init_from=str(first),
        freeze_existing=True,
        freeze_encoder=True,
        precompute_embeddings=True,
    )
    run_training(
        [
            config,
            "--output_dir",
            str(second),
            "--use_cpu",
            "--report_to",
            "none",
            "--data_cache_dir",
            str(pair_data / "cache"),
            "--max_steps",
            "6",
            "--eval_strategy",
            "no",
        ]
    )
    after = AutoModel.from_pretrained(second)
    assert list(after.config.tasks) == ["topic", "same_topic"]
    assert after.predict(texts, tasks="topic") == old  # bit for bit: dicts of the same floats
    kept = load_file(first / "model.safetensors")
    grown = load_file(second / "model.safetensors")
    assert all(torch.equal(kept[k], grown[k]) for k in kept)
    assert any(k.startswith("heads.same_topic.") for k in grown)

    model = AutoModel.from_pretrained(first)
    model.add_task("score", {"type": "regression"})
    assert list(model.config.tasks) == ["topic", "score"] and "score" in model.heads
    with pytest.raises(ValueError, match="Task 'topic' exists already"):
        model.add_task("topic", {"type": "regression"})
