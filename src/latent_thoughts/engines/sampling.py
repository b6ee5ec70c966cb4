"""Sampling for the transformers engine: seeded per-row randomness, the token draw, batch planning
and the decode loop with a shared prefill.

1. prompts are sorted by length and packed into batches of at most ``batch_tokens`` cached positions
   (rows x (padded prompt + max_new_tokens)) by :func:`plan_batches`; a batch holds prompts of ONE
   padded width (:func:`padded_width`: the length rounded up to a multiple of ``pad_multiple``,
   :data:`PAD_MULTIPLE` by default);
2. each batch's distinct prompts are left-padded to that width and prefilled ONCE; the cache rows are
   then copied to the prompt's sample rows (``Cache.batch_select_indices`` with repeated indices);
3. one token per row per step is drawn by inverse-CDF sampling from per-row uniforms (:func:`draw`);
   finished rows are dropped from the batch (cache included) so long and short samples do not cost
   the same.

Randomness is a pure function of (seed, prompt token ids, sample index): each row draws its uniforms
from its own ``torch.Generator`` seeded by :func:`row_seed`. The arithmetic is one too: the width a
prompt is padded to depends on its own length only, so its rows see the same padded positions
whichever prompts share the batch. (Padding to the batch's longest prompt did not: the attention
kernels' results depend on the key length, by rounding, and in bf16 a 32 k vocabulary's inverse-CDF
draw flips on such differences within a few hundred tokens.) So a sample does not depend on which
other prompts share its batch, on ``batch_tokens``, on sharding, or on whether a server or this
process runs the engine. The price: prompts of different widths never share a batch, and each is
padded by up to ``pad_multiple - 1`` tokens. ``pad_multiple`` 0 pads a batch to its longest prompt
and mixes lengths (fewer, fuller batches; draws that depend on the batch by rounding).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from latent_thoughts.engines.padding import left_pad

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, int], torch.Tensor]

GREEDY_BELOW = 1e-4
"""Temperatures below this decode greedily: dividing logits by a tiny temperature overflows to
infinities (1e-300 made every draw the last vocabulary id), and such a law is a point mass anyway."""


PAD_MULTIPLE = 64
"""The default ``pad_multiple``: a sampling batch's prompts are left-padded to their length rounded up
to a multiple of this, and only prompts of one such width share a batch (see the module notes: a
row's arithmetic must not depend on the other prompts of its batch)."""


class Cancelled(Exception):
    """Raised inside a decode loop when its caller has gone away (``should_stop`` said so)."""


"""``forward(input_ids, attention_mask, position_ids, cache, keep)``: logits of the last ``keep`` positions."""


@dataclass(frozen=True)
class SamplingSettings:
    """What one ``sample`` call asks for: the law (temperature, top-p, banned ids), the length and stop
    rules, and the seed from which every row's randomness is derived."""

    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    stop_ids: frozenset[int] = frozenset()
    banned_ids: tuple[int, ...] = ()
    pad_multiple: int = PAD_MULTIPLE  # see padded_width


@dataclass
class Row:
    """Book-keeping of one sample being generated: which prompt and sample it is, what it drew."""

    prompt: int
    sample: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None
    stopped_on_token: bool = False


def row_seed(seed: int, prompt_ids: Sequence[int], sample_index: int) -> int:
    """A 63-bit seed for one sample, a pure function of the call seed, the prompt and the sample index."""
    digest = hashlib.sha256()
    digest.update(struct.pack("<qQ", int(seed) & 0x7FFFFFFFFFFFFFFF, sample_index))
    digest.update(struct.pack(f"<{len(prompt_ids)}q", *prompt_ids))
    return int.from_bytes(digest.digest()[:8], "little") & 0x7FFFFFFFFFFFFFFF


BLOCK = 256
"""Vocabulary ids per block of :func:`inverse_cdf`'s two-level search."""


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the first id whose cumulative probability exceeds ``uniforms`` (in ``[0, 1)``, float64)
    times the row's total (``probs`` need not be normalised); zero-probability ids are never returned.

    A cumulative sum over a whole vocabulary in float64, row by row and step by step, was most of
    the decoding time on a CPU at a 32 k vocabulary. A large vocabulary is searched in two levels:
    blocks of :data:`BLOCK` ids (their masses summed, then accumulated in float64), then the ids of
    the chosen block; a small one in one float64 cumulative sum.
    """
    rows, vocab = probs.shape
    if vocab <= 4 * BLOCK:
        cdf = probs.double().cumsum(dim=-1)
        pick = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).squeeze(1)
        return torch.minimum(pick, last_with_mass(probs))
    blocks = -(-vocab // BLOCK)
    if blocks * BLOCK != vocab:
        probs = torch.nn.functional.pad(probs, (0, blocks * BLOCK - vocab))
    grouped = probs.view(rows, blocks, BLOCK)
    block_cdf = grouped.sum(dim=-1).double().cumsum(dim=-1)
    targets = uniforms * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, targets[:, None], right=True).squeeze(1)
    block = torch.minimum(block, last_with_mass(block_cdf.diff(dim=-1, prepend=block_cdf.new_zeros(rows, 1))))
    before = block_cdf.gather(1, (block - 1).clamp(min=0)[:, None]).squeeze(1)
    before = torch.where(block > 0, before, torch.zeros_like(before))
    inside = grouped[torch.arange(rows, device=probs.device), block]
    pick = torch.searchsorted(inside.double().cumsum(dim=-1), (targets - before)[:, None], right=True)
    return block * BLOCK + torch.minimum(pick.squeeze(1), last_with_mass(inside))


def last_with_mass(masses: torch.Tensor) -> torch.Tensor:
    """Per row, the last index with a positive mass (rounding can put a target at a row's very end,
    past it; the draw then stays on that index rather than on a zero-probability one)."""
    positions = torch.arange(masses.shape[-1], device=masses.device)
    return torch.where(masses > 0, positions, -1).amax(dim=-1)


def draw(
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: float,
    top_p: float,
    banned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row by inverse CDF; returns the tokens and their log-probabilities.

    ``banned`` token ids get probability 0. The log-probability is under the distribution actually
    sampled from (banned ids removed, temperature, then top-p renormalised); greedy decoding
    (``temperature`` below :data:`GREEDY_BELOW`, 0 included) takes the argmax with log-probability 0
    (a point mass). Cumulative sums are in float64 so that a large vocabulary cannot push the total
    away from 1 and make a zero-probability token reachable.
    """
    logits = logits.float()
    if banned is not None and banned.numel():
        logits = logits.index_fill(1, banned.to(logits.device), float("-inf"))
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1), torch.zeros(logits.shape[0], device=logits.device)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_lp, order = logprobs.sort(dim=-1, descending=True)
        sorted_p = sorted_lp.double().exp()
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        outside = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
        sorted_lp = sorted_lp.masked_fill(outside, float("-inf"))
        sorted_lp = sorted_lp - torch.logsumexp(sorted_lp, dim=-1, keepdim=True)
        cdf = sorted_lp.double().exp().cumsum(dim=-1)
        pick = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        pick = pick.clamp(max=cdf.shape[1] - 1)
        return order.gather(1, pick[:, None]).squeeze(1), sorted_lp.gather(1, pick[:, None]).squeeze(1)
    tokens = inverse_cdf(logprobs.exp(), uniforms.to(logprobs.device))
    return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1)


