"""Serving modes (`optimize_for_inference`): token-budget batching, streaming windows, bf16, int8 and compiled
encoders agree with the exact default on real text; stale serving encoders are refused; the modes work in a
saved folder loaded with trust_remote_code in a fresh process.

Speed is measured by bench/serve_speed.py, and so is the int8 mode's task accuracy on AG News and SST (heads
trained on frozen embeddings); here the bf16 and int8 modes are held to their embedding agreement (cosine).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.model import inference_multitask_encoder as inference
from multitask_encoder.model.inference_multitask_encoder import (
    RUNTIME_MODES,
    SERVING_MODES,
    Int8DynamicLinear,
    native_bf16_missing,
    plan_batches,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TEXTS = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog.",
    "Oil prices rose sharply on Monday after supply concerns in the Middle East deepened further.",
    "Goal!",
    "Scientists discover a new species of frog in the Amazon rainforest, near the Peruvian border.",
    "Apple unveils its latest phone in Cupertino.",
    "It rained.",
    "Parliament passed the budget bill late on Thursday night after a long debate about taxes and spending.",
    "Angela Merkel met Emmanuel Macron in Berlin.",
    "Markets were flat.",
    "A very long sentence " + "with many repeated words " * 12 + "at the end.",
    "Why?",
    "Barcelona beat Real Madrid 3-1 at the Camp Nou on Saturday evening.",
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_same_predictions(ours: list[dict], reference: list[dict], atol: float) -> None:
    """Same labels and entities; scores equal within `atol`."""
    assert len(ours) == len(reference)
    for row, (got, want) in enumerate(zip(ours, reference)):
        assert got.keys() == want.keys(), row
        for task in want:
            if "label" in want[task]:
                assert got[task]["label"] == want[task]["label"], (row, task)
                assert got[task]["score"] == pytest.approx(want[task]["score"], abs=atol), (row, task)
            if "labels" in want[task]:
                assert got[task]["labels"] == want[task]["labels"], (row, task)
            if "value" in want[task]:
                assert got[task]["value"] == pytest.approx(want[task]["value"], abs=atol), (row, task)
            if "entities" in want[task]:
                spans = [(e["entity"], e["start"], e["end"]) for e in got[task]["entities"]]
                assert spans == [(e["entity"], e["start"], e["end"]) for e in want[task]["entities"]], row


@pytest.fixture(autouse=True)
def every_mode_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check how each mode serves, those the bench measured outside the guard (refused by default:
    tests/test_runtime_modes.py) included."""
    monkeypatch.setattr(inference, "MODES_OUTSIDE_GUARD", {})


@pytest.fixture
def model(tiny_checkpoint: Path) -> MultiTaskEncoderModel:
    """A fresh copy per test: modes are per-model state."""
    return MultiTaskEncoderModel.from_pretrained(tiny_checkpoint).eval()


def record_batch_shapes(model: MultiTaskEncoderModel) -> list[tuple[int, int]]:
    """Shapes `(batch, seq)` of every batch the encoder (eager) sees from now on."""
    shapes: list[tuple[int, int]] = []
    model.encoder.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes


# ---------------------------------------------------------------------------------------------- planning
def test_plan_batches_by_count_and_by_token_budget() -> None:
    lengths = [100, 90, 40, 40, 30, 12, 10, 10, 9, 3]  # sorted longest first
    assert plan_batches(lengths, batch_size=4, token_budget=None) == [(0, 4), (4, 8), (8, 10)]
    # Budget 200: the 100-token text fits twice (200), 40-token texts five times, 10-token texts 20 times.
    assert plan_batches(lengths, batch_size=4, token_budget=200) == [(0, 2), (2, 7), (7, 10)]
    # A text longer than the budget still gets a batch, alone.
    assert plan_batches([300, 20, 20], batch_size=4, token_budget=100) == [(0, 1), (1, 3)]
    for budget in (1, 37, 256):
        batches = plan_batches(lengths, 4, budget)
        assert [i for start, end in batches for i in range(start, end)] == list(range(len(lengths)))
        assert all(end - start == 1 or (end - start) * lengths[start] <= budget for start, end in batches)


