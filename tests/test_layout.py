"""The folder layout is the architecture: `multitask_encoder/model/` holds what a loaded model runs (it travels
with every saved model as remote code), so it imports only torch, transformers, the standard library and its
siblings (single-dot imports: transformers copies them flat); everything else stays out of it."""

import ast
import sys
from pathlib import Path

import pytest

import multitask_encoder

MODEL_DIR = Path(multitask_encoder.__file__).parent / "model"
ALLOWED = {"torch", "transformers"}
# Optional serving runtimes, imported inside the functions of the modes that need them (RUNTIME_EXTRAS).
OPTIONAL_RUNTIMES = {"onnx", "onnxruntime", "onnxscript", "openvino"}


def imports(path: Path) -> list[tuple[ast.stmt, str, int, bool]]:
    """(node, module, level, at top level) of every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, 0, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node, node.module or "", node.level, id(node) in top))
    return found


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.py")), ids=lambda path: path.name)
def test_model_files_import_only_torch_transformers_and_siblings(path: Path) -> None:
    siblings = {p.stem for p in MODEL_DIR.glob("*.py")}
    problems = []
    for node, module, level, at_top in imports(path):
        root = module.split(".")[0]
        if level == 1:
            if module not in siblings:
                problems.append(f"line {node.lineno}: .{module} is not a sibling file")
        elif level > 1:
            problems.append(f"line {node.lineno}: {'.' * level}{module} reaches out of model/")
        elif root in OPTIONAL_RUNTIMES:
            if at_top:
                problems.append(f"line {node.lineno}: optional runtime {module} imported at module level")
        elif root not in ALLOWED and root not in sys.stdlib_module_names:
            problems.append(f"line {node.lineno}: imports {module}")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_package_side_modules_are_outside_model() -> None:
    """What only training, scoring, the card and the CLIs need is not in the remote code."""
    names = {p.name for p in MODEL_DIR.glob("*.py")}
    assert names == {
        "__init__.py",
        "backbone_multitask_encoder.py",
        "configuration_multitask_encoder.py",
        "modeling_multitask_encoder.py",
        "tasks_multitask_encoder.py",
        "inference_multitask_encoder.py",
        "inputs_multitask_encoder.py",
        "onnx_multitask_encoder.py",
        "pipeline_multitask_encoder.py",
        "predict_multitask_encoder.py",
        "task_views_multitask_encoder.py",
    }
    model_side = (MODEL_DIR / "tasks_multitask_encoder.py").read_text(encoding="utf-8")
    for package_side in (
        "def metrics(",
        "def read_label(",
        "def collate_labels(",
        "display_name",
        "hub_task",
    ):
        assert package_side not in model_side, package_side


def test_saved_folder_holds_exactly_the_model_files(tiny_checkpoint: Path) -> None:
    code = {p.name for p in Path(tiny_checkpoint).glob("*.py")}
    assert code == {p.name for p in MODEL_DIR.glob("*_multitask_encoder.py")}, code
