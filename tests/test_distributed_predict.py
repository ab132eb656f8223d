"""BatchPredictor (the picklable, lazily loading predictor) and prediction on Ray Data, with the real engine:
outputs equal single-process `predict` row for row for every task type, a SIGKILLed worker loses and
duplicates no row, a bad input file fails with one line naming it. Ray tests skip where ray is not installed
(`pip install "multitask-encoder[ray]"`); one local Ray (2 CPUs) serves the whole module."""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multitask_encoder import BatchPredictor, MultiTaskEncoderModel
from multitask_encoder.batch_predictor import prediction_column
from multitask_encoder.task_types import TASK_TYPES, task_type

# One task of every registered type (pair_classification twice: bi and cross encoding).
TEXT_TASKS = {
    "topic": {"type": "sequence_classification", "labels": ["world", "sports", "business"]},
    "intent": {"type": "label_text_classification", "labels": ["refund", "delivery"]},
    "tags": {"type": "multi_label_classification", "labels": ["politics", "economy", "science"]},
    "score": {"type": "regression"},
    "sizes": {"type": "regression", "labels": ["width", "height"]},
    "ner": {"type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
}
PAIR_TASKS = {
    "same": {"type": "pair_classification", "labels": ["different", "same"]},
    "same_cross": {"type": "pair_classification", "labels": ["different", "same"], "pair_encoding": "cross"},
    "relatedness": {"type": "similarity", "score_range": [0, 5]},
    "retrieval": {"type": "contrastive"},
}
WORDS = [
    "Alice",
    "Bob",
    "Paris",
    "Berlin",
    "shares",
    "fell",
    "rose",
    "the",
    "team",
    "won",
    "lost",
    "a",
    "match",
    "in",
    "today",
    "after",
    "extra",
    "time",
]
TOLERANCE = 1e-4  # batches are padded differently on each path


def sentence(index: int) -> str:
    rng = np.random.default_rng(index)
    return " ".join(rng.choice(WORDS, size=3 + index % 9)) + "."


@pytest.fixture(scope="module")
def all_types_model(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    import torch

    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks={**TEXT_TASKS, **PAIR_TASKS})
    folder = tmp_path_factory.mktemp("all_types_model")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def loaded_model(all_types_model: str) -> MultiTaskEncoderModel:
    return MultiTaskEncoderModel.from_pretrained(all_types_model).eval()


def assert_same_prediction(got: Any, expected: Any, where: str) -> None:
    """A prediction column's value equals `predict`'s (numbers within TOLERANCE, the rest exactly)."""
    if isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (
            f"{where}: {got} != {expected}"
        )
    elif isinstance(
        expected, dict
    ):  # per-label scores: predict ranks them, the struct keeps the labels' order
        assert sorted(got) == sorted(expected), f"{where}: keys {list(got)} != {list(expected)}"
        for key in expected:
            assert_same_prediction(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), f"{where}: {got} != {expected}"
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_prediction(a, b, f"{where}[{index}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def assert_rows_equal_predict(
    rows: list[dict], model, texts: list[Any], tasks: Iterable[str], what: str
) -> None:
    """Each output row (sorted by id) holds `predict`'s prediction of its text, field by field; rows whose
    text is empty hold nulls."""
    kept = [index for index, text in enumerate(texts) if all(t.strip() for t in np.atleast_1d(text))]
    expected = model.predict([texts[i] for i in kept], tasks=list(tasks))
    by_row = dict(zip(kept, expected))
    for index, row in enumerate(rows):
        for name in tasks:
            for field in task_type(model.config.tasks[name]).prediction_fields(model.config.tasks[name]):
                got = row[prediction_column(name, field)]
                if index not in by_row:
                    assert got is None, f"{what} row {index} ({texts[index]!r}) {name}.{field}: {got!r}"
                    continue
                assert_same_prediction(got, by_row[index][name][field], f"{what} row {index} {name}.{field}")


# ---------------------------------------------------------------------------------------------- BatchPredictor
def test_every_task_type_declares_an_arrow_type_for_each_prediction_field(loaded_model) -> None:
    tested = set()
    for name, spec in loaded_model.config.tasks.items():
        schema = task_type(spec).prediction_schema(spec)
        assert [field for field, _ in schema] == list(task_type(spec).prediction_fields(spec)), name
        tested.add(spec.type)
    assert tested == set(TASK_TYPES), f"types without a task here: {set(TASK_TYPES) - tested}"


def test_batch_predictor_pickles_small_loads_lazily_and_returns_the_kind_of_batch_it_was_given(
    all_types_model: str, loaded_model
) -> None:
    predictor = BatchPredictor(all_types_model, embeddings=True)
    schema = predictor.output_schema()  # from the config alone
    assert predictor._model is None
    expected_columns = [
        prediction_column(name, field)
        for name in TEXT_TASKS
        for field in task_type(loaded_model.config.tasks[name]).prediction_fields(
            loaded_model.config.tasks[name]
        )
    ]
    assert schema.names == [*expected_columns, "embedding"]
    assert schema.field("embedding").type == pa.list_(pa.float32(), loaded_model.config.embedding_size)
    texts = ["Alice flew to Paris.", "   ", "Shares fell after the match.", "", "The team won."]
    ids = [10, 11, 12, 13, 14]

    shipped = pickle.loads(pickle.dumps(predictor))
    assert len(pickle.dumps(predictor)) < 10_000

    table = shipped(pa.table({"id": ids, "text": texts}))
    assert table.schema == pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string()), *schema])
    assert table.column("id").to_pylist() == ids
    assert_rows_equal_predict(table.to_pylist(), loaded_model, texts, TEXT_TASKS, "pyarrow")
    assert shipped.skipped == {"empty text(s)": 2}
    embeddings = table.column("embedding").to_pylist()
    assert embeddings[1] is None and embeddings[3] is None
    np.testing.assert_allclose(embeddings[0], loaded_model.encode(texts[0]), atol=TOLERANCE)

    # A batch with nothing to predict has the same columns and types.
    assert shipped(pa.table({"id": [1], "text": [""]})).schema == table.schema

    frame = shipped(pd.DataFrame({"id": ids, "text": texts}, index=[5, 6, 7, 8, 9]))
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == [5, 6, 7, 8, 9]
    assert frame["topic.label"].tolist()[0] == table.column("topic.label")[0].as_py()

    arrays = shipped({"id": np.array(ids), "text": np.array(texts, dtype=object)})
    assert isinstance(arrays, dict) and all(isinstance(v, np.ndarray) for v in arrays.values())
    assert arrays["tags.labels"][2] == table.column("tags.labels")[2].as_py()
    assert np.isnan(arrays["score.value"][1])