def test_default_mode_is_exact_and_unknown_modes_are_refused(model: MultiTaskEncoderModel) -> None:
    assert model.serving_mode == "exact"
    with pytest.raises(ValueError, match=r"Unknown serving mode 'fast'.*'exact', 'token_budget'"):
        model.optimize_for_inference("fast")
    with pytest.raises(ValueError, match="token_budget must be >= 1"):
        model.optimize_for_inference("token_budget", token_budget=0)
    with pytest.raises(ValueError, match="exact mode batches by count"):
        model.optimize_for_inference("exact", token_budget=512)
    assert model.serving_mode == "exact"
    assert set(SERVING_MODES) == {"exact", "token_budget", "compiled", "bf16", "int8"} | set(RUNTIME_MODES)


# ---------------------------------------------------------------------------------------------- token budget
def test_token_budget_batches_are_bounded_by_padded_tokens(model: MultiTaskEncoderModel) -> None:
    reference_embeddings = model.encode(TEXTS, batch_size=4)
    reference_predictions = model.predict(TEXTS, batch_size=4)
    assert model.optimize_for_inference("token_budget", token_budget=64) is model
    assert model.serving_mode == "token_budget"
    shapes = record_batch_shapes(model)

    embeddings = model.encode(TEXTS, batch_size=4)
    predictions = model.predict(TEXTS, batch_size=4)

    assert all(batch == 1 or batch * seq <= 64 for batch, seq in shapes), shapes
    assert max(batch for batch, _ in shapes) > 4, shapes  # short texts: more than batch_size per batch
    assert min(batch for batch, _ in shapes) == 1, shapes  # the long text alone
    assert sum(batch for batch, _ in shapes) == 2 * len(TEXTS)
    np.testing.assert_allclose(embeddings, reference_embeddings, atol=1e-5)
    assert_same_predictions(predictions, reference_predictions, atol=1e-5)


def test_back_to_exact_batches_by_count_again(model: MultiTaskEncoderModel) -> None:
    model.optimize_for_inference("token_budget", token_budget=64).optimize_for_inference("exact")
    shapes = record_batch_shapes(model)
    model.encode(TEXTS, batch_size=4)
    assert [batch for batch, _ in shapes] == [4, 4, 4, 1]


def test_streaming_windows_keep_order_and_bound_batches(model: MultiTaskEncoderModel) -> None:
    texts = TEXTS * 3  # 39 texts
    reference = model.encode(texts, batch_size=64)
    reference_predictions = model.predict(texts, batch_size=64)
    # Windows of 5 texts, rounded up to whole batches of 2: six windows of 6 texts and one of 3.
    model.optimize_for_inference("exact", window=5)
    shapes = record_batch_shapes(model)

    streamed = model.encode(texts, batch_size=2)
    predictions = model.predict(texts, batch_size=2)

    assert [batch for batch, _ in shapes] == ([2] * 18 + [2, 1]) * 2
    np.testing.assert_allclose(streamed, reference, atol=1e-5)
    assert_same_predictions(predictions, reference_predictions, atol=1e-5)


def test_errors_name_the_index_in_the_whole_list(model: MultiTaskEncoderModel) -> None:
    model.optimize_for_inference("token_budget", window=4)
    shapes = record_batch_shapes(model)
    with pytest.raises(ValueError, match="Text #9 is empty"):
        model.predict([*TEXTS[:9], "  ", *TEXTS])
    assert shapes == []  # refused before any work


# ---------------------------------------------------------------------------------------------- bf16
def real_texts(count: int) -> list[str]:
    """`count` AG News and `count` SST test texts from the shared benchmark data (skip when absent)."""
    texts = []
    for name in ("ag_news", "sst5"):
        path = DATA / name / "test.jsonl"
        if not path.is_file():
            pytest.skip(f"{path} not found (the shared benchmark data is not on this machine)")
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(count), f)]
    return texts


