"""E-step-shaped throughput: the transformers engine versus naive ``model.generate`` baselines, and
what batching and what shared prefill each contribute.

Workload per chunk (the E-step of METHOD section 5): a prompt of about 256 tokens, K = 4 samples of
exactly 128 new tokens (EOS stopping off, so every variant does equal work), then the log-probability
of each sample's tokens given the prompt. The model is a randomly initialised Llama of about 6 M
parameters with an 8k vocabulary (``latent_thoughts.modeling.create_llama``). Four variants:

- naive loop: per chunk, ``model.generate(num_return_sequences=K, do_sample=True, output_scores=True)``
  (the prompt is expanded K times before the prefill), then one forward pass per sample to score it;
- naive batched: ONE ``model.generate`` over all chunks (left-padded, each prompt expanded K times),
  then one batched forward pass scoring every sample: batching across chunks, no shared prefill;
- engine, no shared prefill: ``TransformersEngine.sample`` over every prompt repeated K times (n = 1),
  then one batched ``score`` of all pairs: the engine's decode loop, each row prefilled on its own;
- engine: ``TransformersEngine.sample(n=K)`` (each prompt prefilled once, its cache shared by its K
  samples), then ``score_many`` per chunk (the prompt computed once for its K samples), as the E-step
  scores.

The speed-up of the engine over the naive loop splits into three factors that multiply to it:
batching across chunks (naive loop -> naive batched), the engine's decode loop (naive batched ->
engine without shared prefill) and the shared prefill (-> engine). All variants run in the same
process on the same model with the same compute dtype (bf16 autocast where the CPU supports it, else
fp32; ``--dtype`` to force) and one torch thread (``--threads``). The last line is
``speedup: N.NNx`` (engine over the naive loop). ``--quick`` runs a smaller workload in about a minute.

    .venv/bin/python bench/engines.py [--quick] [--chunks N] [--dtype auto|bf16|fp32] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch

from latent_thoughts.engines.padding import left_pad
from latent_thoughts.engines.transformers_engine import (
    TransformersEngine,
    TransformersEngineConfig,
    resolve_dtype,
)
from latent_thoughts.modeling import ScratchModelConfig, count_parameters, create_llama

VOCAB = 8192


def build_model() -> Any:
    """A ~6 M-parameter Llama (hidden 256, 5 layers, vocabulary 8,192) without an EOS token."""
    spec = ScratchModelConfig(
        hidden_size=256,
        num_layers=5,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=688,
        max_position_embeddings=1024,
    )
    return create_llama(spec, vocab_size=VOCAB, seed=0, pad_token_id=0).eval()


def make_prompts(chunks: int, length: int, seed: int = 0) -> list[list[int]]:
    """Random token-id prompts of length ``length`` +- 12.5 % (like chunks with prefixes)."""
    generator = torch.Generator().manual_seed(seed)
    spread = max(length // 8, 1)
    lengths = torch.randint(length - spread, length + spread + 1, (chunks,), generator=generator)
    return [torch.randint(1, VOCAB, (int(n),), generator=generator).tolist() for n in lengths]


def autocast(dtype: torch.dtype) -> Any:
    """bf16 autocast on CPU when ``dtype`` is bf16 (as the engine computes), else nothing."""
    return (
        torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
    )


def generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, k: int, new_tokens: int) -> Any:
    """``model.generate`` drawing exactly ``new_tokens`` for each of ``k`` samples per row, with scores."""
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        num_return_sequences=k,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )


def naive_loop(
    model: Any, prompts: list[list[int]], k: int, new_tokens: int, dtype: torch.dtype
) -> tuple[int, float]:
    """Per chunk: generate K samples, then one forward pass per sample; returns (tokens sampled, scoring s)."""
    sampled, scoring = 0, 0.0
    with torch.inference_mode(), autocast(dtype):
        for prompt in prompts:
            input_ids = torch.tensor([prompt])
            out = generate(model, input_ids, torch.ones_like(input_ids), k, new_tokens)
            samples = out.sequences[:, len(prompt) :]
            # Log q of each sampled token, from the scores generate returns.
            scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)
            scores.gather(2, samples[:, :, None]).sum()
            started = time.perf_counter()
            for row in samples:
                sequence = torch.tensor([prompt + row.tolist()])
                logits = model(input_ids=sequence).logits[0, len(prompt) - 1 : -1].float()
                logits.log_softmax(-1).gather(1, row[:, None]).sum()
            scoring += time.perf_counter() - started
            sampled += samples.numel()
    return sampled, scoring


def naive_batched(
    model: Any, prompts: list[list[int]], k: int, new_tokens: int, dtype: torch.dtype
) -> tuple[int, float]:
    """One generate over all chunks, then one batched scoring pass; returns (tokens sampled, scoring s)."""
    ids, mask, _ = left_pad(prompts, pad_id=0)
    with torch.inference_mode(), autocast(dtype):
        out = generate(model, ids, mask, k, new_tokens)
        samples = out.sequences[:, ids.shape[1] :]
        torch.stack(out.scores, dim=1).float().log_softmax(-1).gather(2, samples[:, :, None]).sum()
        started = time.perf_counter()
        full_mask = torch.cat([mask.repeat_interleave(k, dim=0), torch.ones_like(samples)], dim=1)
        positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(
            input_ids=out.sequences,
            attention_mask=full_mask,
            position_ids=positions,
            logits_to_keep=new_tokens + 1,
        ).logits[:, :-1]
        logits.float().log_softmax(-1).gather(2, samples[:, :, None]).sum()
        scoring = time.perf_counter() - started
    return samples.numel(), scoring


def engine_unshared(
    engine: TransformersEngine, prompts: list[list[int]], k: int, new_tokens: int
) -> tuple[int, float]:
    """The engine with every prompt repeated K times (n = 1): no prefill is shared; batched score."""
    repeated = [prompt for prompt in prompts for _ in range(k)]
    samples = engine.sample(repeated, n=1, max_new_tokens=new_tokens, seed=0, stop_on_eos=False)
    continuations = [group[0].token_ids for group in samples]
    started = time.perf_counter()
    engine.score(repeated, continuations)
    return sum(len(c) for c in continuations), time.perf_counter() - started


def engine_run(
    engine: TransformersEngine, prompts: list[list[int]], k: int, new_tokens: int
) -> tuple[int, float]:
    """The E-step's way: one batched sample call (shared prefill), then score_many per chunk."""
    samples = engine.sample(prompts, n=k, max_new_tokens=new_tokens, seed=0, stop_on_eos=False)
    started = time.perf_counter()
    for prompt, group in zip(prompts, samples, strict=True):
        engine.score_many(prompt, [sample.token_ids for sample in group])
    return sum(len(s.token_ids) for group in samples for s in group), time.perf_counter() - started


