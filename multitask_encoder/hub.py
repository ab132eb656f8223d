"""Share a trained model folder on the Hugging Face Hub: check it, then upload only the model's files.

    python push_to_hub.py MODEL_DIR REPO_ID --trust-remote-code [--private] [--revision BRANCH]
                          [--commit-message M] [--create-pr] [--dry-run] [--token T] [--debug]

Before anything is uploaded the folder must pass two checks:

1. Static (`plan_upload`): `config.json` with an `auto_map` whose code files (and their flat sibling
   imports) are in the folder, `model.safetensors` (or a complete sharded index), no pickle weights, a
   tokenizer, and a model card `README.md` (rendered from `config.json` + `eval_results.json` when
   missing; the folder itself is never modified). Every file is uploaded as itself: one whose real path
   (symlinks resolved) is not that file of the folder is refused, so `README.md -> .env` cannot publish
   the secrets and `config.json -> ../x` nothing outside the folder. No uploaded text file (config.json, the
   card, the adapter's config, ...) may hold an absolute path of this machine (`local_path_problems`: one that
   exists here or lies under the home, temp or working folder or the model folder's parents), named by file
   and key: a push would publish the trainer's file system layout.
2. Dynamic (`check_loads_with_remote_code`): a fresh Python, with `multitask_encoder` made un-importable
   and the Hub offline, loads the folder with `AutoModel`/`AutoTokenizer(trust_remote_code=True)` and runs
   `predict` on what each task reads (a sentence; a pair of sentences for pair, similarity and contrastive
   tasks), requiring an answer from every task: exactly what a user of the shared repo will run. That executes the folder's
   `.py` files on this machine, so it runs only with `--trust-remote-code` (`trust_remote_code=True` of
   `push_model_folder`); without it the push (a dry run too) is refused before the check, having written
   nothing.

What is uploaded is an allow-list built from what a saved model holds (`UploadPlan.files`): config.json,
the weights, the code files, the tokenizer files, README.md and eval_results.json (and a PEFT run's `adapter/`). Everything else in an
output folder (`checkpoint-*/`, `runs/`, `optimizer.pt`, `training_args.bin`, `trainer_state.json`, `.env`,
...) stays local. `predictions_<task>.csv` files are left out on purpose: they hold the test set's texts
and gold labels (data whose licence and privacy the model's licence does not cover), the model does not
need them, and the card already reports the metrics computed from them.

Order: arguments, static checks, then the token and the target on the Hub (cheap failures first), then
the load check, and only then anything that writes. When the target revision already holds every file
with the same content (compared by the Hub's hashes), nothing would be uploaded, so the load check is
skipped too and no commit is made.

The upload is one `HfApi.create_commit` (the client's normal LFS/Xet choice; nothing forced): unchanged
files are skipped by the client, so a push only sends what changed. Stale weight files
of an earlier push (e.g. a single `model.safetensors` that would shadow a new sharded index) are deleted in
the same commit. The token (``--token``, else ``HF_TOKEN``, else the saved login) is passed to the client
only: never printed, logged or written anywhere.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import get_relative_imports

from .cli import OneLineArgumentParser, add_common_options, debug_requested, run_command
from .errors import MultiTaskEncoderError
from .model.configuration_multitask_encoder import MultiTaskEncoderConfig
from .model.modeling_multitask_encoder import ADAPTER_HEADS_FILENAME
from .model_card import CARD_FILENAME, EVAL_RESULTS_FILENAME, PLOTS_DIR, render_model_card

CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"
WEIGHTS_INDEX_FILENAME = "model.safetensors.index.json"
# Files a saved tokenizer may consist of (transformers 5 writes tokenizer.json + tokenizer_config.json;
# slow/sentencepiece tokenizers write a vocabulary file instead of, or next to, tokenizer.json).
TOKENIZER_CONFIG_FILENAME = "tokenizer_config.json"
TOKENIZER_VOCAB_FILENAMES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_EXTRA_FILENAMES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
# Pickle formats: arbitrary code runs when they are loaded, so a shared folder must not carry weights in them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What the Trainer writes next to the model: pickles too, but state, not weights. Never uploaded, not refused.
TRAINER_STATE_PATTERNS = (
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
)
REQUIRED_AUTO_CLASSES = ("AutoConfig", "AutoModel")
# What sentence-transformers reads (save_pretrained writes them): the folder is also a SentenceTransformer.
SENTENCE_TRANSFORMERS_FILENAMES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
ADAPTER_DIR = "adapter"
ADAPTER_FILENAMES = ("adapter_config.json", "adapter_model.safetensors", ADAPTER_HEADS_FILENAME)
DEFAULT_COMMIT_MESSAGE = "Upload multi-task encoder"
CHECK_SENTENCE = "The striker scored twice as United won the cup final in London."
CHECK_PAIR_SENTENCE = "United won the final after two goals from their striker."  # the second text of a pair
LOAD_CHECK_TIMEOUT = 1800  # seconds; a large encoder on a slow CPU still loads well within this
_PULL_REQUEST_REF = re.compile(r"refs/pr/[1-9][0-9]*")


class PushError(MultiTaskEncoderError):
    """A refusal or failure explained in one line (the CLI prints it and exits with 1, no traceback)."""


# ----------------------------------------------------------------------------------------------------------
# Static checks and the upload allow-list
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadFile:
    """One file of the commit: `source` is a file of the model folder, or the bytes of a rendered card."""

    path_in_repo: str
    size: int
    source: Path | bytes


@dataclass
class UploadPlan:
    folder: Path
    files: list[UploadFile]
    left_out: list[str]  # top-level entries of the folder that are not uploaded ("checkpoint-500/", ".env")
    rendered_card: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [f.path_in_repo for f in self.files]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def is_trainer_state(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in TRAINER_STATE_PATTERNS)


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{path.name} is not readable JSON ({err})")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path.name} holds {type(value).__name__}, not a JSON object")
        return None
    return value


def _auto_map_modules(auto_map: Any) -> list[str]:
    """Module names of the local code an `auto_map` points to ("modeling_x.Class" -> "modeling_x").

    Values are "module.Class", a list of them (tokenizers: [slow, fast], with None), or "repo--module.Class"
    (code in another repo: nothing to upload from this folder)."""
    modules: list[str] = []
    for value in (auto_map or {}).values():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(reference, str) and "--" not in reference:
                modules.append(reference.rsplit(".", 1)[0])
    return list(dict.fromkeys(modules))


def _code_files(folder: Path, modules: list[str], source: str, problems: list[str]) -> list[str]:
    """The `.py` files of `modules` plus, recursively, the siblings they import relatively: the files
    transformers copies when it loads the code (it reads the imports with the same `get_relative_imports`)."""
    files: list[str] = []
    pending: list[str] = []
    for module in modules:
        name = f"{module}.py"
        if "." in module or not (folder / name).is_file():
            problems.append(f"{source} names {name}, which is not a file of the folder")
        else:
            pending.append(name)
    while pending:
        name = pending.pop(0)
        if name in files:
            continue
        files.append(name)
        for imported in get_relative_imports(folder / name):
            imported_name = f"{imported}.py"
            if "." in imported or not (folder / imported_name).is_file():
                problems.append(
                    f"{name} imports .{imported}, but {imported_name} is not a file of the folder (remote "
                    "code may only import flat sibling files)"
                )
            else:
                pending.append(imported_name)
    return files


def _weight_files(folder: Path, problems: list[str]) -> list[str]:
    single = (folder / WEIGHTS_FILENAME).is_file()
    index_path = folder / WEIGHTS_INDEX_FILENAME
    if single and index_path.is_file():
        problems.append(
            f"both {WEIGHTS_FILENAME} and {WEIGHTS_INDEX_FILENAME}: transformers would read {WEIGHTS_FILENAME} "
            "and ignore the shards; delete the stale one"
        )
        return []
    if single:
        return [WEIGHTS_FILENAME]
    if not index_path.is_file():
        problems.append(
            f"no {WEIGHTS_FILENAME} (save the model with save_pretrained, which writes safetensors)"
        )
        return []
    index = _read_json(index_path, problems)
    if index is None:
        return []
    shards = sorted(set((index.get("weight_map") or {}).values()))
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if not shards or missing:
        problems.append(f"{WEIGHTS_INDEX_FILENAME} names missing shards {missing or '(none listed)'}")
        return []
    return [WEIGHTS_INDEX_FILENAME, *shards]


def _render_card(folder: Path, repo_id: str | None, problems: list[str]) -> bytes | None:
    """A card rendered from config.json (+ eval_results.json when present), as model_card.py renders it."""
    results = None
    if (folder / EVAL_RESULTS_FILENAME).is_file():
        results = _read_json(folder / EVAL_RESULTS_FILENAME, problems)
        if results is None:
            return None
    try:
        config = MultiTaskEncoderConfig.from_pretrained(folder)
        return render_model_card(config, results=results, repo_id=repo_id).encode("utf-8")
    except Exception as err:  # any failure here means the card cannot be made from these files
        problems.append(f"no {CARD_FILENAME}, and rendering one failed: {type(err).__name__}: {err}")
        return None


def _link_problems(folder: Path, names: list[str]) -> list[str]:
    """The files of `names` that are not themselves: a file is uploaded under its name with the content of
    its real path, so a symlink (or a symlinked folder, or "..") leading elsewhere would publish another
    file (`README.md -> .env`: the secrets) or one outside the folder (`config.json -> ../x`). `folder` is
    resolved; a name whose real path is `folder / name` has no link on its way."""
    problems = []
    for name in names:
        path = folder / name
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as err:  # a symlink loop
            problems.append(f"{path} cannot be resolved ({err})")
            continue
        if real == path:
            continue
        if real.is_relative_to(folder):
            problems.append(
                f"{path} resolves to {real}, not {name} itself: it would upload {real.relative_to(folder)} "
                f"as {name} (replace the link with the file)"
            )
        else:
            problems.append(
                f"{path} resolves to {real}, outside the folder: only the folder's own files are uploaded "
                "(copy the file in instead of linking it)"
            )
    return problems


# Text files of an upload that are read for paths of this machine (tokenizer.json and vocabularies are data).
PATH_CHECKED_SUFFIXES = (".json", ".md")
PATH_CHECK_SKIPPED = ("tokenizer.json",)
# An absolute path inside a text: POSIX (not the tail of a URL or of another path), or a Windows drive.
_ABSOLUTE_PATH_IN_TEXT = re.compile(r"(?<![\w.:/~-])(?:/[^\s\"'`<>|()\[\]{},;]+|[A-Za-z]:[\\/][^\s\"'`<>|]+)")


def _machine_roots(folder: Path) -> list[str]:
    """Where paths of this machine start: the home folder, the temp folder, the working directory and the
    model folder's own ancestors (never the file system's root alone)."""
    roots = {os.path.expanduser("~"), tempfile.gettempdir(), os.getcwd(), *map(str, folder.parents)}
    roots |= {os.path.realpath(root) for root in roots}
    return sorted(root for root in roots if Path(root).parent != Path(root))


def _is_machine_path(value: str, roots: list[str]) -> bool:
    """True for an absolute path of this machine: one that exists here or lies under one of `roots` (a
    label such as "/m/04" is neither)."""
    path = os.path.expanduser(value.strip())
    if not (os.path.isabs(path) or re.match(r"[A-Za-z]:[\\/]", path)) or not path.strip("/\\"):
        return False
    return os.path.exists(path) or any(
        path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots
    )


def _json_paths(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key path, string) of every string in a JSON value ("encoder_config._name_or_path", "tasks[0].name")."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _json_paths(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_paths(item, f"{key}[{index}]")
    elif isinstance(value, str):
        yield key, value


def local_path_problems(folder: Path, names: list[str]) -> list[str]:
    """The places in the text files of `names` (config.json, the card, the adapter's config, ...) that hold an
    absolute path of this machine, named by file and key (JSON) or line (the card): a push would publish the
    trainer's user name and file system layout, and the path means nothing on another machine."""
    roots = _machine_roots(folder)
    problems = []
    for name in names:
        path = folder / name
        if (
            not name.endswith(PATH_CHECKED_SUFFIXES)
            or Path(name).name in PATH_CHECK_SKIPPED
            or not path.is_file()
        ):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable files are refused by their own checks
        if name.endswith(".json"):
            try:
                strings = list(_json_paths(json.loads(text)))
            except json.JSONDecodeError:
                continue
            problems += [
                f"{name} {key} is {value!r}, a path of this machine"
                for key, value in strings
                if _is_machine_path(value, roots)
            ]
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            problems += [
                f"{name} line {number} holds {match!r}, a path of this machine"
                for match in _ABSOLUTE_PATH_IN_TEXT.findall(line)
                if _is_machine_path(match.rstrip(".:"), roots)
            ]
    if problems:
        problems[-1] += (
            " (a push would publish it: replace it with the Hub id or folder name, e.g. re-save the model with "
            "this version of multitask-encoder, which records a local backbone by its folder name)"
        )
    return problems


def _is_sentence_transformers_card(path: Path) -> bool:
    """True for the card sentence-transformers writes after training (its front matter's library and tag)."""
    try:
        head = path.read_text(encoding="utf-8")[:4000]
    except (OSError, UnicodeDecodeError):
        return False
    return "library_name: sentence-transformers" in head and "generated_from_trainer" in head


def plan_upload(folder: str | os.PathLike[str], repo_id: str | None = None) -> UploadPlan:
    """Check `folder` statically and list what to upload; raises PushError naming every problem found."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder")
    problems: list[str] = []
    names: list[str] = []  # what to upload, in order

    config = None
    if (folder / CONFIG_FILENAME).is_file():
        config = _read_json(folder / CONFIG_FILENAME, problems)
    else:
        problems.append(f"no {CONFIG_FILENAME}")
    if config is not None:
        names.append(CONFIG_FILENAME)
        if config.get("model_type") != MultiTaskEncoderConfig.model_type:
            problems.append(
                f"{CONFIG_FILENAME} has model_type {config.get('model_type')!r}, not "
                f"{MultiTaskEncoderConfig.model_type!r}"
            )
        auto_map = config.get("auto_map") or {}
        missing_classes = [name for name in REQUIRED_AUTO_CLASSES if name not in auto_map]
        if missing_classes:
            problems.append(
                f"{CONFIG_FILENAME} auto_map lacks {', '.join(missing_classes)} (save the model with "
                "MultiTaskEncoderModel.save_pretrained, which writes auto_map and the code files)"
            )
        names += _code_files(folder, _auto_map_modules(auto_map), f"{CONFIG_FILENAME} auto_map", problems)
        # `pipeline(task, model=repo, trust_remote_code=True)` loads the file named by custom_pipelines too.
        pipelines = config.get("custom_pipelines") or {}
        pipeline_modules = {task: (spec or {}).get("impl") for task, spec in pipelines.items()}
        names += _code_files(
            folder, _auto_map_modules(pipeline_modules), f"{CONFIG_FILENAME} custom_pipelines", problems
        )

    names += _weight_files(folder, problems)

    pickles = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith(PICKLE_SUFFIXES) and not is_trainer_state(p.name)
    )
    if pickles:
        problems.append(
            f"pickle weights {', '.join(pickles)} (loading a pickle runs arbitrary code: share safetensors "
            "only, delete them)"
        )

    if not (folder / TOKENIZER_CONFIG_FILENAME).is_file():
        problems.append(f"no tokenizer ({TOKENIZER_CONFIG_FILENAME} is missing)")
    elif not any((folder / name).is_file() for name in TOKENIZER_VOCAB_FILENAMES):
        problems.append(f"no tokenizer vocabulary (none of {', '.join(TOKENIZER_VOCAB_FILENAMES)})")
    else:
        names.append(TOKENIZER_CONFIG_FILENAME)
        tokenizer_config = _read_json(folder / TOKENIZER_CONFIG_FILENAME, problems) or {}
        names += _code_files(
            folder,
            _auto_map_modules(tokenizer_config.get("auto_map")),
            f"{TOKENIZER_CONFIG_FILENAME} auto_map",
            problems,
        )
        names += [
            name
            for name in (*TOKENIZER_VOCAB_FILENAMES, *TOKENIZER_EXTRA_FILENAMES)
            if (folder / name).is_file()
        ]

    card = None
    if not (folder / CARD_FILENAME).is_file() and config is not None and not problems:
        card = _render_card(folder, repo_id, problems)
    names.append(CARD_FILENAME)
    if (folder / EVAL_RESULTS_FILENAME).is_file():
        names.append(EVAL_RESULTS_FILENAME)
    names += [name for name in SENTENCE_TRANSFORMERS_FILENAMES if (folder / name).is_file()]
    # The card's plots, and a PEFT adapter of the encoder (the folder's weights already hold it merged).
    names += sorted(str(p.relative_to(folder)) for p in folder.glob(f"{PLOTS_DIR}/*.png") if p.is_file())
    names += [
        f"{ADAPTER_DIR}/{name}" for name in ADAPTER_FILENAMES if (folder / ADAPTER_DIR / name).is_file()
    ]
    names = list(dict.fromkeys(names))
    # (A card rendered in memory is no file of the folder.)
    folder_files = [n for n in names if not (n == CARD_FILENAME and card is not None)]
    problems += _link_problems(folder, folder_files)
    if not problems:  # (only the folder's own files are read)
        problems += local_path_problems(folder, folder_files)
    if problems:
        raise PushError(f"{folder} is not ready to share: " + "; ".join(problems))

    files = []
    for name in names:
        if name == CARD_FILENAME and card is not None:
            files.append(UploadFile(name, len(card), card))
        else:
            files.append(UploadFile(name, (folder / name).stat().st_size, folder / name))
    uploaded = set(names)
    uploaded_dirs = {name.split("/", 1)[0] for name in uploaded if "/" in name}
    left_out = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in folder.iterdir()
        if p.name not in uploaded and p.name not in uploaded_dirs
    )
    plan = UploadPlan(folder, files, left_out, rendered_card=card is not None)
    if card is None and _is_sentence_transformers_card(folder / CARD_FILENAME):
        plan.notes.append(
            f"{CARD_FILENAME} is the generic card sentence-transformers' trainer writes (no base model, licence, "
            "language or results; its usage line fails without trust_remote_code): `python -m "
            f"multitask_encoder.model_card {folder}` writes this package's card instead."
        )
    if card is not None:
        sources = " and ".join(n for n in (CONFIG_FILENAME, EVAL_RESULTS_FILENAME) if (folder / n).is_file())
        plan.notes.append(
            f"No {CARD_FILENAME} in {folder}: uploading a model card rendered from {sources} "
            "(the folder itself is not changed; write your own README.md there to replace it)."
        )
    return plan


def stale_weight_files(remote_paths: list[str], upload_paths: list[str]) -> list[str]:
    """Weight files of an earlier push that this upload does not replace and that could shadow it.

    transformers reads `model.safetensors` before `model.safetensors.index.json`: a single-file push
    followed by a sharded one would keep loading the old weights. Only top-level safetensors weights and
    their index are considered; other files of the repo are left alone."""
    keep = set(upload_paths)
    return sorted(
        path
        for path in remote_paths
        if "/" not in path
        and (path.endswith(".safetensors") or path == WEIGHTS_INDEX_FILENAME)
        and path not in keep
    )


# ----------------------------------------------------------------------------------------------------------
# The load check: a fresh interpreter without the package, as a user of the shared repo
# ----------------------------------------------------------------------------------------------------------

# Makes `import multitask_encoder` fail, so only the code files saved next to the weights can be used
# (the same idea as tests/test_save_load.py). Also used by the tests that load pushed repos.
BLOCK_PACKAGE_PRELUDE = textwrap.dedent(
    """
    import importlib.abc
    import sys


    class _BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "multitask_encoder" or name.startswith("multitask_encoder."):
                raise ImportError(f"{name} is blocked: the model folder must be self-contained")
            return None


    sys.meta_path.insert(0, _BlockPackage())
    """
)
_CHECK_OK = "@@LOAD-CHECK-OK@@"
_CHECK_FAILED = "@@LOAD-CHECK-FAILED@@"
LOAD_CHECK_SCRIPT = BLOCK_PACKAGE_PRELUDE + textwrap.dedent(
    f"""
    import json


    def _reads_pairs(spec):
        # Folders saved before pair tasks existed have no input_kind: their tasks all read single texts.
        return getattr(getattr(spec, "task_type", None), "input_kind", "text") == "pair"


    def _check(model_dir, sentence, pair_sentence):
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
        model.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        if not type(model).__module__.startswith("transformers_modules."):
            raise RuntimeError(f"the model class came from {{type(model).__module__}}, not the folder's code")
        # Each task is asked what it reads: pair tasks (pair classification, similarity, contrastive) a pair,
        # the others one text; a single text for a pair task (or the reverse) is refused by predict.
        pair_tasks = [name for name, spec in model.config.tasks.items() if _reads_pairs(spec)]
        text_tasks = [name for name in model.config.tasks if name not in pair_tasks]
        prediction = {{}}
        if text_tasks:
            prediction.update(model.predict([sentence], tasks=text_tasks)[0])
        if pair_tasks:
            prediction.update(model.predict([(sentence, pair_sentence)], tasks=pair_tasks)[0])
        missing = [task for task in model.config.tasks if task not in prediction]
        if missing:
            raise RuntimeError(f"predict returned no result for tasks {{missing}}")
        return {{"class": type(model).__name__, "tasks": list(prediction)}}


    try:
        _summary = _check(sys.argv[1], sys.argv[2], sys.argv[3])
    except BaseException as err:
        print({_CHECK_FAILED!r} + " ".join(f"{{type(err).__name__}}: {{err}}".split()), flush=True)
        raise SystemExit(1)
    print({_CHECK_OK!r} + json.dumps(_summary), flush=True)
    """
)
# Variables the check must not inherit: credentials (it never needs the network) and cache locations.
_CHECK_ENV_DROP = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_MODULES_CACHE")


def check_loads_with_remote_code(folder: Path, timeout: float = LOAD_CHECK_TIMEOUT) -> dict[str, Any]:
    """Load `folder` through remote code in a fresh interpreter and predict every task on what it reads (one
    sentence, or a pair of sentences for the tasks that read pairs).

    Offline, without `multitask_encoder`, with a private modules cache (no stale copy of the code) and from
    a scratch working directory. Returns `{"class", "tasks"}`; raises PushError with the loader's error."""
    env = {key: value for key, value in os.environ.items() if key not in _CHECK_ENV_DROP}
    with tempfile.TemporaryDirectory(prefix="push-load-check-") as scratch:
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_MODULES_CACHE=os.path.join(scratch, "modules"),
            TRANSFORMERS_VERBOSITY="error",
            TOKENIZERS_PARALLELISM="false",
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-c", LOAD_CHECK_SCRIPT, str(folder), CHECK_SENTENCE, CHECK_PAIR_SENTENCE],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PushError(
                f"loading {folder} with trust_remote_code=True took over {timeout:.0f} s"
            ) from None
    for line in proc.stdout.splitlines():
        if proc.returncode == 0 and line.startswith(_CHECK_OK):
            return json.loads(line[len(_CHECK_OK) :])
    detail = next(
        (line[len(_CHECK_FAILED) :] for line in proc.stdout.splitlines() if line.startswith(_CHECK_FAILED)),
        None,
    )
    if detail is None:  # killed, or crashed before the script could report
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit code {proc.returncode}"
    raise PushError(
        f"{folder} does not load with trust_remote_code=True in a fresh Python without the multitask_encoder "
        f"package: {detail}"
    )


