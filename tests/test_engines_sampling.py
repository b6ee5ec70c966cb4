"""The transformers engine's sampling parts: batch planning within the memory bound, the token draw."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_thoughts.engines.padding import left_pad
from latent_thoughts.engines.sampling import (
    BLOCK,
    draw,
    inverse_cdf,
    padded_width,
    plan_batches,
    plan_score_batches,
    row_seed,
)


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=12),
    n=st.integers(1, 6),
    new=st.integers(0, 20),
    budget=st.integers(1, 400),
    multiple=st.sampled_from([0, 8, 64]),
)
def test_every_sample_is_planned_once_within_the_memory_bound(lengths, n, new, budget, multiple) -> None:
    batches = list(plan_batches(lengths, n, new, budget, multiple))
    planned = sorted((prompt, s) for batch in batches for prompt, samples in batch for s in samples)
    assert planned == [(p, s) for p in range(len(lengths)) for s in range(n)]
    for batch in batches:
        rows = sum(len(samples) for _, samples in batch)
        widths = {padded_width(lengths[prompt], multiple) for prompt, _ in batch}
        if multiple:
            assert len(widths) == 1  # no prompt is padded further because of another
        assert rows == 1 or rows * (max(widths) + new) <= budget  # one row always runs, whatever the bound


def test_a_prompts_padded_width_depends_on_its_own_length_only() -> None:
    assert [padded_width(n) for n in (0, 1, 63, 64, 65, 128, 129)] == [64, 64, 64, 64, 128, 128, 192]
    assert [padded_width(n, 8) for n in (1, 9)] == [8, 16] and padded_width(37, 0) == 37
    ids, mask, positions = left_pad([[5, 6], [7]], pad_id=0, width=64)
    assert ids.shape == mask.shape == positions.shape == (2, 64)
    assert ids[0, -2:].tolist() == [5, 6] and mask[0].sum() == 2 and positions[0, -1] == 1
    assert mask[1].sum() == 1 and positions[1, -1] == 0


@settings(max_examples=100, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.integers(1, 60), st.lists(st.integers(0, 30), max_size=6)), min_size=1, max_size=8
    ),
    budget=st.integers(1, 400),
)
def test_every_continuation_is_scored_once_within_the_memory_bound(groups, budget) -> None:
    batches = list(plan_score_batches(groups, budget))
    planned = sorted((g, i) for batch in batches for g, members in batch for i in members)
    assert planned == [(g, i) for g, (_, lengths) in enumerate(groups) for i, n in enumerate(lengths) if n]
    for batch in batches:
        rows = sum(len(members) for _, members in batch)
        context = max(groups[g][0] for g, _ in batch)
        continuation = max(groups[g][1][i] for g, members in batch for i in members)
        assert rows == 1 or rows * (context + continuation) <= budget


def test_score_batches_join_groups_of_similar_shape_only() -> None:
    """Longest first; two groups share a batch only when that adds little padding: a long context
    with short continuations and a short context with a long continuation go separately."""
    groups = [(20, [10, 10]), (21, [9, 10]), (5, [40]), (8, [0, 0])]
    assert list(plan_score_batches(groups, 10_000)) == [[(2, [0])], [(1, [0, 1]), (0, [0, 1])]]


def test_draw_bans_tokens_and_greedy_is_a_point_mass() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 0.0, 0.0]])
    tokens, logprobs = draw(
        logits, torch.tensor([0.5, 0.5], dtype=torch.float64), 0.0, 1.0, torch.tensor([1])
    )
    assert tokens.tolist() == [3, 0] and logprobs.tolist() == [0.0, 0.0]
    tokens, logprobs = draw(
        logits, torch.tensor([0.99, 0.99], dtype=torch.float64), 1.0, 1.0, torch.tensor([1])
    )
    assert 1 not in tokens.tolist()
    allowed = logits.clone()
    allowed[:, 1] = float("-inf")
    expected = torch.log_softmax(allowed, -1).gather(1, tokens[:, None]).squeeze(1)
    assert torch.allclose(logprobs, expected)
    assert row_seed(1, [1, 2], 0) != row_seed(1, [1, 2], 1) == row_seed(1, [1, 2], 1)


def test_left_padding_puts_every_row_at_the_end() -> None:
    ids, mask, positions = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_a_tiny_temperature_is_greedy_not_the_last_token() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 0.0, 0.0]])
    uniforms = torch.tensor([0.5, 0.99], dtype=torch.float64)
    for temperature in (1e-300, 1e-30, 1e-6):
        tokens, logprobs = draw(logits, uniforms, temperature, 1.0)
        assert tokens.tolist() == [1, 0] and logprobs.tolist() == [0.0, 0.0]


def test_the_engine_refuses_non_finite_temperatures(tiny_model_dir) -> None:
    import pytest

    from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from latent_thoughts.errors import LatentThoughtsError

    engine = TransformersEngine(
        TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu")
    )
    for value in (float("nan"), float("inf")):
        with pytest.raises(LatentThoughtsError, match="finite"):
            engine.sample(["We know"], temperature=value, max_new_tokens=2)
    greedy = engine.sample(["We know"], temperature=0.0, max_new_tokens=5)[0][0]
    tiny = engine.sample(["We know"], temperature=1e-300, max_new_tokens=5)[0][0]
    assert tiny.token_ids == greedy.token_ids


def test_the_two_level_inverse_cdf_picks_what_one_float64_cumulative_sum_picks() -> None:
    generator = torch.Generator().manual_seed(0)
    for vocab in (300, 32_000, 32_004):  # one level; two levels; two with a padded last block
        probs = torch.softmax(3 * torch.randn(64, vocab, generator=generator), dim=-1)
        uniforms = torch.rand(64, generator=generator, dtype=torch.float64)
        cdf = probs.double().cumsum(dim=-1)
        expected = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(1)
        assert inverse_cdf(probs, uniforms).tolist() == expected.tolist()


def test_the_inverse_cdf_never_returns_an_id_without_mass() -> None:
    vocab = 4 * BLOCK + 7
    probs = torch.rand(6, vocab, generator=torch.Generator().manual_seed(1))
    probs[:, -BLOCK - 7 :] = 0.0  # the last block and a half carry nothing
    probs[:, 3 * BLOCK - 1] = 0.0  # nor the last id of the block before
    top = torch.tensor([0.0, 0.5, 0.999999, 1 - 1e-16, 0.999999999, 0.25], dtype=torch.float64)
    picks = inverse_cdf(probs, top)
    assert all(probs[row, pick] > 0 for row, pick in enumerate(picks.tolist()))
    # and frequencies follow the probabilities
    weights = torch.tensor([[0.1, 0.0, 0.6, 0.3] + [0.0] * (vocab - 4)])
    draws = inverse_cdf(weights.expand(100_000, vocab), torch.rand(100_000, dtype=torch.float64))
    frequency = torch.bincount(draws, minlength=vocab)[:4].double() / 100_000
    assert torch.allclose(frequency, weights[0, :4].double(), atol=0.01)
