"""Does ``torch.compile`` speed up the testbed recipe's model on this machine?

Trains the recipe's model shape (width 128, 4 layers, vocabulary 512) with a plain AdamW loop on
random tokens, eager and then compiled, and prints tokens/s of each and their ratio (steady state,
after warm-up steps that include compilation).

    .venv/bin/python bench/compile.py --threads 2 --batch 8 --seq-len 256
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latent_thoughts.recipes.testbed import TestbedRecipe


def tokens_per_second(compiled: bool, batch: int, seq_len: int, steps: int, warmup: int = 5) -> float:
    """Steady-state training tokens/s of the recipe's model, eager or compiled."""
    recipe = TestbedRecipe()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.width,
        intermediate_size=recipe.width * 8 // 3,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=seq_len,
    )
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    forward = torch.compile(model) if compiled else model
    ids = torch.randint(0, recipe.vocab_size, (batch, seq_len))
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        forward(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return batch * seq_len * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eager = tokens_per_second(False, args.batch, args.seq_len, args.steps)
    print(
        f"eager: {eager:,.0f} tokens/s ({args.threads} threads, batch {args.batch} x {args.seq_len})",
        flush=True,
    )
    compiled = tokens_per_second(True, args.batch, args.seq_len, args.steps)
    print(f"compiled: {compiled:,.0f} tokens/s; compiled/eager: {compiled / eager:.2f}x")


if __name__ == "__main__":
    main()
