"""The `multitask-text-classification` pipeline: the saved folder carries it, its results are `predict`'s
(one by one bit-exactly, batched within float noise), its parameters and bad inputs, loading without remote
code when the package is imported, and a fresh process that only has the folder's remote code."""

from __future__ import annotations

import ast
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel, pipeline

import multitask_encoder
from multitask_encoder import MultiTaskEncoderModel, MultiTaskTextClassificationPipeline
from multitask_encoder.model.pipeline_multitask_encoder import CUSTOM_PIPELINES, PIPELINE_TASK

TEXTS = [
    "Arnold Schwarzenegger visited Paris on Monday.",
    "Stocks fell.",
    "The committee will publish its final report on climate policy next spring, in Brussels.",
    "Why is the sky blue?",
    "Zürich's café owners – and 3 others – met Ms. O'Neill.",
]


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> MultiTaskEncoderModel:
    return AutoModel.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def pipe(model: MultiTaskEncoderModel) -> MultiTaskTextClassificationPipeline:
    return pipeline(PIPELINE_TASK, model=model)


def assert_close(actual: Any, expected: Any, where: str = "prediction") -> None:
    """Same structure, keys in the same order, same strings and ints; floats equal within 1e-5 (batches
    padded differently differ by float noise)."""
    assert type(actual) is type(expected), f"{where}: {actual!r} != {expected!r}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_saved_folder_carries_the_pipeline(tiny_checkpoint: Path) -> None:
    source = Path(multitask_encoder.__file__).parent / "model" / "pipeline_multitask_encoder.py"
    assert (tiny_checkpoint / "pipeline_multitask_encoder.py").read_text() == source.read_text()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    module, class_name = CUSTOM_PIPELINES[PIPELINE_TASK]["impl"].split(".")
    assert (module, class_name) == (
        "pipeline_multitask_encoder",
        MultiTaskTextClassificationPipeline.__name__,
    )
    # Self-contained: only the standard library, torch and transformers (no package, no relative import).
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import of {node.module}"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "typing", "torch", "transformers"}, imported


def test_one_by_one_equals_predict_exactly(model, pipe) -> None:
    assert pipe(TEXTS[0]) == model.predict(TEXTS[0])
    results = pipe(TEXTS)
    assert isinstance(results, list) and len(results) == len(TEXTS)
    # batch_size=1 on both sides: every text runs alone, unpadded, so the numbers are bit-identical.
    assert results == model.predict(TEXTS, batch_size=1)
    assert [list(result) for result in results] == [list(model.config.tasks)] * len(TEXTS)


