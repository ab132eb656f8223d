"""Single-task teachers for the multi-task student: distillation with teacher annealing (Clark et al. 2019,
"BAM! Born-Again Multi-Task Networks"; Liu et al. 2019, MT-DNN-KD).

    config `teachers: {task: folder or Hub id}`
      └─► load_teacher: a multitask-encoder model with that task, or a plain AutoModelFor* of that task;
          labels matched by name, tokenizer checked to be the student's (the targets are computed on the
          student's tokenised rows)
      └─► teacher_targets: one pass over the task's labelled train rows, in the fastest guarded serving mode
          (precompute_mode), cached in the data cache under a fingerprint of rows, task and teacher weights
      └─► attach_teachers: a `teacher_<task>` column beside the tokenised train rows
                 collator ─► teacher_targets ─► forward: w * distillation + (1 - w) * gold, w annealed 1 -> 0

    python -m multitask_encoder.teachers CONFIG.yaml --teachers_dir DIR [train.py flags]
      trains the single-task teacher of every task of a config (DIR/<task>) and writes DIR/teachers.yaml.

What a teacher gives, per task type: class probabilities (sequence, pair, token classification: one
distribution per word), sigmoid probabilities (multi-label), values (regression), the cosine of the two texts
(similarity; a multitask-encoder teacher only). Contrastive tasks are refused (see its `distillation_refused`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import Dataset, Features, Sequence, Value
from datasets.fingerprint import Hasher
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
)

from .cli import OneLineArgumentParser, configure_logging, debug_requested, run_command
from .collator import MultiTaskCollator
from .errors import MultiTaskEncoderError
from .model.inference_multitask_encoder import native_bf16_missing, plan_batches
from .model.modeling_multitask_encoder import MODEL_INPUT_NAMES, MultiTaskEncoderModel
from .model.tasks_multitask_encoder import TaskSpec, parse_task_spec
from .precompute import precompute_mode
from .task_types import task_type
from .task_types.types import first_pieces

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored targets change meaning, so stale cache files are never reused
TEACHERS_FILE = "teachers.yaml"


class TeacherError(MultiTaskEncoderError, ValueError):
    """A teacher that cannot teach its task (named in the message)."""


@dataclass
class Teacher:
    """A loaded teacher of one student task."""

    task: str
    source: str
    model: torch.nn.Module
    multitask: bool  # a multitask-encoder model (else a plain AutoModelFor*)
    teacher_task: str | None  # the task it serves, in a multitask-encoder teacher
    order: list[int]  # the teacher's output index of each student label, in the student's order
    joint_pairs: bool  # the teacher reads a pair as one [CLS] a [SEP] b input
    fingerprint: str  # sha256 of its weights and of the label order


def _weights_fingerprint(model: torch.nn.Module, order: list[int]) -> str:
    digest = hashlib.sha256(json.dumps(order).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _label_order(task: str, source: str, student: list[str], teacher: list[str]) -> list[int]:
    if sorted(student) != sorted(teacher):
        raise TeacherError(
            f"Teacher of task {task!r} ({source}): its labels {teacher} are not the task's labels {student}."
        )
    return [teacher.index(label) for label in student]


def teacher_display_name(source: str) -> str:
    """A teacher as a public card names it: a Hub id as given, a local folder by its name only."""
    if os.path.isdir(source) or os.path.isabs(source) or source.startswith("."):
        return f"{os.path.basename(os.path.normpath(source))} (local folder)"
    return source


def resolve_source(source: str, base_dir: str) -> str:
    """A teacher given as a path relative to the config file, or a Hub id."""
    candidate = os.path.join(base_dir, source)
    return candidate if os.path.isdir(candidate) else source


def load_teacher(task: str, source: str, spec: TaskSpec, student_tokenizer, device: torch.device) -> Teacher:
    """The teacher of `task` from `source`, checked against the student's task and tokenizer."""
    if task_type(spec).distillation_refused:
        raise TeacherError(
            f"Task {task!r} ({spec.type}) cannot be distilled from a teacher: "
            f"{task_type(spec).distillation_refused}."
        )
    try:
        raw_config, _ = PretrainedConfig.get_config_dict(source)
    except OSError as error:
        raise TeacherError(f"Teacher of task {task!r}: cannot read {source}: {error}") from None
    kind = spec.input_kind
    if raw_config.get("model_type") == "multitask_encoder":
        model = MultiTaskEncoderModel.from_pretrained(source)
        same_type = [name for name, s in model.config.tasks.items() if s.type == spec.type]
        teacher_task = task if task in same_type else (same_type[0] if len(same_type) == 1 else None)
        if teacher_task is None:
            raise TeacherError(
                f"Teacher of task {task!r} ({source}): it has no {spec.type} task named {task!r} (its tasks: "
                f"{ {name: s.type for name, s in model.config.tasks.items()} })."
            )
        teacher_spec = model.config.tasks[teacher_task]
        order = _label_order(task, source, spec.labels, teacher_spec.labels)
        teacher_kind = teacher_spec.input_kind
        if kind.joint and teacher_kind.apart:
            raise TeacherError(
                f"Teacher of task {task!r} ({source}) encodes the two texts apart (pair_encoding: bi), but the task "
                "is cross-encoded: its rows hold only the joint input. Use a cross teacher."
            )
        tokenizer, multitask, joint = model.tokenizer, True, teacher_kind.joint
    else:
        if spec.type == "similarity":
            raise TeacherError(
                f"Teacher of task {task!r} ({source}): a similarity teacher must be a multitask-encoder model (the "
                "cosine of its embeddings is the target); a plain model's score has no known scale."
            )
        auto_class = (
            AutoModelForTokenClassification if spec.is_token_level else AutoModelForSequenceClassification
        )
        model = auto_class.from_pretrained(source)
        if spec.type == "regression":
            teacher_labels = list(spec.labels) if model.config.num_labels == spec.num_outputs else []
        else:
            teacher_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        order = _label_order(task, source, spec.labels, teacher_labels)
        tokenizer, multitask, teacher_task, joint = AutoTokenizer.from_pretrained(source), False, None, True
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise TeacherError(
            f"Teacher of task {task!r} ({source}) has another tokenizer than the student: its targets are computed "
            "on the student's tokenised rows, so it must share the student's vocabulary (train it from the same "
            "backbone, e.g. with `python -m multitask_encoder.teachers`)."
        )
    model = model.to(device).eval()
    return Teacher(
        task, source, model, multitask, teacher_task, order, joint, _weights_fingerprint(model, order)
    )


