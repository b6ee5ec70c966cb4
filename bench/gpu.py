"""GPU throughput of the transformers engine and the trainer, against the GPU's bf16 peak measured in the same run.

One script, under 5 minutes on one GPU (issue 13, item 5). It builds a randomly initialised Llama
of about 100 M parameters (width 768, 12 layers, 12 heads, vocabulary 32,000: TinyLlama's tokenizer
size) and measures, in one process:

1. the **bf16 matrix-multiply peak**: ``torch.matmul`` of two 8192 x 8192 bf16 matrices (mean of
   timed products after warm-up), the ceiling every share below is taken against;
2. **sampling** with :class:`~latent_thoughts.engines.transformers_engine.TransformersEngine` the way
   the E-step samples (prompts of 256 tokens, K = 4 samples of 128 new tokens each, one prefill shared
   by the K samples, every chunk of the batch decoded together), at two batch sizes;
3. **scoring** with the same engine (``score``: the log-probability of 128-token continuations given
   256-token contexts, batched by length under ``batch_tokens``);
4. **training** with the project's trainer (:func:`latent_thoughts.train.train`: packed windows of
   1,024 tokens, AdamW, bf16 autocast) on testbed documents with oracle thoughts, a scratch model of
   the same shape (its vocabulary is the BPE the trainer trains on that text, so it has fewer
   embedding parameters).

Printed per workload: tokens per second and model FLOP/s as a share of the measured peak (forward
``2 N`` per token plus attention for sampling and scoring, ``6 N`` plus attention for training, with
``N`` the parameters a token passes through: :mod:`latent_thoughts.train.budget`), then the GPU's name.

    python bench/gpu.py                          # on a CUDA machine
    python bench/gpu.py --device cpu --quick     # plumbing check on a CPU (a tiny model, a minute)
    python bench/gpu.py --profile                # also a torch.profiler table of 16 decode steps
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.modeling import ScratchModelConfig, count_parameters, create_llama, load_causal_lm
from latent_thoughts.train import TrainConfig, train
from latent_thoughts.train.budget import forward_flops_per_token, matmul_parameters, training_flops_per_token

sys.path.insert(0, str(Path(__file__).parent))
from train import StepTimer, write_data

FULL = {"width": 768, "layers": 12, "heads": 12, "vocab": 32_000, "peak_size": 8192}
QUICK = {"width": 64, "layers": 2, "heads": 2, "vocab": 1_000, "peak_size": 512}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of ``work()``, synchronised with the device before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - started


def bf16_peak(device: torch.device, size: int, repeats: int = 10) -> float:
    """FLOP/s of ``torch.matmul`` on two ``size`` x ``size`` bf16 matrices: mean of ``repeats`` after 3 warm-ups."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    _, seconds = timed(device, lambda: [torch.matmul(a, b) for _ in range(repeats)])
    return 2 * size**3 * repeats / seconds


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``length`` random token ids (ids 1..vocab-1; 0 is the pad id)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (count, length), generator=generator).tolist()


def report(name: str, tokens: int, seconds: float, flops_per_token: float, peak: float) -> dict[str, Any]:
    """Print and return one workload's tokens/s and share of the bf16 peak."""
    rate = tokens / seconds
    share = rate * flops_per_token / peak
    print(
        f"{name:34s} {tokens:>9,} tokens in {seconds:6.2f} s: {rate:>10,.0f} tokens/s, "
        f"{rate * flops_per_token / 1e12:7.2f} TFLOP/s = {100 * share:5.1f}% of the bf16 peak",
        flush=True,
    )
    return {
        "workload": name,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": rate,
        "peak_share": share,
    }


