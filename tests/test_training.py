"""The training job (`run_training`, behind train.py) on the 2-layer MiniLM: every artefact of a run, per-task
losses, a SIGKILLed run resuming bit for bit, a real two-process DDP run, the frozen-encoder fast path against
the slow one, errors before training, and what the freezing and learning-rate options do.

Real files written into tmp_path (a toy signal a tiny model learns in a few steps), the packaged corpora
through `pkg:` paths, real tokenizer and weights, real subprocesses (`python train.py ...`, `accelerate launch`).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, TrainerCallback

import multitask_encoder  # noqa: F401  (registers the Auto classes: saved folders load without remote code)
from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.checkpoints import MANIFEST_FILE, RUN_FILE
from multitask_encoder.data import DataError, load_multitask_data
from multitask_encoder.precompute import precompute_mode
from multitask_encoder.sampling import MultiTaskBatchSampler
from multitask_encoder.task_types.metrics import extract_entities
from multitask_encoder.train import DEMO_CONFIG, run_training
from multitask_encoder.trainer import scalar_metrics

REPO = Path(__file__).resolve().parents[1]
SENTENCE_TASKS = ("topic", "sentiment")
BATCH_SIZE = 8

# ---------------------------------------------------------------------------------------------- toy data
# One noun gives the topic, one adjective the sentiment, names and cities the entities: a signal that the
# tiny model learns in a couple of dozen steps, so "the loss goes down" and "the metrics are high" can fail.
TOPIC_NOUNS = {
    "sport": ["match", "striker", "goal", "league", "race", "final"],
    "business": ["market", "shares", "profits", "bank", "merger", "stocks"],
}
SENTIMENT_ADJECTIVES = {
    "positive": ["wonderful", "great", "excellent", "superb"],
    "negative": ["awful", "terrible", "dreadful", "horrible"],
}
PEOPLE = ["John", "Mary", "Alice", "Peter", "Laura", "David"]
PLACES = ["Paris", "London", "Berlin", "Rome", "Madrid", "Vienna"]
SPLIT_SIZES = {"train": 64, "validation": 16, "test": 16}  # sentence rows; NER has half as many sentences


def sentence_rows(count: int, rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for _ in range(count):
        topic, sentiment = rng.choice(list(TOPIC_NOUNS)), rng.choice(list(SENTIMENT_ADJECTIVES))
        noun, adjective = rng.choice(TOPIC_NOUNS[topic]), rng.choice(SENTIMENT_ADJECTIVES[sentiment])
        day = rng.choice(["today", "yesterday", "on Monday", "this week"])
        rows.append({"text": f"The {noun} was {adjective} {day}", "topic": topic, "sentiment": sentiment})
    return rows


def ner_sentences(count: int, rng: random.Random) -> list[list[tuple[str, str]]]:
    sentences = []
    for _ in range(count):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        if rng.random() < 0.5:
            words = [(person, "B-PER"), ("Smith", "I-PER"), ("flew", "O"), ("to", "O"), (place, "B-LOC")]
        else:
            words = [("In", "O"), (place, "B-LOC"), (",", "O"), (person, "B-PER"), ("met", "O"), ("us", "O")]
        sentences.append(words)
    return sentences


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/validation/test.csv (text, topic, sentiment: one file labelled for both sentence tasks) and
    ner_<split>.conll; plus a module-wide tokenisation cache folder."""
    folder = tmp_path_factory.mktemp("toy_data")
    rng = random.Random(0)
    for split, size in SPLIT_SIZES.items():
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["text", "topic", "sentiment"])
            writer.writeheader()
            writer.writerows(sentence_rows(size, rng))
        blocks = ["\n".join(f"{w}\t{t}" for w, t in s) for s in ner_sentences(size // 2, rng)]
        (folder / f"ner_{split}.conll").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    (folder / "cache").mkdir()
    return folder


def toy_tasks(data: Path, ner: bool = True, **ner_extra) -> dict:
    tasks = {
        name: {"type": "sequence_classification", **{s: str(data / f"{s}.csv") for s in SPLIT_SIZES}}
        for name in SENTENCE_TASKS
    }
    if ner:
        splits = {s: str(data / f"ner_{s}.conll") for s in SPLIT_SIZES}
        tasks["ner"] = {"type": "token_classification", **splits, **ner_extra}
    return tasks


def write_config(path: Path, tasks: dict, **options) -> str:
    values = {
        "max_seq_length": 32,
        "seed": 0,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": BATCH_SIZE,
        "dataloader_num_workers": 0,
        **options,
        "tasks": tasks,
    }
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return str(path)


def job_flags(backbone: str, output_dir: Path, cache_dir: Path) -> list[str]:
    return [
        "--backbone",
        backbone,
        "--output_dir",
        str(output_dir),
        "--use_cpu",
        "--report_to",
        "none",
        "--data_cache_dir",
        str(cache_dir),
    ]


class Recorder(TrainerCallback):
    """What the tests inspect from inside a run: the weights, step and optimizer groups (parameter names with
    their lr and weight decay) at the start, and the trainer state at the end."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.start_step = state.global_step
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        names = {id(p): n for n, p in model.named_parameters()}
        self.parameter_names = list(names.values())
        self.groups = [
            {
                "lr": group.get("initial_lr", group["lr"]),
                "weight_decay": group["weight_decay"],
                "names": [names[id(p)] for p in group["params"]],
            }
            for group in optimizer.param_groups
        ]

    def on_train_end(self, args, state, control, **kwargs):
        self.state = state


def train(argv: list[str]) -> tuple[dict, Recorder]:
    recorder = Recorder()
    return run_training(argv, callbacks=[recorder]), recorder


@contextmanager
def torch_threads(count: int):
    """Float sums depend on the thread count: match the subprocesses (OMP_NUM_THREADS=1) bit for bit."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    blocks = [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    sentences = [[line.split("\t") for line in block.splitlines()] for block in blocks]
    return [([w for w, _ in s], [t for _, t in s]) for s in sentences]


def encoder_of(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")}


def heads_of(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith("heads.")}


def backbone_weights(backbone: str) -> dict[str, torch.Tensor]:
    """The backbone's encoder weights, without the BERT pooler the model drops."""
    return {
        k: v for k, v in load_file(os.path.join(backbone, "model.safetensors")).items() if "pooler" not in k
    }


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ---------------------------------------------------------------------------------------------- 1. end to end
E2E_STEPS = 24


@pytest.fixture(scope="module")
def e2e(toy_data: Path, tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory):
    """One run: topic + sentiment from one file (mixed batches) and NER from CoNLL, evaluated and
    checkpointed half-way and at the end."""
    folder = tmp_path_factory.mktemp("e2e")
    config = write_config(folder / "config.yaml", toy_tasks(toy_data), head_learning_rate=3e-3)
    output_dir = folder / "out"
    flags = ["--max_steps", str(E2E_STEPS), "--logging_steps", "1", "--save_steps", "12"]
    flags += ["--eval_strategy", "steps", "--eval_steps", "12", "--keep_checkpoints"]
    results, recorder = train([config, *job_flags(tiny_backbone, output_dir, toy_data / "cache"), *flags])
    return output_dir, results, recorder


def test_e2e_learns_and_logs_a_loss_per_task(e2e) -> None:
    _, results, recorder = e2e
    train_logs = [entry for entry in recorder.state.log_history if "loss" in entry]
    assert len(train_logs) == E2E_STEPS
    for task in ("topic", "sentiment", "ner"):
        values = [entry[f"{task}_loss"] for entry in train_logs if f"{task}_loss" in entry]
        assert len(values) >= E2E_STEPS // 2, f"{task}_loss logged {len(values)} times"
        assert all(value > 0 for value in values)
    for entry in train_logs:  # always in the config's task order, whichever task a batch started with
        logged = [key.removesuffix("_loss") for key in entry if key.endswith("_loss")]
        assert logged == [task for task in ("topic", "sentiment", "ner") if task in logged], entry
    first, last = (sum(e["loss"] for e in part) / 4 for part in (train_logs[:4], train_logs[-4:]))
    assert last < 0.7 * first, f"the loss did not go down: {first:.3f} -> {last:.3f}"
    for task in SENTENCE_TASKS:  # chance is 0.5
        assert results["test"][task]["accuracy"] >= 0.8, results["test"][task]
    assert results["test"]["ner"]["f1"] >= 0.8, results["test"]["ner"]
    assert recorder.state.global_step == E2E_STEPS


def test_e2e_writes_the_model_folder_metrics_and_card(e2e) -> None:
    output_dir, results, recorder = e2e
    for name in (
        "model.safetensors",
        "config.json",
        "configuration_multitask_encoder.py",
        "modeling_multitask_encoder.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "eval_results.json",
        "checkpoint-12/trainer_state.json",
        "checkpoint-24/trainer_state.json",
    ):
        assert (output_dir / name).is_file(), name
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_multitask_encoder.MultiTaskEncoderModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_multitask_encoder.MultiTaskEncoderConfig"
    assert [task["name"] for task in config["tasks"]] == ["topic", "sentiment", "ner"]

    # eval_results.json holds what run_training returned, and the same numbers were logged as
    # eval_<task>_<metric> (final validation) and test_<task>_<metric>.
    saved = json.loads((output_dir / "eval_results.json").read_text())
    logged = {k: v for entry in recorder.state.log_history for k, v in entry.items()}  # last value wins
    for split, prefix in (("validation", "eval"), ("test", "test")):
        for task in ("topic", "sentiment", "ner"):
            metric = "f1" if task == "ner" else "accuracy"
            assert saved[split][task][metric] == pytest.approx(results[split][task][metric])
            assert logged[f"{prefix}_{task}_{metric}"] == pytest.approx(saved[split][task][metric])
    main_scores = [saved["validation"][t]["accuracy"] for t in SENTENCE_TASKS] + [
        saved["validation"]["ner"]["f1"]
    ]
    assert logged["eval_combined_score"] == pytest.approx(sum(main_scores) / 3)

    # The model card reports the real metrics (validation and test columns of each task's table); the data
    # is local, so there is no model-index (it takes Hub dataset ids only).
    card = (output_dir / "README.md").read_text(encoding="utf-8")
    front_matter = yaml.safe_load(card.split("---")[1])
    assert "model-index" not in front_matter
    for task in SENTENCE_TASKS:
        row = f"| Accuracy | {saved['validation'][task]['accuracy']:.4f} | {saved['test'][task]['accuracy']:.4f} |"
        assert row in card, (task, row)
    row = f"| Entity F1 | {saved['validation']['ner']['f1']:.4f} | {saved['test']['ner']['f1']:.4f} |"
    assert row in card
    assert "| `ner` |" in card


def test_e2e_test_predictions_and_reload(e2e, toy_data: Path) -> None:
    output_dir, results, _ = e2e
    model = AutoModel.from_pretrained(output_dir)
    assert isinstance(model, MultiTaskEncoderModel)
    saved = load_file(output_dir / "model.safetensors")
    assert max_difference(saved, model.state_dict()) == 0.0

    test_rows = read_csv(toy_data / "test.csv")
    for task in SENTENCE_TASKS:
        rows = read_csv(output_dir / f"predictions_{task}.csv")
        assert list(rows[0]) == ["text", "gold", "predicted", "score"]
        assert [r["text"] for r in rows] == [r["text"] for r in test_rows]
        assert [r["gold"] for r in rows] == [r[task] for r in test_rows]
        accuracy = sum(r["gold"] == r["predicted"] for r in rows) / len(rows)
        assert accuracy == pytest.approx(results["test"][task]["accuracy"])
        predictions = model.predict([r["text"] for r in rows], tasks=task)
        assert [p[task]["label"] for p in predictions] == [r["predicted"] for r in rows]
        for row, prediction in zip(rows, predictions):
            assert float(row["score"]) == pytest.approx(prediction[task]["score"], abs=2e-4)

    rows = read_csv(output_dir / "predictions_ner.csv")
    assert list(rows[0]) == ["text", "gold", "predicted"]  # a tag sequence has no score of its own
    sentences = read_conll(toy_data / "ner_test.conll")
    assert [r["text"] for r in rows] == [" ".join(words) for words, _ in sentences]
    assert [r["gold"].split() for r in rows] == [tags for _, tags in sentences]
    predictions = model.predict([r["text"] for r in rows], tasks="ner")
    for row, prediction in zip(rows, predictions):
        words, tags = row["text"].split(), row["predicted"].split()
        assert len(tags) == len(words)
        expected = [(kind, " ".join(words[a:b])) for kind, a, b in extract_entities(tags)]
        assert [(e["entity"], e["text"]) for e in prediction["ner"]["entities"]] == expected
    assert any(prediction["ner"]["entities"] for prediction in predictions)


# ---------------------------------------------------------------------------------------------- 2. resuming
def complete_checkpoints(output_dir: Path) -> list[int]:
    """Steps of the checkpoints whose manifest (written last, once every file is saved) is there and parses."""
    steps = []
    for path in output_dir.glob(f"checkpoint-*/{MANIFEST_FILE}"):
        try:
            json.loads(path.read_text())
        except ValueError:
            continue
        steps.append(int(path.parent.name.split("-")[1]))
    return sorted(steps)


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_last_checkpoint_bit_for_bit(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data))
    # 96 rows / 8 = 12 batches an epoch: the run is killed inside epoch 0 and the resumed one crosses into
    # epoch 1, so the data order of both epochs and the dropout RNG after the restart are on trial.
    steps = 16
    flags = ["--max_steps", str(steps), "--save_steps", "4", "--logging_steps", "1", "--eval_strategy", "no"]
    uninterrupted = tmp_path / "uninterrupted"
    with torch_threads(1):
        run_training([config, *job_flags(tiny_backbone, uninterrupted, toy_data / "cache"), *flags])

    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "train.py",
        config,
        *job_flags(tiny_backbone, killed, toy_data / "cache"),
        *flags,
    ]
    with open(tmp_path / "first.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while not complete_checkpoints(killed):
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # it really stopped before the end
    resume_step = complete_checkpoints(killed)[-1]
    assert resume_step < steps

    restart = subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"Resuming from {killed / f'checkpoint-{resume_step}'}" in restart.stderr
    # The restarted process trained only the missing steps (one logged loss per step).
    assert restart.stdout.count("] train loss ") == steps - resume_step

    expected = load_file(uninterrupted / "model.safetensors")
    resumed = load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected), max_difference(expected, resumed)


def mark_unfinished(output_dir: Path) -> None:
    """The state a killed run leaves: no final model, the run file not marked finished."""
    (output_dir / "model.safetensors").unlink()
    run_file = output_dir / RUN_FILE
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "finished": False}))


