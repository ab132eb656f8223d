"""Every Python block of README.md and docs/config.md runs as written: a newcomer copying a block gets no
NameError, no refused argument and no missing file. The blocks of one document run top to bottom in one fresh
Python (as a reader goes through it), from a folder that holds what the document says exists by then: the demo
model in `outputs/demo` (`make demo`), and the models trained with the document's pair and label-text configs.
Those are built here on the small test backbone: the blocks' code is checked, not the demo's accuracy.

A block that cannot run here (it needs the Hub) is preceded by `<!-- docs-test: skip (reason) -->`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multitask_encoder import MultiTaskEncoderModel

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/config.md")
BLOCK = re.compile(r"(?:<!-- docs-test: (?P<directive>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)
DEMO_TASKS = {
    "topic": {
        "type": "sequence_classification",
        "labels": ["business", "entertainment", "politics", "sport", "tech"],
    },
    "sentiment": {"type": "sequence_classification", "labels": ["negative", "neutral", "positive"]},
}
# What README's "Sentence pairs" and "Labels as text" configs train (their models are loaded from these folders).
PAIR_TASKS = {
    "topic": {"type": "sequence_classification", "labels": ["business", "sport"]},
    "entailment": {"type": "pair_classification", "labels": ["contradiction", "entailment", "neutral"]},
    "sts": {"type": "similarity", "score_range": [0, 5]},
    "retrieval": {"type": "contrastive"},
}
LABEL_TEXT_TASKS = {
    "topic": {"type": "label_text_classification", "labels": ["World", "Sports", "Business", "Sci/Tech"]},
}


def python_blocks(document: str) -> list[tuple[int, str | None, str]]:
    """(line, directive, code) of each ```python block."""
    text = (REPO / document).read_text(encoding="utf-8")
    return [
        (text[: match.start("code")].count("\n") + 1, match.group("directive"), match.group("code"))
        for match in BLOCK.finditer(text)
    ]


@pytest.fixture(scope="module")
def reader_folder(tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reader")
    for name, tasks in (("demo", DEMO_TASKS), ("pairs", PAIR_TASKS), ("topics", LABEL_TEXT_TASKS)):
        torch.manual_seed(0)
        model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=tasks)
        model.save_pretrained(folder / "outputs" / name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_python_block_runs_as_written(document: str, reader_folder: Path) -> None:
    blocks = python_blocks(document)
    script = ["import sys"]
    for line, directive, code in blocks:
        if directive and directive.startswith("skip"):
            continue
        assert not directive, f"{document}:{line}: unknown docs-test directive {directive!r}"
        script.append(f"print('--- {document}:{line}', file=sys.stderr, flush=True)")
        script.append(f"exec(compile({code!r}, {f'{document}:{line}'!r}, 'exec'))")
    path = reader_folder / f"{Path(document).stem}_blocks.py"
    path.write_text("\n".join(script) + "\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_MODULES_CACHE=str(reader_folder / "modules")
    )
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=reader_folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    ran = [line.removeprefix("--- ") for line in result.stderr.splitlines() if line.startswith("--- ")]
    assert result.returncode == 0, f"the block at {ran[-1] if ran else '?'} failed:\n{result.stderr[-4000:]}"


def test_documents_have_python_blocks_the_test_reads() -> None:
    """The block pattern still matches the documents (a changed fence would make the test above vacuous)."""
    assert len(python_blocks("README.md")) >= 8
