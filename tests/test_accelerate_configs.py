"""The example `accelerate` configs in configs/accelerate/: each one loads with accelerate's own config loader,
names classes that exist, and the CPU one really starts two processes (the others need GPUs: not run here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
EXPECTED = {
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 4),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 8),
    "fsdp.yaml": (DistributedType.FSDP, 4),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 4),
}


def test_every_shipped_config_is_listed() -> None:
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name: str) -> None:
    config = ClusterConfig.from_yaml_file(yaml_file=str(CONFIGS / name))  # raises on unknown keys
    distributed_type, processes = EXPECTED[name]
    assert config.distributed_type == distributed_type
    assert config.num_processes == processes
    if config.fsdp_config:
        layer = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        assert hasattr(transformers.models.bert.modeling_bert, layer)  # the packaged MiniLM is a BERT


def test_cpu_config_starts_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    # One file per rank: two processes printing to one pipe can interleave their lines.
    script.write_text(
        "import sys\n"
        "from accelerate import PartialState\n"
        "state = PartialState(cpu=True)\n"
        "with open(f'{sys.argv[1]}/rank-{state.process_index}.txt', 'w') as f:\n"
        "    f.write(f'rank {state.process_index} of {state.num_processes}')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu_2proc.yaml"),
    ]
    result = subprocess.run(
        [*command, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = sorted(path.read_text() for path in tmp_path.glob("rank-*.txt"))
    assert ranks == ["rank 0 of 2", "rank 1 of 2"]