def test_resume_skips_a_checkpoint_left_half_written(
    toy_data: Path, tiny_backbone: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data, ner=False))
    output_dir = tmp_path / "out"
    argv = [config, *job_flags(tiny_backbone, output_dir, toy_data / "cache")]
    argv += ["--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no", "--keep_checkpoints"]
    run_training(argv)
    expected = load_file(output_dir / "model.safetensors")

    # A kill while checkpoint-4 was being saved: its weights are there, trainer_state.json and the manifest
    # (written last) not, and the run never finished.
    (output_dir / "checkpoint-4" / "trainer_state.json").unlink()
    (output_dir / "checkpoint-4" / MANIFEST_FILE).unlink()
    mark_unfinished(output_dir)
    with caplog.at_level("INFO", logger="multitask_encoder.train"):
        _, recorder = train(argv)
    assert f"Not resuming from {output_dir / 'checkpoint-4'}" in caplog.text
    assert f"Resuming from {output_dir / 'checkpoint-2'}" in caplog.text
    assert recorder.start_step == 2
    resumed = load_file(output_dir / "model.safetensors")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected), max_difference(expected, resumed)


# ---------------------------------------------------------------------------------------------- 3. DDP
# Each process dumps the weights it ends with and the step count: proof that the replicas stayed in sync.
DDP_ENTRY = textwrap.dedent(
    """
    import json, os, sys
    from safetensors.torch import save_file
    from transformers import TrainerCallback
    from multitask_encoder.cli import configure_logging
    from multitask_encoder.train import run_training

    configure_logging()  # a program's choice: the library logs, it never configures logging

    class DumpReplica(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            rank = args.process_index
            weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(weights, os.path.join(args.output_dir, f"replica-{rank}.safetensors"))
            info = {"global_step": state.global_step, "max_steps": state.max_steps, "world_size": args.world_size}
            with open(os.path.join(args.output_dir, f"replica-{rank}.json"), "w") as f:
                json.dump(info, f)

    run_training(sys.argv[1:], callbacks=[DumpReplica()])
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_run_of_the_demo_tasks(tiny_backbone: str, tmp_path: Path) -> None:
    """The packaged demo config's tasks (packaged corpora, per-task batches), capped small, on two CPU processes."""
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    caps = {"topic": 40, "sentiment": 57}  # 97 rows: 13 per-task batches of 8, an odd number to shard
    tasks = {
        name: {**entry, "max_train_examples": caps[name], "max_eval_examples": 7}
        for name, entry in demo["tasks"].items()
    }
    options = {k: v for k, v in demo.items() if k not in ("tasks", "output_dir", "example_sentences")}
    options.update(max_seq_length=32, per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=2)
    assert options["composition"] == "per_task"
    # A single-task teacher for topic (issue 19): its targets are computed once, by the main process, and
    # read from the cache by the other.
    labels = (
        load_multitask_data(
            {"topic": tasks["topic"]},
            AutoTokenizer.from_pretrained(tiny_backbone),
            32,
            str(REPO),
            cache_dir=str(tmp_path / "cache"),
        )
        .task_specs["topic"]
        .labels
    )
    teacher = MultiTaskEncoderModel.from_backbone(
        tiny_backbone, tasks={"topic": {"type": "sequence_classification", "labels": labels}}
    )
    teacher.save_pretrained(tmp_path / "teacher")
    options.update(teachers={"topic": str(tmp_path / "teacher")}, teacher_weight_end=0.5)
    config = write_config(tmp_path / "config.yaml", tasks, **options)
    entry = tmp_path / "ddp_entry.py"
    entry.write_text(DDP_ENTRY, encoding="utf-8")
    output_dir = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    launch += ["--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml")]
    launch += ["--main_process_port", str(free_port())]
    flags = ["--num_train_epochs", "2", "--logging_steps", "1"]
    result = subprocess.run(
        [*launch, str(entry), config, *job_flags(tiny_backbone, output_dir, tmp_path / "cache"), *flags],
        cwd=REPO,
        env={**subprocess_env(), "MULTITASK_ENCODER_DEBUG": "1"},  # every process logs: both are checked
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("Computing the targets of the teacher of 'topic'") == 1
    assert result.stderr.count("Teacher targets of 'topic' from the cache") == 1

    infos = [json.loads((output_dir / f"replica-{rank}.json").read_text()) for rank in (0, 1)]
    sampler = MultiTaskBatchSampler(caps, batch_size=BATCH_SIZE, composition="per_task")
    assert len(sampler) == 13
    promised = 2 * -(
        -len(sampler) // 2
    )  # epochs x batches per process (the shorter process gets a padded one)
    assert infos == [{"global_step": promised, "max_steps": promised, "world_size": 2}] * 2

    replicas = [load_file(output_dir / f"replica-{rank}.safetensors") for rank in (0, 1)]
    saved = load_file(output_dir / "model.safetensors")
    assert replicas[0].keys() == replicas[1].keys() == saved.keys()
    assert all(torch.equal(replicas[0][k], replicas[1][k]) for k in saved), max_difference(*replicas)
    assert all(torch.equal(replicas[0][k], saved[k]) for k in saved)
    backbone = backbone_weights(tiny_backbone)
    assert max_difference(backbone, encoder_of(saved)) > 0  # the encoder trained

    # Distributed evaluation and prediction gathered every held-out row exactly once, in order.
    results = json.loads((output_dir / "eval_results.json").read_text())
    for task in caps:
        assert results["test"][task]["support"] == 7
        assert len(read_csv(output_dir / f"predictions_{task}.csv")) == 7


@pytest.mark.slow
def test_two_process_runs_end_cleanly_every_time(tiny_backbone: str, tmp_path: Path) -> None:
    """A finished two-process run leaves its process group before the interpreter exits: without that, gloo's
    threads aborted the process now and then at exit ("terminate called without an active exception") after a
    successful run, turning CI red by chance. Several short runs in a row, each must exit 0 without the abort."""
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    tasks = {"topic": {**demo["tasks"]["topic"], "max_train_examples": 16, "max_eval_examples": 2}}
    config = write_config(tmp_path / "config.yaml", tasks, per_device_eval_batch_size=2)
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    launch += ["--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml")]
    for attempt in range(3):
        output_dir = tmp_path / f"out{attempt}"
        flags = [*job_flags(tiny_backbone, output_dir, tmp_path / "cache"), "--max_steps", "1"]
        result = subprocess.run(
            [
                *launch,
                "--main_process_port",
                str(free_port()),
                "-m",
                "multitask_encoder.train",
                config,
                *flags,
            ],
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"run {attempt}: {result.stderr[-3000:]}"
        assert "terminate called" not in result.stderr, f"run {attempt}: {result.stderr[-3000:]}"
        assert (output_dir / "model.safetensors").is_file()
        # The log says each thing once: only the main process logs below errors, and loads and saves of the
        # model draw no bars.
        assert result.stderr.count("Training groups (rows)") == 1, result.stderr[-3000:]
        assert "Loading weights" not in result.stderr and "Writing model shards" not in result.stderr


# ---------------------------------------------------------------------------------------------- 4. frozen
def test_frozen_encoder_fast_path_trains_the_heads_the_slow_path_trains(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    # Head dropout draws its mask from the shape of what it reads. Sentence heads read [batch, hidden] on
    # both paths, so their masks match; the token head reads token states padded differently on each path
    # (its masks and the RNG stream after them would differ), so it trains without dropout here.
    tasks = toy_tasks(toy_data, head={"dropout": 0.0})
    config = write_config(tmp_path / "config.yaml", tasks)
    flags = ["--freeze_encoder", "--max_steps", "12", "--eval_strategy", "no", "--save_strategy", "no"]
    runs = {}
    fast_modes = {"fast": ["--precompute_mode", "exact"], "fastest": []}  # fastest: the default
    for name, extra in (
        ("fast", ["--precompute_embeddings", *fast_modes["fast"]]),
        ("fastest", ["--precompute_embeddings", *fast_modes["fastest"]]),
        ("slow", []),
    ):
        output_dir = tmp_path / name
        results, recorder = train(
            [config, *job_flags(tiny_backbone, output_dir, toy_data / "cache"), *flags, *extra]
        )
        runs[name] = (output_dir, results, recorder, load_file(output_dir / "model.safetensors"))

    backbone = backbone_weights(tiny_backbone)
    for name, (_, _, recorder, weights) in runs.items():
        assert recorder.groups and all(n.startswith("heads.") for g in recorder.groups for n in g["names"])
        encoder = encoder_of(weights)
        assert encoder.keys() == backbone.keys()
        assert all(torch.equal(encoder[k], backbone[k]) for k in backbone), name
        heads = heads_of(weights)
        assert all(not torch.equal(heads[k], recorder.initial[k]) for k in heads), name

    fast, slow = heads_of(runs["fast"][3]), heads_of(runs["slow"][3])
    # Float16 token states on the fast path: the NER head is close, the sentence heads agree to float error.
    for key in fast:
        tolerance = 1e-4 if key.startswith("heads.ner.") else 1e-6
        assert torch.allclose(fast[key], slow[key], rtol=0, atol=tolerance), (key, max_difference(fast, slow))

    # The fast path's folder is an ordinary model: it reloads and predicts from text what the run predicted
    # from precomputed features, and scores what the slow path scores.
    output_dir, results, _, _ = runs["fast"]
    model = AutoModel.from_pretrained(output_dir)
    for task in SENTENCE_TASKS:
        rows = read_csv(output_dir / f"predictions_{task}.csv")
        predictions = model.predict([r["text"] for r in rows], tasks=task)
        assert [p[task]["label"] for p in predictions] == [r["predicted"] for r in rows]
        fast_metrics, slow_metrics = results["test"][task], runs["slow"][1]["test"][task]
        # pytest.approx compares flat numbers only (pytest >= 9.2 refuses nested lists): the confusion
        # matrix holds counts, compared exactly; every other metric to float tolerance.
        assert fast_metrics["confusion_matrix"] == slow_metrics["confusion_matrix"]
        assert scalar_metrics(fast_metrics) == pytest.approx(scalar_metrics(slow_metrics))
        assert fast_metrics.keys() == slow_metrics.keys()
    assert results["test"]["ner"]["f1"] == pytest.approx(runs["slow"][1]["test"]["ner"]["f1"])

    # The default precompute encodes through the fastest mode within the serving guard (here bf16 where the CPU
    # has it): features within cosine 0.99 of exact, so the heads train to nearly the same weights and score
    # the same test rows the same (the guard allows 0.3 accuracy points: none of these few rows).
    model = AutoModel.from_pretrained(runs["fastest"][0])
    mode = precompute_mode(model, rows=100)
    fastest = heads_of(runs["fastest"][3])
    difference = max_difference(fastest, slow)
    assert difference < 5e-3, difference  # bf16 on this project's Xeon: 2.0e-3 after the 12 steps
    if mode != "token_budget":  # a reduced-precision mode really ran
        assert difference > 1e-6, (mode, difference)
    for task in SENTENCE_TASKS:
        fastest_metrics = runs["fastest"][1]["test"][task]
        assert fastest_metrics["confusion_matrix"] == runs["slow"][1]["test"][task]["confusion_matrix"], task


# ---------------------------------------------------------------------------------------------- 5. errors
@pytest.mark.parametrize(
    "problem", ["unknown_option", "missing_file", "undeclared_label", "prediction_loss_only"]
)
def test_bad_config_or_data_fails_before_training(
    problem: str, toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    tasks = toy_tasks(toy_data, ner=False)
    options: dict[str, object] = {}
    if problem == "prediction_loss_only":  # would evaluate without scoring any task or keeping its logits
        options["prediction_loss_only"] = True
        error, pattern = ValueError, r"prediction_loss_only and batch_eval_metrics are not supported"
    elif problem == "unknown_option":
        options["learnig_rate"] = 1e-3
        error, pattern = ValueError, r"unknown option 'learnig_rate'; did you mean 'learning_rate'\?"
    elif problem == "missing_file":
        tasks["sentiment"]["test"] = str(tmp_path / "sentiment_test.csv")
        error, pattern = DataError, r"Task 'sentiment': test file not found: .*sentiment_test\.csv"
    else:
        tasks["topic"]["labels"] = ["sport", "politics"]
        first_business = 1 + [r["topic"] for r in read_csv(toy_data / "train.csv")].index("business")
        error = DataError
        pattern = rf"Task 'topic': .*train\.csv, data row {first_business}: label 'business' is not one of"
    config = write_config(tmp_path / "config.yaml", tasks, **options)
    output_dir = tmp_path / "out"
    with pytest.raises(error, match=pattern) as raised:
        run_training([config, *job_flags(tiny_backbone, output_dir, toy_data / "cache"), "--max_steps", "2"])
    if problem == "unknown_option":
        assert str(raised.value).startswith(config)
    assert not output_dir.exists()  # nothing trained, nothing written


# ---------------------------------------------------------------------------------------------- 6. freezing
def test_frozen_embeddings_and_bottom_layer_stay_bit_equal_and_the_rest_trains(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data, ner=False), weight_decay=0.01)
    flags = ["--freeze_embeddings", "--freeze_bottom_layers", "1", "--max_steps", "3"]
    flags += [
        "--encoder_learning_rate",
        "2e-4",
        "--head_learning_rate",
        "3e-3",
        "--layerwise_lr_decay",
        "0.5",
    ]
    flags += ["--eval_strategy", "no", "--save_strategy", "no"]
    _, recorder = train([config, *job_flags(tiny_backbone, tmp_path / "out", toy_data / "cache"), *flags])

    before, after = (
        backbone_weights(tiny_backbone),
        encoder_of(load_file(tmp_path / "out" / "model.safetensors")),
    )
    frozen = [k for k in before if k.startswith(("embeddings.", "encoder.layer.0."))]
    trained = [k for k in before if k.startswith("encoder.layer.1.")]
    assert frozen and trained and len(frozen) + len(trained) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained)

    lr_of = {name: group["lr"] for group in recorder.groups for name in group["names"]}
    decay_of = {name: group["weight_decay"] for group in recorder.groups for name in group["names"]}
    assert sorted(lr_of) == sorted(
        [f"encoder.{k}" for k in trained] + [k for k in recorder.initial if k.startswith("heads.")]
    )
    for name, lr in lr_of.items():
        assert lr == pytest.approx(3e-3 if name.startswith("heads.") else 2e-4 * 0.5), name
        no_decay = name.endswith("bias") or "LayerNorm" in name
        assert decay_of[name] == (0.0 if no_decay else 0.01), name


def test_layerwise_learning_rates_of_an_unfrozen_encoder(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data, ner=False))
    flags = ["--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no"]
    flags += [
        "--encoder_learning_rate",
        "2e-4",
        "--head_learning_rate",
        "3e-3",
        "--layerwise_lr_decay",
        "0.5",
    ]
    _, recorder = train([config, *job_flags(tiny_backbone, tmp_path / "out", toy_data / "cache"), *flags])
    lr_of = {name: group["lr"] for group in recorder.groups for name in group["names"]}
    assert sorted(lr_of) == sorted(recorder.parameter_names)  # nothing frozen: every parameter trains
    # Two layers: layer 1 (top) decays once, layer 0 twice, the embeddings three times.
    expected = {"encoder.embeddings.": 2e-4 * 0.5**3, "encoder.encoder.layer.0.": 2e-4 * 0.5**2}
    expected.update({"encoder.encoder.layer.1.": 2e-4 * 0.5, "heads.": 3e-3})
    for name, lr in lr_of.items():
        prefix = next(p for p in expected if name.startswith(p))
        assert lr == pytest.approx(expected[prefix]), name