# ----------------------------------------------------------------------------------------------------------
# The push
# ----------------------------------------------------------------------------------------------------------


@dataclass
class PushResult:
    repo_id: str
    revision: str  # the branch (or refs/pr/N) that was pushed to
    commit_sha: str  # the commit to pin
    commit_url: str
    changed: bool  # False: the revision already held exactly these files, no commit was made
    pull_request_url: str | None = None
    pull_request_revision: str | None = None


@dataclass(frozen=True)
class _Token:
    value: str
    source: str  # where it came from, for messages (never the token itself)


@dataclass
class _RemoteState:
    repo_exists: bool
    private: bool | None = None
    head: str | None = None  # head commit of the target revision; None if the branch does not exist yet
    # path -> the Hub's content id: ("sha256", hex) for LFS files, ("git", blob sha1) for regular ones
    files: dict[str, tuple[str, str]] = field(default_factory=dict)


def load_line(repo_id: str, sha: str) -> str:
    return f'AutoModel.from_pretrained("{repo_id}", trust_remote_code=True, revision="{sha}")'


def resolve_token(cli_token: str | None) -> _Token:
    """`--token`, else what huggingface_hub would use (HF_TOKEN, then the token file of `hf auth login`)."""
    if cli_token:
        return _Token(cli_token, "--token")
    token = get_token()
    if not token:
        raise PushError(
            "no Hub token: set HF_TOKEN, log in with `hf auth login`, or pass --token (a token with write access)"
        )
    if os.environ.get("HF_TOKEN") == token:
        return _Token(token, "HF_TOKEN")
    if os.environ.get("HUGGING_FACE_HUB_TOKEN") == token:
        return _Token(token, "HUGGING_FACE_HUB_TOKEN")
    return _Token(token, f"the saved login ({constants.HF_TOKEN_PATH})")