def padded_width(length: int, multiple: int = PAD_MULTIPLE) -> int:
    """The width a prompt of ``length`` tokens is left-padded to for sampling: a function of its own
    length only, rounded up to a multiple of ``multiple`` (at least one multiple); ``multiple`` 0
    leaves it as it is."""
    if multiple <= 0:
        return length
    return max(1, -(-length // multiple)) * multiple


def plan_batches(
    lengths: Sequence[int], n: int, max_new_tokens: int, batch_tokens: int, pad_multiple: int = PAD_MULTIPLE
) -> Iterator[list[tuple[int, list[int]]]]:
    """Pack (prompt index, sample indices) jobs into batches of at most ``batch_tokens`` cached positions,
    rows x (:func:`padded_width` + ``max_new_tokens``).

    Widest prompts first; a batch holds prompts of one padded width only, so that no prompt is padded
    further because of another (``pad_multiple`` 0: prompts of any length, padded to the batch's
    longest); a prompt whose ``n`` rows do not fit one batch is split over several (each re-prefills
    it, the price of the memory bound).
    """
    order = sorted(range(len(lengths)), key=lambda i: -padded_width(lengths[i], pad_multiple))
    batch: list[tuple[int, list[int]]] = []
    capacity = used = width = 0
    for index in order:
        if batch and pad_multiple > 0 and padded_width(lengths[index], pad_multiple) != width:
            yield batch
            batch = []
        remaining = list(range(n))
        while remaining:
            if not batch:
                width = padded_width(lengths[index], pad_multiple)
                capacity, used = max(1, batch_tokens // max(width + max_new_tokens, 1)), 0
            take = min(len(remaining), capacity - used)
            if take <= 0:
                yield batch
                batch = []
                continue
            batch.append((index, remaining[:take]))
            used += take
            remaining = remaining[take:]
    if batch:
        yield batch


PADDING_SLACK = 0.05
"""How much more padded area a batch may have for two groups to share it: 5% over scoring them in
separate batches (joining saves a forward pass's overhead, padding costs compute)."""


def plan_score_batches(
    groups: Sequence[tuple[int, Sequence[int]]], batch_tokens: int
) -> Iterator[list[tuple[int, list[int]]]]:
    """Pack scoring groups, each (context length, continuation lengths), into batches of
    (group index, continuation indices) holding at most ``batch_tokens`` cached positions:
    rows x (longest context + longest continuation) of the batch.

    Longest groups first; a group joins the batch before it only when that adds at most
    :data:`PADDING_SLACK` of padded positions over two separate batches (the E-step's two roles of a
    chunk, a long context with short continuations and a short one with long continuations, would
    waste a quarter of the batch on padding at the testbed's shapes: they go separately). Empty
    continuations are left out (nothing to score); a group that does not fit one batch is split (each
    part prefills its context again, the price of the memory bound); a single row wider than
    ``batch_tokens`` gets a batch of its own.
    """
    order = sorted(range(len(groups)), key=lambda g: -(groups[g][0] + max(groups[g][1], default=0)))
    batch: list[tuple[int, list[int]]] = []
    rows = context_width = continuation_width = 0
    for g in order:
        context, lengths = groups[g]
        present = [length for length in lengths if length]
        if rows and present:
            own = len(present) * (context + max(present))
            joined = (rows + len(present)) * (max(context_width, context) + max(continuation_width, *present))
            if joined > (1 + PADDING_SLACK) * (rows * (context_width + continuation_width) + own):
                yield batch
                batch, rows = [], 0
        members: list[int] = []
        for index, length in enumerate(lengths):
            if not length:
                continue
            if rows:
                wider_context, wider_continuation = (
                    max(context_width, context),
                    max(continuation_width, length),
                )
            else:
                wider_context, wider_continuation = context, length
            if rows and (rows + 1) * (wider_context + wider_continuation) > batch_tokens:
                if members:
                    batch.append((g, members))
                yield batch
                batch, members, rows = [], [], 0
                wider_context, wider_continuation = context, length
            members.append(index)
            rows += 1
            context_width, continuation_width = wider_context, wider_continuation
        if members:
            batch.append((g, members))
    if batch:
        yield batch


def sample_batch(
    forward: Forward,
    make_cache: Callable[[int], Any],
    encoded: Sequence[Sequence[int]],
    batch: list[tuple[int, list[int]]],
    settings: SamplingSettings,
    pad_id: int,
    device: torch.device,
    stop_check: Callable[[list[int]], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Row]:
    """Prefill the batch's prompts once (left-padded to their :func:`padded_width`), copy each
    prompt's cache to its sample rows, decode.

    ``make_cache(capacity)`` gives an empty KV cache; ``stop_check(tokens)`` says whether a row's
    tokens so far complete a stop string. A row ends at a stop id (kept in its tokens), at a stop
    string, or after ``max_new_tokens``. ``should_stop()`` is asked before every decode step; when
    it answers True the loop raises :class:`Cancelled` (the caller went away).
    """
    rows = [Row(prompt=index, sample=s) for index, samples in batch for s in samples]
    if settings.max_new_tokens == 0:
        for row in rows:
            row.finish = "length"
        return rows
    prompts = [encoded[index] for index, _ in batch]
    # one width per batch (plan_batches), from the prompts' own lengths
    width = padded_width(max(len(prompt) for prompt in prompts), settings.pad_multiple)
    input_ids, mask, positions = left_pad(prompts, pad_id, device, width)
    cache = make_cache(width + settings.max_new_tokens)
    logits = forward(input_ids, mask, positions, cache, 1)[:, -1]
    # Shared prefill: row r of the decode batch reads prompt expand[r]'s cache.
    counts = torch.tensor([len(samples) for _, samples in batch], device=device)
    expand = torch.repeat_interleave(torch.arange(len(batch), device=device), counts)
    cache.batch_select_indices(expand)
    logits, mask = logits[expand], mask[expand]
    next_position = positions[expand, -1] + 1
    uniforms = torch.stack(
        [
            torch.rand(
                settings.max_new_tokens,
                generator=torch.Generator().manual_seed(
                    row_seed(settings.seed, encoded[row.prompt], row.sample)
                ),
                dtype=torch.float64,
            )
            for row in rows
        ]
    ).to(device)
    banned = torch.tensor(sorted(set(settings.banned_ids)), dtype=torch.long) if settings.banned_ids else None
    active = list(range(len(rows)))  # decode-batch position -> index into rows
    for step in range(settings.max_new_tokens):
        if should_stop is not None and should_stop():
            raise Cancelled
        tokens, logprobs = draw(logits, uniforms[active, step], settings.temperature, settings.top_p, banned)
        token_list, logprob_list = tokens.tolist(), logprobs.tolist()
        keep: list[int] = []
        for position, row_index in enumerate(active):
            row = rows[row_index]
            row.tokens.append(token_list[position])
            row.logprobs.append(logprob_list[position])
            if token_list[position] in settings.stop_ids:
                row.finish, row.stopped_on_token = "stop", True
            elif stop_check is not None and stop_check(row.tokens):
                row.finish = "stop"
            elif step == settings.max_new_tokens - 1:
                row.finish = "length"
            else:
                keep.append(position)
        if not keep:
            break
        if len(keep) < len(active):
            # Drop finished rows so that the rest decode in a smaller batch.
            selected = torch.tensor(keep, device=device)
            cache.batch_select_indices(selected)
            mask, next_position, tokens = mask[selected], next_position[selected], tokens[selected]
            active = [active[p] for p in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        logits = forward(tokens[:, None], mask, next_position[:, None], cache, 1)[:, -1]
        next_position = next_position + 1
    return rows
