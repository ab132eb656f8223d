"""Which checkpoint a training run may resume from, and what an output folder holds.

    output_dir/
      multitask_run.json         the run's fingerprint (config + data) and whether it finished
      checkpoint-<step>/         the Trainer's files, then multitask_checkpoint.json: the sha256 of every file
                                 and the run fingerprint, written LAST, once every process has saved its part

A checkpoint is resumed only when its manifest is there and every file matches it (a run killed while saving,
a truncated or corrupted weights file, a missing optimizer state are detected and skipped for the previous
intact checkpoint, with a warning), and only when its fingerprint is the one of the run being started: a
changed config, changed data or another `init_from` / `freeze_existing` is a different run, refused with what
differs. A finished output folder is refused unless the user asks to overwrite it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .errors import MultiTaskEncoderError

logger = logging.getLogger(__name__)

RUN_FILE = "multitask_run.json"
MANIFEST_FILE = "multitask_checkpoint.json"
# TrainingArguments that shape the trained model (changing one makes another run); logging, saving,
# evaluation and hardware options do not.
FINGERPRINT_TRAINING_ARGUMENTS = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "data_seed",
    "optim",
    "optim_args",
    "bf16",
    "fp16",
    "label_smoothing_factor",
    "dataloader_drop_last",
)
# Job options that shape the trained model: the model a run starts from, and whether its parts stay frozen
# (resuming with another value would load an optimizer state of other parameters).
FINGERPRINT_JOB_ARGUMENTS = ("init_from", "freeze_existing")


class RunMismatch(MultiTaskEncoderError, ValueError):
    """The output folder belongs to another run (finished, or with another config or data)."""


class NoSpaceLeft(MultiTaskEncoderError, OSError):
    """The disk filled up while a run saved into its output folder."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC, as an OSError (open/write) or wrapped in the message of torch.save's RuntimeError or
    safetensors' SafetensorError ("No space left on device (os error 28)")."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return os.strerror(errno.ENOSPC).lower() in str(error).lower()