def _is_transport_error(err: BaseException) -> bool:
    # huggingface_hub's HTTP library (httpx, or its fork httpx2 in huggingface_hub 2.x) raises
    # TransportError subclasses for refused connections, DNS failures and timeouts.
    return isinstance(err, (ConnectionError, TimeoutError)) or any(
        cls.__name__ == "TransportError" and cls.__module__.split(".")[0].startswith("httpx")
        for cls in type(err).__mro__
    )


def _hub_error(err: BaseException, action: str, token: _Token) -> PushError:
    """One line explaining a failed Hub call (the token is scrubbed from anything the server echoed)."""
    endpoint = constants.ENDPOINT
    if isinstance(err, OfflineModeIsEnabled):
        message = "HF_HUB_OFFLINE is set: pushing needs the Hub (unset HF_HUB_OFFLINE)"
    elif isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        server = " ".join((err.server_message or str(err).splitlines()[0]).split())
        if status == 401:  # (the server's text would only repeat this, and may name another token source)
            message = (
                f"the Hub at {endpoint} rejected the token from {token.source} (HTTP 401: wrong or expired "
                "token; set a valid one, or log in again with `hf auth login`)"
            )
        elif status == 403:
            message = f"the token from {token.source} may not {action} ({server}; HTTP 403)"
        else:
            message = f"could not {action}: the Hub at {endpoint} answered HTTP {status} ({server})"
    elif _is_transport_error(err):
        message = f"cannot reach the Hub at {endpoint} (HF_ENDPOINT) to {action}: {type(err).__name__}: {err}"
    else:
        message = f"could not {action}: {type(err).__name__}: {err}"
    return PushError(" ".join(message.replace(token.value, "<token>").split()))