def test_bf16_agrees_with_exact_on_real_text(minilm_path: str, example_tasks: dict) -> None:
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(minilm_path, tasks=example_tasks).eval()
    texts = real_texts(48)
    exact = model.encode(texts)
    exact_predictions = model.predict(texts, tasks=["topic"])
    model.optimize_for_inference("bf16")
    assert model.serving_mode == "bf16"
    served = model.encode(texts)
    assert served.dtype == np.float32
    similarity = cosine(served, exact)
    assert similarity.min() >= 0.999, similarity.min()
    assert np.abs(served - exact).max() > 1e-5  # bf16 products really ran: not the fp32 numbers
    labels = [p["topic"]["label"] for p in model.predict(texts, tasks=["topic"])]
    agree = np.mean([label == p["topic"]["label"] for label, p in zip(labels, exact_predictions)])
    assert agree >= 0.95, agree  # random heads: near-ties may flip, almost nothing else does
    model.optimize_for_inference("exact")
    np.testing.assert_array_equal(model.encode(texts), exact)


def test_bf16_reads_live_weights_and_serves_only_in_inference(model: MultiTaskEncoderModel) -> None:
    model.optimize_for_inference("bf16")
    batch = dict(model.tokenizer(TEXTS[:4], padding=True, return_tensors="pt"))
    with torch.no_grad():
        before = model(**batch).embeddings
        model.encoder.encoder.layer[0].output.dense.weight.mul_(3.0)  # what new weights do; no rebuild
        served = model(**batch).embeddings
    with torch.enable_grad():  # gradients wanted: always the fp32 encoder, untouched by autocast
        eager = model(**batch).embeddings.detach()
    assert served.dtype == eager.dtype == torch.float32
    assert cosine(before.numpy(), eager.numpy()).min() < 0.99  # the edit moved the embeddings a lot...
    assert cosine(served.numpy(), eager.numpy()).min() >= 0.999  # ...and the served ones followed it
    assert not torch.equal(served, eager)  # bf16 products, not the fp32 path


def test_bf16_mode_refuses_models_that_are_not_float32(model: MultiTaskEncoderModel) -> None:
    with pytest.raises(
        ValueError, match=r"this model is torch.bfloat16 already, so the exact mode serves it"
    ):
        model.to(torch.bfloat16).optimize_for_inference("bf16")
    assert model.serving_mode == "exact"