def anonymous_memory_mib() -> float:
    with open("/proc/self/smaps_rollup", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Anonymous:")) / 1024


@pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps_rollup") or platform.libc_ver()[0] != "glibc",
    reason="needs Linux with glibc's malloc",
)
def test_batch_predictor_hands_the_heap_it_freed_back_to_the_os(all_types_model: str) -> None:
    """A Ray model worker grew ~7 KiB per row it predicted: memory freed between Ray's own allocations stayed
    resident in glibc's arenas (free, never trimmed). Here ~180 MiB of heap is freed between chunks still
    alive, so glibc cannot shrink its heap on its own; the next batch must hand those pages back."""
    predictor = BatchPredictor(all_types_model, tasks=["topic"])
    predictor(pa.table({"text": ["The team won."]}))  # the model loads
    chunks = [bytearray(64 * 1024) for _ in range(3_000)]  # under glibc's mmap threshold: on the heap
    del chunks[:-1]  # the last chunk stays alive above the freed ones, so the heap's top cannot be trimmed
    held = anonymous_memory_mib()
    predictor(pa.table({"text": ["Shares fell after the match."]}))
    assert anonymous_memory_mib() < held - 100, f"{held:.0f} MiB before the batch"


def test_batch_predictor_reads_pairs_for_the_pair_tasks(all_types_model: str, loaded_model) -> None:
    pairs = [("a cat sat", "a dog sat"), ("shares fell", ""), ("the team won", "they lost the match")]
    predictor = BatchPredictor(all_types_model, text_column="a", text_pair_column="b")
    assert predictor.output_schema().names[0] == "same.label"
    table = predictor(pa.table({"a": [a for a, _ in pairs], "b": [b for _, b in pairs]}))
    assert_rows_equal_predict(table.to_pylist(), loaded_model, pairs, PAIR_TASKS, "pairs")


def test_batch_predictor_refuses_what_predict_refuses(all_types_model: str) -> None:
    from multitask_encoder.errors import MultiTaskEncoderError

    with pytest.raises(MultiTaskEncoderError, match=r"Unknown task\(s\) \['nope'\]"):
        BatchPredictor(all_types_model, tasks=["nope"]).output_schema()
    with pytest.raises(MultiTaskEncoderError, match=r"read pairs of texts"):
        BatchPredictor(all_types_model, tasks=["same"]).output_schema()
    predictor = BatchPredictor(all_types_model, tasks=["topic"])
    with pytest.raises(
        MultiTaskEncoderError, match=r"no column 'text' \(text_column\); its columns are: 'body'"
    ):
        predictor(pa.table({"body": ["a b"]}))
    with pytest.raises(MultiTaskEncoderError, match=r"column 'text' holds int values"):
        predictor(pa.table({"text": [1, 2]}))