def timed(run: Callable[[], tuple[int, float]]) -> tuple[int, float, float]:
    """(tokens, total seconds, scoring seconds) of one variant."""
    started = time.perf_counter()
    tokens, scoring = run()
    return tokens, time.perf_counter() - started, scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smaller workload (about a minute)")
    parser.add_argument("--chunks", type=int, help="chunks per side (default 16, quick 4)")
    parser.add_argument("--prompt-tokens", type=int, help="prompt length (default 256, quick 128)")
    parser.add_argument("--new-tokens", type=int, help="tokens per sample (default 128, quick 48)")
    parser.add_argument("--k", type=int, default=4, help="samples per chunk (default 4)")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--batch-tokens", type=int, default=32768, help="the engine's batch bound")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        # One thread by default: on a shared machine OpenMP threads spin against other processes and
        # both sides slow down erratically (tens of times); one thread measures cleanly and fairly.
        torch.set_num_threads(args.threads)
    chunks = args.chunks or (4 if args.quick else 16)
    prompt_tokens = args.prompt_tokens or (128 if args.quick else 256)
    new_tokens = args.new_tokens or (48 if args.quick else 128)

    model = build_model()
    config = TransformersEngineConfig(device="cpu", dtype=args.dtype, batch_tokens=args.batch_tokens)
    engine = TransformersEngine(config, model=model)
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    prompts = make_prompts(chunks, prompt_tokens)
    print(
        f"model: Llama, {count_parameters(model) / 1e6:.1f} M parameters, vocabulary {VOCAB}; "
        f"dtype {'bf16 autocast' if dtype == torch.bfloat16 else 'fp32'}; {torch.get_num_threads()} threads"
    )
    print(
        f"workload: {chunks} chunks x K={args.k} samples x {new_tokens} new tokens, prompts ~{prompt_tokens} tokens"
    )

    # Warm up every path (allocator, oneDNN kernels) on a small piece of the work.
    warm = make_prompts(2, 32, seed=1)
    naive_loop(model, warm, 2, 4, dtype)
    naive_batched(model, warm, 2, 4, dtype)
    engine_unshared(engine, warm, 2, 4)
    engine_run(engine, warm, 2, 4)

    k, new = args.k, new_tokens
    variants = {
        "naive loop": lambda: naive_loop(model, prompts, k, new, dtype),
        "naive batched": lambda: naive_batched(model, prompts, k, new, dtype),
        "engine, no shared prefill": lambda: engine_unshared(engine, prompts, k, new),
        "engine": lambda: engine_run(engine, prompts, k, new),
    }
    seconds: dict[str, float] = {}
    for name, run in variants.items():
        tokens, total, scoring = timed(run)
        assert tokens == chunks * k * new, (name, tokens)
        seconds[name] = total
        print(
            f"{name:26s} {chunks / total:7.3f} chunks/s  {total:6.1f} s "
            f"(sampling {total - scoring:5.1f} s, scoring {scoring:5.1f} s, {tokens / total:6.0f} tokens/s)"
        )
    batching = seconds["naive loop"] / seconds["naive batched"]
    loop = seconds["naive batched"] / seconds["engine, no shared prefill"]
    shared = seconds["engine, no shared prefill"] / seconds["engine"]
    print(f"batching across chunks (naive loop -> naive batched): {batching:.2f}x")
    print(f"engine decode loop (naive batched -> engine without shared prefill): {loop:.2f}x")
    print(f"shared prefill (engine without -> with): {shared:.2f}x")
    print(f"speedup over the naive batched baseline: {seconds['naive batched'] / seconds['engine']:.2f}x")
    print(f"speedup: {seconds['naive loop'] / seconds['engine']:.2f}x")


if __name__ == "__main__":
    main()
