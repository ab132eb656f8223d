"""The ONNX export (`export_onnx`) is self-describing: every output of its graphs is its task's real output
(equal to forward's) or absent; config.json says, per task, where the output is and how to decode it
(`postprocessing`, `id2label`) and names no code the folder lacks; examples/onnx_predict.py, run where neither
this package nor torch is importable, decodes every task type from the export exactly as `model.predict` does.

One module-scoped export (tens of seconds) of one model with a task of every type serves every test here.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.task_types import TASK_TYPES

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "onnx_predict.py"
# One task of every type (pair_classification in both encodings), in a non-alphabetical order.
TASKS: dict[str, dict[str, Any]] = {
    "topic": {"type": "sequence_classification", "labels": ["world", "sports", "business"]},
    "zero_shot": {
        "type": "label_text_classification",
        "labels": ["sports", "finance"],
        "label_descriptions": {"finance": "money, banks and markets"},
        "scale": 10.0,
    },
    "tags": {
        "type": "multi_label_classification",
        "labels": ["politics", "economy", "science"],
        "threshold": 0.4,
    },
    "score": {"type": "regression", "labels": ["valence", "arousal"]},
    "ner": {"type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
    "nli": {"type": "pair_classification", "labels": ["entailment", "neutral", "contradiction"]},
    "paraphrase": {"type": "pair_classification", "labels": ["no", "yes"], "pair_encoding": "cross"},
    "sts": {"type": "similarity", "score_range": [0, 5]},
    "retrieval": {"type": "contrastive"},
}
TEXTS = [
    "Alice Smith flew from Paris to Berlin on Monday.",
    "Stocks fell sharply.",
    "The striker scored twice in the final against Madrid, and the crowd in Lisbon sang for an hour.",
    "Bob met Carol.",
    "Researchers in Oslo sequenced the genome of a rare frog.",
]
PAIRS = [
    ("A man is eating pasta.", "Someone is having a meal."),
    ("The cat sleeps on the sofa.", "A stock market crash wiped out savings."),
    ("Two kids play football in the park.", "Children are playing a game outside."),
]
# What each type's exported output is decoded with.
ACTIVATIONS = {
    "sequence_classification": "softmax",
    "label_text_classification": "softmax",
    "multi_label_classification": "sigmoid",
    "regression": "none",
    "token_classification": "softmax",
    "pair_classification": "softmax",
    "similarity": "cosine",
    "contrastive": "cosine",
}


@pytest.fixture(scope="module")
def exported(
    tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MultiTaskEncoderModel, Path]:
    """(the model, its export folder): a saved model loaded back (so its config has auto_map, as users'
    models do), exported once."""
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=TASKS, max_seq_length=48)
    saved = tmp_path_factory.mktemp("saved")
    model.save_pretrained(saved)
    model = MultiTaskEncoderModel.from_pretrained(saved).eval()
    assert model.config.auto_map  # what the export must not carry over
    folder = tmp_path_factory.mktemp("onnx")
    assert Path(model.export_onnx(folder)) == folder / "model.onnx"
    return model, folder


def test_every_task_type_is_in_the_export() -> None:
    assert {spec["type"] for spec in TASKS.values()} == set(TASK_TYPES)


def session_outputs(session) -> list[str]:
    return [node.name for node in session.get_outputs()]


def test_every_graph_output_is_its_tasks_output(exported: tuple[MultiTaskEncoderModel, Path]) -> None:
    import onnxruntime

    model, folder = exported
    graph = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    pair_heads = onnxruntime.InferenceSession(
        str(folder / "pair_heads.onnx"), providers=["CPUExecutionProvider"]
    )
    # The tasks that read one input (a text, a jointly encoded pair); nothing for the pair tasks encoded apart
    # (their forward logits need the second text: exported, they were constant zeros).
    assert session_outputs(graph) == [
        "embeddings",
        "topic_logits",
        "zero_shot_logits",
        "tags_logits",
        "score_logits",
        "ner_logits",
        "paraphrase_logits",
    ]
    assert [node.name for node in pair_heads.get_inputs()] == ["embeddings", "pair_embeddings"]
    assert session_outputs(pair_heads) == ["nli_logits"]

    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # 5 rows: not the traced batch of 2
    with torch.no_grad():
        expected = model(**batch, tasks=["topic", "zero_shot", "tags", "score", "ner", "paraphrase"])
    outputs = graph.run(None, {node.name: batch[node.name].numpy() for node in graph.get_inputs()})
    for name, got in zip(session_outputs(graph), outputs):
        np.testing.assert_allclose(got, expected[name].numpy(), atol=1e-4, err_msg=name)

    firsts = tokenizer([a for a, _ in PAIRS], padding=True, return_tensors="pt")
    seconds = tokenizer([b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        pair_inputs = {**seconds, "rows": torch.arange(len(PAIRS))}
        expected = model(**firsts, pair_inputs=pair_inputs, tasks=["nli"])["nli_logits"].numpy()
    embeddings = [
        graph.run(["embeddings"], {node.name: inputs[node.name].numpy() for node in graph.get_inputs()})[0]
        for inputs in (firsts, seconds)
    ]
    (got,) = pair_heads.run(None, {"embeddings": embeddings[0], "pair_embeddings": embeddings[1]})
    assert np.abs(expected).max() > 1e-3  # real logits, not the zeros of an unread second text
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_model_with_only_pair_tasks_encoded_apart_exports_its_embedding(tiny_backbone: str) -> None:
    """model.onnx of such a model (a retrieval model) has no logits output, only the embedding (traced here
    without the export: the module's forward is what the export records)."""
    from multitask_encoder.model.onnx_multitask_encoder import ModelGraph, example_encoder_inputs

    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks={"sts": TASKS["sts"]}).eval()
    graph = ModelGraph(model)
    assert graph.tasks == []
    inputs = example_encoder_inputs(model.encoder, graph.encoder_graph.input_names)
    with torch.no_grad():
        (embeddings,) = graph(*inputs)
        expected = model.embed(dict(zip(graph.encoder_graph.input_names, inputs)))
    torch.testing.assert_close(embeddings, expected)


