"""The E-step of one chunk (METHOD section 5): K thoughts from the posterior, scored in both roles.

The layout (the truncated prefix c and chunk x, the posterior prompt, the joint context) comes from
:func:`latent_thoughts.format.e_step_layout`; this module runs an engine over it:

1. :func:`sample_thoughts` draws K thoughts from ``BOS c SOL EOL x SOL POST`` at the proposal
   temperature T (1, the paper's, by default) and top-p 1. The stop rule is explicit: a thought ends
   at EOL, never at EOS (EOS is an ordinary token inside a thought), or at the thought budget. The
   budget ``max_thought_tokens`` counts the closing EOL, so the sampler draws at most
   ``max_thought_tokens - 1`` tokens: a thought it cuts there gets an EOL appended
   (:func:`closed_thought`) and still fits the budget, and the layout's context exactly.
2. :func:`score_thoughts` computes log q_T(z | c, x) and log p(z, x | c) on ONE numeric path: both are
   shared-context scoring of the same engine (:meth:`~latent_thoughts.engines.base.Engine.score_many`,
   both roles of a chunk in one :func:`~latent_thoughts.engines.base.score_groups` call: same
   precision, same kind of forward pass, each context computed once), never the sampler's own
   log-probabilities, which come from another kind of pass (incremental decoding) and can differ
   by rounding (bf16: tenths of a nat). log q covers exactly the tokens the sampler drew, under the
   law it drew them from (log_softmax(logits / T)): the thought and its EOL when EOL was drawn
   (finish ``stop``), the drawn tokens only when the budget cut the thought (finish ``length``; the
   appended EOL is not drawn, it follows from the cut with probability 1). log p covers the closed
   thought as the joint model and the training format see it, ``PRIOR z EOL x``, at temperature 1.
   So when the two roles see the same tokens under the same law, log w is 0 to float rounding
   (tested to 1e-6).
3. log w = log p - log q_T: summed log-probs, no length normalisation. It is an exact importance
   weight of the proposal that drew z, so log (1/K) sum w stays a lower bound (in expectation) on
   log p(x | c) at any T; T only changes how good the proposal is.

Cut thoughts stay in the selection with this exact q: the map from what the sampler produced to a
closed thought is one to one (a cut thought has ``max_thought_tokens - 1`` tokens before its EOL,
longer than any thought the sampler closed), so q of a cut thought, the probability of its drawn
prefix, is the probability that the proposal yields that closed thought.

Per chunk, :func:`log_mean_weight` is the importance-weighted bound log (1/K) sum w and
:func:`effective_sample_size` the ESS (sum w)^2 / sum w^2 (METHOD section 5, health metrics). The
stage over a chunk file is :mod:`latent_thoughts.em.stage`; the choice of one thought,
:mod:`latent_thoughts.em.selection`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from latent_thoughts.engines.base import Engine, Prompt, Sample, score_groups
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import EStepLayout


@dataclass(frozen=True)
class ThoughtScore:
    """One thought of a chunk: its token ids (closed by EOL), log q(z | c, x) and log p(z, x | c);
    ``finish_reason`` says whether the sampler ended it at EOL (``stop``) or at the budget (``length``,
    EOL then appended, and left out of log q: the sampler never drew it)."""

    thought_ids: list[int]
    log_q: float
    log_p: float
    finish_reason: str = "stop"

    @property
    def log_w(self) -> float:
        """The importance log-weight log p(z, x | c) - log q(z | c, x)."""
        return self.log_p - self.log_q


def check_proposal(max_thought_tokens: int, temperature: float) -> None:
    """A one-line error for a thought budget below 1 or a temperature that is not finite and > 0."""
    if max_thought_tokens < 1:
        raise LatentThoughtsError(
            f"max_thought_tokens must be at least 1 (EOL included), got {max_thought_tokens}"
        )
    if not math.isfinite(temperature) or temperature <= 0:
        raise LatentThoughtsError(f"the proposal temperature must be finite and > 0, got {temperature}")


def sample_thoughts(
    engine: Engine,
    layouts: Sequence[EStepLayout],
    k: int,
    max_thought_tokens: int,
    seed: int | None = None,
    temperature: float = 1.0,
) -> list[list[Sample]]:
    """K thoughts for each chunk's posterior prompt: ``temperature`` (1: the paper's), top-p 1, stop at
    EOL only.

    ``max_thought_tokens`` must be the thought budget the layouts were made with (EOL included): the
    sampler draws at most ``max_thought_tokens - 1`` tokens, leaving the EOL's position for the EOL
    :func:`closed_thought` appends to a cut thought (a budget of 1 draws nothing: every thought is
    the empty one, with log q 0).
    """
    check_proposal(max_thought_tokens, temperature)
    if not layouts:
        return []
    eol = layouts[0].special.eol
    return engine.sample(
        [layout.posterior_prompt for layout in layouts],
        k,
        temperature=temperature,
        top_p=1.0,
        max_new_tokens=max_thought_tokens - 1,
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
    temperature: float = 1.0,
) -> list[tuple[float, float]]:
    """(log q, log p) of each thought from a posterior (context, continuations) and a joint one.

    Both go through the engine's shared-context scoring, in ONE
    :func:`~latent_thoughts.engines.base.score_groups` call (the transformers engine puts both roles
    in one batch where that adds little padding, else in two), so both come from the same numeric
    path: the posterior at ``temperature`` (the proposal's law), the joint at 1. Only this chunk's
    tokens are in that call: a chunk's scores never depend
    on which other chunks share its batch, its shard or a resumed run (they are stored, and sharded
    and unsharded runs must write the same numbers).
    """
    if len(posterior[1]) != len(joint[1]):
        raise LatentThoughtsError(f"{len(posterior[1])} posterior but {len(joint[1])} joint continuations")
    log_q, log_p = score_groups(engine, [posterior, joint], temperature=[temperature, 1.0])
    return [(q.logprob, p.logprob) for q, p in zip(log_q, log_p, strict=True)]


def score_thoughts(
    engine: Engine, layout: EStepLayout, thoughts: Sequence[Sequence[int]], temperature: float = 1.0
) -> list[ThoughtScore]:
    """Score a chunk's thoughts (token ids exactly as sampled) in both roles: log q, log p and log w.

    A thought that ends with EOL was closed by the sampler (``stop``): log q covers it, EOL included.
    One that does not was cut at the budget (``length``): log q covers its drawn tokens only, the
    probability that the proposal produced this cut (the EOL appended after it is certain given the
    cut, so it has probability 1 and no place in q). log p always scores the closed thought
    ``PRIOR z EOL x``, what the joint model and the training format see. ``temperature`` must be the
    one the thoughts were sampled at (log q_T: log_softmax(logits / T)); log p is at temperature 1.
    """
    eol = layout.special.eol
    drawn = [list(ids) for ids in thoughts]
    closed = [closed_thought(layout, ids) for ids in drawn]
    pairs = score_roles(
        engine,
        (layout.posterior_prompt, drawn),
        (layout.joint_context, [layout.joint_continuation(ids) for ids in closed]),
        temperature,
    )
    return [
        ThoughtScore(ids, log_q, log_p, "stop" if raw[-1:] == [eol] else "length")
        for raw, ids, (log_q, log_p) in zip(drawn, closed, pairs, strict=True)
    ]


def estep_chunks(
    engine: Engine,
    layouts: Sequence[EStepLayout],
    k: int,
    max_thought_tokens: int,
    seed: int | None = None,
    temperature: float = 1.0,
) -> list[list[ThoughtScore]]:
    """The E-step of several chunks: K thoughts each (:func:`sample_thoughts`, at ``temperature``),
    scored in both roles (:func:`score_thoughts`, chunk by chunk, log q at the same temperature);
    ``result[i]`` holds chunk i's K scored thoughts. The EM loop resamples from their weights; the
    validation ELBO (:mod:`latent_thoughts.evaluate.likelihood`) averages them."""
    samples = sample_thoughts(engine, layouts, k, max_thought_tokens, seed, temperature)
    # each score's finish reason is read off its drawn ids (EOL last: ``stop``), the same test that
    # decides what log q covers
    return [
        score_thoughts(engine, layout, [sample.token_ids for sample in group], temperature)
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