# ---------------------------------------------------------------------------------------------- 8. a user's run
# What the output folder holds after a run, which checkpoint a restart may use, and how the command refuses.
SHORT_RUN = ["--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no"]


def short_run_argv(toy_data: Path, tiny_backbone: str, tmp_path: Path, **options) -> tuple[list[str], Path]:
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data, ner=False), **options)
    output_dir = tmp_path / "out"
    return [config, *job_flags(tiny_backbone, output_dir, toy_data / "cache"), *SHORT_RUN], output_dir


def run_command(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "multitask_encoder.train", *argv],
        cwd=REPO,
        env={**subprocess_env(), **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_finished_run_keeps_the_model_and_results_and_removes_its_checkpoints(
    toy_data: Path, tiny_backbone: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path)
    run_training(argv)
    names = {path.name for path in output_dir.iterdir()}
    assert {"model.safetensors", "eval_results.json", "README.md", RUN_FILE} <= names
    assert not [name for name in names if name.startswith("checkpoint-")]
    assert json.loads((output_dir / RUN_FILE).read_text())["finished"] is True
    out = capsys.readouterr().out
    size = sum(path.stat().st_size for path in output_dir.rglob("*") if path.is_file()) / 2**20
    assert f"Model saved to {output_dir} ({size:.0f} MB; 2 checkpoint(s) removed" in out
    assert f"multitask-encoder-predict {output_dir} texts.txt -o predictions.csv" in out


def test_a_finished_run_is_not_trained_again_unless_overwritten(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path)
    run_training(argv)
    card = (output_dir / "README.md").read_text()
    with pytest.raises(ValueError, match=r"holds a finished run .*--overwrite_output_dir"):
        run_training(argv)
    assert (output_dir / "README.md").read_text() == card  # nothing was overwritten
    _, recorder = train([*argv, "--overwrite_output_dir"])
    assert recorder.start_step == 0 and recorder.state.global_step == 4


def test_another_runs_checkpoints_are_not_resumed(toy_data: Path, tiny_backbone: str, tmp_path: Path) -> None:
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path)
    run_training([*argv, "--keep_checkpoints"])
    mark_unfinished(output_dir)  # as if killed after checkpoint-4
    changed = [*argv, "--learning_rate", "5e-4"]
    with pytest.raises(
        ValueError,
        match=r"checkpoints of another run \(what differs from this one: training\.learning_rate\)",
    ):
        run_training(changed)
    _, recorder = train(argv)  # the same run resumes
    assert recorder.start_step == 4