def test_exported_config_says_where_each_output_is_and_how_to_decode_it(
    exported: tuple[MultiTaskEncoderModel, Path],
) -> None:
    import onnxruntime

    model, folder = exported
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    # The folder holds neither torch weights nor code: nothing may point AutoModel or a pipeline at code files.
    assert "auto_map" not in config and "custom_pipelines" not in config
    assert sorted(path.name for path in folder.iterdir()) == [
        "config.json",
        "model.onnx",
        "pair_heads.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert config["max_seq_length"] == 48
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 48  # truncates where predict does
    graphs = config["onnx_export"]["graphs"]
    for graph, described in graphs.items():
        session = onnxruntime.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
        assert described["outputs"] == session_outputs(session), graph
    post = config["postprocessing"]
    assert list(post) == sorted(TASKS)  # config.json keys are sorted
    for name, spec in model.config.tasks.items():
        entry = post[name]
        assert entry["output"] in graphs[entry["graph"]]["outputs"], name
        assert entry["activation"] == ACTIVATIONS[spec.type], name
        if entry["activation"] != "cosine":
            assert entry["id2label"] == {
                str(index): label for index, label in enumerate(TASKS[name]["labels"])
            }
    assert [post[name]["input"] for name in TASKS] == ["text"] * 5 + ["pair", "pair_joint", "pair", "pair"]
    assert post["nli"]["graph"] == "pair_heads.onnx"
    assert post["sts"]["output"] == post["retrieval"]["output"] == "embeddings"
    assert post["sts"]["score_range"] == [0.0, 5.0]
    assert post["tags"]["threshold"] == 0.4
    assert post["zero_shot"]["logit_scale"] == 10.0
    assert post["zero_shot"]["label_texts"] == ["sports", "money, banks and markets"]
    assert post["ner"]["decoding"]["scheme"] == "IOB2"


def assert_predictions_match(got: Any, want: Any, where: str = "", atol: float = 1e-4) -> None:
    """Equal labels, keys, entity spans and texts; numbers within `atol`."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, got, want)
        for key in want:
            assert_predictions_match(got[key], want[key], f"{where}.{key}", atol)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for index, (item, wanted) in enumerate(zip(got, want)):
            assert_predictions_match(item, wanted, f"{where}[{index}]", atol)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=atol), where
    else:
        assert got == want, where


EXAMPLE_DRIVER = textwrap.dedent(  # run through the `run_without_package` fixture
    """
    import json
    import runpy
    import sys

    for name in ("torch", "transformers"):  # the example must not need them
        sys.modules[name] = None
    example, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(example, run_name="__main__")
    """
)


def test_the_onnx_example_decodes_every_task_as_predict_does(
    exported: tuple[MultiTaskEncoderModel, Path], run_without_package
) -> None:
    model, folder = exported
    pair_arguments = [argument for pair in PAIRS for argument in ("--pair", *pair)]
    result = run_without_package(EXAMPLE_DRIVER, str(EXAMPLE), str(folder), *TEXTS, *pair_arguments)
    assert result.returncode == 0, result.stderr[-4000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    expected_texts = model.predict(TEXTS)
    expected_pairs = model.predict(PAIRS)
    assert set(expected_texts[0]) == {"topic", "zero_shot", "tags", "score", "ner"}
    assert set(expected_pairs[0]) == {"nli", "paraphrase", "sts", "retrieval"}
    assert any(prediction["ner"]["entities"] for prediction in expected_texts)  # the decoding really ran
    # The tasks in the model's order, as predict gives them.
    assert [list(got) for got in served["texts"]] == [list(want) for want in expected_texts]
    assert_predictions_match(served["texts"], expected_texts, "texts")
    assert_predictions_match(served["pairs"], expected_pairs, "pairs")


def test_auto_model_on_the_export_says_it_is_an_onnx_export(
    exported: tuple[MultiTaskEncoderModel, Path],
) -> None:
    _, folder = exported
    with pytest.raises(
        ValueError, match=r"is an ONNX export of a multitask-encoder model .* Serve it with ONNX"
    ):
        AutoModel.from_pretrained(folder)


AUTO_MODEL_DRIVER = textwrap.dedent(  # run through the `run_without_package` fixture
    """
    import json
    import sys

    from transformers import AutoModel

    try:
        AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
        print(json.dumps({"error": None}))
    except Exception as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
    """
)


def test_auto_model_on_the_export_without_the_package_fails_on_the_model_type_not_a_missing_file(
    exported: tuple[MultiTaskEncoderModel, Path], run_without_package
) -> None:
    """Without the package nothing can name the folder an ONNX export, but with auto_map dropped transformers
    says it does not know the model type, instead of an OSError about a code file the folder never had."""
    _, folder = exported
    result = run_without_package(AUTO_MODEL_DRIVER, str(folder))
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "ValueError", outcome
    assert "model type `multitask_encoder`" in outcome["message"]