@pytest.mark.parametrize("batch_size", [2, 5, 8])
def test_batched_equals_predict(model, pipe, batch_size: int) -> None:
    results = pipe(TEXTS, batch_size=batch_size)
    assert_close(results, model.predict(TEXTS, batch_size=batch_size))
    # The entities of each row quote its own text: rows were not mixed up by the batching.
    for text, result in zip(TEXTS, results):
        for entity in result["ner"]["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]


def test_tasks_and_top_k(model, pipe) -> None:
    result = pipe(TEXTS[0], tasks=["ner", "topic"], top_k=1)
    assert list(result) == ["ner", "topic"]
    assert result == model.predict(TEXTS[0], tasks=["ner", "topic"], top_k=1)
    assert len(result["topic"]["scores"]) == 1
    assert pipe(TEXTS[1:3], tasks="score") == model.predict(TEXTS[1:3], tasks="score", batch_size=1)
    # Parameters given when the pipeline is built apply to every call.
    narrowed = pipeline(PIPELINE_TASK, model=model, tasks=["tags"], top_k=2)
    assert narrowed(TEXTS[2]) == model.predict(TEXTS[2], tasks=["tags"], top_k=2)
    assert_close(narrowed(TEXTS, batch_size=3), model.predict(TEXTS, tasks=["tags"], top_k=2, batch_size=3))
    assert narrowed(TEXTS[2], tasks=["score"]) == model.predict(TEXTS[2], tasks=["score"])  # call overrides


def test_generator_input_streams(model, pipe) -> None:
    results = pipe((text for text in TEXTS), batch_size=2)
    assert not isinstance(results, list)  # an iterator, consumed on demand
    assert_close(list(results), model.predict(TEXTS))


def test_bad_parameters_and_inputs(pipe) -> None:
    assert pipe([]) == []
    with pytest.raises(ValueError, match="sentiment"):
        pipe(TEXTS[0], tasks=["topic", "sentiment"])
    with pytest.raises(ValueError, match="top_k"):
        pipe(TEXTS[0], top_k=0)
    with pytest.raises(ValueError, match="empty"):
        pipe("   ")
    with pytest.raises(TypeError, match="int"):
        pipe([TEXTS[0], 7], batch_size=2)


def test_folder_without_remote_code(model, tiny_checkpoint: Path) -> None:
    # The folder's config.json names its own pipeline file, and transformers runs it only when trusted...
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline(PIPELINE_TASK, model=str(tiny_checkpoint))
    # ... or when the package's class is given: then everything is the package's code.
    pipe = pipeline(
        PIPELINE_TASK, model=str(tiny_checkpoint), pipeline_class=MultiTaskTextClassificationPipeline
    )
    assert type(pipe.model) is MultiTaskEncoderModel
    assert pipe.tokenizer.tokenize("Schwarzenegger") == model.tokenizer.tokenize("Schwarzenegger")
    assert pipe(TEXTS) == model.predict(TEXTS, batch_size=1)


def test_training_mode_model_predicts_in_eval_mode(tiny_checkpoint: Path) -> None:
    model = AutoModel.from_pretrained(tiny_checkpoint).train()
    pipe = pipeline(PIPELINE_TASK, model=model)
    assert not model.training  # dropout off: the same text gives the same answer twice
    assert pipe(TEXTS[2]) == pipe(TEXTS[2])


# Runs through the `run_without_package` fixture (a fresh interpreter where `multitask_encoder` cannot be
# imported): only the code saved in the folder can serve the pipeline.
REMOTE_PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import torch
    from transformers import pipeline

    model_dir, texts_path, resave_dir, out_path, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    texts = json.loads(open(texts_path, encoding="utf-8").read())
    pipe = pipeline("multitask-text-classification", model=model_dir, trust_remote_code=True)
    assert type(pipe).__module__.startswith("transformers_modules."), type(pipe).__module__
    assert type(pipe.model).__module__.startswith("transformers_modules."), type(pipe.model).__module__
    outputs = {
        "one_by_one": pipe(texts),
        "single": pipe(texts[0]),
        "narrowed": pipe(texts[0], tasks=["ner", "topic"], top_k=1),
        "batched": pipe(texts, batch_size=2),
    }
    # A model loaded from remote code saves a folder that serves the pipeline too; its one task is inferred.
    pipe.model.save_pretrained(resave_dir)
    outputs["resaved"] = pipeline(model=resave_dir, trust_remote_code=True)(texts)
    assert "multitask_encoder" not in sys.modules
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(outputs, f)
    """
)


@pytest.mark.slow
def test_remote_code_pipeline_in_fresh_process(
    model, tiny_checkpoint: Path, tmp_path: Path, run_without_package
) -> None:
    texts_path, out_path, resaved = tmp_path / "texts.json", tmp_path / "out.json", tmp_path / "resaved"
    texts_path.write_text(json.dumps(TEXTS), encoding="utf-8")
    args = [str(tiny_checkpoint), str(texts_path), str(resaved), str(out_path), str(torch.get_num_threads())]
    result = run_without_package(REMOTE_PIPELINE_SCRIPT, *args)
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = json.loads(out_path.read_text(encoding="utf-8"))

    expected = model.predict(TEXTS, batch_size=1)
    assert outputs["one_by_one"] == expected  # JSON round-trips floats exactly
    assert outputs["single"] == expected[0]
    assert outputs["narrowed"] == model.predict(TEXTS[0], tasks=["ner", "topic"], top_k=1)
    assert_close(outputs["batched"], model.predict(TEXTS, batch_size=2))
    assert outputs["resaved"] == expected
    assert json.loads((resaved / "config.json").read_text())["custom_pipelines"] == CUSTOM_PIPELINES
    assert (resaved / "pipeline_multitask_encoder.py").read_text() == (
        tiny_checkpoint / "pipeline_multitask_encoder.py"
    ).read_text()
