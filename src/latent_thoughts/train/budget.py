"""Token and FLOP budgets: turning a budget into optimizer steps, and matching the paper's baselines.

Conventions (Kaplan et al. 2020; PaLM appendix B):

- a *training token* is any token of a packed window (thoughts and special tokens included);
- training a model of ``N`` parameters costs about ``6 N`` FLOPs per token (forward 2N, backward 4N)
  plus attention, ``12 * layers * hidden * seq_len`` per token (PaLM's count, the full square);
- a forward pass alone (sampling or scoring, as the E-step does) costs about ``2 N`` per token plus a
  third of the attention term.

``N`` counts the matrices a token passes through: every parameter except the input embedding, which
is a lookup, not a multiply; tied input/output embeddings count once, as the output projection.
"""

from __future__ import annotations

import math
from typing import Any


def steps_for_tokens(total_tokens: int, seq_len: int, global_batch: int) -> int:
    """Optimizer steps that cover ``total_tokens``: ceil(tokens / (seq_len * global_batch)), at least 1.

    The budget is rounded up to whole steps, so a run trains on ``steps * seq_len * global_batch``
    tokens, at most one step more than asked.
    """
    if total_tokens <= 0 or seq_len <= 0 or global_batch <= 0:
        raise ValueError(
            f"need positive sizes, got tokens={total_tokens}, seq_len={seq_len}, batch={global_batch}"
        )
    return max(1, math.ceil(total_tokens / (seq_len * global_batch)))


def tokens_for_steps(steps: int, seq_len: int, global_batch: int) -> int:
    """Training tokens of ``steps`` optimizer steps."""
    return steps * seq_len * global_batch


def epochs_for_budget(total_tokens: int, data_tokens: int) -> float:
    """Passes over ``data_tokens`` of data that a budget of ``total_tokens`` makes (the raw-repeated
    baseline trains raw data for this many epochs to reach an augmented run's token budget)."""
    if data_tokens <= 0:
        raise ValueError("data_tokens must be positive")
    return total_tokens / data_tokens


def matmul_parameters(model: Any) -> int:
    """Parameters that cost FLOPs per token: all distinct parameters except an untied input embedding."""
    distinct = {id(p): p for p in model.parameters()}
    count = sum(p.numel() for p in distinct.values())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return count if tied else count - embedding.numel()


def training_flops_per_token(
    n_params: int, num_layers: int = 0, hidden_size: int = 0, seq_len: int = 0
) -> float:
    """FLOPs to train on one token: 6N plus attention 12 * layers * hidden * seq_len (0 to leave it out)."""
    return 6.0 * n_params + 12.0 * num_layers * hidden_size * seq_len


def forward_flops_per_token(
    n_params: int, num_layers: int = 0, hidden_size: int = 0, seq_len: int = 0
) -> float:
    """FLOPs of one token of a forward pass (sampling with a KV cache, or scoring): 2N plus attention."""
    return 2.0 * n_params + 4.0 * num_layers * hidden_size * seq_len


def model_flops_per_token(model: Any, seq_len: int) -> float:
    """Training FLOPs per token of a Hugging Face decoder at context ``seq_len`` (see module notes)."""
    config = model.config
    return training_flops_per_token(
        matmul_parameters(model), int(config.num_hidden_layers), int(config.hidden_size), seq_len
    )


def raw_tokens_matched_in_flops(
    train_tokens: int,
    train_flops_per_token: float,
    extra_flops: float = 0.0,
    raw_flops_per_token: float | None = None,
) -> int:
    """Raw training tokens that cost the same FLOPs as an augmented run (the FLOP-matched baseline).

    The augmented run trains ``train_tokens`` at ``train_flops_per_token`` and also spends
    ``extra_flops`` outside training: the E-step's sampling and scoring (use
    :func:`forward_flops_per_token` times the generated and scored tokens), or a teacher's cost where it
    is counted. The raw run (``raw_flops_per_token``, default the same model) gets the same total.
    """
    per_raw = train_flops_per_token if raw_flops_per_token is None else raw_flops_per_token
    if per_raw <= 0:
        raise ValueError("FLOPs per token must be positive")
    return math.ceil((train_tokens * train_flops_per_token + extra_flops) / per_raw)


def estep_flops(
    n_params: int,
    sampled_tokens: int,
    scored_tokens: int,
    num_layers: int = 0,
    hidden_size: int = 0,
    seq_len: int = 0,
) -> float:
    """FLOPs of an E-step: forward passes over the prompt and sampled tokens (posterior role) and over
    the scored joint sequences (prior role); pass the token totals of all K samples of all chunks."""
    per_token = forward_flops_per_token(n_params, num_layers, hidden_size, seq_len)
    return per_token * (sampled_tokens + scored_tokens)
