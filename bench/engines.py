"""E-step-shaped throughput: the transformers engine versus a naive ``model.generate`` loop.

Workload per chunk (the E-step of METHOD section 5): a prompt of about 256 tokens, K = 4 samples of
exactly 128 new tokens (EOS stopping off, so both sides do equal work), then the log-probability of
each sample's tokens given the prompt. The model is a randomly initialised Llama of about 6 M
parameters with an 8k vocabulary (``latent_thoughts.modeling.create_llama``).

- naive: per chunk, ``model.generate(num_return_sequences=K, do_sample=True, output_scores=True)``
  (the prompt is expanded K times before the prefill), then one forward pass per sample to score it;
- engine: ``TransformersEngine.sample`` over all chunks at once (prompts packed and left-padded,
  each prompt prefilled once and its cache shared by its K samples), then one batched ``score``.

Both run in the same process on the same model with the same compute dtype (bf16 autocast where
the CPU supports it, else fp32; ``--dtype`` to force) and one torch thread (``--threads``). Prints both rates; the last line is
``speedup: N.NNx``. ``--quick`` runs a smaller workload in well under a minute.

    .venv/bin/python bench/engines.py [--quick] [--chunks N] [--dtype auto|bf16|fp32] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch

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


def naive(model: Any, prompts: list[list[int]], k: int, new_tokens: int, dtype: torch.dtype) -> int:
    """The straightforward loop; returns how many tokens it sampled."""
    autocast: Any = (
        torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
    )
    sampled = 0
    with torch.inference_mode(), autocast:
        for prompt in prompts:
            input_ids = torch.tensor([prompt])
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
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
            samples = out.sequences[:, len(prompt) :]
            # Log q of each sampled token, from the scores generate returns.
            scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)
            scores.gather(2, samples[:, :, None]).sum()
            for row in samples:
                sequence = torch.tensor([prompt + row.tolist()])
                logits = model(input_ids=sequence).logits[0, len(prompt) - 1 : -1].float()
                logits.log_softmax(-1).gather(1, row[:, None]).sum()
            sampled += samples.numel()
    return sampled


def engine_run(engine: TransformersEngine, prompts: list[list[int]], k: int, new_tokens: int) -> int:
    """The engine's way: one batched sample call, one batched score call; returns tokens sampled."""
    samples = engine.sample(prompts, n=k, max_new_tokens=new_tokens, seed=0, stop_on_eos=False)
    contexts = [prompt for prompt, group in zip(prompts, samples, strict=True) for _ in group]
    continuations = [sample.token_ids for group in samples for sample in group]
    engine.score(contexts, continuations)
    return sum(len(c) for c in continuations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smaller workload (under a minute)")
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

    # Warm up both paths (allocator, oneDNN kernels) on a small piece of the work.
    warm = make_prompts(1, 32, seed=1)
    naive(model, warm, 2, 4, dtype)
    engine_run(engine, warm, 2, 4)

    started = time.perf_counter()
    naive_tokens = naive(model, prompts, args.k, new_tokens, dtype)
    naive_s = time.perf_counter() - started
    started = time.perf_counter()
    engine_tokens = engine_run(engine, prompts, args.k, new_tokens)
    engine_s = time.perf_counter() - started
    assert naive_tokens == engine_tokens == chunks * args.k * new_tokens, (naive_tokens, engine_tokens)

    naive_rate, engine_rate = chunks / naive_s, chunks / engine_s
    print(
        f"naive generate loop: {naive_rate:.3f} chunks/s ({naive_s:.1f} s, {naive_tokens / naive_s:.0f} tokens/s)"
    )
    print(
        f"transformers engine: {engine_rate:.3f} chunks/s ({engine_s:.1f} s, {engine_tokens / engine_s:.0f} tokens/s)"
    )
    print(f"speedup: {engine_rate / naive_rate:.2f}x")


if __name__ == "__main__":
    main()
