"""FSDP and DeepSpeed ZeRO under ``accelerate launch``, on GPUs and on a machine without one.

``accelerate launch --config_file configs/accelerate/NAME.yaml -m latent_thoughts train ...`` tells
every process which sharding engine to use through environment variables (``ACCELERATE_USE_FSDP``
and ``FSDP_*``, ``ACCELERATE_USE_DEEPSPEED`` and ``ACCELERATE_DEEPSPEED_*``); ``transformers.Trainer``
picks them up. On GPUs nothing more is needed. Without a GPU, accelerate 1.x enters its FSDP and
DeepSpeed paths only for GPU-like devices and silently trains plain data-parallel over gloo
instead, so a CPU test of those configurations would test nothing. Two small adjustments make the
CPU run the real thing:

- DeepSpeed (:func:`deepspeed_on_cpu`): the trainer's ``TrainingArguments`` ask for no CPU device
  and a gloo backend, so that accelerate lets DeepSpeed set up its CPU accelerator and gloo group;
- FSDP (:func:`enable_fsdp_on_cpu`): once the Trainer has made its ``Accelerator``, accelerate's
  state is switched to FSDP with the launcher's plugin, so the model is wrapped by torch's
  ``fully_shard`` (FSDP2) over gloo and checkpoints are FSDP's.

:func:`check_full_model_saved` refuses an FSDP configuration under which the Trainer would save no
final model (a sharded state dict).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch

from latent_thoughts.errors import LatentThoughtsError

logger = logging.getLogger(__name__)

Sharding = Literal["fsdp", "deepspeed"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def launcher_sharding() -> Sharding | None:
    """``"fsdp"`` or ``"deepspeed"`` when ``accelerate launch`` asked for one, else None."""
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return None


def deepspeed_on_cpu() -> bool:
    """Whether this process runs DeepSpeed without a GPU (the trainer then asks for gloo, not ``use_cpu``)."""
    return launcher_sharding() == "deepspeed" and not torch.cuda.is_available()


def enable_fsdp_on_cpu(accelerator: Any) -> bool:
    """Turn accelerate's plain multi-CPU state into FSDP when the launcher asked for FSDP; True if done.

    ``accelerator`` is the Trainer's freshly made ``Accelerator`` (nothing prepared yet). The plugin is
    built from the launcher's ``FSDP_*`` variables, as accelerate does on GPUs.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if launcher_sharding() != "fsdp" or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # Both states: accelerate copies PartialState's distributed type back into AcceleratorState.
    PartialState().distributed_type = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    logger.info("FSDP (version %d) on CPU over gloo", plugin.fsdp_version)
    return True


def check_full_model_saved(accelerator: Any) -> None:
    """A one-line error when FSDP would keep only sharded weights: the run ends by saving one Hugging
    Face model, which ``Trainer.save_model`` writes only from a full state dict."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        raise LatentThoughtsError(
            f"FSDP state dict type {plugin.state_dict_type}: set fsdp_state_dict_type: FULL_STATE_DICT in "
            "the accelerate config, so that the final model is saved whole (see configs/accelerate/)"
        )


def distributed_kind(accelerator: Any) -> str:
    """What ran: ``FSDP``, ``DEEPSPEED``, ``MULTI_GPU``, ``MULTI_CPU`` (data-parallel) or ``NO``."""
    return str(accelerator.state.distributed_type.value)


def end_process_group() -> None:
    """Wait for every process, then tear the process group down, when one was set up.

    Left to the interpreter's exit, gloo's worker threads may be destroyed while still joinable, and the
    C++ runtime then aborts the process ("terminate called without an active exception") after the
    model was saved; the launcher reports that as a failed run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
