"""Models: load a Hugging Face causal LM, or create a small Llama from scratch (the testbed default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from latent_thoughts.config import StageConfig
from latent_thoughts.errors import LatentThoughtsError


class ScratchModelConfig(StageConfig):
    """Shape of a Llama created from scratch; the vocabulary size comes from the tokenizer."""

    hidden_size: int = Field(256, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(688, gt=0)
    max_position_embeddings: int = Field(2048, gt=0)
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0


def create_llama(
    spec: ScratchModelConfig,
    vocab_size: int,
    seed: int = 0,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` of the given shape, the same for the same seed."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def load_causal_lm(path: str | Path, **kwargs: Any) -> Any:
    """Load any Hugging Face causal LM from a local folder; a bad folder is a one-line error."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise LatentThoughtsError(f"{path}: not a model folder (no config.json)")
    from safetensors import SafetensorError

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # a missing, corrupt or cut weights file
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        what = "a .safetensors weights file is damaged: " if isinstance(exc, SafetensorError) else ""
        raise LatentThoughtsError(f"{path}: cannot load the model ({what}{lines[0][:300]})") from None


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
