"""Selection policies: which of a chunk's K thoughts the M-step trains on."""

from __future__ import annotations

import math

import pytest

from latent_thoughts.em.selection import (
    Candidates,
    get_policy,
    policy_names,
    register_policy,
    select,
    selection_uniform,
    softmax,
)
from latent_thoughts.errors import LatentThoughtsError


def candidates(log_w: list[float], index: int = 0, chunk: str = "It equals 1017. ") -> Candidates:
    return Candidates("doc", index, chunk, [f"thought {k}" for k in range(len(log_w))], log_w)


def test_importance_resampling_picks_k_with_frequency_softmax_of_log_w() -> None:
    """20,000 chunks with the same weights: the counts of each k fit softmax(log w) (chi-square test at
    p = 0.001 with 3 degrees of freedom: 16.27), and each share is within 4 standard errors."""
    log_w = [-3.0, -1.0, -1.5, -4.0]
    expected = softmax(log_w)
    n = 20_000
    counts = [0] * len(log_w)
    for index in range(n):
        chosen = select("importance", candidates(log_w, index), seed=7)
        assert chosen is not None
        counts[chosen] += 1
    chi2 = sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, expected, strict=True))
    assert chi2 < 16.27, (counts, expected)
    for count, p in zip(counts, expected, strict=True):
        assert abs(count / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_selection_is_a_pure_function_of_seed_document_and_chunk() -> None:
    log_w = [-1.0, -1.2, -0.9, -3.0]
    first = [select("importance", candidates(log_w, i), seed=3) for i in range(200)]
    again = [select("importance", candidates(log_w, i), seed=3) for i in range(200)]
    other_seed = [select("importance", candidates(log_w, i), seed=4) for i in range(200)]
    assert first == again
    assert first != other_seed
    assert 0.0 <= selection_uniform(3, "doc", 0) < 1.0


def test_k_of_one_keeps_its_sample() -> None:
    for policy in ("importance", "highest", "uniform"):
        for index in range(50):
            assert select(policy, candidates([-123.4], index), seed=index) == 0


def test_highest_takes_the_largest_weight_and_uniform_ignores_weights() -> None:
    assert select("highest", candidates([-5.0, -0.5, -0.5, -9.0]), seed=0) == 1  # first on ties
    counts = [0, 0, 0, 0]
    for index in range(4000):
        chosen = select("uniform", candidates([0.0, -50.0, -50.0, -50.0], index), seed=1)
        assert chosen is not None
        counts[chosen] += 1
    assert all(800 < count < 1200 for count in counts)  # 1,000 expected each; weights do not matter


def test_checker_policy_keeps_only_thoughts_the_testbed_checker_passes() -> None:
    chunk = "It equals 1017. "
    thoughts = ["37 x 24 = 888. 888 + 129 = 1017.", "37 x 24 = 878. 878 + 129 = 1007.", "Nothing to see."]
    for index in range(20):
        chosen = select("checker", Candidates("doc", index, chunk, thoughts, [-9.0, 0.0, 0.0]), seed=0)
        assert chosen == 0  # the only valid one, whatever its weight
    none_valid = Candidates("doc", 0, chunk, thoughts[1:], [0.0, 0.0])
    assert select("checker", none_valid, seed=0) is None
    with pytest.raises(LatentThoughtsError, match="testbed chunks only"):
        select(
            "checker", Candidates("doc", 0, "Once upon a time = 5 dragons.", ["1 + 1 = 2."], [0.0]), seed=0
        )


def test_policies_are_pluggable_and_unknown_names_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from latent_thoughts.em import selection

    # the registry is process-wide: the policy registered here is gone after the test
    monkeypatch.setattr(selection, "_POLICIES", dict(selection._POLICIES))
    assert {"importance", "highest", "uniform", "checker"} <= set(policy_names())
    with pytest.raises(LatentThoughtsError, match=r"unknown selection policy 'best'.*importance"):
        get_policy("best")
    register_policy("last-for-test", lambda c, u: len(c.thoughts) - 1)
    assert select("last-for-test", candidates([0.0, 0.0, 0.0]), seed=0) == 2
    with pytest.raises(LatentThoughtsError, match="already registered"):
        register_policy("last-for-test", lambda c, u: 0)
    with pytest.raises(LatentThoughtsError, match="NaN"):
        select("importance", candidates([0.0, math.nan]), seed=0)
