"""The token draw of the decode loop: one float64 cumulative sum over the vocabulary (the engine's
former draw) against the two-level inverse CDF of ``latent_thoughts.engines.sampling.inverse_cdf``.

For 256 rows (64 chunks x K = 4, as the E-step decodes) at vocabularies of 512 (the testbed),
32,000 (Llama-2, TinyLlama) and 32,004 (the same with the four latent tokens): milliseconds per draw
of each, their ratio, and whether they picked the same ids; then seconds per decoding step of the
transformers engine with a small Llama (width 64, 2 layers) at a 32,000-id vocabulary, where the
draw was most of a step, with each draw in the same run (the one-level one patched in). One thread,
as the E-step's workers run.

    .venv/bin/python bench/draw.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from latent_thoughts.engines import sampling
from latent_thoughts.engines.sampling import inverse_cdf
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.modeling import ScratchModelConfig, create_llama

ROWS = 256


def one_level(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The former draw: a float64 cumulative sum over the whole vocabulary, then a binary search."""
    cdf = probs.double().cumsum(dim=-1)
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(1)
    return picks.clamp(max=cdf.shape[1] - 1)


def milliseconds(work: Callable[[], object], repeats: int = 20) -> float:
    """Median milliseconds of ``work()`` over ``repeats`` calls after one warm-up."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print(f"draw of {ROWS} rows (probabilities given), median of 20, 1 thread")
    print("| vocabulary | one level (ms) | two levels (ms) | speed-up | same ids |")
    print("| --- | --- | --- | --- | --- |")
    for vocab in (512, 32_000, 32_004):
        probs = torch.softmax(3 * torch.randn(ROWS, vocab, generator=generator), dim=-1)
        uniforms = torch.rand(ROWS, generator=generator, dtype=torch.float64)
        same = bool((one_level(probs, uniforms) == inverse_cdf(probs, uniforms)).all())
        old = milliseconds(lambda p=probs, u=uniforms: one_level(p, u))
        new = milliseconds(lambda p=probs, u=uniforms: inverse_cdf(p, u))
        print(f"| {vocab:,} | {old:.1f} | {new:.1f} | {old / new:.1f}x | {'yes' if same else 'no'} |")

    spec = ScratchModelConfig(
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        intermediate_size=170,
        max_position_embeddings=512,
    )
    model = create_llama(spec, vocab_size=32_000, seed=0, pad_token_id=0)
    engine = TransformersEngine(
        TransformersEngineConfig(device="cpu", dtype="fp32", batch_tokens=1 << 20), model=model
    )
    prompts = torch.randint(1, 32_000, (ROWS // 4, 64), generator=generator).tolist()
    engine.sample(prompts[:2], n=2, max_new_tokens=4, seed=0, stop_on_eos=False)
    steps = 32
    per_step = {}
    for name, search in (("one level", one_level), ("two levels", inverse_cdf)):
        sampling.inverse_cdf = search  # the draw looks its search up at call time
        started = time.perf_counter()
        engine.sample(prompts, n=4, max_new_tokens=steps, seed=0, stop_on_eos=False)
        per_step[name] = (time.perf_counter() - started) / steps
    sampling.inverse_cdf = inverse_cdf
    print(
        f"engine decoding, {ROWS} rows, 32,000-id vocabulary, width-64 Llama: {per_step['one level']:.3f} s "
        f"per step with the one-level draw, {per_step['two levels']:.3f} s with two levels "
        f"({per_step['one level'] / per_step['two levels']:.1f}x)"
    )


if __name__ == "__main__":
    main()
