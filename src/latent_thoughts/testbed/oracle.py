"""The oracle teacher: an engine that writes the correct derivation behind any testbed chunk.

It answers the chat form of the engine protocol. Given a latent-thought prompt
(:class:`latent_thoughts.prompts.LatentThoughtPrompt`) it recovers (prefix, chunk), reads the
chunk's sentences back from their text (never by document id, so any chunking works) and writes
the thought of each in the ground-truth style of :mod:`latent_thoughts.testbed.world`: a plan for a
posing sentence, the derivation for a resolving sentence, the one step of a continuation. Both
later kinds build on the sentence before them, in the chunk or at the end of the prefix: a
resolving sentence ("It equals 1017.") derives the expression posed there; a continuation
("Adding 129 gives 1146.") takes the result stated there, or without one recovers it from its own
stated result. A resolving sentence with no posed expression in view is an error.

With ``noise > 0`` it is an imperfect teacher: each (prefix, chunk, sample index, seed) is, by a
hash, noisy with probability ``noise``; a noisy thought is either **irrelevant** (a remark with no
arithmetic, share ``irrelevant_share``) or has a **wrong step** (one claim's value is off). A chunk
that states no result (posing sentences only) has no step to get wrong, so its noisy thought is
always irrelevant; the checker cannot tell that apart from a plan (neither claims anything), so the
measurable noise rate is the one on chunks that state a result. Reruns are identical; sampling
parameters other than the seed change nothing.

Rephrasing prompts (:class:`latent_thoughts.prompts.RephrasePrompt`, the WRAP baselines) get a
deterministic restatement of each sentence in the requested style; "cot" writes the derivation
before each sentence. ``sample`` and ``score`` raise: the oracle only chats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from latent_thoughts.engines.base import ChatMessage, ChatReply, FinishReason, Prompt, Sample, Score, Usage
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.prompts import CLOSE, OPEN, WRAP_COT_INSTRUCTION, WRAP_STYLES, split_latent_prompt
from latent_thoughts.testbed.world import (
    CONTINUATION_VERBS,
    ParsedSentence,
    TestbedConfig,
    apply,
    claim,
    last_sentence,
    parse_text,
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


@dataclass(frozen=True)
class SentenceThought:
    """The oracle's thought for one sentence: a ``plan`` (posing sentences; no arithmetic claims)
    and ``claims`` (the derivation of a resolving sentence, the step of a continuation)."""

    plan: str = ""
    claims: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The thought as written: the plan, then the claims, separated by spaces."""
        return " ".join([self.plan, *self.claims] if self.plan else self.claims)


def sentence_thought(
    sentence: ParsedSentence, before: ParsedSentence | None, plan_numbers: bool = True
) -> SentenceThought:
    """The thought of one sentence given the sentence ``before`` it (None: nothing in view); a posing
    sentence's plan names its numbers unless ``plan_numbers`` is false (:meth:`Statement.plan`).

    Raises LatentThoughtsError for a resolving sentence not preceded by a posing sentence: the
    expression it resolves cannot be read from its text alone.
    """
    if sentence.kind == "pose":
        assert sentence.statement is not None
        return SentenceThought(plan=sentence.statement.plan(plan_numbers))
    if sentence.kind == "resolve":
        if before is None or before.statement is None or before.kind != "pose":
            raise LatentThoughtsError(
                f"{sentence.text!r} resolves the expression posed just before it, but the text before it "
                "poses none (the testbed oracle needs the posing sentence in the prefix or the chunk)"
            )
        return SentenceThought(claims=tuple(before.statement.derivation()))
    assert sentence.continuation is not None and sentence.result is not None
    op, operand = sentence.continuation
    previous = before.result if before is not None else None
    if previous is None:
        # No stated result before it: the inverse step of its own result gives the previous value.
        previous = apply(sentence.result, "-" if op == "+" else "+", operand)
    return SentenceThought(claims=(claim(previous, op, operand),))