def _joint_inputs(batch: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Separately encoded pairs (`input_ids` + `pair_inputs`) -> one `[CLS] a [SEP] b [SEP]` input per row
    with a second text (right padded; token type 1 on b)."""
    second = batch["pair_inputs"]
    rows = []
    for position, row in enumerate(second["rows"].tolist()):
        a = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        b = second["input_ids"][position][second["attention_mask"][position].bool()][1:]
        rows.append((a, b))
    length = max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        input_ids[i, : len(a) + len(b)] = torch.cat([a, b])
        attention_mask[i, : len(a) + len(b)] = 1
        token_type_ids[i, len(a) : len(a) + len(b)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def _teacher_logits(
    teacher: Teacher, batch: dict[str, Any], pad_token_id: int
) -> tuple[torch.Tensor, list[int]]:
    """The teacher's logits `[rows, ...]` for a collated batch, and the batch rows they belong to."""
    rows = list(range(batch["input_ids"].shape[0]))
    if "pair_inputs" in batch and teacher.joint_pairs:
        inputs = _joint_inputs(batch, pad_token_id)
        rows = batch["pair_inputs"]["rows"].tolist()
    else:
        inputs = {key: batch[key] for key in MODEL_INPUT_NAMES if key in batch}
    device = next(teacher.model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    if teacher.multitask:
        if "pair_inputs" in batch and not teacher.joint_pairs:
            inputs["pair_inputs"] = {key: value.to(device) for key, value in batch["pair_inputs"].items()}
        logits = teacher.model(**inputs, tasks=[teacher.teacher_task])[f"{teacher.teacher_task}_logits"]
    else:
        # A plain model has no serving modes: bf16 autocast where bf16 is native (the `bf16` mode's math).
        bf16 = native_bf16_missing(device) is None
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            logits = teacher.model(**inputs).logits
    return logits.float()[..., teacher.order].cpu(), rows


@torch.inference_mode()
def teacher_targets(teacher: Teacher, spec: TaskSpec, rows: Dataset, tokenizer, batch_size: int = 64) -> list:
    """The teacher's targets for every labelled row of `rows` (tokenised train rows): a list per row (sentence
    tasks `num_outputs` floats; token tasks one distribution per word), [] for rows without the task's label."""
    labelled = [i for i, value in enumerate(rows[f"labels_{spec.name}"]) if task_type(spec).has_label(value)]
    targets: list[list] = [[] for _ in range(len(rows))]
    if not labelled:
        return targets
    collator = MultiTaskCollator(tokenizer, {spec.name: spec})
    token_budget = None
    if teacher.multitask:
        teacher.model.optimize_for_inference(precompute_mode(teacher.model, len(labelled)))
        token_budget = teacher.model.serving_plan.token_budget
    lengths = {i: len(ids) for i, ids in zip(labelled, rows.select(labelled)["input_ids"])}
    order = sorted(labelled, key=lambda i: -lengths[i])
    batches = plan_batches([lengths[i] for i in order], batch_size, token_budget)
    try:
        for start, end in tqdm(batches, desc=f"Teacher of {spec.name}", leave=False):
            indices = order[start:end]
            examples = [rows[i] for i in indices]
            batch = collator(examples)
            logits, batch_rows = _teacher_logits(teacher, batch, tokenizer.pad_token_id)
            values = task_type(spec).teacher_targets(spec, logits)
            for value, row in zip(values, batch_rows):
                if spec.is_token_level:
                    word_ids = list(examples[row]["word_ids"])
                    offset = (
                        batch["input_ids"].shape[1] - len(word_ids) if tokenizer.padding_side == "left" else 0
                    )
                    targets[indices[row]] = [value[offset + p].tolist() for p, _ in first_pieces(word_ids)]
                else:
                    targets[indices[row]] = value.reshape(-1).tolist()
    finally:
        if teacher.multitask:
            teacher.model.optimize_for_inference("exact")
    return targets


def attach_teachers(
    train: Dataset,
    sources: dict[str, str],
    task_specs: dict[str, TaskSpec],
    tokenizer,
    base_dir: str,
    cache_dir: str,
    batch_size: int = 64,
) -> tuple[Dataset, dict[str, str]]:
    """`train` with a `teacher_<task>` column for every task of `sources`, and each teacher's fingerprint.
    Targets are cached in `cache_dir` under a fingerprint of the rows, the task and the teacher's weights (a
    changed teacher recomputes)."""
    unknown = sorted(set(sources) - set(task_specs))
    if unknown:
        raise TeacherError(f"teachers: {unknown} are not tasks of this config (tasks: {list(task_specs)}).")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    columns, fingerprints = [], {}
    for task, source in sources.items():
        if not isinstance(source, str) or not source:
            raise TeacherError(
                f"teachers: the teacher of task {task!r} must be a folder or Hub id, got {source!r}."
            )
        spec = parse_task_spec(task, task_specs[task])
        teacher = load_teacher(task, resolve_source(source, base_dir), spec, tokenizer, device)
        fingerprint = Hasher.hash([CACHE_VERSION, train._fingerprint, spec.to_dict(), teacher.fingerprint])
        fingerprints[task] = teacher.fingerprint
        path = os.path.join(cache_dir, f"teacher-{task}-{fingerprint}")
        if not os.path.isdir(path):
            logger.info(f"Computing the targets of the teacher of {task!r} ({teacher.source}).")
            values = teacher_targets(teacher, spec, train, tokenizer, batch_size)
            feature = Sequence(Value("float32"))
            if spec.is_token_level:
                feature = Sequence(feature)
            column = Dataset.from_dict(
                {f"teacher_{task}": values}, features=Features({f"teacher_{task}": feature})
            )
            column.save_to_disk(path + ".partial")
            os.replace(path + ".partial", path)  # a killed run never leaves a half-written cache
        else:
            logger.info(f"Teacher targets of {task!r} from the cache ({path}).")
        columns.append(datasets.load_from_disk(path))
        del teacher
    if not columns:
        return train, fingerprints
    return datasets.concatenate_datasets([train, *columns], axis=1), fingerprints


# ---------------------------------------------------------------------------------------------- the command
def train_teachers(config_path: str, teachers_dir: str, flags: list[str]) -> dict[str, str]:
    """Train the single-task teacher of every task of a config that can have one, each with the config's
    options and `flags` (e.g. its own --max_steps), into `teachers_dir/<task>`; a teacher already trained
    there is kept. Writes `teachers_dir/teachers.yaml` (the `teachers:` section to add to the config)."""
    from .checkpoints import read_run_file
    from .config_file import read_config_file
    from .task_types.types import TASK_TYPES
    from .train import prepare_run, train_and_save

    tasks = read_config_file(config_path).get("tasks") or {}
    trained = {}
    for task, entry in tasks.items():
        kind = TASK_TYPES.get(entry.get("type")) if isinstance(entry, dict) else None
        if kind is not None and kind.distillation_refused:
            print(f"{task}: no teacher ({kind.name}: {kind.distillation_refused}).", flush=True)
            continue
        output_dir = os.path.join(teachers_dir, task)
        if (read_run_file(output_dir) or {}).get("finished"):
            print(f"{task}: the teacher in {output_dir} is trained already (kept).", flush=True)
        else:
            print(f"{task}: training its teacher into {output_dir}.", flush=True)
            run = prepare_run(
                [config_path, "--only_tasks", task, "--output_dir", output_dir, *flags], use_teachers=False
            )
            train_and_save(run)
        trained[task] = os.path.abspath(output_dir)
    with open(os.path.join(teachers_dir, TEACHERS_FILE), "w", encoding="utf-8") as f:
        f.write("teachers:\n" + "".join(f"  {task}: {path}\n" for task, path in trained.items()))
    return trained


def main(argv: list[str] | None = None) -> None:
    """The command: exit status 0 when every teacher is trained; a refusal or a failed run is one line on
    stderr, exit status 1; a usage error exits 2 (multitask_encoder.cli; MULTITASK_ENCODER_DEBUG=1 shows the
    traceback: `--debug` would be train.py's TrainingArguments option)."""
    from .train import REFUSALS

    parser = OneLineArgumentParser(
        prog="multitask-encoder-train-teachers",
        description="Train the single-task teacher of every task of a training config (each with the config's "
        "data and options; flags after the known ones go to train.py, e.g. --max_steps 400), then print the "
        "`teachers:` section that makes train.py distil them into the multi-task student.",
    )
    parser.add_argument("config", help="the training config (YAML or JSON)")
    parser.add_argument("--teachers_dir", required=True, help="where the teachers go (one folder per task)")
    args, flags = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    configure_logging()

    def train_all() -> None:
        os.makedirs(args.teachers_dir, exist_ok=True)
        trained = train_teachers(args.config, args.teachers_dir, flags)
        path = Path(args.teachers_dir) / TEACHERS_FILE
        print(
            f"\n{len(trained)} teacher(s); add this to {args.config} (written to {path}):\n{path.read_text()}"
        )

    status = run_command(
        train_all,
        prefix=f"{parser.prog}: error:",
        refusals=REFUSALS,
        debug=debug_requested(False),
        interrupted="interrupted; the same command keeps the teachers already trained and resumes the current one",
        debug_flag=None,
    )
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