def test_bf16_warns_where_the_cpu_has_no_native_bf16(
    model: MultiTaskEncoderModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16_missing(torch.device("cpu")) == "this CPU has neither AMX nor AVX512-BF16"
    with pytest.warns(UserWarning, match="bf16 serving mode will likely be slower than exact here") as caught:
        model.optimize_for_inference("bf16")
    assert caught[0].filename == __file__  # points at the caller's line, not at the package
    assert model.serving_mode == "bf16"  # a warning, not a refusal: the numbers are as good, only slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16_missing(torch.device("cpu")) is None


# ---------------------------------------------------------------------------------------------- int8
def test_int8_linear_matches_fp32_and_keeps_outliers_exact() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    hidden = torch.randn(2, 7, 64)
    hidden[..., 5] *= 40.0  # an outlier channel, as BERT LayerNorm outputs have
    expected = linear(hidden)
    quantized = Int8DynamicLinear(linear, outlier_channels=2)
    got = quantized(hidden)
    assert got.shape == expected.shape
    relative = (got - expected).norm() / expected.norm()
    assert relative < 0.02, relative
    # Without outlier channels the same layer is several times less accurate: the outlier stretches the scale.
    plain = (Int8DynamicLinear(linear, outlier_channels=0)(hidden) - expected).norm() / expected.norm()
    assert plain > 2 * relative, (plain, relative)


def test_int8_agrees_with_exact_on_real_text(minilm_path: str, example_tasks: dict) -> None:
    torch.manual_seed(0)
    model = MultiTaskEncoderModel.from_backbone(minilm_path, tasks=example_tasks).eval()
    texts = real_texts(48)
    exact = model.encode(texts)
    model.optimize_for_inference("int8")
    quantized = model.encode(texts)
    similarity = cosine(quantized, exact)
    assert similarity.mean() >= 0.995 and similarity.min() >= 0.99, (similarity.mean(), similarity.min())
    # Some quantisation error must show: the int8 encoder really ran.
    assert similarity.min() < 0.99999
    # The fp32 weights are untouched and the exact mode is one call away.
    model.optimize_for_inference("exact")
    np.testing.assert_array_equal(model.encode(texts), exact)


def test_int8_serves_only_in_inference(model: MultiTaskEncoderModel) -> None:
    batch = dict(model.tokenizer(TEXTS[:4], padding=True, return_tensors="pt"))
    with torch.no_grad():
        exact = model(**batch).embeddings
    model.optimize_for_inference("int8")
    with torch.no_grad():
        served = model(**batch).embeddings
    assert not torch.equal(served, exact)
    assert cosine(served.numpy(), exact.numpy()).min() > 0.99
    with torch.enable_grad():  # gradients wanted (training, attribution): always the fp32 encoder
        np.testing.assert_allclose(model(**batch).embeddings.detach(), exact, atol=1e-6)


def test_changed_weights_make_the_int8_encoder_refuse_until_rebuilt(model: MultiTaskEncoderModel) -> None:
    model.optimize_for_inference("int8")
    model.encode(TEXTS[:2])
    with torch.no_grad():
        model.encoder.encoder.layer[0].output.dense.weight.mul_(1.5)  # what an optimizer step does
    with pytest.raises(RuntimeError, match=r"weights changed after optimize_for_inference\('int8'\)"):
        model.encode(TEXTS[:2])
    with pytest.raises(RuntimeError, match=r"Call model\.optimize_for_inference"):
        model.predict(TEXTS[:2])
    model.optimize_for_inference("int8")
    rebuilt = model.encode(TEXTS[:2])
    exact = model.optimize_for_inference("exact").encode(TEXTS[:2])
    assert cosine(rebuilt, exact).min() > 0.99


def test_int8_mode_refuses_non_float32_models(model: MultiTaskEncoderModel) -> None:
    with pytest.raises(ValueError, match="quantises fp32 weights"):
        model.to(torch.bfloat16).optimize_for_inference("int8")


# ---------------------------------------------------------------------------------------------- saved folder
REMOTE_CODE_SCRIPT = textwrap.dedent(  # run through the `run_without_package` fixture
    """
    import json
    import sys

    import numpy as np, torch
    from transformers import AutoModel

    folder, texts_path, out_path, modes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    torch.set_num_threads(1)
    texts = json.load(open(texts_path, encoding="utf-8"))
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    # The mechanics of every mode are tested, those refused by default (MODES_OUTSIDE_GUARD) included.
    inference = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".inference_multitask_encoder"]
    inference.MODES_OUTSIDE_GUARD.clear()
    assert "multitask_encoder" not in sys.modules
    results = {"exact": {"embeddings": model.encode(texts, batch_size=4).tolist(), "predictions": model.predict(texts)}}
    for mode in modes:
        model.optimize_for_inference(mode, token_budget=96)
        results[mode] = {
            "serving_mode": model.serving_mode,
            "embeddings": model.encode(texts, batch_size=4).tolist(),
            "predictions": model.predict(texts),
        }
        if mode == "compiled":
            from torch._dynamo.utils import counters
            results[mode]["graphs"] = counters["stats"]["unique_graphs"]
            # The compiled graph reads the live weights: edit one, compare with the eager fp32 encoder.
            with torch.no_grad():
                model.encoder.encoder.layer[0].output.dense.weight.mul_(3.0)
            served = model.encode(texts, return_tensors="pt")
            batch = model.tokenizer(texts, padding=True, return_tensors="pt")
            eager = model(**batch).embeddings.detach()  # gradients on: always the eager encoder
            results[mode]["after_edit"] = served.tolist()
            results[mode]["eager_after_edit"] = eager.tolist()
            results[mode]["graphs_after_edit"] = counters["stats"]["unique_graphs"]
    json.dump(results, open(out_path, "w", encoding="utf-8"))
    """
)


def run_modes_in_fresh_process(
    folder: Path, modes: list[str], tmp_path: Path, run_without_package
) -> dict[str, Any]:
    texts_path, out_path = tmp_path / "texts.json", tmp_path / "out.json"
    texts_path.write_text(json.dumps(TEXTS), encoding="utf-8")
    result = run_without_package(
        REMOTE_CODE_SCRIPT,
        str(folder),
        str(texts_path),
        str(out_path),
        ",".join(modes),
        timeout=600,
        env={
            "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")
        },  # a cold compile, nothing cached elsewhere
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out_path.read_text(encoding="utf-8"))


