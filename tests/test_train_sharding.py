"""Training beyond one process: the accelerate configurations in configs/accelerate/ as the launcher
reads them, and real two-process FSDP and DeepSpeed ZeRO-2 runs over gloo on the CPU that end with
one model and the losses of a one-process run of the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.train import train
from latent_thoughts.train.sharding import check_full_model_saved
from tests.test_train import _free_port, testbed_data, tiny_config

__all__ = ["testbed_data"]  # the module fixture, shared with tests/test_train.py

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"


def launcher_environment(config: Path, *flags: str) -> tuple[Any, dict[str, str]]:
    """What ``accelerate launch --config_file CONFIG FLAGS... -m latent_thoughts train`` hands every
    process: the validated arguments and the environment variables (accelerate's own code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(config), *flags, "-m", "latent_thoughts", "train"]
    args, defaults, mixed_precision_from_config = _validate_launch_command(
        launch_command_parser().parse_args(argv)
    )
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (
            ["mixed_precision"] if mixed_precision_from_config else []
        )
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


# --- the configuration files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "processes", "machines"),
    [("fsdp-1node-2proc-cpu", 2, 1), ("fsdp-8gpu-multinode", 16, 2)],
)
def test_fsdp_configs_shard_fully_and_save_a_whole_model(name: str, processes: int, machines: int) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin

    args, env = launcher_environment(ACCELERATE_CONFIGS / f"{name}.yaml", "--machine_rank", "0")
    assert (args.use_fsdp, args.num_processes, args.num_machines) == (True, processes, machines)
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    check_full_model_saved(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))


@pytest.mark.parametrize(
    ("name", "processes", "machines"),
    [("deepspeed-zero2-1node-2proc-cpu", 2, 1), ("deepspeed-zero2-8gpu-multinode", 16, 2)],
)
def test_deepspeed_configs_are_zero2_with_the_trainers_own_options(
    name: str, processes: int, machines: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate.utils import DeepSpeedPlugin

    monkeypatch.chdir(REPO)  # the configs name configs/deepspeed/zero2.json from the repository root
    args, env = launcher_environment(ACCELERATE_CONFIGS / f"{name}.yaml", "--machine_rank", "1")
    assert (args.use_deepspeed, args.num_processes, args.num_machines) == (True, processes, machines)
    assert args.machine_rank == 1
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 2
    config = plugin.deepspeed_config
    # Batch sizes, accumulation, clipping and precision come from the trainer's options.
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto"
    assert config["gradient_clipping"] == "auto" and config["bf16"] == {"enabled": "auto"}


def test_a_sharded_only_fsdp_state_dict_is_refused() -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    with pytest.raises(LatentThoughtsError, match="fsdp_state_dict_type: FULL_STATE_DICT"):
        check_full_model_saved(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))


# --- real two-process runs ------------------------------------------------------------------------------


def launch_train(config_file: Path, train_yaml: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file CONFIG -m latent_thoughts train --config TRAIN.yaml ...``
    from the repository root, one thread per process."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None
    command = [accelerate, "launch", "--config_file", str(config_file), "--main_process_port",
               str(_free_port()), "-m", "latent_thoughts", "train", "--config", str(train_yaml), *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def losses(metrics: dict[str, Any]) -> list[float]:
    """The training loss of every logged step."""
    return [log["loss"] for log in metrics["log_history"] if "loss" in log]


def assert_same_run(sharded: Path, single: Path, resumed: bool = False) -> None:
    """Two runs' logged losses and final weights agree to float32 rounding of the reductions
    (a resumed run's ``train_loss`` averages the steps after the resume only)."""
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((sharded / "metrics.json").read_text())
    assert two["steps"] == one["steps"] and two["tokens"] == one["tokens"]
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    if not resumed:
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    # A tied lm_head may be stored once or twice: compare what both files hold.
    weights, reference = (
        load_file(sharded / "model" / "model.safetensors"),
        load_file(single / "model" / "model.safetensors"),
    )
    for name in reference.keys() & weights.keys():
        torch.testing.assert_close(weights[name], reference[name], rtol=1e-4, atol=1e-5)
    AutoModelForCausalLM.from_pretrained(sharded / "model")  # one whole Hugging Face model


def one_process_run(testbed_data: Path, folder: Path) -> Path:
    """The reference: the same tiny run (global batch 4 = 2 micro-batches of 2) in this process."""
    train(tiny_config(testbed_data, folder, budget={"tokens": 8 * 4 * 64}, logging_steps=1))
    return folder


def two_process_config(testbed_data: Path, tmp_path: Path, name: str) -> Path:
    """The same run as a YAML file for the launched processes (each runs micro-batches of 2)."""
    config = tiny_config(
        testbed_data, tmp_path / name, budget={"tokens": 8 * 4 * 64}, logging_steps=1, save_steps=4
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    return path


def test_fsdp_on_two_cpu_processes_trains_like_one_process(testbed_data: Path, tmp_path: Path) -> None:
    single = one_process_run(testbed_data, tmp_path / "single")
    done = launch_train(
        ACCELERATE_CONFIGS / "fsdp-1node-2proc-cpu.yaml", two_process_config(testbed_data, tmp_path, "fsdp")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model:") == 1  # one process reports
    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert (metrics["distributed"], metrics["processes"]) == ("FSDP", 2)
    # FSDP's own checkpoint files (sharded optimizer state gathered by accelerate), then one model.
    assert (tmp_path / "fsdp" / "checkpoints" / "checkpoint-8" / "pytorch_model_fsdp.bin").exists()
    assert_same_run(tmp_path / "fsdp", single)


@pytest.mark.slow
def test_fsdp_run_stopped_and_resumed_ends_like_an_uninterrupted_one(
    testbed_data: Path, tmp_path: Path
) -> None:
    single = one_process_run(testbed_data, tmp_path / "single")
    config_file = ACCELERATE_CONFIGS / "fsdp-1node-2proc-cpu.yaml"
    train_yaml = two_process_config(testbed_data, tmp_path, "fsdp")
    stopped = launch_train(config_file, train_yaml, "--set", "stop_after_steps=4")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "stopped at step 4 of 8" in stopped.stdout
    resumed = launch_train(config_file, train_yaml, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "fsdp", single, resumed=True)


@pytest.mark.slow
def test_deepspeed_zero2_on_two_cpu_processes_trains_like_one_process(
    testbed_data: Path, tmp_path: Path
) -> None:
    # Slow: DeepSpeed (an optional install) builds its shared-memory op on first use (about 2 minutes here).
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    single = one_process_run(testbed_data, tmp_path / "single")
    done = launch_train(
        ACCELERATE_CONFIGS / "deepspeed-zero2-1node-2proc-cpu.yaml",
        two_process_config(testbed_data, tmp_path, "zero2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "zero2" / "metrics.json").read_text())
    assert (metrics["distributed"], metrics["processes"]) == ("DEEPSPEED", 2)
    # ZeRO-2: each process keeps its own shard of the optimizer state.
    step = tmp_path / "zero2" / "checkpoints" / "checkpoint-8" / "global_step8"
    assert sorted(path.name for path in step.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert_same_run(tmp_path / "zero2", single)