def _call(action: str, token: _Token, fn: Callable[[], Any]) -> Any:
    """`fn()`, with a failed Hub request turned into a one-line PushError."""
    try:
        return fn()
    except Exception as err:
        if isinstance(err, (HfHubHTTPError, OfflineModeIsEnabled)) or _is_transport_error(err):
            raise _hub_error(err, action, token) from None
        raise


def _remote_state(api: HfApi, repo_id: str, revision: str, token: _Token) -> _RemoteState:
    """What the Hub holds at `repo_id@revision`; a missing repo or revision is an answer, not an error."""
    action = f"read {repo_id}"
    try:
        info = _call(action, token, lambda: _info_or_missing(api, repo_id, revision))
    except _Missing as missing:
        if missing.what == "repo":
            return _RemoteState(repo_exists=False)
        main_info = _call(action, token, lambda: api.model_info(repo_id))
        return _RemoteState(repo_exists=True, private=main_info.private)
    return _RemoteState(
        repo_exists=True,
        private=info.private,
        head=info.sha,
        files={
            s.rfilename: ("sha256", s.lfs.sha256) if s.lfs else ("git", s.blob_id)
            for s in info.siblings or []
        },
    )


class _Missing(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what  # "repo" | "revision"


def _info_or_missing(api: HfApi, repo_id: str, revision: str) -> Any:
    try:
        return api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise _Missing("revision") from None
    except RepositoryNotFoundError:  # the token was checked before: the repo really is not there (for us)
        raise _Missing("repo") from None


def content_id(source: Path | bytes, kind: str) -> tuple[str, str]:
    """The Hub's id of a file's content: sha256 for LFS files, the git blob sha1 for regular ones."""
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1()
    if kind == "git":
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        digest.update(b"blob %d\0" % size)
    if isinstance(source, bytes):
        digest.update(source)
    else:
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return (kind, digest.hexdigest())


def already_pushed(plan: UploadPlan, remote: _RemoteState) -> bool:
    """True when the revision holds every file of `plan` with the same content and nothing to delete: then
    a push would upload nothing, so there is nothing to check either."""
    if remote.head is None or stale_weight_files(list(remote.files), plan.paths):
        return False
    for f in plan.files:
        stored = remote.files.get(f.path_in_repo)
        if stored is None or content_id(f.source, stored[0]) != stored:
            return False
    return True


def _preflight(
    api: HfApi, token: _Token, repo_id: str, branch: str, private: bool, create_pr: bool
) -> tuple[str, _RemoteState]:
    """Check the token and the target before the (slow) load check; returns the full repo id and its state."""
    user = _call(f"check the token from {token.source}", token, api.whoami)
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PushError(f"the token from {token.source} is read-only: pushing needs a write token")
    if "/" not in repo_id:
        repo_id = f"{user['name']}/{repo_id}"
    remote = _remote_state(api, repo_id, branch, token)
    pushes_to_pr = bool(_PULL_REQUEST_REF.fullmatch(branch))
    if not remote.repo_exists and (create_pr or pushes_to_pr):
        raise PushError(
            f"{repo_id} does not exist on {constants.ENDPOINT}: a pull request needs an existing repo "
            "(push without --create-pr to create it)"
        )
    if pushes_to_pr and remote.head is None:
        raise PushError(f"{repo_id} has no pull request {branch}")
    if private and remote.repo_exists and not remote.private:
        raise PushError(
            f"{repo_id} exists and is public: --private only applies to a new repo (make it private on the "
            "Hub first, or drop --private)"
        )
    return repo_id, remote


def _commit(
    api: HfApi,
    token: _Token,
    plan: UploadPlan,
    repo_id: str,
    branch: str,
    remote: _RemoteState,
    private: bool,
    commit_message: str | None,
    create_pr: bool,
    log: Callable[[str], None],
) -> PushResult:
    if not remote.repo_exists:
        _call(f"create {repo_id}", token, lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        log(f"Created {'private' if private else 'public'} repo {repo_id}.")
    if remote.head is None and branch != constants.DEFAULT_REVISION:
        _call(
            f"create branch {branch} of {repo_id}",
            token,
            lambda: api.create_branch(repo_id, branch=branch, exist_ok=True),
        )
        log(f"Created branch {branch} (from {constants.DEFAULT_REVISION}).")

    deletions = stale_weight_files(list(remote.files), plan.paths)
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(
            path_in_repo=f.path_in_repo,
            path_or_fileobj=f.source if isinstance(f.source, bytes) else str(f.source),
        )
        for f in plan.files
    ]
    operations += [CommitOperationDelete(path_in_repo=path) for path in deletions]
    target = f"{repo_id}@{branch}"
    _log_plan(plan, log, f"Uploading to {target}" + (" as a pull request" if create_pr else ""))
    if deletions:
        log(f"Deleting stale weight files of an earlier push: {', '.join(deletions)}")
    info = _call(
        f"push to {target}",
        token,
        lambda: api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            revision=branch,
            create_pr=create_pr,
            parent_commit=remote.head,  # fails (412) rather than overwrite a push made meanwhile
        ),
    )
    result = PushResult(
        repo_id=repo_id,
        revision=info.pr_revision or branch,
        commit_sha=info.oid,
        commit_url=info.commit_url,
        changed=info.oid != remote.head,
        pull_request_url=info.pr_url,
        pull_request_revision=info.pr_revision,
    )
    if not result.changed:
        not_made = "no pull request was opened" if create_pr else "no commit was made"
        log(f"No changes: {target} already holds these files; {not_made}.")
    _log_result(result, log)
    return result