@pytest.mark.parametrize("damage", ["truncated_weights", "corrupted_weights", "missing_optimizer"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(
    damage: str, toy_data: Path, tiny_backbone: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path)
    run_training([*argv, "--keep_checkpoints"])
    expected = load_file(output_dir / "model.safetensors")
    mark_unfinished(output_dir)
    newest = output_dir / "checkpoint-4"
    weights = newest / "model.safetensors"
    if damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        reason = "model.safetensors has .* bytes, not the .* it was saved with"
    elif (
        damage == "corrupted_weights"
    ):  # same size, a flipped byte deep in a tensor: NaN-free, silently wrong
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        reason = "model.safetensors is not the file that was saved"
    else:
        (newest / "optimizer.pt").unlink()
        reason = "optimizer.pt is missing"
    with caplog.at_level("INFO", logger="multitask_encoder.train"):
        _, recorder = train(argv)
    assert re.search(rf"Not resuming from {re.escape(str(newest))}: {reason}", caplog.text), caplog.text
    assert f"Resuming from {output_dir / 'checkpoint-2'}" in caplog.text
    assert recorder.start_step == 2
    resumed = load_file(output_dir / "model.safetensors")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected), max_difference(expected, resumed)


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        (
            "tasks:\n  topic: {type: sequence_classification, train: x.csv}\n  topic: {type: regression, train: y.csv}\n",
            r"config\.yaml, line 3, column 3: the key 'topic' is given twice \(first on line 2\)",
        ),
        (
            "max_steps: 2\nmax_steps: 3\ntasks: {t: {type: regression, train: x.csv}}\n",
            r"line 2, column 1: the key 'max_steps'",
        ),
        ("tasks:\n  topic: [unclosed\n", r"config\.yaml, line 3, column 1: .*flow sequence"),
        (
            "max_steps: [1, 2]\ntasks: {t: {type: regression, train: x.csv}}\n",
            r"config\.yaml, line 1: option 'max_steps' must be an integer",
        ),
        (
            "learning_rate: true\ntasks: {t: {type: regression, train: x.csv}}\n",
            r"option 'learning_rate' must be a number",
        ),
        (  # a string the argument parser cannot convert: named with the file and line, not by argparse
            "tasks: {t: {type: regression, train: x.csv}}\nlearning_rate: abc\n",
            r"config\.yaml, line 2: option 'learning_rate' must be a number, got 'abc'",
        ),
        (
            "tasks: {t: {type: regression, train: x.csv}}\nmax_steps: ten\n",
            r"config\.yaml, line 2: option 'max_steps' must be an integer, got 'ten'",
        ),
        (
            "tasks: {t: {type: regression, train: x.csv}}\nfreeze_encoder: maybe\n",
            r"config\.yaml, line 2: option 'freeze_encoder' must be true or false, got 'maybe'",
        ),
    ],
    ids=[
        "duplicate-task",
        "duplicate-option",
        "unparsable",
        "list-for-int",
        "bool-for-float",
        "text-for-float",
        "text-for-int",
        "text-for-bool",
    ],
)
def test_config_file_problems_name_the_file_line_and_column(
    config_text: str, message: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        run_training([str(config), "--output_dir", str(tmp_path / "out")])


def test_strings_the_parser_converts_are_accepted(tmp_path: Path) -> None:
    """YAML reads `1e-3` as a string: a number the parser converts is not refused by the type check."""
    from multitask_encoder.arguments import ARGUMENT_CLASSES
    from multitask_encoder.config_file import check_options

    check_options(
        "c.yaml",
        {"learning_rate": "1e-3", "max_steps": "10", "freeze_encoder": "True", "eval_strategy": "steps"},
        ARGUMENT_CLASSES,
    )


def test_json_config_errors_name_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        '{"tasks": {"t": {"type": "regression", "train": "x.csv"}},\n "max_steps": }', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"config\.json, line 2, column 15: Expecting value"):
        run_training([str(config)])
    config.write_text('{"max_steps": 2, "max_steps": 3, "tasks": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"config\.json, the key\(s\) \['max_steps'\] are given twice"):
        run_training([str(config)])


def test_the_command_refuses_in_one_line_without_a_traceback(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    tasks = toy_tasks(toy_data, ner=False)
    tasks["topic"]["label_column"] = "subject"
    config = write_config(tmp_path / "config.yaml", tasks)
    argv = [config, *job_flags(tiny_backbone, tmp_path / "out", toy_data / "cache"), "--max_steps", "2"]
    result = run_command(argv)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[0]] and errors[0].startswith(
        "multitask-encoder-train: error: Task 'topic': column 'subject' not found in "
    )
    assert "train.csv; available columns: ['text', 'topic', 'sentiment']" in errors[0]
    assert "Traceback" not in result.stderr
    debug = run_command(argv, MULTITASK_ENCODER_DEBUG="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    ("in_config", "flags", "option"),
    [
        ({"learning_rate": float("nan")}, [], "learning_rate"),  # YAML `.nan`
        ({}, ["--head_learning_rate", "inf"], "head_learning_rate"),
        ({"embedding_distillation_weight": float("inf")}, [], "embedding_distillation_weight"),
        ({}, ["--adam_beta2", "1e999"], "adam_beta2"),  # parses as inf
        ({"peft": {"r": 4, "alpha": float("inf")}}, [], "peft"),
    ],
    ids=[
        "config-nan-lr",
        "flag-inf-head-lr",
        "config-inf-multitask-option",
        "flag-overflowing-beta",
        "peft-block",
    ],
)
def test_non_finite_options_are_refused_before_training(
    in_config: dict, flags: list[str], option: str, toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path, **in_config)
    with pytest.raises(ValueError, match=rf"option '{option}' must be a finite number"):
        run_training([*argv, *flags])
    assert not output_dir.exists()  # refused before anything was read or written


def test_a_diverged_run_fails_naming_the_tensor_and_the_options_and_saves_nothing(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path, learning_rate=1e30)
    result = run_command(argv)
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = [
        line for line in result.stderr.splitlines() if line.startswith("multitask-encoder-train: error:")
    ]
    assert re.search(
        r"training diverged: the weight tensor '(encoder|heads)\.[\w.]+' holds NaN or infinite", line
    )
    assert "the model was not saved" in line and "learning_rate=1e+30" in line and "fp16=False" in line
    assert "loss_weight {'topic': 1.0, 'sentiment': 1.0}" in line
    assert "Traceback" not in result.stderr and "Model saved" not in result.stdout
    assert not (output_dir / "model.safetensors").exists()
    assert json.loads((output_dir / RUN_FILE).read_text())["finished"] is False


@pytest.mark.parametrize(
    ("save_flags", "what"),
    [([], "the checkpoint checkpoint-2"), (["--save_strategy", "no"], "the trained model")],
    ids=["checkpoint", "final-model"],
)
def test_a_full_disk_says_no_space_left_naming_the_folder(
    save_flags: list[str],
    what: str,
    toy_data: Path,
    tiny_backbone: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    import transformers.modeling_utils

    from multitask_encoder.checkpoints import NoSpaceLeft

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path)
    with pytest.raises(NoSpaceLeft) as refused:
        run_training([*argv, *save_flags])
    assert str(refused.value).startswith(
        f"No space left on the device holding {output_dir} while saving {what}: free some space"
    )
    assert refused.value.errno == errno.ENOSPC


@pytest.mark.parametrize(
    ("in_config", "flags", "message"),
    [
        (
            {"max_seq_length": 1024},
            [],
            r"max_seq_length 1024 is longer than the backbone .* takes \(512 tokens, its position embeddings\): "
            r"set max_seq_length to at most 512",
        ),
        ({}, ["--gradient_accumulation_steps", "0"], r"gradient_accumulation_steps must be >= 1, got 0"),
        (
            {"peft": {"type": "nosuch"}},
            [],
            r"peft type 'nosuch' is not a PEFT tuner; the tuners are .*\blora\b",
        ),
    ],
    ids=["max_seq_length-beyond-positions", "zero-accumulation", "unknown-peft-type"],
)
def test_options_that_would_fail_mid_run_are_refused_up_front(
    in_config: dict, flags: list[str], message: str, toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path, **in_config)
    with pytest.raises(ValueError, match=message):
        run_training([*argv, *flags])
    assert not output_dir.exists()


def test_a_run_without_max_seq_length_builds_the_model_from_backbone_builds(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    """One default per model option: a run that leaves max_seq_length out tokenises at and saves the backbone's
    own (its sentence-transformers max_seq_length, 256 for MiniLM), the value from_backbone takes without one."""
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path)
    values = yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8"))
    del values["max_seq_length"]
    Path(argv[0]).write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    run_training(argv)
    trained = MultiTaskEncoderModel.from_pretrained(output_dir)
    built = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=trained.config.tasks)
    own = json.loads((Path(tiny_backbone) / "sentence_bert_config.json").read_text(encoding="utf-8"))
    assert built.config.max_seq_length == own["max_seq_length"] == 256
    assert trained.config.max_seq_length == 256
    saved = json.loads((output_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
    assert saved["max_seq_length"] == 256
    assert trained.tokenizer.model_max_length == 256


# ---------------------------------------------------------------------------------------------- adding tasks
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("freeze_existing_alone", r"freeze_existing keeps the encoder and heads .* without init_from"),
        (
            "freeze_existing_with_peft",
            r"freeze_existing keeps the old tasks' predictions bit-identical.*peft",
        ),
        (
            "model_options",
            r"init_from .* cannot be applied: pooling='cls' \(the model has 'mean'\); max_seq_length=32 "
            r"\(the model has 256\)",
        ),
    ],
)
def test_adding_tasks_refuses_what_would_not_be_additive(
    case: str, message: str, toy_data: Path, tiny_backbone: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """init_from + freeze_existing keeps the old answers bit-identical, or the run is refused: freeze_existing
    has nothing to keep without init_from, a PEFT adapter would change the frozen encoder, and model options
    that shape the embedding cannot be applied to a trained model (the config's max_seq_length: 32 included)."""
    options, flags = {}, []
    if case == "freeze_existing_alone":
        flags = ["--freeze_existing", "true"]
    elif case == "freeze_existing_with_peft":
        options = {"init_from": str(tiny_checkpoint), "freeze_existing": True, "peft": {"r": 4}}
    else:
        options = {"init_from": str(tiny_checkpoint)}
        flags = ["--pooling", "cls"]
    argv, output_dir = short_run_argv(toy_data, tiny_backbone, tmp_path, **options)
    with pytest.raises(ValueError, match=message):
        run_training([*argv, *flags])
    assert not output_dir.exists()


def test_init_from_and_freeze_existing_are_part_of_the_run_fingerprint(
    toy_data: Path, tiny_backbone: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Resuming a killed init_from run with the other freeze_existing would load an optimizer state of other
    parameters: it is another run, refused naming the option."""
    tasks = {"sentiment": toy_tasks(toy_data, ner=False)["sentiment"]}  # a task tiny_checkpoint lacks
    config = write_config(tmp_path / "config.yaml", tasks, max_seq_length=256, init_from=str(tiny_checkpoint))
    output_dir = tmp_path / "out"
    argv = [config, *job_flags(tiny_backbone, output_dir, toy_data / "cache"), *SHORT_RUN]
    run_training([*argv, "--freeze_existing", "true", "--keep_checkpoints"])
    assert json.loads((output_dir / RUN_FILE).read_text())["inputs"]["job"] == {
        "init_from": str(tiny_checkpoint),
        "freeze_existing": True,
    }
    mark_unfinished(output_dir)  # as if killed after checkpoint-4
    with pytest.raises(
        ValueError, match=r"checkpoints of another run \(what differs from this one: job\.freeze_existing\)"
    ):
        run_training([*argv, "--freeze_existing", "false"])


# ---------------------------------------------------------------------------------------------- 9. integrations
def test_the_run_plots_and_the_card_embeds_them_with_hub_metadata(e2e) -> None:
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import pipeline
    from transformers.pipelines import SUPPORTED_TASKS

    output_dir, _, _ = e2e
    plots = sorted(path.name for path in (output_dir / "plots").iterdir())
    assert plots == ["confusion_sentiment.png", "confusion_topic.png", "eval_metrics.png", "loss.png"]
    assert all((output_dir / "plots" / name).read_bytes().startswith(b"\x89PNG") for name in plots)
    card = ModelCard.load(output_dir / "README.md", ignore_metadata_errors=False)
    for name in plots:
        assert f"(plots/{name})" in card.text
    data = card.data
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()  # what the Hub parses back
    assert data.library_name == "transformers" and data.base_model is None  # a local tiny backbone: no Hub id
    assert data.language is None and not data.datasets  # local data: no Hub dataset ids, no invented ones
    assert "sentence-transformers" in data.tags and "token-classification" in data.tags
    assert data.pipeline_tag in SUPPORTED_TASKS
    served = pipeline(data.pipeline_tag, model=str(output_dir))("The match was great today")
    assert served[0]["label"] in ("sport", "business")


def test_a_missing_tracker_is_named_before_any_data_is_read(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data, ner=False))
    cache = tmp_path / "cache"
    blocker = tmp_path / "sitecustomize.py"  # in the child, tensorboard (and tensorboardX) look not installed
    blocker.write_text(
        "import importlib.util\n"
        "_find_spec = importlib.util.find_spec\n"
        "def find_spec(name, package=None):\n"
        "    if name.split('.')[0] in ('tensorboard', 'tensorboardX'):\n"
        "        return None\n"
        "    return _find_spec(name, package)\n"
        "importlib.util.find_spec = find_spec\n",
        encoding="utf-8",
    )
    argv = [config, "--backbone", tiny_backbone, "--output_dir", str(tmp_path / "out"), "--use_cpu"]
    argv += ["--data_cache_dir", str(cache), "--report_to", "tensorboard", "--max_steps", "2"]
    result = run_command(argv, PYTHONPATH=str(tmp_path))
    assert result.returncode == 1, result.stderr[-2000:]
    assert (
        "--report_to tensorboard: the tracker is not installed (pip install 'multitask-encoder[tensorboard]')"
        in result.stderr
    )
    assert not cache.exists() and "Tokenising" not in result.stderr  # refused before the data


def test_tensorboard_and_console_receive_every_tasks_losses_and_metrics(
    toy_data: Path, tiny_backbone: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path / "config.yaml", toy_tasks(toy_data))
    output_dir = tmp_path / "out"
    argv = [config, "--backbone", tiny_backbone, "--output_dir", str(output_dir), "--use_cpu"]
    argv += ["--data_cache_dir", str(toy_data / "cache"), "--report_to", "tensorboard", "--max_steps", "4"]
    argv += ["--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "no"]
    run_training(argv)
    (run_dir,) = (output_dir / "runs").iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for task in ("topic", "sentiment", "ner"):
        # The same name for a task's loss in training and in evaluation.
        assert f"train/{task}_loss" in scalars and f"eval/{task}_loss" in scalars, sorted(scalars)
    for name in (
        "eval/topic_accuracy",
        "eval/sentiment_accuracy",
        "eval/ner_f1",
        "eval/combined_score",
        "test/topic_accuracy",
    ):
        assert name in scalars, sorted(scalars)
    assert [event.step for event in events.Scalars("eval/topic_accuracy")][:2] == [2, 4]

    # The console: one line per evaluation during training with each task's main metric and loss; the
    # evaluations after training only in the summary (once); evaluation bars named by split and task.
    out, err = capsys.readouterr()
    evaluation_lines = [line for line in out.splitlines() if "] validation: " in line]
    assert len(evaluation_lines) == 2, out
    for line in evaluation_lines:
        segments = line.split("] validation: ")[1].split(" | ")
        assert [segment.split()[:2] for segment in segments[:3]] == [
            ["topic", "accuracy"],
            ["sentiment", "accuracy"],
            ["ner", "f1"],
        ], line
        assert all(" loss " in segment for segment in segments[:3]), line
    assert "] test: " not in out and out.count("test topic: accuracy") == 1, out
    for bar in ("eval topic", "eval ner", "test sentiment"):
        assert f"{bar}:" in err, err[-3000:]


def test_lora_trains_the_adapter_and_saves_a_merged_model_and_the_adapter(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    from peft import PeftModel

    config = write_config(
        tmp_path / "config.yaml",
        toy_tasks(toy_data),
        peft={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        learning_rate=5e-3,
    )
    output_dir = tmp_path / "out"
    argv = [
        config,
        *job_flags(tiny_backbone, output_dir, toy_data / "cache"),
        "--max_steps",
        "8",
        "--eval_strategy",
        "no",
    ]
    _, recorder = train(argv)
    trained = [name for group in recorder.groups for name in group["names"]]  # what the optimizer updates
    lora = [name for name in trained if "lora_" in name]
    assert lora and all(".query." in name or ".value." in name for name in lora)
    assert not [n for n in trained if n.startswith("encoder.") and "lora_" not in n]  # the base is frozen
    assert {n.split(".")[0] for n in trained} == {"encoder", "heads"}  # the heads train in full
    assert (output_dir / "adapter" / "adapter_config.json").is_file() and not (
        output_dir / "adapter" / "README.md"
    ).exists()
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    # The backbone by its folder's name: no path of the training machine in a saved file.
    assert (
        adapter_config["r"] == 4
        and adapter_config["base_model_name_or_path"] == "./" + Path(tiny_backbone).name
    )

    merged = AutoModel.from_pretrained(output_dir)  # an ordinary folder: no adapter keys, no peft needed
    assert not [k for k in load_file(output_dir / "model.safetensors") if "lora" in k]
    unmerged = AutoModel.from_pretrained(output_dir)
    base = AutoModel.from_pretrained(tiny_backbone)
    base.pooler = None
    unmerged.encoder = PeftModel.from_pretrained(base, str(output_dir / "adapter"))
    texts = ["The match was great today", "John Smith flew to Paris"]
    a, b = merged.predict(texts), unmerged.predict(texts)
    assert [p["topic"]["label"] for p in a] == [p["topic"]["label"] for p in b]
    for pa, pb in zip(a, b):
        assert pa["topic"]["score"] == pytest.approx(pb["topic"]["score"], abs=1e-5)
        assert [(e["entity"], e["start"]) for e in pa["ner"]["entities"]] == [
            (e["entity"], e["start"]) for e in pb["ner"]["entities"]
        ]
    card = (output_dir / "README.md").read_text()
    assert "LORA adapter on the encoder" in card and "- peft" in card


# ---------------------------------------------------------------------------------------------- 6. regression
RATING_WORDS = {1: "awful", 2: "poor", 3: "average", 4: "good", 5: "superb"}


def rating_rows(count: int, rng: random.Random, scale: float) -> list[dict[str, object]]:
    """Review texts whose adjective gives the rating (1-5, times `scale`)."""
    rows = []
    for _ in range(count):
        rating = rng.choice(list(RATING_WORDS))
        noun = rng.choice(["film", "meal", "hotel", "book", "show", "trip"])
        person = rng.choice(PEOPLE)
        day = rng.choice(["today", "yesterday", "on Monday", "this week", "last night"])
        text = f"{person} said the {noun} was {RATING_WORDS[rating]} {day}"
        rows.append({"text": text, "rating": rating * scale})
    return rows


def test_regression_learns_the_scale_of_its_targets(tiny_backbone: str, tmp_path: Path) -> None:
    """Targets 1-5 (and the same times 100): the head predicts standardised values, the model maps them back
    with the train targets' mean and std saved in config.json, and the loss does not depend on the units, so
    the two runs predict the same up to the factor 100, better than the targets' mean."""
    runs = {}
    for scale in (1.0, 100.0):
        folder = tmp_path / f"scale_{scale:g}"
        folder.mkdir()
        for split, size in (("train", 96), ("test", 40)):
            with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, ["text", "rating"])
                writer.writeheader()
                writer.writerows(rating_rows(size, random.Random(split), scale))
        tasks = {
            "rating": {
                "type": "regression",
                "train": str(folder / "train.csv"),
                "test": str(folder / "test.csv"),
            }
        }
        config = write_config(folder / "config.yaml", tasks, learning_rate=1e-2)
        flags = ["--freeze_encoder", "--precompute_embeddings", "--precompute_mode", "exact"]
        flags += ["--max_steps", "200", "--eval_strategy", "no", "--save_strategy", "no"]
        output_dir = folder / "out"
        results = run_training([config, *job_flags(tiny_backbone, output_dir, folder / "cache"), *flags])
        runs[scale] = (output_dir, results)

    gold = [float(row["rating"]) for row in read_csv(tmp_path / "scale_1" / "test.csv")]
    variance = float(torch.tensor(gold).var(unbiased=False))
    output_dir, results = runs[1.0]
    spec = MultiTaskEncoderModel.from_pretrained(output_dir).config.tasks["rating"].options
    train_gold = [float(row["rating"]) for row in read_csv(tmp_path / "scale_1" / "train.csv")]
    assert spec["target_mean"] == pytest.approx(sum(train_gold) / len(train_gold))
    assert spec["target_std"] == pytest.approx(float(torch.tensor(train_gold).std(unbiased=False)))
    assert results["test"]["rating"]["mse"] < 0.75 * variance, (results["test"]["rating"], variance)
    model = AutoModel.from_pretrained(output_dir)
    predicted = [
        p["rating"]["value"]
        for p in model.predict([r["text"] for r in read_csv(tmp_path / "scale_1" / "test.csv")])
    ]
    assert float(torch.tensor(predicted).std()) > 0.5 * variance**0.5  # not near-constant
    assert not [warning for warning in results.get("warnings") or [] if "collapsed" in warning]
    rows = read_csv(output_dir / "predictions_rating.csv")  # the value, and no empty score column
    assert list(rows[0]) == ["text", "gold", "predicted"]
    assert [float(r["predicted"]) for r in rows] == pytest.approx(predicted, abs=1e-4)

    scaled_dir, scaled = runs[100.0]
    assert scaled["test"]["rating"]["mse"] == pytest.approx(1e4 * results["test"]["rating"]["mse"], rel=1e-3)
    scaled_predicted = [
        p["rating"]["value"]
        for p in AutoModel.from_pretrained(scaled_dir).predict(
            [r["text"] for r in read_csv(tmp_path / "scale_1" / "test.csv")]
        )
    ]
    assert scaled_predicted == pytest.approx([100 * value for value in predicted], rel=1e-3)
