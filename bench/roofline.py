"""Roofline figures: achieved model FLOP/s of sampling, scoring and training as a share of this
machine's measured matrix-multiply peak, before and after the engine's fixes, in one run.

Peaks: ``torch.matmul`` of square matrices (fp32 2048^3, bf16 1024^3), best of repeats, measured
before and after the workloads (the higher is kept: the machine is shared and noisy). Workloads, at
two sizes (``testbed``: the recipe's Llama, width 128, 4 layers, vocabulary 512, sequences of 256;
``50m``: a Llama of width 640, 10 layers, about 50 M parameters, same vocabulary and sequences):

- **sampling** (E-step shaped): C chunks' prompts of about 128 tokens, K = 4 samples of exactly 64
  new tokens each (no stop), through ``TransformersEngine.sample(n=K)`` (one prefill per prompt shared
  by its K samples). *before*: one call per chunk, so a decode step has K rows (a per-chunk loop);
  *after*: one call for all chunks, C x K rows a step (the E-step's ``batch_chunks``, bounded by
  ``batch_tokens``).
- **scoring** (the E-step's two roles): per chunk, log q of K = 4 thoughts of 64 tokens after the
  posterior prompt (~128 tokens) and log p of ``PRIOR z EOL x`` (~96 tokens) after the joint context
  (~64 tokens). *before*: two ``score_many`` calls per chunk (main's E-step call pattern); *after*:
  one ``score_groups`` call per chunk with both roles (the E-step now: both contexts prefilled
  together, both roles' continuations in one pass); *across chunks*: one ``score_groups`` call for
  every chunk (the most batching; the E-step does not use it, so that a chunk's stored scores never
  depend on the other chunks of its batch, shard or resumed run).
- **training**: ``latent_thoughts.train.train`` (the trainer) on packed testbed windows of 256
  tokens, steady-state steps timed by a callback (the first step left out).

Model FLOPs: 2 N per token of a forward pass (prompt tokens once, sampled or scored tokens once),
6 N per training token, N the matrix parameters (``train.budget.matmul_parameters``), plus attention
4 x layers x width per attended key and query (3x that in training, PaLM's count). The share is of
the peak of the precision used: fp32 here (the engine's and trainer's ``auto`` pick bf16 only where
the CPU runs it natively; on this AVX2-only CPU bf16 is emulated and its "peak" is printed to show
it). ``--profile`` adds each after-variant's top operators (torch.profiler), what holds it back.
One torch thread by default (``--threads``), the setting every figure of the project uses. Times
are CPU seconds of the process (``time.process_time``), peaks included: on a shared, loaded machine
wall time swings by half or more between identical runs, the CPU time of a one-thread process much
less.

    .venv/bin/python bench/roofline.py [--quick] [--sizes testbed,50m] [--profile]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latent_thoughts.engines.base import score_groups
from latent_thoughts.engines.transformers_engine import (
    TransformersEngine,
    TransformersEngineConfig,
    cpu_supports_bf16,
)
from latent_thoughts.modeling import ScratchModelConfig, create_llama
from latent_thoughts.train import TrainConfig, train
from latent_thoughts.train.budget import matmul_parameters

sys.path.insert(0, str(Path(__file__).parent))
from train import StepTimer, write_data

VOCAB = 512
SEQ_LEN = 256
K = 4
PROMPT_TOKENS = 128
NEW_TOKENS = 64
SIZES = {
    "testbed": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 341},
    "50m": {"hidden_size": 640, "num_layers": 10, "num_heads": 10, "intermediate_size": 1728},
}


@dataclass
class Row:
    """One measured variant: its model FLOPs and wall time."""

    size: str
    workload: str
    variant: str
    tokens: int
    flops: float
    seconds: float


def scratch_spec(size: str) -> ScratchModelConfig:
    shape = SIZES[size]
    return ScratchModelConfig(**shape, num_kv_heads=shape["num_heads"], max_position_embeddings=1024)


def attention_flops(layers: int, width: int, start: int, count: int) -> float:
    """Forward attention FLOPs of ``count`` tokens at positions ``start``..: 4 x layers x width per
    (query, attended key) pair (q k^T and the weighted sum of v), causal."""
    keys = sum(range(start + 1, start + count + 1))
    return 4.0 * layers * width * keys


def forward_flops(n: int, layers: int, width: int, start: int, count: int) -> float:
    """Model FLOPs of a forward pass over ``count`` tokens after ``start`` cached ones."""
    return 2.0 * n * count + attention_flops(layers, width, start, count)


def random_ids(generator: torch.Generator, length: int) -> list[int]:
    return torch.randint(4, VOCAB, (length,), generator=generator).tolist()


def timed(run: Callable[[], Any]) -> float:
    """CPU seconds of ``run`` (this process's user + system time: with one thread, the time it
    computed, which other jobs on a shared machine disturb far less than its wall time)."""
    started = time.process_time()
    run()
    return time.process_time() - started


def matmul_peak(dtype: torch.dtype, size: int, seconds: float) -> float:
    """FLOP/s of ``torch.matmul`` of two ``size`` x ``size`` matrices of ``dtype`` in CPU time, the
    best of repeats for ``seconds`` of wall time (at least two)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up
    best, repeats = 0.0, 0
    deadline = time.perf_counter() + seconds
    while repeats < 2 or time.perf_counter() < deadline:
        best = max(best, 2 * size**3 / max(timed(lambda: torch.matmul(a, b)), 1e-9))
        repeats += 1
    return best


