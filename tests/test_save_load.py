"""save_pretrained / from_pretrained: the folder's contents, a bit-exact reload through remote code in a fresh
process without the package, Auto-class loading with the package, refusal of pickled weights, and
checkpoints whose heads do not match their config."""

from __future__ import annotations

import json
import pickle
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import multitask_encoder
from multitask_encoder import MultiTaskEncoderConfig, MultiTaskEncoderModel

TEXTS = [
    "Arnold Schwarzenegger visited Paris on Monday.",
    "Stocks fell.",
    "The committee will publish its final report on climate policy next spring.",
    "Why is the sky blue?",
]

# Runs through the `run_without_package` fixture: a fresh interpreter where `multitask_encoder` cannot be
# imported, so only the code files saved next to the weights (trust_remote_code) can be used.
REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    try:
        import multitask_encoder  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("multitask_encoder is still importable")

    import json
    import sys

    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir, texts_path, out_path, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    texts = json.loads(open(texts_path, encoding="utf-8").read())
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert "multitask_encoder" not in sys.modules
    model.tokenizer = tokenizer

    outputs = {"embeddings": model.encode(texts, batch_size=2, return_tensors="pt")}
    with torch.no_grad():
        forward = model(**tokenizer(texts, padding=True, return_tensors="pt"))
    for name in model.config.tasks:
        outputs[name] = forward[f"{name}_logits"]
    outputs["task_order"] = torch.tensor([ord(c) for c in ",".join(model.config.tasks)])
    torch.save(outputs, out_path)
    """
)


def reference_outputs(model: MultiTaskEncoderModel) -> dict[str, torch.Tensor]:
    """What REMOTE_CODE_SCRIPT computes, computed here with the package's own class."""
    model.eval()
    outputs = {"embeddings": model.encode(TEXTS, batch_size=2, return_tensors="pt")}
    with torch.no_grad():
        forward = model(**model.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    for name in model.config.tasks:
        outputs[name] = forward[f"{name}_logits"]
    outputs["task_order"] = torch.tensor([ord(c) for c in ",".join(model.config.tasks)])
    return outputs


@pytest.fixture(scope="module")
def saved(tiny_backbone: str, example_tasks: dict, tmp_path_factory: pytest.TempPathFactory):
    """A model with non-trivial extras (mlp head, projection, uncertainty weights) and its saved folder."""
    tasks = {name: dict(spec) for name, spec in example_tasks.items()}
    tasks["tags"]["head"] = {"type": "mlp", "hidden_size": 32, "activation": "tanh"}
    torch.manual_seed(1)
    model = MultiTaskEncoderModel.from_backbone(
        tiny_backbone, tasks=tasks, pooling="mean_sqrt_len", projection_dim=48, loss_weighting="uncertainty"
    )
    with torch.no_grad():  # make the log-variances non-trivial, so their saving is checked too
        model.task_log_vars.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4]))
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    return model, folder


def test_saved_weights_are_as_readable_as_the_other_files(saved) -> None:
    """transformers writes the weights through a private temporary file (0600); a folder served by another
    user must be able to read them like the config and code beside them."""
    _, folder = saved
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == modes["config.json"], modes


def copy_checkpoint(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def test_saved_folder_contents(saved) -> None:
    _, folder = saved
    files = {path.name for path in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "configuration_multitask_encoder.py",
        "modeling_multitask_encoder.py",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= files, files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))], files

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "multitask_encoder"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_multitask_encoder.MultiTaskEncoderConfig",
        "AutoModel": "modeling_multitask_encoder.MultiTaskEncoderModel",
        # The task views the standard pipelines load (the model has sentence and token tasks).
        "AutoModelForSequenceClassification": "task_views_multitask_encoder.MultiTaskEncoderForSequenceClassification",
        "AutoModelForTokenClassification": "task_views_multitask_encoder.MultiTaskEncoderForTokenClassification",
    }
    assert [task["name"] for task in config["tasks"]] == ["topic", "tags", "score", "ner"]
    assert config["encoder_config"]["model_type"] == "bert"
    # The copied code is the package's code.
    source_dir = Path(multitask_encoder.__file__).parent / "model"
    for name in ("configuration_multitask_encoder.py", "modeling_multitask_encoder.py"):
        assert (folder / name).read_text() == (source_dir / name).read_text(), name


