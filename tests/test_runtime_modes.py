"""The runtime serving modes (ONNX Runtime, OpenVINO; the ONNX export itself: tests/test_onnx_export.py): every
runtime mode serves what the exact mode serves (fp32: to float rounding; int8 / bf16: within the cosine guard);
a stale session is refused; a missing runtime names its extra, before any export; a saved folder serves the modes through remote code in a fresh process without the package.

Tests that need a runtime skip when it is not installed (`pip install -e .[dev]` installs both). The guard
over the whole AG News and SST test sets and the speed of every mode are measured by bench/serve_speed.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_inference_modes import TEXTS, assert_same_predictions, cosine, run_modes_in_fresh_process

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.model import inference_multitask_encoder as inference
from multitask_encoder.model import onnx_multitask_encoder as onnx_export
from multitask_encoder.model.inference_multitask_encoder import RUNTIME_MODES, SERVING_MODES

FP32_RUNTIME_MODES = ("onnx", "openvino")
REDUCED_RUNTIME_MODES = ("onnx_int8", "openvino_bf16")
MIN_COSINE = 0.99  # the per-text guard of every non-exact mode (bench/serve_speed.py)


def needs_runtime(mode: str) -> None:
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    pytest.importorskip("openvino" if mode.startswith("openvino") else "onnxruntime")


@pytest.fixture
def model(tiny_checkpoint: Path) -> MultiTaskEncoderModel:
    """A fresh copy per test: modes are per-model state."""
    return MultiTaskEncoderModel.from_pretrained(tiny_checkpoint).eval()


# ---------------------------------------------------------------------------------------------- export
def test_export_needs_a_tokenizer(tiny_backbone: str, example_tasks: dict, tmp_path: Path) -> None:
    needs_runtime("onnx")
    bare = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=example_tasks)
    bare.tokenizer = None
    bare.config.name_or_path = ""
    with pytest.raises(ValueError, match="This model has no tokenizer"):
        bare.export_onnx(tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()  # refused before any work


@pytest.mark.parametrize("mode", ["onnx", "openvino"])
def test_a_missing_runtime_is_reported_before_the_export(
    model: MultiTaskEncoderModel, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    pytest.importorskip("onnxscript")  # the exporter is there: only the runtime is missing
    module = onnx_export.RUNTIME_MODULES[mode]
    monkeypatch.setitem(sys.modules, module, None)  # `import` fails, as where it is not installed

    def export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder was exported (tens of seconds) before the runtime was checked")

    monkeypatch.setattr(onnx_export, "export_onnx_graph", export)
    with pytest.raises(
        ImportError, match=rf"^The {mode} serving mode needs the '{module}' package, which is not installed"
    ):
        model.optimize_for_inference(mode)
    assert model.serving_mode == "exact"


# ---------------------------------------------------------------------------------------------- modes
@pytest.mark.parametrize("mode", RUNTIME_MODES)
def test_runtime_mode_serves_what_exact_serves_on_real_text(model: MultiTaskEncoderModel, mode: str) -> None:
    needs_runtime(mode)
    assert set(RUNTIME_MODES) <= set(SERVING_MODES)
    exact = model.encode(TEXTS, batch_size=4)
    exact_predictions = model.predict(TEXTS, batch_size=4)
    assert model.optimize_for_inference(mode, token_budget=96, threads=1) is model
    assert model.serving_mode == mode
    served = model.encode(TEXTS)
    predictions = model.predict(TEXTS)
    assert served.dtype == np.float32 and served.shape == exact.shape
    similarity = cosine(served, exact)
    if mode in FP32_RUNTIME_MODES:  # the same fp32 math, another kernel library: float rounding only
        assert similarity.min() >= 1 - 1e-6, similarity.min()
        np.testing.assert_allclose(served, exact, atol=1e-5)
        assert_same_predictions(predictions, exact_predictions, atol=1e-4)
    else:
        assert similarity.min() >= MIN_COSINE, similarity.min()
        assert np.abs(served - exact).max() > 1e-5  # reduced precision really ran: not the fp32 numbers
        flipped = [p["topic"]["label"] != q["topic"]["label"] for p, q in zip(predictions, exact_predictions)]
        assert sum(flipped) <= 1, flipped  # random heads: a near-tie may flip, nothing else does
    # Token heads read the runtime's token states: same shapes, same entity spans in fp32.
    assert len(predictions) == len(TEXTS) and all("entities" in p["ner"] for p in predictions)
    # Training is unaffected: with gradients on, forward runs the model's own fp32 encoder.
    batch = dict(model.tokenizer(TEXTS[:4], padding=True, return_tensors="pt"))
    with torch.enable_grad():
        eager = model(**batch).embeddings.detach().numpy()
    np.testing.assert_allclose(eager, exact[:4], atol=1e-5)
    model.optimize_for_inference("exact")
    np.testing.assert_array_equal(model.encode(TEXTS, batch_size=4), exact)


def test_changed_weights_make_a_runtime_session_refuse_until_rebuilt(model: MultiTaskEncoderModel) -> None:
    needs_runtime("onnx")
    model.optimize_for_inference("onnx", threads=1)
    before = model.encode(TEXTS[:3])
    with torch.no_grad():
        model.encoder.encoder.layer[0].output.dense.weight.mul_(1.5)  # what an optimizer step does
    with pytest.raises(RuntimeError, match=r"weights changed after optimize_for_inference\('onnx'\)"):
        model.encode(TEXTS[:3])
    with pytest.raises(RuntimeError, match=r"Call model\.optimize_for_inference"):
        model.predict(TEXTS[:3])
    model.optimize_for_inference("onnx", threads=1)
    rebuilt = model.encode(TEXTS[:3])
    exact = model.optimize_for_inference("exact").encode(TEXTS[:3])
    assert cosine(before, exact).min() < 0.999  # the edit moved the embeddings...
    np.testing.assert_allclose(rebuilt, exact, atol=1e-5)  # ...and the rebuilt session has the new weights


def test_runtime_modes_refuse_bad_settings(model: MultiTaskEncoderModel) -> None:
    needs_runtime("onnx")
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        model.optimize_for_inference("onnx", threads=0)
    with pytest.raises(ValueError, match=r"exports a float32 encoder .* this model is torch.bfloat16"):
        model.to(torch.bfloat16).optimize_for_inference("onnx_int8")
    assert model.serving_mode == "exact"


def test_a_mode_measured_outside_the_guard_is_refused_with_the_reason(
    model: MultiTaskEncoderModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "cosine 0.9641 on one SST test text"
    monkeypatch.setitem(inference.MODES_OUTSIDE_GUARD, "onnx_int8", reason)
    with pytest.raises(
        ValueError, match=r"onnx_int8 serving mode is not offered: it failed .*: cosine 0\.9641"
    ):
        model.optimize_for_inference("onnx_int8")
    assert model.serving_mode == "exact"


def test_the_torch_int8_mode_is_refused_by_default_with_what_the_bench_measured(
    model: MultiTaskEncoderModel,
) -> None:
    with pytest.raises(ValueError, match=r"int8 serving mode is not offered: .*below cosine 0\.99"):
        model.optimize_for_inference("int8")
    assert model.serving_mode == "exact"
    needs_runtime("onnx_int8")
    model.optimize_for_inference("onnx_int8")  # the int8 mode that passed the guard stays offered
    assert model.serving_mode == "onnx_int8"


def test_openvino_bf16_warns_where_the_cpu_has_no_native_bf16(
    model: MultiTaskEncoderModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    # Only the warning is under test here: the session itself is built by the test above.
    built = []
    monkeypatch.setattr(onnx_export, "build_runtime_encoder", lambda *args: built.append(args[1]) or object())
    with pytest.warns(
        UserWarning, match="openvino_bf16 serving mode will likely be slower than openvino"
    ) as caught:
        model.optimize_for_inference("openvino_bf16", threads=1)
    assert caught[0].filename == __file__  # points at the caller's line, not at the package
    assert model.serving_mode == "openvino_bf16" and built == ["openvino_bf16"]  # a warning, not a refusal


# ---------------------------------------------------------------------------------------------- saved folder
MISSING_RUNTIME_SCRIPT = textwrap.dedent(  # run through the `run_without_package` fixture
    """
    import json
    import sys

    # As on a machine without the extras: `import` fails and importlib.util.find_spec finds nothing.
    for name in ("onnxruntime", "openvino", "onnxscript"):
        sys.modules[name] = None

    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()  # loads: runtimes optional
    messages = {}
    for name, call in (
        ("onnx", lambda: model.optimize_for_inference("onnx")),
        ("openvino_bf16", lambda: model.optimize_for_inference("openvino_bf16")),
        ("export_onnx", lambda: model.export_onnx(sys.argv[2])),
    ):
        try:
            call()
            messages[name] = None
        except ImportError as error:
            messages[name] = str(error)
    messages["serving_mode"] = model.serving_mode
    messages["predict"] = model.predict("Goal!")["topic"]["label"]
    print(json.dumps(messages))
    """
)


def test_a_missing_runtime_names_its_extra(
    tiny_checkpoint: Path, tmp_path: Path, run_without_package
) -> None:
    result = run_without_package(MISSING_RUNTIME_SCRIPT, str(tiny_checkpoint), str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr[-4000:]
    messages = json.loads(result.stdout.strip().splitlines()[-1])
    assert messages["onnx"].startswith("The onnx serving mode needs the 'onnxscript' package, which is not")
    assert "pip install 'multitask-encoder[onnx]'" in messages["onnx"]
    assert "pip install 'multitask-encoder[openvino]'" in messages["openvino_bf16"]
    assert messages["export_onnx"].startswith("export_onnx needs the 'onnxscript' package")
    assert messages["serving_mode"] == "exact"  # nothing half-set: the default still serves
    assert messages["predict"] in ("world", "sports", "business")
    assert not (tmp_path / "export").exists()


def test_saved_folder_serves_both_runtimes_with_remote_code(
    tiny_checkpoint: Path, tmp_path: Path, run_without_package
) -> None:
    """One fp32 and one reduced mode per runtime would double the cost (an export each) for code that the
    in-process tests above already cover mode by mode."""
    modes = ["onnx", "openvino_bf16"]
    for mode in modes:
        needs_runtime(mode)
    results = run_modes_in_fresh_process(tiny_checkpoint, modes, tmp_path, run_without_package)
    exact = np.array(results["exact"]["embeddings"])
    for mode in modes:
        assert results[mode]["serving_mode"] == mode
        similarity = cosine(np.array(results[mode]["embeddings"]), exact)
        assert similarity.min() >= (1 - 1e-6 if mode in FP32_RUNTIME_MODES else MIN_COSINE), (
            mode,
            similarity,
        )
        if mode in FP32_RUNTIME_MODES:
            assert_same_predictions(results[mode]["predictions"], results["exact"]["predictions"], atol=1e-4)