def _commit_url(repo_id: str, sha: str) -> str:
    return f"{constants.ENDPOINT}/{repo_id}/commit/{sha}"


def _log_result(result: PushResult, log: Callable[[str], None]) -> None:
    if result.pull_request_url:
        log(f"Pull request: {result.pull_request_url} ({result.pull_request_revision})")
    log(f"Commit URL: {result.commit_url}")
    log(f"Revision: {result.commit_sha}")
    log("Load it with:")
    log(f"    {load_line(result.repo_id, result.commit_sha)}")


def push_model_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = print,
) -> PushResult | UploadPlan:
    """Check `folder` and push its model files to `repo_id@revision` (see the module docstring).

    Order: arguments, static checks, then (unless dry run) the token and the target on the Hub (read-only
    requests), then the load check, and only then anything that writes (repo, branch, commit). The load
    check runs the folder's code: without `trust_remote_code` the push is refused where it would start.
    Returns the PushResult, or the UploadPlan of a dry run, which makes no request at all."""
    branch = revision or constants.DEFAULT_REVISION
    if create_pr and branch != constants.DEFAULT_REVISION:
        raise PushError(
            f"--create-pr opens a pull request against {constants.DEFAULT_REVISION}; it cannot be combined "
            f"with --revision {branch}"
        )
    if branch.startswith("refs/") and not _PULL_REQUEST_REF.fullmatch(branch):
        raise PushError(f"--revision {branch}: give a branch name, or refs/pr/N to update a pull request")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"invalid repo id {repo_id!r}: {err}") from None

    plan = plan_upload(folder, repo_id)
    for note in plan.notes:
        log(note)
    if not dry_run:
        hub_token = resolve_token(token)
        api = HfApi(token=hub_token.value)
        repo_id, remote = _preflight(api, hub_token, repo_id, branch, private, create_pr)
        if already_pushed(plan, remote):
            assert remote.head is not None
            not_made = "no pull request was opened" if create_pr else "no commit was made"
            log(f"No changes: {repo_id}@{branch} already holds exactly these files; {not_made}.")
            result = PushResult(
                repo_id, branch, remote.head, _commit_url(repo_id, remote.head), changed=False
            )
            _log_result(result, log)
            return result

    if not trust_remote_code:
        raise untrusted_check_refusal(plan)
    log(f"Checking that {plan.folder} loads with trust_remote_code=True in a fresh Python ...")
    summary = check_loads_with_remote_code(plan.folder)
    log(f"OK: {summary['class']} predicts tasks {', '.join(summary['tasks'])}.")

    if dry_run:
        _log_plan(
            plan, log, f"Would upload to {repo_id}@{branch}" + (" as a pull request" if create_pr else "")
        )
        log("Dry run: nothing was uploaded (the Hub was not contacted).")
        return plan
    return _commit(api, hub_token, plan, repo_id, branch, remote, private, commit_message, create_pr, log)