def derive_chunk(prefix: str, chunk: str, plan_numbers: bool = True) -> list[SentenceThought]:
    """The correct thought of every sentence of ``chunk`` after ``prefix`` (one per sentence).

    Raises LatentThoughtsError naming the first sentence that is not a testbed sentence, or a
    resolving sentence whose posed expression is not in view.
    """
    sentences = parse_text(chunk)
    if not sentences:
        raise LatentThoughtsError("the testbed oracle got an empty chunk")
    before = last_sentence(prefix)
    thoughts = []
    for sentence in sentences:
        thoughts.append(sentence_thought(sentence, before, plan_numbers))
        before = sentence
    return thoughts


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

    def __init__(
        self, noise: float = 0.0, irrelevant_share: float = 0.5, seed: int = 0, plan_numbers: bool = True
    ) -> None:
        if not 0.0 <= noise <= 1.0:
            raise LatentThoughtsError(f"oracle noise must be in [0, 1], got {noise}")
        if not 0.0 <= irrelevant_share <= 1.0:
            raise LatentThoughtsError(f"oracle irrelevant_share must be in [0, 1], got {irrelevant_share}")
        self.noise = noise
        self.irrelevant_share = irrelevant_share
        self.seed = seed
        self.plan_numbers = plan_numbers
        plan = "" if plan_numbers else ",plan_numbers=False"
        self.identity = f"testbed-oracle(noise={noise},irrelevant={irrelevant_share},seed={seed}{plan})"
        self.usage = Usage()
        self.device = "cpu"

    @classmethod
    def from_config(cls, config: TestbedConfig) -> TestbedOracle:
        """The oracle with the noise settings and seed of a testbed config."""
        return cls(
            config.oracle_noise, config.oracle_irrelevant_share, config.seed, config.oracle_plan_numbers
        )

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
        """Not supported: the oracle only chats."""
        raise LatentThoughtsError("the testbed oracle only chats; it cannot sample with log-probabilities")

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[Score]:
        """Not supported: the oracle only chats."""
        raise LatentThoughtsError("the testbed oracle only chats; it cannot score continuations")

    def score_many(
        self, context: Prompt, continuations: Sequence[Prompt], *, temperature: float = 1.0
    ) -> list[Score]:
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
        thoughts = derive_chunk(prefix, chunk, self.plan_numbers)
        if uniform("oracle-noise", seed, prefix, chunk, index) >= self.noise:
            return " ".join(thought.text for thought in thoughts)
        pick = uniform("oracle-pick", seed, prefix, chunk, index)
        # (sentence, claim) positions of every claim; a chunk of posing sentences has none.
        positions = [(i, j) for i, thought in enumerate(thoughts) for j in range(len(thought.claims))]
        if not positions or uniform("oracle-kind", seed, prefix, chunk, index) < self.irrelevant_share:
            return IRRELEVANT_REMARKS[int(pick * len(IRRELEVANT_REMARKS))]
        # A wrong step: one claim's value is off by 1 to 9 in the ones place or the tens place,
        # the kind of slip a careless writer makes; the other claims stay correct.
        sentence, position = positions[int(pick * len(positions))]
        claims = list(thoughts[sentence].claims)
        lhs, _, value = claims[position].rpartition(" = ")
        offset = 1 + int(uniform("oracle-offset", seed, prefix, chunk, index) * 9)
        if uniform("oracle-place", seed, prefix, chunk, index) < 0.5:
            offset *= 10
        claims[position] = f"{lhs} = {int(value.rstrip('.')) + offset}."
        thoughts[sentence] = SentenceThought(thoughts[sentence].plan, tuple(claims))
        return " ".join(thought.text for thought in thoughts)


def check_testbed_chunks(path: str | Path) -> None:
    """Refuse a chunk file that is not testbed text before any request: the oracle knows testbed
    chunks only, so on another corpus every request would fail, and a rerun the same way. The first
    chunk is read back (:func:`~latent_thoughts.testbed.world.parse_text`); one that is not testbed
    text is a one-line error naming the file, the chunk and its sentence."""
    from latent_thoughts.corpus import iter_chunks

    first = next(iter(iter_chunks(path)), None)
    if first is None:
        return
    try:
        parse_text(first.text)
    except LatentThoughtsError as exc:
        raise LatentThoughtsError(
            f"{path}: the oracle teacher only knows testbed chunks (`latent-thoughts testbed generate`, "
            f"then `chunk`); document {first.doc_id!r} chunk {first.chunk_index}: {exc}"
        ) from None


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

    Every posed expression and stated result is kept; "cot" writes each sentence's thought (plan,
    derivation or step) before it.
    """
    out = []
    before: ParsedSentence | None = None
    for sentence in parse_text(document):
        if sentence.kind == "pose":
            assert sentence.statement is not None
            expr = sentence.statement.expression
            templates = {
                "easy": f"Let us work out {expr}.",
                "hard": f"Contemplate the quantity {expr}.",
                "wiki": f"The expression {expr} is evaluated next.",
                "qa": f"What is {expr}?",
                "cot": f"Consider {expr}.",
            }
        elif sentence.kind == "resolve":
            result = sentence.result
            templates = {
                "easy": f"You get {result}.",
                "hard": f"It evaluates to {result}.",
                "wiki": f"Its value is {result}.",
                "qa": f"It is {result}.",
                "cot": f"It equals {result}.",
            }
        else:
            assert sentence.continuation is not None
            op, operand = sentence.continuation
            verb, result = CONTINUATION_VERBS[op], sentence.result
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
            out.append(sentence_thought(sentence, before).text)
        out.append(templates[style])
        before = sentence
    return " ".join(out)