def test_saved_folder_serves_token_budget_bf16_and_int8_with_remote_code(
    tiny_checkpoint: Path, tmp_path: Path, run_without_package
) -> None:
    assert (tiny_checkpoint / "inference_multitask_encoder.py").is_file()  # copied by save_pretrained
    results = run_modes_in_fresh_process(
        tiny_checkpoint, ["token_budget", "bf16", "int8"], tmp_path, run_without_package
    )
    exact = np.array(results["exact"]["embeddings"])
    budget = results["token_budget"]
    assert budget["serving_mode"] == "token_budget"
    np.testing.assert_allclose(np.array(budget["embeddings"]), exact, atol=1e-5)
    assert_same_predictions(budget["predictions"], results["exact"]["predictions"], atol=1e-5)
    bf16 = results["bf16"]
    assert bf16["serving_mode"] == "bf16"
    assert cosine(np.array(bf16["embeddings"]), exact).min() >= 0.999
    int8 = results["int8"]
    assert int8["serving_mode"] == "int8"
    assert cosine(np.array(int8["embeddings"]), exact).min() > 0.99
    assert [p["topic"]["label"] for p in int8["predictions"]] == [
        p["topic"]["label"] for p in results["exact"]["predictions"]
    ]


@pytest.mark.slow
def test_compiled_mode_in_saved_folder_matches_exact(
    tiny_checkpoint: Path, tmp_path: Path, run_without_package
) -> None:
    """Compiles the 2-layer encoder once (cold cache, ~30-60 s on 2 cores) in a fresh remote-code process."""
    results = run_modes_in_fresh_process(tiny_checkpoint, ["compiled"], tmp_path, run_without_package)
    compiled = results["compiled"]
    assert compiled["serving_mode"] == "compiled"
    # Token-budget batches of many shapes (every length, every count) reuse one or two graphs (dynamic shapes).
    assert 1 <= compiled["graphs"] <= 3, compiled["graphs"]
    exact = np.array(results["exact"]["embeddings"])
    after_edit, eager_after_edit = np.array(compiled["after_edit"]), np.array(compiled["eager_after_edit"])
    assert cosine(eager_after_edit, exact).min() < 0.99  # the edit moved the embeddings a lot...
    np.testing.assert_allclose(after_edit, eager_after_edit, atol=1e-4)  # ...and the compiled graph followed
    assert compiled["graphs_after_edit"] == compiled["graphs"]  # a weight edit is no reason to recompile
    assert cosine(np.array(compiled["embeddings"]), exact).min() >= 0.999
    np.testing.assert_allclose(np.array(compiled["embeddings"]), exact, atol=1e-4)
    assert_same_predictions(compiled["predictions"], results["exact"]["predictions"], atol=1e-4)


def test_compiling_shows_the_user_none_of_torchs_own_deprecation_notes(tiny_backbone: str) -> None:
    """The first torch.compile imports inductor, whose modules use deprecated torch.jit decorators; a fresh
    process (nothing imported yet) where any DeprecationWarning is an error must still compile."""
    import subprocess
    import sys

    script = textwrap.dedent(
        f"""
        from transformers import AutoModel
        from multitask_encoder.model.inference_multitask_encoder import compile_encoder
        compile_encoder(AutoModel.from_pretrained({tiny_backbone!r}))
        print("compiled")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