def test_remote_code_reload_in_fresh_process_is_bit_exact(saved, tmp_path: Path, run_without_package) -> None:
    model, folder = saved
    expected = reference_outputs(model)
    texts_path, out_path = tmp_path / "texts.json", tmp_path / "outputs.pt"
    texts_path.write_text(json.dumps(TEXTS), encoding="utf-8")

    result = run_without_package(
        REMOTE_CODE_SCRIPT, str(folder), str(texts_path), str(out_path), str(torch.get_num_threads())
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reloaded = torch.load(out_path, weights_only=True)
    assert set(reloaded) == set(expected)
    for key, value in expected.items():
        assert reloaded[key].dtype == value.dtype, key
        assert torch.equal(reloaded[key], value), f"{key} differs by {(reloaded[key] - value).abs().max()}"


def test_auto_model_without_remote_code_returns_our_class(saved) -> None:
    model, folder = saved
    loaded = AutoModel.from_pretrained(folder)  # the package registered the Auto classes on import
    assert type(loaded) is MultiTaskEncoderModel
    assert isinstance(loaded.config, MultiTaskEncoderConfig)
    assert list(loaded.config.tasks) == list(model.config.tasks)
    assert loaded.config.projection_dim == 48 and loaded.config.pooling == "mean_sqrt_len"
    assert torch.equal(loaded.task_log_vars, model.task_log_vars)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert loaded.tokenizer.tokenize("Schwarzenegger") == model.tokenizer.tokenize("Schwarzenegger")
    assert torch.equal(loaded.encode(TEXTS, return_tensors="pt"), model.encode(TEXTS, return_tensors="pt"))


def test_garbage_bin_next_to_safetensors_is_never_read(saved, tmp_path: Path) -> None:
    model, folder = saved
    checkpoint = copy_checkpoint(folder, tmp_path / "with_bin")
    (checkpoint / "pytorch_model.bin").write_bytes(b"this is not a pickle, and must never be opened")
    loaded = AutoModel.from_pretrained(checkpoint)
    assert torch.equal(loaded.heads["topic"].out.weight, model.heads["topic"].out.weight)


class _CreatesFile:
    """A pickle payload that creates a marker file when unpickled with the unrestricted unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def only_bin_checkpoint(source: Path, destination: Path, state_dict=None, payload=None) -> Path:
    checkpoint = copy_checkpoint(source, destination)
    (checkpoint / "model.safetensors").unlink()
    with open(checkpoint / "pytorch_model.bin", "wb") as f:
        if payload is not None:
            pickle.dump(payload, f, protocol=2)  # torch.load's own protocol: no unrelated warning
        else:
            torch.save(state_dict, f)
    return checkpoint


def test_only_bin_folder_is_refused_with_use_safetensors(saved, tmp_path: Path) -> None:
    model, folder = saved
    checkpoint = only_bin_checkpoint(folder, tmp_path / "only_bin", state_dict=model.state_dict())
    with pytest.raises(OSError, match=r"model\.safetensors"):
        AutoModel.from_pretrained(checkpoint, use_safetensors=True)


@pytest.mark.parametrize("use_safetensors", [None, True])
def test_malicious_pickle_is_never_executed(saved, tmp_path: Path, use_safetensors: bool | None) -> None:
    _, folder = saved
    marker = tmp_path / "pwned"
    # The payload is live: a plain unpickler would run it.
    pickle.loads(pickle.dumps(_CreatesFile(tmp_path / "live"))).close()
    assert (tmp_path / "live").exists()
    checkpoint = only_bin_checkpoint(folder, tmp_path / "evil", payload={"weight": _CreatesFile(marker)})
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; what matters is the marker below
        AutoModel.from_pretrained(checkpoint, use_safetensors=use_safetensors)
    assert not marker.exists(), "unpickling ran arbitrary code"


def test_only_bin_folder_is_refused_by_default(saved, tmp_path: Path) -> None:
    model, folder = saved
    checkpoint = only_bin_checkpoint(folder, tmp_path / "only_bin", state_dict=model.state_dict())
    with pytest.raises(OSError, match=r"model\.safetensors"):
        AutoModel.from_pretrained(checkpoint)


def edit_config(checkpoint: Path, edit) -> None:
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2))


def test_head_with_a_different_label_count_fails(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = copy_checkpoint(tiny_checkpoint, tmp_path / "extra_label")
    edit_config(checkpoint, lambda config: config["tasks"][0]["labels"].append("science"))
    # Not transformers' deep "ignore_mismatched_sizes" RuntimeError: one error naming the head, both shapes
    # and the likely cause.
    with pytest.raises(
        ValueError,
        match=r"heads\.topic\.out\.weight is \[3, 384\] in the weights but \[4, 384\] for config\.json.*"
        r"config\.json edited \(a task's labels changed\?\)",
    ):
        AutoModel.from_pretrained(checkpoint)


def _rename_task(config: dict) -> None:
    config["tasks"][0]["name"] = "subject"


def _add_task(config: dict) -> None:
    config["tasks"].append({"name": "extra", "type": "regression", "labels": ["value"]})


def _drop_task(config: dict) -> None:
    config["tasks"].pop(0)


@pytest.mark.parametrize("edit", [_rename_task, _add_task, _drop_task], ids=["rename", "add", "drop"])
def test_heads_not_matching_config_fail_clearly(tiny_checkpoint: Path, tmp_path: Path, edit) -> None:
    # Static loss weighting, so that only the heads (not task_log_vars) differ from the config.
    checkpoint = copy_checkpoint(tiny_checkpoint, tmp_path / "edited")
    edit_config(checkpoint, edit)
    with pytest.raises((ValueError, RuntimeError), match=r"heads\."):
        AutoModel.from_pretrained(checkpoint)
