"""Shared fixtures: a tiny real tokenizer and a tiny real Llama, saved to disk like any checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_thoughts.modeling import ScratchModelConfig, create_llama
from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

TRAINING_TEXTS = [
    "We know that 37 x 24 = 888. Adding 129 gives 1017. So the total is 1017.",
    "The derivative of x^2 is 2x. Hence the slope at x = 3 is 6.",
    "Let n be an integer. If n is even, then n^2 is even. Thus 4 divides n^2.",
    "First compute 12 + 30 = 42. Then 42 x 2 = 84, which is the answer.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE of about 400 ids with the four latent tokens added."""
    tokenizer = train_bpe_tokenizer(TRAINING_TEXTS, vocab_size=400)
    add_latent_tokens(tokenizer)
    return tokenizer


def tiny_llama(tokenizer, positions: int = 512):
    """A randomly initialised 2-layer Llama (width 32, seed 0) over ``tokenizer``'s vocabulary."""
    spec = ScratchModelConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
    )
    return create_llama(
        spec,
        vocab_size=len(tokenizer),
        seed=0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny_llama(folder: Path, tokenizer, positions: int) -> Path:
    """Save :func:`tiny_llama` with ``positions`` positions and ``tokenizer`` to ``folder``."""
    tiny_llama(tokenizer, positions).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A folder holding a randomly initialised 2-layer Llama (width 32) and its tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer, positions=512)


@pytest.fixture(scope="session")
def tiny_long_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """Like ``tiny_model_dir`` but with 4096 positions, room for 8-shot GSM8K prompts (about 2000 ids)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_long_llama"), tiny_tokenizer, positions=4096)