def untrusted_check_refusal(plan: UploadPlan) -> PushError:
    """Why the load check does not run without --trust-remote-code, naming the code it would execute."""
    code = ", ".join(f.path_in_repo for f in plan.files if f.path_in_repo.endswith(".py"))
    return PushError(
        f"the last check before sharing {plan.folder} loads it with trust_remote_code=True in a fresh Python, "
        f"as a user of the repo would, and that executes the folder's code ({code}) on this machine: pass "
        "--trust-remote-code to run it (after reading those files), with --dry-run too"
    )


def _log_plan(plan: UploadPlan, log: Callable[[str], None], title: str) -> None:
    log(f"{title}: {len(plan.files)} files, {plan.total_size:,} bytes")
    for f in plan.files:
        log(f"  {f.size:>14,}  {f.path_in_repo}")
    if plan.left_out:
        log(f"Not uploaded (not model files): {', '.join(plan.left_out)}")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="push_to_hub.py",
        description="Check a saved multi-task encoder folder and push its model files to the Hugging Face Hub.",
        epilog=(
            "The endpoint is HF_ENDPOINT (default https://huggingface.co). Prefer HF_TOKEN or `hf auth login` "
            "over --token: a command-line argument is visible to other users of the machine."
        ),
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", help="a folder written by train.py / save_pretrained"
    )
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="namespace/name (a bare name goes to your namespace)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument(
        "--revision", metavar="BRANCH", help="push to this branch (created from main if missing)"
    )
    parser.add_argument("--commit-message", metavar="M", help=f"default: {DEFAULT_COMMIT_MESSAGE!r}")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request against main instead")
    parser.add_argument("--dry-run", action="store_true", help="check and list the files; upload nothing")
    parser.add_argument("--token", metavar="T", help="Hub token (default: HF_TOKEN, then the saved login)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the load check, which executes the folder's .py files in a fresh Python (as a user of the "
        "repo would); without it the push, a dry run too, is refused before the check",
    )
    add_common_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command: exit status 0 after a push (or dry run); otherwise one line on stderr ("error: ...", see
    `multitask_encoder.cli.run_command`)."""
    args = build_parser().parse_args(argv)

    def push() -> None:
        push_model_folder(
            args.model_dir,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            dry_run=args.dry_run,
            token=args.token,
            trust_remote_code=args.trust_remote_code,
            log=lambda line: print(line, flush=True),
        )

    return run_command(
        push,
        prefix="error:",
        refusals=(MultiTaskEncoderError,),
        debug=debug_requested(args.debug),
        interrupted="interrupted; a Hub commit is all or nothing, so no partial commit was made (a repo or "
        "branch created just before it stays)",
    )