def engine_figures(
    engine: TransformersEngine, device: torch.device, sizes: dict[str, Any], peak: float, quick: bool
) -> list[dict[str, Any]]:
    """Sampling at two batch sizes and scoring, each timed after a warm-up call."""
    model, vocab = engine.model, sizes["vocab"]
    n_params = matmul_parameters(model)
    layers, width = int(model.config.num_hidden_layers), int(model.config.hidden_size)
    prompt_len, new_tokens, k = (32, 16, 4) if quick else (256, 128, 4)
    rows = []
    engine.sample(random_prompts(2, 16, vocab, 9), n=2, max_new_tokens=4, seed=0, stop_on_eos=False)
    for chunks in (4, 8) if quick else (64, 256):
        prompts = random_prompts(chunks, prompt_len, vocab, seed=chunks)
        samples, seconds = timed(
            device,
            lambda p=prompts: engine.sample(p, n=k, max_new_tokens=new_tokens, seed=0, stop_on_eos=False),
        )
        sampled = sum(len(sample.token_ids) for group in samples for sample in group)
        # Per sampled token: the forward pass at a mean context of prompt + half the new tokens.
        flops = forward_flops_per_token(n_params, layers, width, prompt_len + new_tokens // 2)
        rows.append(report(f"sampling, {chunks} chunks x K={k}", sampled, seconds, flops, peak))
    contexts = random_prompts(8 if quick else 512, prompt_len, vocab, seed=1)
    continuations = random_prompts(len(contexts), new_tokens, vocab, seed=2)
    engine.score(contexts[:2], continuations[:2])
    _, seconds = timed(device, lambda: engine.score(contexts, continuations))
    scored = len(contexts) * (prompt_len + new_tokens)
    flops = forward_flops_per_token(n_params, layers, width, (prompt_len + new_tokens) // 2)
    rows.append(report(f"scoring, {len(contexts)} pairs", scored, seconds, flops, peak))
    return rows


def profile_sampling(engine: TransformersEngine, sizes: dict[str, Any], quick: bool) -> None:
    """Print the operators that take the time of a short sampling call (torch.profiler, CPU and CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if engine.torch_device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    prompts = random_prompts(8 if quick else 64, 32 if quick else 256, sizes["vocab"], seed=3)
    with profile(activities=activities) as profiler:
        engine.sample(prompts, n=4, max_new_tokens=16, seed=0, stop_on_eos=False)
    key = "self_cuda_time_total" if engine.torch_device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), flush=True)
    print(profiler.key_averages().table(sort_by=key, row_limit=12), flush=True)


def training_figures(out: Path, sizes: dict[str, Any], peak: float, quick: bool) -> dict[str, Any]:
    """Train the scratch model with the project's trainer; tokens/s over steps 2..N."""
    files = write_data(out / "data", 200 if quick else 2000)
    seq_len, micro_batch = (128, 4) if quick else (1024, 16)
    config = TrainConfig.model_validate(
        {
            "output_dir": str(out / "train"),
            "model": {
                "bpe_vocab_size": 512,
                "scratch": {
                    "hidden_size": sizes["width"],
                    "num_layers": sizes["layers"],
                    "num_heads": sizes["heads"],
                    "num_kv_heads": sizes["heads"],
                    "intermediate_size": sizes["width"] * 8 // 3,
                    "max_position_embeddings": seq_len,
                },
            },
            "data": {
                "sources": [
                    {"kind": "thoughts", "chunks": str(files["chunks"]), "thoughts": str(files["thoughts"])}
                ],
                "format": {"seq_len": seq_len},
            },
            "budget": {"tokens": 16 * seq_len * micro_batch if quick else 6_000_000},
            "optim": {
                "lr": 3e-4,
                "warmup_steps": 10,
                "global_batch": micro_batch,
                "micro_batch": micro_batch,
            },
            "logging_steps": 50,
            "save_steps": 1_000_000,
            "progress_bar": False,
        }
    )
    timer = StepTimer()
    result = train(config, callbacks=[timer])
    assert result.model_dir is not None
    model = load_causal_lm(result.model_dir)
    n_params = matmul_parameters(model)
    flops = training_flops_per_token(
        n_params, int(model.config.num_hidden_layers), int(model.config.hidden_size), seq_len
    )
    rate = timer.steady_rate(result.tokens)
    seconds = result.tokens / rate
    precision = result.metrics.get("precision", config.precision)
    name = f"training ({count_parameters(model) / 1e6:.1f} M params, {precision})"
    row = report(name, result.tokens, seconds, flops, peak)
    row["parameters"] = count_parameters(model)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a plumbing check")
    parser.add_argument("--quick", action="store_true", help="a tiny model and workload: plumbing only")
    parser.add_argument("--out", default="runs/bench/gpu")
    parser.add_argument("--profile", action="store_true", help="print where 16 decode steps spend their time")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; run on a GPU machine, or pass --device cpu --quick")
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    out = Path(args.out)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    peak = bf16_peak(device, sizes["peak_size"])
    print(
        f"device: {name}; torch {torch.__version__}; bf16 matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True
    )

    spec = ScratchModelConfig(
        hidden_size=sizes["width"],
        num_layers=sizes["layers"],
        num_heads=sizes["heads"],
        num_kv_heads=sizes["heads"],
        intermediate_size=sizes["width"] * 8 // 3,
        max_position_embeddings=1024,
    )
    model = create_llama(spec, vocab_size=sizes["vocab"], seed=0, pad_token_id=0)
    print(f"engine model: Llama, {count_parameters(model) / 1e6:.1f} M parameters", flush=True)
    engine = TransformersEngine(
        TransformersEngineConfig(device=args.device, dtype="bf16", batch_tokens=1 << 18), model=model
    )
    rows = engine_figures(engine, device, sizes, peak, args.quick)
    if args.profile:
        profile_sampling(engine, sizes, args.quick)
    del engine, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows.append(training_figures(out, sizes, peak, args.quick))
    seconds = time.perf_counter() - started
    print(f"total time {seconds:.0f}s on {name}")
    payload = {
        "device": name,
        "torch": torch.__version__,
        "bf16_peak_flops": peak,
        "rows": rows,
        "seconds": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