class CPUStepTimer(StepTimer):
    """``bench/train.py``'s step timer in CPU time (see :func:`timed`)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.times.append(time.process_time())


def measure_sampling(size: str, model: Any, chunks: int) -> list[Row]:
    """Sampling chunk by chunk (K rows a decode step) and batched across chunks (C x K rows)."""
    n, layers, width = matmul_parameters(model), model.config.num_hidden_layers, model.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    prompts = [random_ids(generator, PROMPT_TOKENS - chunks // 2 + offset) for offset in range(chunks)]
    flops = sum(
        forward_flops(n, layers, width, 0, len(p)) + K * forward_flops(n, layers, width, len(p), NEW_TOKENS)
        for p in prompts
    )
    engine = TransformersEngine(TransformersEngineConfig(device="cpu", dtype="fp32"), model=model)
    engine.sample(prompts[:2], n=2, max_new_tokens=4, seed=0, stop_on_eos=False)  # warm-up
    variants: dict[str, Callable[[], Any]] = {
        f"before: a call a chunk ({K} rows)": lambda: [
            engine.sample([p], n=K, max_new_tokens=NEW_TOKENS, seed=0, stop_on_eos=False) for p in prompts
        ],
        f"after: one call ({chunks * K} rows)": lambda: engine.sample(
            prompts, n=K, max_new_tokens=NEW_TOKENS, seed=0, stop_on_eos=False
        ),
    }
    return [
        Row(size, "sampling", name, chunks * K * NEW_TOKENS, flops, timed(run))
        for name, run in variants.items()
    ]


def scoring_groups(chunks: int) -> list[list[tuple[list[int], list[list[int]]]]]:
    """Per chunk, the E-step's two scoring groups: (posterior prompt, K thoughts) and (joint context,
    K ``PRIOR z EOL x`` continuations)."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for chunk in range(chunks):
        prefix = random_ids(generator, PROMPT_TOKENS // 2 - 8 + chunk % 16)
        text = random_ids(generator, 24 + chunk % 8)
        thoughts = [random_ids(generator, NEW_TOKENS - 8 + 4 * k) for k in range(K)]
        posterior = ([1, *prefix, 5, 6, *text, 5, 7], thoughts)
        joint = ([1, *prefix, 5], [[8, *thought, 6, *text] for thought in thoughts])
        out.append([posterior, joint])
    return out


def measure_scoring(size: str, model: Any, chunks: int) -> list[Row]:
    """Scoring per chunk in two calls (before), one call per chunk (after), one call for all chunks."""
    n, layers, width = matmul_parameters(model), model.config.num_hidden_layers, model.config.hidden_size
    groups = scoring_groups(chunks)
    flops = sum(
        forward_flops(n, layers, width, 0, len(ctx))
        + sum(forward_flops(n, layers, width, len(ctx), len(c)) for c in conts)
        for chunk in groups
        for ctx, conts in chunk
    )
    tokens = sum(len(c) for chunk in groups for _, conts in chunk for c in conts)
    engine = TransformersEngine(TransformersEngineConfig(device="cpu", dtype="fp32"), model=model)
    variants: dict[str, Callable[[], Any]] = {
        "before: 2 score_many calls a chunk": lambda: [
            engine.score_many(*g) for chunk in groups for g in chunk
        ],
        "after: 1 score_groups call a chunk": lambda: [score_groups(engine, chunk) for chunk in groups],
        "across chunks: 1 call for all": lambda: score_groups(engine, [g for chunk in groups for g in chunk]),
    }
    score_groups(engine, groups[0])  # warm-up
    return [Row(size, "scoring", name, tokens, flops, timed(run)) for name, run in variants.items()]


def measure_training(size: str, data: dict[str, Path], out: Path, steps: int, micro_batch: int) -> Row:
    """The trainer on packed windows for ``steps`` steps; steady-state rate of steps 2..N."""
    spec = scratch_spec(size)
    config = TrainConfig.model_validate(
        {
            "output_dir": str(out / f"train-{size}"),
            "model": {"bpe_vocab_size": VOCAB, "scratch": spec.model_dump()},
            "data": {
                "sources": [
                    {"kind": "thoughts", "chunks": str(data["chunks"]), "thoughts": str(data["thoughts"])}
                ],
                "format": {"seq_len": SEQ_LEN},
            },
            "budget": {"tokens": steps * SEQ_LEN * micro_batch},
            "optim": {"lr": 1e-3, "warmup_steps": 1, "global_batch": micro_batch, "micro_batch": micro_batch},
            "precision": "auto",
            "logging_steps": 1000,
            "save_steps": 100_000,
            "progress_bar": False,
        }
    )
    timer = CPUStepTimer()
    result = train(config, callbacks=[timer])
    from latent_thoughts.modeling import load_causal_lm

    model = load_causal_lm(str(result.model_dir))
    n, layers, width = matmul_parameters(model), model.config.num_hidden_layers, model.config.hidden_size
    per_token = 6.0 * n + 3 * attention_flops(layers, width, 0, SEQ_LEN) / SEQ_LEN
    rate = timer.steady_rate(result.tokens)
    tokens = result.tokens * (len(timer.times) - 1) // len(timer.times)
    return Row(
        size,
        "training",
        f"trainer, {micro_batch} x {SEQ_LEN} a step",
        tokens,
        per_token * tokens,
        tokens / rate,
    )


def profile_top(run: Callable[[], Any], rows: int = 8) -> list[str]:
    """The ``rows`` operators with the most self CPU time in ``run``, as printable lines."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        f"{e.key[:48]:48s} {e.self_cpu_time_total / total:6.1%}  ({e.count} calls)" for e in events[:rows]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a few minutes)")
    parser.add_argument("--sizes", default="testbed,50m", help="comma-separated: testbed, 50m")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--profile", action="store_true", help="print the top operators of each after-variant"
    )
    parser.add_argument("--out", default="runs/bench/roofline", help="scratch folder for the training runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown size {unknown[0]!r} (use {', '.join(SIZES)})")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = write_data(out / "data", 250)
    seconds = 1.0 if args.quick else 2.0
    peaks_before = {
        "fp32": matmul_peak(torch.float32, 2048, seconds),
        "bf16": matmul_peak(torch.bfloat16, 1024, seconds),
    }

    rows: list[Row] = []
    profiles: dict[str, list[str]] = {}
    for size in sizes:
        large = size == "50m"
        model = create_llama(scratch_spec(size), vocab_size=VOCAB, seed=0, pad_token_id=0).eval()
        print(
            f"[{size}] Llama width {model.config.hidden_size}, {model.config.num_hidden_layers} layers, "
            f"vocabulary {VOCAB}: {matmul_parameters(model) / 1e6:.2f} M matrix parameters",
            flush=True,
        )
        sample_chunks = (4 if args.quick else 8) if large else (16 if args.quick else 32)
        score_chunks = (4 if args.quick else 8) if large else (16 if args.quick else 32)
        rows += measure_sampling(size, model, sample_chunks)
        rows += measure_scoring(size, model, score_chunks)
        steps, micro = ((3 if args.quick else 5), 4) if large else ((10 if args.quick else 30), 8)
        rows.append(measure_training(size, data, out, steps, micro))
        if args.profile:
            engine = TransformersEngine(TransformersEngineConfig(device="cpu", dtype="fp32"), model=model)
            generator = torch.Generator().manual_seed(2)
            prompts = [random_ids(generator, PROMPT_TOKENS) for _ in range(sample_chunks // 2)]
            profiles[f"{size} sampling (after)"] = profile_top(
                lambda engine=engine, prompts=prompts: engine.sample(
                    prompts, n=K, max_new_tokens=NEW_TOKENS // 2, seed=0, stop_on_eos=False
                )
            )
            groups = scoring_groups(score_chunks // 2)
            profiles[f"{size} scoring (after)"] = profile_top(
                lambda engine=engine, groups=groups: [score_groups(engine, chunk) for chunk in groups]
            )

    peaks_after = {
        "fp32": matmul_peak(torch.float32, 2048, seconds),
        "bf16": matmul_peak(torch.bfloat16, 1024, seconds),
    }
    peaks = {name: max(peaks_before[name], peaks_after[name]) for name in peaks_before}
    emulated = not cpu_supports_bf16()
    print(
        f"\nthreads: {torch.get_num_threads()}; precision used: fp32 (auto on this CPU); times in CPU seconds"
    )
    for name in ("fp32", "bf16"):
        note = "  (emulated: no AVX512-BF16 or AMX on this CPU)" if name == "bf16" and emulated else ""
        print(
            f"matmul peak {name}: {peaks[name] / 1e9:7.2f} GFLOP/s (before {peaks_before[name] / 1e9:.2f}, "
            f"after {peaks_after[name] / 1e9:.2f}){note}"
        )
    print(
        f"\n{'size':8s} {'workload':9s} {'variant':38s} {'tokens':>7s} {'CPU s':>7s} {'GFLOP/s':>8s} {'of fp32 peak':>12s}"
    )
    for row in rows:
        achieved = row.flops / row.seconds
        print(
            f"{row.size:8s} {row.workload:9s} {row.variant:38s} {row.tokens:7d} {row.seconds:7.2f} "
            f"{achieved / 1e9:8.2f} {achieved / peaks['fp32']:12.1%}"
        )
    print()
    for size in sizes:
        mine = [r for r in rows if r.size == size]
        for workload in ("sampling", "scoring"):
            pair = [r for r in mine if r.workload == workload]
            print(f"{size} {workload}: after/before {pair[0].seconds / pair[1].seconds:.2f}x")
    for title, lines in profiles.items():
        print(f"\ntop operators, {title}:")
        for line in lines:
            print("  " + line)
    for row in rows:
        if row.size == "50m" and row.workload != "scoring" and not row.variant.startswith("before"):
            share = row.flops / row.seconds / peaks["fp32"]
            verdict = "reaches" if share >= 0.30 else "misses"
            print(f"50m {row.workload}: {share:.1%} of the fp32 peak, {verdict} the 30% target")


if __name__ == "__main__":
    main()
