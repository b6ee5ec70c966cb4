"""The oracle teacher: an engine that writes the correct derivation behind any testbed chunk.

It answers the chat form of the engine protocol. Given a latent-thought prompt
(:class:`latent_thoughts.prompts.LatentThoughtPrompt`) it recovers (prefix, chunk), reads the
chunk's sentences back from their text (never by document id, so any chunking works) and writes
the derivation of each in the ground-truth style of :mod:`latent_thoughts.testbed.world`. A
continuation sentence ("Adding 129 gives 1146.") takes the previous result from the sentence before
it, in the chunk or at the end of the prefix; without one it recovers it from the stated result.

With ``noise > 0`` it is an imperfect teacher: each (prefix, chunk, sample index, seed) is, by a
hash, noisy with probability ``noise``; a noisy thought is either **irrelevant** (a remark with no
arithmetic, share ``irrelevant_share``) or has a **wrong step** (one claim's value is off). Reruns
are identical; sampling parameters other than the seed change nothing.

Rephrasing prompts (:class:`latent_thoughts.prompts.RephrasePrompt`, the WRAP baselines) get a
deterministic restatement of each sentence in the requested style; "cot" writes the derivation
before each sentence. ``sample`` and ``score`` raise: the oracle only chats.
"""

from __future__ import annotations

from collections.abc import Sequence

from latent_thoughts.engines.base import ChatMessage, ChatReply, FinishReason, Prompt, Sample, Score, Usage
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.prompts import CLOSE, OPEN, WRAP_COT_INSTRUCTION, WRAP_STYLES, split_latent_prompt
from latent_thoughts.testbed.world import (
    CONTINUATION_VERBS,
    ParsedSentence,
    TestbedConfig,
    apply,
    claim,
    parse_sentence,
    parse_text,
    split_sentences,
    uniform,
)

IRRELEVANT_REMARKS: tuple[str, ...] = (
    "Multiplication distributes over addition, so a product can be split by place value.",
    "Adding whole numbers column by column starts from the ones place.",
    "Writing intermediate values down makes a long calculation easier to check.",
    "A product of two whole numbers is again a whole number.",
    "Order does not matter in a product, since multiplication is commutative.",
)
"""Thoughts an irrelevant oracle writes: true remarks that make no claim about the chunk."""


def previous_result(prefix: str) -> int | None:
    """The result stated by the last sentence of ``prefix``, or None if it is not a testbed sentence."""
    sentences = split_sentences(prefix)
    reading = parse_sentence(sentences[-1]) if sentences else None
    return None if reading is None else reading.result


def sentence_claims(sentence: ParsedSentence, previous: int | None) -> list[str]:
    """The derivation of one sentence as claims; ``previous`` is the result before a continuation
    (None: recover it from the stated result by the inverse operation)."""
    if sentence.statement is not None:
        return sentence.statement.derivation()
    assert sentence.continuation is not None
    op, operand = sentence.continuation
    if previous is None:
        previous = apply(sentence.result, "-" if op == "+" else "+", operand)
    return [claim(previous, op, operand)]


def derive_chunk(prefix: str, chunk: str) -> list[list[str]]:
    """The correct claims of every sentence of ``chunk`` (one list per sentence).

    Raises LatentThoughtsError naming the first sentence that is not a testbed sentence.
    """
    sentences = parse_text(chunk)
    if not sentences:
        raise LatentThoughtsError("the testbed oracle got an empty chunk")
    previous = previous_result(prefix)
    derivations = []
    for sentence in sentences:
        derivations.append(sentence_claims(sentence, previous))
        previous = sentence.result
    return derivations


def _words(text: str) -> int:
    return len(text.split())


