"""Which of a chunk's K sampled thoughts becomes its thought in the M-step: pluggable selection policies.

A policy sees one chunk's :class:`Candidates` (its K thoughts as text, their log-weights, the chunk
text) and a uniform number ``u`` in [0, 1) that is a pure function of (seed, document id, chunk
index) (:func:`selection_uniform`), so a selection does not depend on the shard, the batch or the
machine. It returns the index of the chosen thought, or None to keep no thought (the chunk is then
written raw in training).

Policies, by name (``estep.policy`` in a config, ``--policy`` on the command line):

- ``importance`` (the default, METHOD section 5.4): k with probability softmax(log w)_k,
  self-normalised importance resampling by inverse CDF on ``u``; K = 1 keeps its sample;
- ``highest``: the largest log-weight (the first on ties);
- ``uniform``: each of the K with probability 1/K (the samples as the posterior wrote them);
- ``checker``: STaR-style, registered by the testbed experiment
  (:mod:`latent_thoughts.recipes.testbed_em`): a thought the testbed checker passes, drawn uniformly
  among those that pass; None when none passes.

:func:`register_policy` adds another; a plug-in (:func:`~latent_thoughts.em.experiment.load_plugins`)
may register its own when it is imported.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from latent_thoughts.errors import LatentThoughtsError


@dataclass(frozen=True)
class Candidates:
    """One chunk's K sampled thoughts (text, EOL excluded) and their importance log-weights."""

    doc_id: str
    chunk_index: int
    chunk_text: str
    thoughts: Sequence[str]
    log_w: Sequence[float]


Policy = Callable[[Candidates, float], "int | None"]
"""``policy(candidates, u)``: the chosen index in ``range(K)``, or None for no thought."""

_POLICIES: dict[str, Policy] = {}


def register_policy(name: str, policy: Policy) -> None:
    """Make ``policy`` selectable as ``name`` (a name already taken is an error)."""
    if name in _POLICIES:
        raise LatentThoughtsError(f"selection policy {name!r} is already registered")
    _POLICIES[name] = policy


def policy_names() -> list[str]:
    """The registered policy names (the plug-ins' included), sorted."""
    from latent_thoughts.em.experiment import load_plugins

    load_plugins()
    return sorted(_POLICIES)


def get_policy(name: str) -> Policy:
    """The policy called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in _POLICIES:
        from latent_thoughts.em.experiment import load_plugins

        load_plugins()
    try:
        return _POLICIES[name]
    except KeyError:
        raise LatentThoughtsError(
            f"unknown selection policy {name!r}; choose one of {', '.join(policy_names())}"
        ) from None


def selection_uniform(seed: int, doc_id: str, chunk_index: int) -> float:
    """A uniform number in [0, 1), a pure function of (seed, document id, chunk index)."""
    digest = hashlib.sha256(f"select\x00{seed}\x00{doc_id}\x00{chunk_index}".encode()).digest()
    return struct.unpack(">Q", digest[:8])[0] / 2**64


def select(policy: str | Policy, candidates: Candidates, seed: int) -> int | None:
    """Apply ``policy`` (a name or a function) to ``candidates`` with the chunk's seeded uniform."""
    if not candidates.thoughts or len(candidates.thoughts) != len(candidates.log_w):
        raise LatentThoughtsError(
            f"chunk {candidates.chunk_index} of {candidates.doc_id!r}: {len(candidates.thoughts)} thoughts "
            f"but {len(candidates.log_w)} log-weights"
        )
    chosen = (get_policy(policy) if isinstance(policy, str) else policy)(
        candidates, selection_uniform(seed, candidates.doc_id, candidates.chunk_index)
    )
    if chosen is not None and not 0 <= chosen < len(candidates.thoughts):
        raise LatentThoughtsError(
            f"selection policy returned {chosen} for {len(candidates.thoughts)} thoughts"
        )
    return chosen


def softmax(log_w: Sequence[float]) -> list[float]:
    """Normalised weights exp(log w_k) / sum_j exp(log w_j), computed stably."""
    if any(math.isnan(value) for value in log_w):
        raise LatentThoughtsError("a log-weight is NaN")
    top = max(log_w)
    if top == -math.inf:
        raise LatentThoughtsError("every log-weight is -inf")
    exps = [math.exp(value - top) for value in log_w]
    total = sum(exps)
    return [value / total for value in exps]


def importance_resampling(candidates: Candidates, u: float) -> int:
    """k with probability softmax(log w)_k: the first k whose cumulative weight exceeds ``u``."""
    cumulative = 0.0
    weights = softmax(candidates.log_w)
    for index, weight in enumerate(weights):
        cumulative += weight
        if u < cumulative:
            return index
    return max(i for i, w in enumerate(weights) if w > 0)  # u within rounding of 1


def highest_weight(candidates: Candidates, u: float) -> int:
    """The largest log-weight (the first on ties); ``u`` is not used."""
    log_w = list(candidates.log_w)
    return log_w.index(max(log_w))


def uniform_choice(candidates: Candidates, u: float) -> int:
    """Each thought with probability 1/K."""
    return min(int(u * len(candidates.thoughts)), len(candidates.thoughts) - 1)


register_policy("importance", importance_resampling)
register_policy("highest", highest_weight)
register_policy("uniform", uniform_choice)