def test_the_local_command_refuses_the_ray_engine_options(
    all_types_model: str, tmp_path: Path, capsys
) -> None:
    from multitask_encoder.batch_predict import main

    (tmp_path / "in.txt").write_text("a text\n")
    code = main([all_types_model, str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.csv"), "--workers", "2"])
    assert code == 1 and "--workers apply to --engine ray" in capsys.readouterr().err
    code = main(
        [all_types_model, str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.x"), "--format", "parquet"]
    )
    assert code == 1 and "parquet files apply to --engine ray" in capsys.readouterr().err
    code = main(
        [
            all_types_model,
            str(tmp_path / "in.txt"),
            "-o",
            str(tmp_path / "o"),
            "--engine",
            "ray",
            "--top-k",
            "1",
        ]
    )
    assert code == 1 and "--top-k applies to --engine local" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- Ray Data
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "multitask-encoder[ray]")')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_ray_predict_dataset_equals_predict_row_for_row_for_every_task_type(
    ray_cluster, all_types_model: str, loaded_model, tmp_path: Path
) -> None:
    from multitask_encoder.ray import predict_dataset

    ray = ray_cluster
    texts = [sentence(i) if i % 7 else " " for i in range(60)]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=4)
    out = predict_dataset(ds, all_types_model, workers=2, rows_per_batch=16)
    out.write_parquet(str(tmp_path / "text"))
    rows = sorted(pq.read_table(tmp_path / "text").to_pylist(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(60))
    assert [row["text"] for row in rows] == texts
    assert_rows_equal_predict(rows, loaded_model, texts, TEXT_TASKS, "ray text")

    pairs = [(sentence(i), sentence(i + 100)) for i in range(20)]
    ds = ray.data.from_items(
        [{"id": i, "q": a, "d": b} for i, (a, b) in enumerate(pairs)], override_num_blocks=2
    )
    out = predict_dataset(
        ds, all_types_model, workers=2, rows_per_batch=8, text_column="q", text_pair_column="d"
    )
    rows = sorted(out.take_all(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(20))
    assert_rows_equal_predict(rows, loaded_model, pairs, PAIR_TASKS, "ray pairs")


class KillingPredictor(BatchPredictor):
    """A BatchPredictor whose process SIGKILLs itself at its third batch, once for the whole run (the marker
    file says it happened): a worker dying mid-run, as an OOM killer or a lost node would do it."""

    marker: str = ""

    def __call__(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_ray_worker_killed_mid_run_leaves_a_complete_output_without_duplicates(
    ray_cluster, all_types_model: str, loaded_model, tmp_path: Path
) -> None:
    from multitask_encoder.ray import predict_dataset

    ray = ray_cluster
    ray.cloudpickle.register_pickle_by_value(
        sys.modules[__name__]
    )  # the test module is not importable in workers
    KillingPredictor.marker = str(tmp_path / "killed")
    texts = [sentence(i) for i in range(96)]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=12)
    out = predict_dataset(
        ds,
        all_types_model,
        workers=2,
        rows_per_batch=8,
        tasks=["topic", "ner"],
        predictor_class=KillingPredictor,
    )
    out.write_parquet(str(tmp_path / "out"))
    assert (tmp_path / "killed").exists(), "no worker was killed"
    rows = pq.read_table(tmp_path / "out").to_pylist()
    ids = [row["id"] for row in rows]
    assert sorted(ids) == list(range(96)), f"{len(ids)} rows, {len(set(ids))} distinct ids"
    rows.sort(key=lambda row: row["id"])
    assert_rows_equal_predict(rows, loaded_model, texts, ["topic", "ner"], "after the kill")


TWO_NODE_SCRIPT = """
import json, sys
import pyarrow as pa
import ray
from ray.cluster_utils import Cluster
from multitask_encoder import BatchPredictor, MultiTaskEncoderModel
from multitask_encoder.ray import predict_dataset

class NodePredictor(BatchPredictor):  # adds the node that predicted each row
    def __call__(self, batch):
        out = super().__call__(batch)
        return out.append_column("node", pa.array([ray.get_runtime_context().get_node_id()] * out.num_rows))

model, texts = sys.argv[1], json.loads(sys.argv[2])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
ray.data.DataContext.get_current().enable_progress_bars = False
try:
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=8)
    out = predict_dataset(ds, model, workers=2, rows_per_batch=8, tasks=["topic"], predictor_class=NodePredictor)
    rows = sorted(out.take_all(), key=lambda row: row["id"])
finally:
    ray.shutdown()
    cluster.shutdown()
print(json.dumps({"ids": [r["id"] for r in rows], "labels": [r["topic.label"] for r in rows],
                  "nodes": len({r["node"] for r in rows})}))
"""


def test_ray_two_node_cluster_on_one_machine_predicts_every_row_once(
    all_types_model: str, loaded_model, tmp_path: Path
) -> None:
    """Two Ray nodes of one CPU each (ray.cluster_utils.Cluster, in its own process): a worker on each."""
    pytest.importorskip("ray", reason='Ray is not installed (pip install "multitask-encoder[ray]")')
    texts = [sentence(i) for i in range(48)]
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), all_types_model, json.dumps(texts)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ids"] == list(range(48))
    assert result["nodes"] == 2, "both nodes should have run a worker"
    assert result["labels"] == [p["topic"]["label"] for p in loaded_model.predict(texts, tasks=["topic"])]


def run_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "multitask_encoder.batch_predict", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_ray_engine_command_predicts_a_folder_in_order_and_names_a_bad_file(
    ray_cluster, all_types_model: str, loaded_model, tmp_path: Path
) -> None:
    ray = ray_cluster
    address = ray.get_runtime_context().gcs_address
    folder = tmp_path / "input"
    folder.mkdir()
    texts = {name: [sentence(i + 10 * k) for i in range(8)] for k, name in enumerate(["a.jsonl", "b.jsonl"])}
    texts["a.jsonl"][3] = ""  # an empty text: a null row, counted
    for name, lines in texts.items():
        (folder / name).write_text("".join(json.dumps({"body": t}) + "\n" for t in lines))
    output = tmp_path / "predictions.parquet"
    common = [
        "--engine",
        "ray",
        "--address",
        address,
        "--workers",
        "2",
        "--no-progress",
        "--text-column",
        "body",
    ]
    done = run_command(all_types_model, str(folder), "-o", str(output), "--tasks", "topic,tags", *common)
    assert done.returncode == 0, done.stderr
    assert "warning: 1 row(s) had no text to predict" in done.stderr and "a.jsonl:4" in done.stderr
    rows = pq.read_table(output).to_pylist()
    expected_ids = [(str(folder / name), line) for name in texts for line in range(1, 9)]
    assert [(row["path"], row["line"]) for row in rows] == expected_ids  # input order
    all_texts = [t for lines in texts.values() for t in lines]
    assert_rows_equal_predict(rows, loaded_model, all_texts, ["topic", "tags"], "command")

    (folder / "c.jsonl").write_text('{"body": "fine"}\n{"body": "fine"}\n{"body": broken\n')
    failed = run_command(all_types_model, str(folder), "-o", str(tmp_path / "again.parquet"), *common)
    assert failed.returncode == 1, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("multitask-encoder-predict: error:") and "c.jsonl" in last and "line 3" in last, (
        last
    )
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "again.parquet").exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]