class TestbedOracle:
    """An :class:`~latent_thoughts.engines.base.Engine` that answers testbed teacher prompts exactly,
    or with seeded noise.

    ``noise`` is the chance a thought is wrong; ``irrelevant_share`` the share of wrong thoughts
    that are irrelevant remarks rather than a derivation with one wrong step; ``seed`` seeds the
    noise when a call gives none. Token counts are whitespace-separated words.
    """

    __test__ = False

    def __init__(self, noise: float = 0.0, irrelevant_share: float = 0.5, seed: int = 0) -> None:
        if not 0.0 <= noise <= 1.0:
            raise LatentThoughtsError(f"oracle noise must be in [0, 1], got {noise}")
        if not 0.0 <= irrelevant_share <= 1.0:
            raise LatentThoughtsError(f"oracle irrelevant_share must be in [0, 1], got {irrelevant_share}")
        self.noise = noise
        self.irrelevant_share = irrelevant_share
        self.seed = seed
        self.identity = f"testbed-oracle(noise={noise},irrelevant={irrelevant_share},seed={seed})"
        self.usage = Usage()

    @classmethod
    def from_config(cls, config: TestbedConfig) -> TestbedOracle:
        """The oracle with the noise settings and seed of a testbed config."""
        return cls(config.oracle_noise, config.oracle_irrelevant_share, config.seed)

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
    ) -> list[list[Sample]]:
        """Not supported: the oracle only chats."""
        raise LatentThoughtsError("the testbed oracle only chats; it cannot sample with log-probabilities")

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[Score]:
        """Not supported: the oracle only chats."""
        raise LatentThoughtsError("the testbed oracle only chats; it cannot score continuations")

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
        """Answer each conversation ``n`` times: a thought for a latent-thought prompt, a
        restatement for a rephrasing prompt. Replies longer than ``max_new_tokens`` words are cut
        (finish reason ``length``). Any other conversation is a LatentThoughtsError."""
        if n < 1:
            raise LatentThoughtsError(f"n must be at least 1, got {n}")
        seed = self.seed if seed is None else seed
        replies = []
        for conversation in conversations:
            messages = list(conversation)
            prompt_tokens = sum(_words(message["content"]) for message in messages)
            texts = [self.answer(messages, index, seed) for index in range(n)]
            group = []
            for text in texts:
                words = text.split()
                finish: FinishReason = "stop"
                if len(words) > max_new_tokens:
                    text, finish = " ".join(words[:max_new_tokens]), "length"
                group.append(ChatReply(text, finish, prompt_tokens, _words(text)))
                self.usage.requests += 1
                self.usage.prompt_tokens += prompt_tokens
                self.usage.completion_tokens += _words(text)
            replies.append(group)
        return replies

    def answer(self, messages: Sequence[ChatMessage], index: int = 0, seed: int | None = None) -> str:
        """The reply text to one conversation for sample ``index``."""
        seed = self.seed if seed is None else seed
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        style = _rephrase_style(user)
        if style is not None:
            return rephrase(_enclosed(user), style)
        try:
            prefix, chunk = split_latent_prompt(list(messages))
        except LatentThoughtsError:
            raise LatentThoughtsError(
                "the testbed oracle answers only latent-thought and rephrasing prompts "
                f"(got a user message starting {user[:60]!r})"
            ) from None
        return self.thought(prefix, chunk, index, seed)

    def thought(self, prefix: str, chunk: str, index: int = 0, seed: int | None = None) -> str:
        """The oracle's thought for ``chunk`` after ``prefix``: the correct derivation, or with
        probability ``noise`` (a pure function of seed, prefix, chunk and ``index``) a noisy one."""
        seed = self.seed if seed is None else seed
        derivations = derive_chunk(prefix, chunk)
        claims = [item for derivation in derivations for item in derivation]
        if uniform("oracle-noise", seed, prefix, chunk, index) >= self.noise:
            return " ".join(claims)
        pick = uniform("oracle-pick", seed, prefix, chunk, index)
        if uniform("oracle-kind", seed, prefix, chunk, index) < self.irrelevant_share:
            return IRRELEVANT_REMARKS[int(pick * len(IRRELEVANT_REMARKS))]
        # A wrong step: one claim's value is off by 1 to 9 in the ones place or the tens place,
        # the kind of slip a careless writer makes; the other claims stay correct.
        position = int(pick * len(claims))
        lhs, _, value = claims[position].rpartition(" = ")
        offset = 1 + int(uniform("oracle-offset", seed, prefix, chunk, index) * 9)
        if uniform("oracle-place", seed, prefix, chunk, index) < 0.5:
            offset *= 10
        claims[position] = f"{lhs} = {int(value.rstrip('.')) + offset}."
        return " ".join(claims)


def _rephrase_style(user: str) -> str | None:
    """The WRAP style whose instruction opens ``user``, or None for another prompt."""
    if user.startswith(WRAP_COT_INSTRUCTION):
        return "cot"
    return next((style for style, text in WRAP_STYLES.items() if user.startswith(text)), None)


def _enclosed(user: str) -> str:
    """The document between the ``<<<`` and ``>>>`` lines of a rephrasing prompt."""
    start, end = user.find(f"{OPEN}\n"), user.rfind(f"\n{CLOSE}")
    if start < 0 or end < start:
        raise LatentThoughtsError("rephrasing prompt without a <<< ... >>> document block")
    return user[start + len(OPEN) + 1 : end]


def rephrase(document: str, style: str) -> str:
    """A deterministic restatement of a testbed document in a WRAP style (easy, hard, wiki, qa, cot).

    Every statement and result is kept; "cot" writes each sentence's derivation before it.
    """
    out = []
    previous: int | None = None
    for sentence in parse_text(document):
        result = sentence.result
        if sentence.statement is not None:
            expr = sentence.statement.expression
            templates = {
                "easy": f"If you work out {expr}, you get {result}.",
                "hard": f"Evidently {expr} = {result}.",
                "wiki": f"The value of {expr} is {result}.",
                "qa": f"What is {expr}? It is {result}.",
                "cot": f"So {expr} = {result}.",
            }
        else:
            assert sentence.continuation is not None
            op, operand = sentence.continuation
            verb = CONTINUATION_VERBS[op]
            templates = {
                "easy": f"{verb} {operand} makes {result}.",
                "hard": f"{verb} {operand} yields {result}.",
                "wiki": f"{verb} {operand} results in {result}.",
                "qa": f"What does {verb.lower()} {operand} give? It gives {result}.",
                "cot": f"{verb} {operand} gives {result}.",
            }
        if style not in templates:
            raise LatentThoughtsError(f"unknown rephrasing style {style!r}")
        if style == "cot":
            out.append(" ".join(sentence_claims(sentence, previous)))
        out.append(templates[style])
        previous = result
    return " ".join(out)