@contextlib.contextmanager
def saving_into(folder: str, what: str) -> Iterator[None]:
    """Turn a full disk while writing `what` into `folder` into one error saying so, naming the folder (torch
    and safetensors report it deep inside their writers, or as a generic write failure)."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        refusal = NoSpaceLeft(
            f"No space left on the device holding {os.path.abspath(folder)} while saving {what}: free some space "
            "(or choose another --output_dir) and start the same command again; a run resumes from its last "
            "intact checkpoint."
        )
        refusal.errno = errno.ENOSPC
        raise refusal from error


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):  # enums
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def run_fingerprint(
    tasks: dict[str, Any],
    model_args: Any,
    training_args: Any,
    multitask_options: tuple[str, ...],
    data_id: str,
    job_args: Any = None,
) -> dict[str, Any]:
    """What makes a run this run: its tasks (as the config gives them), the model options, the training
    options that shape the model, the model it starts from (`init_from`, `freeze_existing` of `job_args`), and
    the train data's fingerprint (files, rows, tokenizer)."""
    training = {
        name: _jsonable(getattr(training_args, name))
        for name in (*FINGERPRINT_TRAINING_ARGUMENTS, *multitask_options)
        if hasattr(training_args, name)
    }
    inputs = {
        "tasks": _jsonable(tasks),
        "model": _jsonable(vars(model_args)),
        "training": training,
        "job": {name: _jsonable(getattr(job_args, name, None)) for name in FINGERPRINT_JOB_ARGUMENTS},
        "train_data": data_id,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()
    return {"digest": digest, "inputs": inputs}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fingerprint inputs that differ, as `section.key` names."""
    changed = []
    for section in sorted(set(old) | set(new)):
        before, after = old.get(section), new.get(section)
        if isinstance(before, dict) and isinstance(after, dict):
            changed += [
                f"{section}.{key}"
                for key in sorted(set(before) | set(after))
                if before.get(key) != after.get(key)
            ]
        elif before != after:
            changed.append(section)
    return changed


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str, fingerprint: dict[str, Any]) -> None:
    """Record every file of a finished checkpoint; written last (atomically), so its presence means the
    checkpoint is whole."""
    files = {
        name: {
            "size": os.path.getsize(os.path.join(folder, name)),
            "sha256": _sha256(os.path.join(folder, name)),
        }
        for name in sorted(os.listdir(folder))
        if os.path.isfile(os.path.join(folder, name)) and name != MANIFEST_FILE
    }
    temporary = os.path.join(folder, MANIFEST_FILE + ".partial")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": fingerprint["digest"], "files": files}, f, indent=1)
    os.replace(temporary, os.path.join(folder, MANIFEST_FILE))


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` cannot be resumed (None when every file matches its manifest)."""
    try:
        with open(os.path.join(folder, MANIFEST_FILE), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return f"it has no {MANIFEST_FILE} (the run was stopped while saving it)"
    except (OSError, ValueError):
        return f"its {MANIFEST_FILE} is unreadable"
    for name, expected in manifest.get("files", {}).items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != expected["size"]:
            return f"{name} has {os.path.getsize(path)} bytes, not the {expected['size']} it was saved with (truncated?)"
        if _sha256(path) != expected["sha256"]:
            return f"{name} is not the file that was saved (its sha256 differs: corrupted)"
    return None


def checkpoint_fingerprint(folder: str) -> str | None:
    with open(os.path.join(folder, MANIFEST_FILE), encoding="utf-8") as f:
        return json.load(f).get("fingerprint")


def checkpoints(output_dir: str) -> list[str]:
    """The `checkpoint-<step>` folders of `output_dir`, newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    steps = {}
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = int(match.group(1))
    return sorted(steps, key=steps.get, reverse=True)


def read_run_file(output_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(output_dir, RUN_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_run_file(output_dir: str, fingerprint: dict[str, Any], finished: bool) -> None:
    os.makedirs(output_dir, exist_ok=True)
    temporary = os.path.join(output_dir, RUN_FILE + ".partial")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"finished": finished, **fingerprint}, f, indent=1)
    os.replace(temporary, os.path.join(output_dir, RUN_FILE))


def resumable_checkpoint(output_dir: str, fingerprint: dict[str, Any], overwrite: bool) -> str | None:
    """The checkpoint the run should resume from (None: start afresh), refusing a folder of another run.

    Refused: a finished run's folder, and intact checkpoints whose fingerprint is not this run's, unless
    `overwrite` (then the folder's old run files and checkpoints are deleted). Damaged checkpoints are
    skipped, with a warning naming what is wrong, for the previous intact one."""
    previous = read_run_file(output_dir)
    finished_legacy = previous is None and all(
        os.path.isfile(os.path.join(output_dir, name)) for name in ("model.safetensors", "eval_results.json")
    )
    found = checkpoints(output_dir)
    if overwrite:
        for folder in found:
            shutil.rmtree(folder)
        if os.path.isdir(output_dir):  # the old run's results would otherwise sit beside the new ones
            for name in os.listdir(output_dir):
                if name in (RUN_FILE, "eval_results.json") or re.fullmatch(r"predictions_\w+\.csv", name):
                    os.remove(os.path.join(output_dir, name))
        return None
    if (previous and previous.get("finished")) or finished_legacy:
        raise RunMismatch(
            f"{output_dir} holds a finished run (its model and eval_results.json); training again would overwrite "
            "them. Choose another --output_dir, or pass --overwrite_output_dir to replace it."
        )
    for folder in found:
        problem = checkpoint_problem(folder)
        if problem is not None:
            logger.warning(f"Not resuming from {folder}: {problem}. Trying the previous checkpoint.")
            continue
        if checkpoint_fingerprint(folder) != fingerprint["digest"]:
            changed = differences((previous or {}).get("inputs", {}), fingerprint["inputs"]) or ["unknown"]
            raise RunMismatch(
                f"{output_dir} holds checkpoints of another run (what differs from this one: {', '.join(changed)}); "
                "resuming would mix the two. Choose another --output_dir, or pass --overwrite_output_dir to "
                "start this run there afresh."
            )
        return folder
    return None


def remove_checkpoints(output_dir: str) -> int:
    """Delete the run's checkpoints (after it finished and saved its model); returns how many."""
    found = checkpoints(output_dir)
    for folder in found:
        shutil.rmtree(folder)
    return len(found)


__all__ = [
    "MANIFEST_FILE",
    "RUN_FILE",
    "NoSpaceLeft",
    "RunMismatch",
    "checkpoint_problem",
    "remove_checkpoints",
    "resumable_checkpoint",
    "run_fingerprint",
    "saving_into",
    "write_manifest",
    "write_run_file",
]
