"""The E-step of one chunk (METHOD section 5): K thoughts from the posterior, scored in both roles.

The layout (the truncated prefix c and chunk x, the posterior prompt, the joint context) comes from
:func:`latent_thoughts.format.e_step_layout`; this module runs an engine over it:

1. :func:`sample_thoughts` draws K thoughts from ``BOS c SOL EOL x SOL POST`` at temperature 1 and
   top-p 1. The stop rule is explicit: a thought ends at EOL, never at EOS (EOS is an ordinary token
   inside a thought), or at the thought budget.
2. :func:`score_thoughts` computes log q(z | c, x) and log p(z, x | c) on ONE numeric path: both are
   shared-context scoring of the same engine (:meth:`~latent_thoughts.engines.base.Engine.score_many`,
   both roles of a chunk in one :func:`~latent_thoughts.engines.base.score_groups` call: same
   precision, same kind of forward pass, each context computed once), never the sampler's own
   log-probabilities, which come from another kind of pass (incremental decoding) and can differ
   by rounding (bf16: tenths of a nat). log q covers the thought and its EOL; log p covers
   ``PRIOR z EOL x``. So when the two roles see the same tokens under the same law, log w is 0 to
   float rounding (tested to 1e-6).
3. log w = log p - log q: summed log-probs, no length normalisation, no temperature.

Per chunk, :func:`log_mean_weight` is the importance-weighted bound log (1/K) sum w and
:func:`effective_sample_size` the ESS (sum w)^2 / sum w^2 (METHOD section 5, health metrics). The
stage over a chunk file is :mod:`latent_thoughts.em.stage`; the choice of one thought,
:mod:`latent_thoughts.em.selection`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from latent_thoughts.engines.base import Engine, Prompt, Sample, score_groups
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import EStepLayout


@dataclass(frozen=True)
class ThoughtScore:
    """One thought of a chunk: its token ids (closed by EOL), log q(z | c, x) and log p(z, x | c);
    ``finish_reason`` says whether the sampler ended it at EOL (``stop``) or at the budget (``length``,
    EOL then appended)."""

    thought_ids: list[int]
    log_q: float
    log_p: float
    finish_reason: str = "stop"

    @property
    def log_w(self) -> float:
        """The importance log-weight log p(z, x | c) - log q(z | c, x)."""
        return self.log_p - self.log_q


def sample_thoughts(
    engine: Engine,
    layouts: Sequence[EStepLayout],
    k: int,
    max_thought_tokens: int,
    seed: int | None = None,
) -> list[list[Sample]]:
    """K thoughts for each chunk's posterior prompt: temperature 1, top-p 1, stop at EOL only.

    ``max_thought_tokens`` must be the thought budget the layouts were made with (EOL included).
    """
    if not layouts:
        return []
    eol = layouts[0].special.eol
    return engine.sample(
        [layout.posterior_prompt for layout in layouts],
        k,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=max_thought_tokens,
        stop=[eol],
        stop_on_eos=False,
        seed=seed,
    )


def closed_thought(layout: EStepLayout, token_ids: Sequence[int]) -> list[int]:
    """A sampled thought's ids ending with EOL (appended when the budget ended it before EOL)."""
    ids = list(token_ids)
    if ids[-1:] != [layout.special.eol]:
        ids.append(layout.special.eol)
    return ids


def score_roles(
    engine: Engine,
    posterior: tuple[Prompt, Sequence[Prompt]],
    joint: tuple[Prompt, Sequence[Prompt]],
) -> list[tuple[float, float]]:
    """(log q, log p) of each thought from a posterior (context, continuations) and a joint one.

    Both go through the engine's shared-context scoring, in ONE
    :func:`~latent_thoughts.engines.base.score_groups` call (the transformers engine puts both roles
    in one batch where that adds little padding, else in two), so both come from the same numeric
    path. Only this chunk's tokens are in that call: a chunk's scores never depend
    on which other chunks share its batch, its shard or a resumed run (they are stored, and sharded
    and unsharded runs must write the same numbers).
    """
    if len(posterior[1]) != len(joint[1]):
        raise LatentThoughtsError(f"{len(posterior[1])} posterior but {len(joint[1])} joint continuations")
    log_q, log_p = score_groups(engine, [posterior, joint])
    return [(q.logprob, p.logprob) for q, p in zip(log_q, log_p, strict=True)]


def score_thoughts(
    engine: Engine, layout: EStepLayout, thoughts: Sequence[Sequence[int]]
) -> list[ThoughtScore]:
    """Score a chunk's thoughts (token ids, as sampled) in both roles: log q, log p and log w."""
    closed = [closed_thought(layout, ids) for ids in thoughts]
    pairs = score_roles(
        engine,
        (layout.posterior_prompt, closed),
        (layout.joint_context, [layout.joint_continuation(ids) for ids in closed]),
    )
    return [ThoughtScore(ids, log_q, log_p) for ids, (log_q, log_p) in zip(closed, pairs, strict=True)]


def estep_chunks(
    engine: Engine,
    layouts: Sequence[EStepLayout],
    k: int,
    max_thought_tokens: int,
    seed: int | None = None,
) -> list[list[ThoughtScore]]:
    """The E-step of several chunks: K thoughts each (:func:`sample_thoughts`), scored in both roles
    (:func:`score_thoughts`, chunk by chunk); ``result[i]`` holds chunk i's K scored thoughts. The EM
    loop resamples from their weights; the validation ELBO (:mod:`latent_thoughts.evaluate.likelihood`)
    averages them."""
    samples = sample_thoughts(engine, layouts, k, max_thought_tokens, seed)
    return [
        [
            replace(score, finish_reason=sample.finish_reason)
            for score, sample in zip(
                score_thoughts(engine, layout, [sample.token_ids for sample in group]), group, strict=True
            )
        ]
        for layout, group in zip(layouts, samples, strict=True)
    ]


def log_mean_weight(scores: Sequence[ThoughtScore]) -> float:
    """log (1/K) sum_k w_k of a chunk's K thoughts, computed stably (the chunk's ELBO(K) term)."""
    if not scores:
        raise LatentThoughtsError("no thoughts to average")
    log_ws = [score.log_w for score in scores]
    top = max(log_ws)
    return top + math.log(sum(math.exp(log_w - top) for log_w in log_ws) / len(log_ws))


def effective_sample_size(scores: Sequence[ThoughtScore]) -> float:
    """(sum_k w_k)^2 / sum_k w_k^2 of a chunk's K thoughts, computed stably: K for equal weights, 1
    when one weight dominates the rest."""
    if not scores:
        raise LatentThoughtsError("no thoughts to weigh")
    log_ws = [score.log_w for score in scores]
    top = max(log_ws)
    weights = [math.exp(log_w - top) for log_w in log_ws]
    return sum(weights) ** 2 / sum(weight * weight for weight in weights)
