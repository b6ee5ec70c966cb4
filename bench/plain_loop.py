"""A plain PyTorch training loop: the baseline the trainer is measured against.

It trains on exactly the packed windows the trainer built (its window file, ``PackedWindows``) with
the trainer's optimisation settings (AdamW with the same decay/no-decay parameter groups, linear
warm-up then cosine decay, gradient clipping, bf16 autocast over fp32 weights) and nothing else: no
callbacks, no logging machinery, no data loader. Windows are visited in seeded epoch-shuffled order,
like the trainer's sampler. Used by ``bench/train.py`` (throughput) and ``bench/trainer_dynamics.py`` (loss
curves over seeds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from latent_thoughts.train.budget import steps_for_tokens
from latent_thoughts.train.config import OptimConfig, TrainConfig
from latent_thoughts.train.data import build_documents, build_training_data, read_sources
from latent_thoughts.train.windows import PackedWindows

# Parameters without weight decay, as transformers.Trainer chooses them (biases and norm weights).
_NO_DECAY = ("bias", "norm")


@dataclass
class PlainRun:
    """What a plain run measured: loss per optimizer step and the end time of every step."""

    losses: list[float] = field(default_factory=list)
    step_ends: list[float] = field(default_factory=list)
    started: float = 0.0

    def steady_tokens_per_second(self, tokens_per_step: int) -> float:
        """Tokens per second from the end of step 1 to the end of the last step."""
        if len(self.step_ends) < 2:
            raise RuntimeError("need at least two steps to time")
        return tokens_per_step * (len(self.step_ends) - 1) / (self.step_ends[-1] - self.step_ends[0])


def training_windows(config: TrainConfig, tokenizer: Any) -> PackedWindows:
    """The packed windows the trainer builds for ``config`` (a pure function of files, tokenizer and
    seed), rebuilt here into ``OUTPUT_DIR/data/plain-windows.bin`` so the plain loop trains on exactly
    the same tokens in the same windows."""
    from latent_thoughts.format import DocumentBuilder

    assert config.budget.tokens is not None, "the plain loop needs a token budget"
    fmt = config.data.format
    steps = steps_for_tokens(config.budget.tokens, fmt.seq_len, config.optim.global_batch)
    builder = DocumentBuilder(tokenizer, fmt)
    built = [build_documents(docs, builder) for docs in read_sources(config.data.sources)]
    path = Path(config.output_dir) / "data" / "plain-windows.bin"
    data = build_training_data(
        config.data.sources, built, builder, steps * config.optim.global_batch, config.seed, path
    )
    return data.windows


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on every weight except biases and norm weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if any(key in name.lower() for key in _NO_DECAY) else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def epoch_order(windows: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """Window indices for ``steps`` batches: fresh seeded permutations, one per pass over the data."""
    needed = steps * batch
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(windows) for _ in range(-(-needed // windows))])
    return order[:needed].reshape(steps, batch)


def plain_train(
    model: torch.nn.Module,
    arrays: PackedWindows,
    optim: OptimConfig,
    steps: int,
    bf16: bool,
    seed: int,
    device: str = "cpu",
) -> PlainRun:
    """Train ``model`` in place for ``steps`` optimizer steps of ``optim.global_batch`` windows.

    One forward and backward per step (no accumulation): the global batch is one micro-batch here.
    Returns the loss of every step and when each step ended.
    """
    torch.manual_seed(seed)
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas, eps=optim.eps
    )
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, min(optim.warmup_steps, steps), steps, min_lr_rate=optim.min_lr_ratio
    )
    ids = torch.from_numpy(np.asarray(arrays.input_ids, dtype=np.int64))
    lengths = torch.from_numpy(np.asarray(arrays.lengths, dtype=np.int64))
    positions = torch.arange(ids.shape[1])
    run = PlainRun(started=time.perf_counter())
    for batch in epoch_order(len(ids), steps, optim.global_batch, seed):
        index = torch.from_numpy(batch)
        input_ids = ids[index].to(device)
        labels = input_ids.masked_fill((positions[None, :] >= lengths[index][:, None]).to(device), -100)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        if optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        run.losses.append(float(loss.detach()))
        run.step_ends.append(time.perf_counter())
    return run
