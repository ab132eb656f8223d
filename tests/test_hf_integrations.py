"""A saved model loads wherever a Hugging Face user reaches for it, in a fresh process without this package
(only the folder's own code): sentence-transformers, the standard text-, token-classification and
feature-extraction pipelines; and the card's pipeline_tag names a pipeline that runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModel

import multitask_encoder  # noqa: F401  (reference outputs in this process come from the package)
from multitask_encoder.model_card import render_model_card

TEXTS = ["Arnold Schwarzenegger visited Paris on Monday.", "Stocks fell sharply.", " ".join(["long"] * 1000)]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> dict:
    model = AutoModel.from_pretrained(tiny_checkpoint).eval()
    return {
        "embeddings": model.encode(TEXTS).tolist(),
        "predictions": model.predict(TEXTS),
        "similarity": model.similarity(TEXTS[:1], TEXTS[1:]).tolist(),
        "max_seq_length": model.max_seq_length,
    }


def run_fresh(run_without_package, script: str, folder: Path) -> dict:
    result = run_without_package(script, str(folder))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


ST_SCRIPT = """
import json, sys
from sentence_transformers import SentenceTransformer
texts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
model = SentenceTransformer(sys.argv[1], trust_remote_code=True)
assert type(model[0].model).__module__.startswith("transformers_modules."), type(model[0].model).__module__
embeddings = model.encode(TEXTS)
print(json.dumps({
    "embeddings": embeddings.tolist(),
    "similarity": model.similarity(embeddings[:1], embeddings[1:]).tolist(),
    "max_seq_length": model.max_seq_length,
    "modules": len(model),
}))
"""


def test_sentence_transformers_encodes_exactly_as_encode(
    run_without_package, tiny_checkpoint: Path, reference
) -> None:
    got = run_fresh(run_without_package, f"TEXTS = {TEXTS!r}\n" + ST_SCRIPT, tiny_checkpoint)
    assert got["modules"] == 1  # the model's own pooling and normalisation, nothing added by ST
    assert got["max_seq_length"] == reference["max_seq_length"]
    np.testing.assert_allclose(got["embeddings"], reference["embeddings"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["similarity"], reference["similarity"], atol=1e-6, rtol=0)


def test_saving_through_sentence_transformers_keeps_the_model_card(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "with_card"
    shutil.copytree(tiny_checkpoint, folder)
    card = render_model_card(AutoModel.from_pretrained(folder).config)
    (folder / "README.md").write_text(card, encoding="utf-8")
    model = SentenceTransformer(str(folder))
    model.save_pretrained(str(tmp_path / "plain_save"))  # a loaded card is written back unchanged
    assert (tmp_path / "plain_save" / "README.md").read_text(encoding="utf-8") == card
    # A folder without a card gets sentence-transformers' generic one unless it is told not to write one:
    # the safe way, documented in the README.
    bare = SentenceTransformer(str(tiny_checkpoint))
    bare.save_pretrained(str(tmp_path / "generic"))
    assert "library_name: sentence-transformers" in (tmp_path / "generic" / "README.md").read_text()
    bare.save_pretrained(str(tmp_path / "safe"), create_model_card=False)
    assert not (tmp_path / "safe" / "README.md").exists()
    reloaded = AutoModel.from_pretrained(tmp_path / "safe")  # and the ST-saved folder is still ours
    np.testing.assert_allclose(reloaded.encode(TEXTS[:2]), model.encode(TEXTS[:2]), atol=1e-6, rtol=0)


PIPELINES_SCRIPT = """
import json, sys
from transformers import pipeline
folder = sys.argv[1]
classify = pipeline("text-classification", model=folder, trust_remote_code=True)
tag = pipeline("token-classification", model=folder, trust_remote_code=True, aggregation_strategy="first")
extract = pipeline("feature-extraction", model=folder, trust_remote_code=True)
picked = pipeline("text-classification", model=folder, trust_remote_code=True, model_kwargs={"serve_task": "tags"})
print(json.dumps({
    "best": classify(TEXTS),
    "all": classify(TEXTS, top_k=None),
    "two": classify(TEXTS[0], top_k=2),
    "tags": picked(TEXTS[0], top_k=None),
    "entities": [[{k: (float(v) if k == "score" else v) for k, v in e.items()} for e in row] for row in tag(TEXTS)],
    "features": [extract(text)[0] for text in TEXTS],
    "classes": [type(classify.model).__name__, type(tag.model).__name__],
}))
"""


def test_standard_pipelines_serve_one_task_each(
    run_without_package, tiny_checkpoint: Path, reference
) -> None:
    got = run_fresh(run_without_package, f"TEXTS = {TEXTS!r}\n" + PIPELINES_SCRIPT, tiny_checkpoint)
    assert got["classes"] == [
        "MultiTaskEncoderForSequenceClassification",
        "MultiTaskEncoderForTokenClassification",
    ]
    predictions = reference["predictions"]
    for best, every, prediction in zip(got["best"], got["all"], predictions):
        topic = prediction["topic"]  # the first sentence task by default
        assert best["label"] == topic["label"] and best["score"] == pytest.approx(topic["score"], abs=1e-5)
        assert [row["label"] for row in every] == list(topic["scores"])  # top_k=None: every label, sorted
        assert [row["score"] for row in every] == pytest.approx(list(topic["scores"].values()), abs=1e-5)
    assert [row["label"] for row in got["two"]] == list(predictions[0]["topic"]["scores"])[:2]
    # serve_task picks another head; a multi-label head scores with sigmoids, as predict does.
    assert {row["label"]: row["score"] for row in got["tags"]} == pytest.approx(
        predictions[0]["tags"]["scores"], abs=1e-5
    )
    for entities, prediction in zip(got["entities"], predictions):
        expected = [(e["entity"], e["start"], e["end"]) for e in prediction["ner"]["entities"]]
        assert [(e["entity_group"], e["start"], e["end"]) for e in entities] == expected
    # feature-extraction: the sentence embedding, cut at max_seq_length like encode (the 1,000-word text too).
    for features, embedding in zip(got["features"], reference["embeddings"]):
        np.testing.assert_allclose(features, embedding, atol=1e-5, rtol=0)


def test_a_token_only_model_has_no_sequence_view_and_says_so(tiny_backbone: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from multitask_encoder import MultiTaskEncoderModel

    model = MultiTaskEncoderModel.from_backbone(
        tiny_backbone, tasks={"ner": {"type": "token_classification", "labels": ["O", "B-X", "I-X"]}}
    )
    model.save_pretrained(tmp_path / "ner_only")
    auto_map = json.loads((tmp_path / "ner_only" / "config.json").read_text())["auto_map"]
    assert (
        "AutoModelForTokenClassification" in auto_map and "AutoModelForSequenceClassification" not in auto_map
    )
    with pytest.raises(ValueError, match=r"serves one of \[\] \(the model's tasks: \['ner'\]\)"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "ner_only")
