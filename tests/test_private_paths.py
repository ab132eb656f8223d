"""Nothing private is published: a model built from a local backbone folder records the backbone by its folder's
name (or Hub id), never its absolute path, in every saved file (config.json, the card, the adapter's config); and
the push refuses a folder that still holds a path of this machine, naming the file and the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.adapters import apply_adapter, merge_and_save_adapter
from multitask_encoder.arguments import ModelArguments
from multitask_encoder.hub import PushError, main, plan_upload
from multitask_encoder.model_card import write_model_card

TASKS = {"topic": {"type": "sequence_classification", "labels": ["sports", "business"]}}
TEXT_SUFFIXES = (".json", ".md", ".txt", ".py", ".jinja")


@pytest.fixture(scope="module")
def saved_from_local_backbone(
    tiny_backbone: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(the folder, the backbone's absolute path): a model built from a local backbone folder, trained through a
    LoRA adapter (adapter/ written, merged), with the card train.py writes."""
    pytest.importorskip("peft")
    backbone = tmp_path_factory.mktemp("private") / "my-encoder"
    shutil.copytree(tiny_backbone, backbone)
    model = MultiTaskEncoderModel.from_backbone(str(backbone), tasks=TASKS)
    apply_adapter(model, {"type": "lora", "r": 2, "target_modules": ["query"]})
    folder = tmp_path_factory.mktemp("private") / "out"
    merge_and_save_adapter(model, str(folder), model.config.base_model_name)
    model.save_pretrained(folder)
    model_args = ModelArguments(backbone=str(backbone), peft={"r": 2})
    write_model_card(str(folder), model.config, None, None, model_args, None, adapter=model_args.peft)
    return folder, backbone


def test_no_saved_file_holds_the_backbones_path(saved_from_local_backbone: tuple[Path, Path]) -> None:
    folder, backbone = saved_from_local_backbone
    texts = {
        str(path.relative_to(folder)): path.read_text(encoding="utf-8")
        for path in folder.rglob("*")
        if path.is_file() and path.name.endswith(TEXT_SUFFIXES)
    }
    assert {"config.json", "README.md", "adapter/adapter_config.json", "tokenizer_config.json"} <= set(texts)
    private = [str(backbone), str(backbone.parent), str(Path.home())]
    leaks = {name: part for name, text in texts.items() for part in private if part in text}
    assert not leaks
    # What is useful is kept: the backbone's folder name.
    config = json.loads(texts["config.json"])
    assert config["base_model_name"] == config["encoder_config"]["_name_or_path"] == "./my-encoder"
    assert json.loads(texts["adapter/adapter_config.json"])["base_model_name_or_path"] == "./my-encoder"
    assert "my-encoder (local folder)" in texts["README.md"]
    assert "base_model:" not in texts["README.md"].split("---")[1]  # a folder name is no Hub id
    plan_upload(folder, "alice/m")  # nothing to refuse


def _set(path: str, key: str, template: str):
    """Set `key` (dotted) of the JSON file `path` to `template` with {tmp} and {home} filled in."""

    def apply(folder: Path, **paths: Path) -> None:
        value = template.format(**paths)
        data = json.loads((folder / path).read_text())
        target = data
        *parents, last = key.split(".")
        for parent in parents:
            target = target[int(parent)] if isinstance(target, list) else target[parent]
        target[int(last) if isinstance(target, list) else last] = value
        (folder / path).write_text(json.dumps(data))

    return apply


@pytest.mark.parametrize(
    ("inject", "message"),
    [
        (
            _set("config.json", "base_model_name", "{home}/models/my-encoder"),
            "config.json base_model_name is ",
        ),
        (
            _set("config.json", "encoder_config._name_or_path", "{tmp}/my-encoder"),
            "config.json encoder_config._name_or_path is ",
        ),
        (
            _set("adapter/adapter_config.json", "base_model_name_or_path", "{tmp}/my-encoder"),
            "adapter/adapter_config.json base_model_name_or_path is ",
        ),
        (
            lambda folder, **paths: (folder / "README.md").write_text(
                "# Card\n\nTrained from {tmp}/my-encoder.\n".format(**paths)
            ),
            "README.md line 3 holds ",
        ),
    ],
    ids=["config", "nested-config", "adapter", "card"],
)
def test_push_refuses_a_folder_holding_a_path_of_this_machine(
    saved_from_local_backbone: tuple[Path, Path], tmp_path: Path, inject, message: str
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(saved_from_local_backbone[0], folder)
    inject(folder, tmp=tmp_path, home=Path.home())
    with pytest.raises(PushError, match="a path of this machine") as refused:
        plan_upload(folder, "alice/m")
    assert message in str(refused.value)


def test_dry_run_refuses_an_injected_path_before_anything_else(
    saved_from_local_backbone: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(saved_from_local_backbone[0], folder)
    _set("config.json", "base_model_name", "{tmp}/my-encoder")(folder, tmp=tmp_path)
    assert main([str(folder), "alice/m", "--dry-run", "--trust-remote-code"]) == 1
    error = capsys.readouterr().err
    assert f"config.json base_model_name is '{tmp_path / 'my-encoder'}', a path of this machine" in error


def test_labels_that_look_like_paths_are_not_refused(
    saved_from_local_backbone: tuple[Path, Path], tmp_path: Path
) -> None:
    """Freebase-style labels ("/m/04") are no paths of this machine."""
    folder = tmp_path / "model"
    shutil.copytree(saved_from_local_backbone[0], folder)
    _set("config.json", "tasks.0.labels.0", "/m/04jpl")(folder)
    plan_upload(folder, "alice/m")