# ---------------------------------------------------------------------------------------------- Spark
@pytest.fixture(scope="module")
def spark_session():
    pytest.importorskip("pyspark", reason='pyspark is not installed (pip install "multitask-encoder[spark]")')
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs a Java runtime: none is installed here")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()


def test_spark_predict_udf_equals_predict_row_for_row_for_every_task_type(
    spark_session, all_types_model: str, loaded_model
) -> None:
    from multitask_encoder.spark import predict_udf

    texts = [sentence(i) if i % 5 else "" for i in range(24)]
    df = spark_session.createDataFrame(list(enumerate(texts)), "id long, body string").repartition(2)
    predict = predict_udf(all_types_model, embeddings=True)
    rows = [row.asDict(recursive=True) for row in df.select("id", predict("body").alias("p")).collect()]
    rows.sort(key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(24))
    schema = BatchPredictor(all_types_model, embeddings=True).output_schema()
    assert all(list(row["p"]) == schema.names for row in rows)  # the struct's fields: the declared columns
    assert_rows_equal_predict([row["p"] for row in rows], loaded_model, texts, TEXT_TASKS, "spark")
    np.testing.assert_allclose(rows[1]["p"]["embedding"], loaded_model.encode(texts[1]), atol=TOLERANCE)

    pairs = [(sentence(i), sentence(i + 50)) for i in range(8)]
    df = spark_session.createDataFrame(
        [(i, a, b) for i, (a, b) in enumerate(pairs)], "id long, q string, d string"
    )
    predict_pairs = predict_udf(all_types_model, pairs=True)
    rows = sorted(df.select("id", predict_pairs("q", "d").alias("p")).collect(), key=lambda row: row["id"])
    assert_rows_equal_predict(
        [row["p"].asDict(recursive=True) for row in rows], loaded_model, pairs, PAIR_TASKS, "spark pairs"
    )
