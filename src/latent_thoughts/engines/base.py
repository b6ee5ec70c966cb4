"""The protocol every language model is used through.

Engines know nothing of thoughts: they sample continuations with log-probabilities, score
continuations given contexts, and answer chat conversations. Prompts are text or token ids; the
E-step works on token ids so that log q and log p are computed on exactly the sampled tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

from latent_thoughts.errors import LatentThoughtsError

Prompt = str | Sequence[int]
"""A prompt or continuation: text (tokenised by the engine) or token ids."""

FinishReason = Literal["stop", "length", "error"]


class ChatMessage(TypedDict):
    """One chat turn, as in the OpenAI API: ``{"role": "user", "content": "..."}``."""

    role: str
    content: str


@dataclass
class Sample:
    """One sampled continuation.

    ``token_ids`` are the generated tokens (a stop token included when generation stopped on one);
    ``token_logprobs[i]`` is log-probability of ``token_ids[i]`` under the distribution sampled from
    (after temperature and top-p). ``text`` is the decoded continuation without the stop string.
    """

    token_ids: list[int]
    text: str
    token_logprobs: list[float]
    finish_reason: FinishReason

    @property
    def logprob(self) -> float:
        """Summed log-probability of the sample."""
        return float(sum(self.token_logprobs))


@dataclass
class Score:
    """Log-probabilities of a continuation given its context, one per continuation token."""

    token_logprobs: list[float]

    @property
    def logprob(self) -> float:
        """Summed log-probability of the continuation."""
        return float(sum(self.token_logprobs))


@dataclass
class ChatReply:
    """One answer to a chat conversation, with its token usage."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0


MAX_USAGE_TOKENS = 10**12
"""Most tokens one reply may report in one usage field (a larger count is a malformed reply)."""


def usage_counts(body: Any) -> tuple[int, int]:
    """``prompt_tokens`` and ``completion_tokens`` of a response body's ``usage`` (absent: 0).

    Raises ValueError naming the field unless each is a whole number in [0, ``MAX_USAGE_TOKENS``]:
    a reply claiming ``1e300`` or ``-5`` tokens is malformed, never cached or priced.
    """
    usage = body.get("usage") if isinstance(body, dict) else None
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        raise ValueError(f"usage is {type(usage).__name__}, not an object")
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        value = usage.get(name)
        if value is None:
            counts.append(0)
            continue
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole or not 0 <= value <= MAX_USAGE_TOKENS:
            try:
                shown = repr(value)[:40]
            except ValueError:  # an int too long for str()
                shown = "a number too long to print"
            raise ValueError(f"usage.{name} must be a whole number from 0 to {MAX_USAGE_TOKENS}, got {shown}")
        counts.append(int(value))
    return counts[0], counts[1]


@dataclass
class Usage:
    """Running totals of what an engine has consumed, for cost accounting."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def add(self, other: Usage) -> None:
        """Add ``other``'s counts to these."""
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.retries += other.retries
        for reason, count in other.failures.items():
            self.failures[reason] = self.failures.get(reason, 0) + count


@runtime_checkable
class Engine(Protocol):
    """A language model that can sample, score and chat.

    ``identity`` names the model and its settings stably (used in cache keys); ``usage`` accumulates
    requests and tokens; ``device`` says where the model runs: a torch device (``cpu``, ``cuda:0``)
    for a model in this process, ``remote`` for one behind a server (placement is then the
    server's own device option).
    """

    identity: str
    usage: Usage
    device: str

    def sample(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        stop: Sequence[str | int] = (),
        seed: int | None = None,
        stop_on_eos: bool | None = None,
        banned_ids: Sequence[int] = (),
    ) -> list[list[Sample]]:
        """Draw ``n`` samples for each prompt; returns one list of ``n`` samples per prompt.

        ``temperature`` 0 is greedy decoding. ``stop`` holds token ids (the sample ends with that
        token) and strings. ``stop_on_eos`` says whether the model's end-of-sequence token also ends a
        sample (None: the engine's default, normally yes); pass False to stop only at ``stop``, as the
        E-step does (thoughts end at EOL, never at EOS). ``banned_ids`` are never generated.
        """
        ...

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[Score]:
        """Log-probability of each continuation given its context (pairs matched by position)."""
        ...

    def score_many(
        self, context: Prompt, continuations: Sequence[Prompt], *, temperature: float = 1.0
    ) -> list[Score]:
        """Log-probability of each of several continuations of ONE context (the K thoughts of a
        chunk), computing the context once where the engine can; equal to ``score`` of the pairs.

        ``temperature`` T scores under the tempered law softmax(logits / T), the law
        ``sample(..., temperature=T, top_p=1)`` draws from (1, the default: the model's own law). An
        engine that cannot score at T != 1 raises :class:`~latent_thoughts.errors.LatentThoughtsError`.
        """
        ...

    def chat(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[list[ChatReply]]:
        """Answer each conversation ``n`` times; returns one list of ``n`` replies per conversation."""
        ...


def score_groups(
    engine: Engine,
    groups: Sequence[tuple[Prompt, Sequence[Prompt]]],
    temperature: float | Sequence[float] = 1.0,
) -> list[list[Score]]:
    """``engine.score_many`` of each (context, continuations) group; ``result[g][i]`` scores
    continuation i of group g. Engines with a ``score_groups`` method (the transformers engine: one
    batched pass over many groups; the HTTP engine: all requests at once) answer in one call; any
    other engine gets one ``score_many`` call per group.

    ``temperature`` is one for every group or one per group (the E-step scores its posterior role at
    the proposal's temperature and its joint role at 1 in one call). It is passed on only where some
    group's differs from 1, so an engine without a ``temperature`` parameter still scores at 1.
    """
    temperatures = (
        [float(temperature)] * len(groups)
        if isinstance(temperature, (int, float))
        else [float(t) for t in temperature]
    )
    if len(temperatures) != len(groups):
        raise LatentThoughtsError(f"{len(temperatures)} temperatures for {len(groups)} scoring groups")
    tempered = any(t != 1.0 for t in temperatures)
    batched = getattr(engine, "score_groups", None)
    if callable(batched):
        return list(batched(groups, temperature=temperatures) if tempered else batched(groups))
    if tempered:
        return [
            engine.score_many(context, continuations, temperature=t)
            for (context, continuations), t in zip(groups, temperatures, strict=True)
        ]
    return [engine.score_many(context, continuations) for context, continuations in groups]
