"""Running a teacher over chunks: work items, shards, the online loop and the output files.

A synthesis run turns every chunk of a chunk file (or every document, for the rephrasing baselines)
into one *work item*: the chat messages for the teacher and the cache key of the answer. Items whose
answer is in the cache are not sent again; the rest go to the engine in bounded batches, and each
batch's answers are appended to the cache (fsynced) before the next batch starts. When every item has
an answer or a recorded failure, the outputs are written atomically:

- ``NAME.parquet``: one row per chunk with its thought (or per document with its rephrasing); a
  chunk left raw because its answer was cut has a row with a null thought;
- ``NAME.failures.parquet``: the items whose answer was refused, empty or an error, with the reason
  (never written as thoughts; ``--retry-failures`` sends only these again);
- ``NAME.summary.json``: counts, token usage and cost of the run.

An answer cut at the token limit (finish reason ``length``) is not a failure: the teacher's
``on_cut`` decides (:class:`CutPolicy`): ``keep`` writes the cut answer as the thought, ``raw``
leaves the chunk raw (a row with a null thought, which the trainer writes as raw text), and
``retry_longer`` asks again with twice the token budget, up to a cap, and leaves the chunk raw when
the answer is still cut there. Each budget is its own request with its own cache key (the key of a
run with that ``max_new_tokens``), so a retry is never answered by the cut answer's record, and a
rerun finds every retry in the cache.

With ``--shard i/N`` the names get ``.shard-i-of-N`` and ``latent-thoughts merge`` joins them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from latent_thoughts.config import StageConfig
from latent_thoughts.corpus import Chunk
from latent_thoughts.engines.base import ChatMessage, ChatReply, Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.cache import CacheRecord, ResultCache, cache_key
from latent_thoughts.generation.outputs import OutputPaths, with_metadata, write_table
from latent_thoughts.generation.shards import chunks_fingerprint as chunks_fingerprint  # (moved there)
from latent_thoughts.generation.shards import load_chunks as load_chunks  # (moved there)
from latent_thoughts.prompts import WRAP_STYLES, LatentThoughtPrompt, RephrasePrompt
from latent_thoughts.synthesis.costs import Prices

logger = logging.getLogger(__name__)

Mode = Literal["thoughts", "rephrase"]

THOUGHT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("chunk_index", pa.int64()),
        ("key", pa.string()),
        ("thought", pa.string()),
        ("teacher", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
    ]
)
REPHRASE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("key", pa.string()),
        ("style", pa.string()),
        ("text", pa.string()),
        ("teacher", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("chunk_index", pa.int64()),
        ("key", pa.string()),
        ("style", pa.string()),
        ("reason", pa.string()),
        ("finish_reason", pa.string()),
        ("answer", pa.string()),
        ("teacher", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)

DEFAULT_REFUSAL_PATTERNS = (
    r"^\W*(i'?m|i am) (so |very |really )?sorry\b",
    r"^\W*sorry,",
    r"^\W*i (can'?t|cannot|won'?t|am unable to|'m unable to|am not able to) "
    r"(help|assist|comply|provide|do that|fulfil|fulfill|complete)",
    r"^\W*as an ai\b",
)
"""Openings of an answer that mark a refusal (case-insensitive regular expressions)."""


class Sampling(StageConfig):
    """How the teacher samples (reference: temperature 0.7, one thought per chunk)."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(
        1024, gt=0, description="token budget of an answer; a cut answer goes by the teacher's on_cut"
    )
    seed: int | None = Field(0, description="sampling seed passed to the engine (None: the engine's own)")


OnCut = Literal["keep", "retry_longer", "raw"]
"""What a run does with an answer cut at its token budget: keep it as the thought, ask again with a
larger budget, or leave the chunk raw (no thought)."""


@dataclass(frozen=True)
class CutPolicy:
    """The teacher's ``on_cut`` and, for ``retry_longer``, the larger budgets asked for in turn."""

    on_cut: OnCut = "raw"
    budgets: tuple[int, ...] = ()


def retry_budgets(max_new_tokens: int, cap: int) -> tuple[int, ...]:
    """The budgets ``retry_longer`` asks with after ``max_new_tokens``: each twice the last, the last one
    ``cap`` (e.g. 512, cap 2048: 1024, 2048; cap 1500: 1024, 1500); none when ``cap <= max_new_tokens``."""
    budgets: list[int] = []
    budget = max_new_tokens
    while budget < cap:
        budget = min(2 * budget, cap)
        budgets.append(budget)
    return tuple(budgets)


# --- chunks, shards and work items --------------------------------------------------------------


@dataclass(frozen=True)
class WorkItem:
    """One request to the teacher: which chunk or document it is for, its cache key and its prompt.

    ``chunk_index`` is -1 for a whole document (rephrasing); ``text`` is the chunk or document the
    answer is about (its length drives the dry-run's estimate of the answer's length). The chat
    messages are rendered on demand from ``prompt``, so a large run holds each text once.

    ``on_cut`` says what a cut answer becomes; ``longer`` holds, for ``retry_longer``, the (budget,
    cache key) of each request to send in turn while the answers are cut, and ``max_new_tokens`` is
    this request's budget (None: the run's ``sampling.max_new_tokens``): :meth:`retried` gives the
    next request.
    """

    doc_id: str
    chunk_index: int
    key: str
    prefix: str
    text: str
    prompt: LatentThoughtPrompt | RephrasePrompt | None
    style: str = ""
    on_cut: OnCut = "raw"
    longer: tuple[tuple[int, str], ...] = ()
    max_new_tokens: int | None = None

    @property
    def keys(self) -> list[str]:
        """The cache keys of this request and of every longer one after it."""
        return [self.key, *(key for _, key in self.longer)]

    def retried(self) -> WorkItem | None:
        """The request to send when this one's answer is cut: the same with the next larger budget
        (``retry_longer``), or None when there is none."""
        if self.on_cut != "retry_longer" or not self.longer:
            return None
        (budget, key), rest = self.longer[0], self.longer[1:]
        return replace(self, key=key, max_new_tokens=budget, longer=rest)

    def budget(self, sampling: Sampling) -> int:
        """This request's token budget."""
        return self.max_new_tokens if self.max_new_tokens is not None else sampling.max_new_tokens

    @property
    def prompt_version(self) -> str:
        """The version of the prompt (part of the key and of every output row)."""
        return self.prompt.version if self.prompt is not None else ""

    @property
    def messages(self) -> list[ChatMessage]:
        """The chat messages sent to the teacher."""
        if isinstance(self.prompt, RephrasePrompt):
            return self.prompt.messages(self.text)
        if isinstance(self.prompt, LatentThoughtPrompt):
            return self.prompt.messages(self.prefix, self.text)
        return []


def sampling_key(sampling: Sampling) -> dict[str, Any]:
    """The sampling parameters that go into every cache key."""
    return sampling.model_dump(mode="json")


def _keys(
    task: str, prefix: str, text: str, teacher: str, version: str, params: dict[str, Any], cut: CutPolicy
) -> tuple[str, tuple[tuple[int, str], ...]]:
    """The cache key of a request and the (budget, key) of each longer request of ``cut``: the key a
    run with that ``max_new_tokens`` gives the same request."""

    def key(budget: int | None) -> str:
        sampling = params if budget is None else {**params, "max_new_tokens": budget}
        return cache_key(
            task=task, prefix=prefix, text=text, teacher=teacher, prompt_version=version, sampling=sampling
        )

    longer = tuple((budget, key(budget)) for budget in cut.budgets) if cut.on_cut == "retry_longer" else ()
    return key(None), longer


def latent_work(
    chunks: Sequence[Chunk],
    teacher: str,
    sampling: Sampling,
    prompt: LatentThoughtPrompt | None = None,
    cut: CutPolicy = CutPolicy(),
) -> list[WorkItem]:
    """One latent-thought request per chunk (METHOD section 4): the teacher sees the prefix and the
    chunk; a cut answer goes by ``cut``."""
    prompt = prompt or LatentThoughtPrompt()
    params = sampling_key(sampling)
    items = []
    for chunk in chunks:
        key, longer = _keys("latent", chunk.prefix, chunk.text, teacher, prompt.version, params, cut)
        items.append(
            WorkItem(
                doc_id=chunk.doc_id,
                chunk_index=chunk.chunk_index,
                key=key,
                prefix=chunk.prefix,
                text=chunk.text,
                prompt=prompt,
                on_cut=cut.on_cut,
                longer=longer,
            )
        )
    return items


def draw_wrap_style(doc_id: str, seed: int) -> str:
    """The WRAP style of a document: a seeded hash of its id picks one of the four styles."""
    styles = sorted(WRAP_STYLES)
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return styles[int.from_bytes(digest[:8], "little") % len(styles)]


def rephrase_work(
    chunks: Sequence[Chunk],
    style: str,
    teacher: str,
    sampling: Sampling,
    seed: int,
    cut: CutPolicy = CutPolicy(),
) -> list[WorkItem]:
    """One rephrasing request per document.

    ``style`` is ``wrap`` (one of the four WRAP styles drawn per document by :func:`draw_wrap_style`),
    ``cot`` (WRAP-CoT), or one style name to use for every document. The document is the
    concatenation of its chunks, which gives back its text exactly. A cut answer goes by ``cut``
    (``raw``: the document gets no rephrasing).
    """
    documents: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        documents.setdefault(chunk.doc_id, []).append(chunk)
    params = sampling_key(sampling)
    items = []
    for doc_id, doc_chunks in documents.items():
        text = "".join(c.text for c in sorted(doc_chunks, key=lambda c: c.chunk_index))
        chosen = draw_wrap_style(doc_id, seed) if style == "wrap" else style
        prompt = RephrasePrompt(style=chosen)
        key, longer = _keys(f"rephrase:{chosen}", "", text, teacher, prompt.version, params, cut)
        items.append(WorkItem(doc_id, -1, key, "", text, prompt, chosen, cut.on_cut, longer))
    return items


# --- judging answers ------------------------------------------------------------------------------


def failure_reason(
    reply: ChatReply, refusal_patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS
) -> str | None:
    """Why ``reply`` cannot be used as a thought as it is, or None when it can.

    Reasons: ``error: ...`` (the engine gave up), ``refusal`` (the answer opens like a refusal, cut
    or not), ``length`` (cut at the token limit, possibly before any text: what becomes of it is the
    teacher's ``on_cut``, see :func:`is_cut`), ``empty`` (an answer that ended with no text).
    """
    if reply.finish_reason == "error":
        return f"error: {one_line(reply.text) or 'the engine reported an error'}"
    opening = reply.text.strip()[:200]
    if opening and any(re.search(pattern, opening, flags=re.IGNORECASE) for pattern in refusal_patterns):
        return "refusal"
    if reply.finish_reason == "length":
        return "length"
    if not opening:
        return "empty"
    return None


def is_cut(record: CacheRecord) -> bool:
    """Whether ``record`` is an answer cut at its token budget (not a failure: ``on_cut`` decides)."""
    return record.status == "failed" and record.reason == "length"


def one_line(text: str, limit: int = 300) -> str:
    """``text`` squeezed onto one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def record_for(
    item: WorkItem, reply: ChatReply, teacher: str, refusal_patterns: Sequence[str]
) -> CacheRecord:
    """The cache record of ``item``'s answer ``reply``: ok, or failed with its reason."""
    reason = failure_reason(reply, refusal_patterns)
    return CacheRecord(
        key=item.key,
        status="ok" if reason is None else "failed",
        text=reply.text.strip() if reason is None else reply.text,
        teacher=teacher,
        prompt_version=item.prompt_version,
        finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        reason=reason or "",
        doc_id=item.doc_id,
        chunk_index=item.chunk_index,
        style=item.style,
    )


def error_record(item: WorkItem, teacher: str, error: BaseException) -> CacheRecord:
    """A failure record for an item whose request raised ``error`` (after the engine's own retries)."""
    return failed_record(item, teacher, f"error: {type(error).__name__}: {one_line(str(error))}")


def failed_record(item: WorkItem, teacher: str, reason: str) -> CacheRecord:
    """A failure record for ``item`` with the given ``reason`` (finish reason ``error``); never a thought."""
    return CacheRecord(
        key=item.key,
        status="failed",
        text="",
        teacher=teacher,
        prompt_version=item.prompt_version,
        finish_reason="error",
        reason=reason,
        doc_id=item.doc_id,
        chunk_index=item.chunk_index,
        style=item.style,
    )


# --- the online loop ------------------------------------------------------------------------------


@dataclass
class RunStats:
    """What one run did: items in scope, answers found in the cache, requests sent and their outcome.

    ``retries`` counts the engine's own retries of requests (timeouts, rate limits, server errors).
    ``answered_cut`` counts this run's answers cut at their token budget and ``longer_requests`` the
    requests it sent with a larger budget (``retry_longer``). ``cut``, ``cut_kept``, ``cut_retried``
    and ``cut_raw`` describe the output, cached answers included (:class:`OutputCounts`): the summary
    fills them in, and a merge adds them up like the rest.
    """

    items: int = 0
    cached: int = 0
    cached_failures: int = 0
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    answered_cut: int = 0
    longer_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    retries: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    cut: int = 0
    cut_kept: int = 0
    cut_retried: int = 0
    cut_raw: int = 0

    def count(self, record: CacheRecord) -> None:
        """Add one newly finished record."""
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        if record.status == "ok":
            self.succeeded += 1
        elif is_cut(record):
            self.answered_cut += 1
        else:
            self.failed += 1
            reason = record.reason.split(":")[0]
            self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1


def resolve(item: WorkItem, cache: ResultCache) -> tuple[WorkItem, CacheRecord | None]:
    """The request that decides ``item``'s outcome and its record (None: not answered yet).

    That is ``item`` itself unless its answer is cut and ``retry_longer`` has a larger budget left,
    in which case the next request's, and so on along the item's budgets.
    """
    current = item
    while True:
        if cache.status(current.key) is None:
            return current, None
        record = cache.get(current.key)
        if record is None or not is_cut(record):
            return current, record
        following = current.retried()
        if following is None:
            return current, record
        current = following


def is_final(record: CacheRecord | None) -> bool:
    """Whether ``record``, the one that decides an item (:func:`resolve`), settles it: an answer, or
    one cut with no larger budget left (kept or left raw by ``on_cut``)."""
    return record is not None and (record.status == "ok" or is_cut(record))


def plan_work(
    items: Sequence[WorkItem], cache: ResultCache, retry_failures: bool
) -> tuple[list[WorkItem], RunStats]:
    """The requests still to send (each distinct key once), and stats counting what the cache already has.

    An item whose answer was cut is settled (``keep``, ``raw``, or ``retry_longer`` at its largest
    budget) or waits for its next, longer request (:func:`resolve`). Recorded failures are kept as
    they are unless ``retry_failures``, in which case only they (and items never answered) are sent;
    a cut answer is no failure and is never sent again with the same budget.
    """
    stats = RunStats(items=len(items))
    todo: list[WorkItem] = []
    queued: set[str] = set()
    for item in items:
        if cache.status(item.key) == "ok":  # the common case, without reading the record
            stats.cached += 1
            continue
        current, record = resolve(item, cache)
        if is_final(record):
            stats.cached += 1
            continue
        if record is not None and not retry_failures:
            stats.cached_failures += 1
            continue
        if current.key not in queued:  # identical requests (same text and prefix) are sent once
            queued.add(current.key)
            todo.append(current)
    return todo, stats


def batched(items: Sequence[WorkItem], size: int) -> Iterator[Sequence[WorkItem]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def longer_requests(
    records: Sequence[CacheRecord], items: dict[str, WorkItem], cache: ResultCache
) -> list[WorkItem]:
    """The next, longer requests of the ``records`` that are cut answers of ``items`` (by key) with a
    larger budget left, each once, skipping those the cache already answers."""
    following: dict[str, WorkItem] = {}
    for record in records:
        item = items.get(record.key)
        longer = item.retried() if item is not None and is_cut(record) else None
        if longer is not None and longer.key not in cache:
            following.setdefault(longer.key, longer)
    return list(following.values())


ProgressFactory = Callable[[int], Any]


def synthesize_online(
    todo: Sequence[WorkItem],
    engine: Engine,
    cache: ResultCache,
    stats: RunStats,
    *,
    teacher: str,
    sampling: Sampling,
    batch_size: int,
    delay_s: float = 0.0,
    max_consecutive_errors: int = 16,
    refusal_patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS,
    prices: Prices | None = None,
    progress: bool = True,
) -> RunStats:
    """Send ``todo`` to ``engine`` in batches of ``batch_size`` conversations, caching every answer.

    Each batch is one ``engine.chat`` call (the engine spreads it over its own concurrency) of
    requests with one token budget; its answers are appended to the cache before the next call.
    A cut answer whose item has a larger budget left (``retry_longer``) queues its next request,
    sent after this round's requests, round after round until none is left. When a batch raises,
    its conversations are retried one by one so that one bad request is recorded as a failure on
    its own. Requests that raised are held back until a later request succeeds:
    ``max_consecutive_errors`` of them in a row mean the teacher is down, and the run stops with an
    error without recording them, so that a plain rerun sends them again. ``teacher`` is the
    identity recorded with the answers (the one in the items' keys). ``stats`` is updated in place
    and returned.
    """
    from tqdm import tqdm

    started = time.monotonic()
    held: list[CacheRecord] = []  # requests that raised, not yet known to be isolated failures
    bar = tqdm(total=len(todo), unit="req", desc="synthesize", disable=not progress, dynamic_ncols=True)

    def keep(records: Sequence[CacheRecord]) -> None:
        cache.append(records)
        for record in records:
            stats.count(record)

    pending = list(todo)
    try:
        while pending:
            following: list[WorkItem] = []
            by_key = {item.key: item for item in pending}
            # one token budget per engine call; a stable sort keeps the order within a budget
            for batch in batched(sorted(pending, key=lambda item: item.budget(sampling)), batch_size):
                if delay_s > 0:
                    time.sleep(delay_s)
                answered, raised = _answer_batch(batch, engine, teacher, sampling, refusal_patterns)
                stats.requests += len(batch)
                stats.longer_requests += sum(item.max_new_tokens is not None for item in batch)
                if answered:
                    keep([*held, *answered, *raised])
                    held = []
                    following.extend(longer_requests(answered, by_key, cache))
                else:
                    held.extend(raised)
                    if len(held) >= max_consecutive_errors:
                        raise LatentThoughtsError(
                            f"teacher {teacher}: {len(held)} requests in a row failed (last: {held[-1].reason}); "
                            "finished work is kept, rerun to resume"
                        )
                bar.update(len(batch))
                postfix: dict[str, Any] = {
                    "failed": stats.failed + len(held),
                    "cut": stats.answered_cut,
                    "tok_out": stats.completion_tokens,
                }
                if prices is not None:
                    postfix["cost"] = f"{prices.cost(stats.prompt_tokens, stats.completion_tokens):.4f}"
                bar.set_postfix(postfix, refresh=False)
            pending = list({item.key: item for item in following}.values())
            if pending:
                bar.total += len(pending)
                bar.refresh()
        keep(held)  # isolated errors at the very end of the run
    finally:
        bar.close()
        stats.elapsed_s += time.monotonic() - started
    return stats


def _chat(engine: Engine, batch: Sequence[WorkItem], sampling: Sampling) -> list[ChatReply]:
    """The answers to ``batch`` (requests of one token budget) in one ``engine.chat`` call."""
    replies = engine.chat(
        [item.messages for item in batch],
        1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=batch[0].budget(sampling),
        seed=sampling.seed,
    )
    if len(replies) != len(batch) or any(len(group) < 1 for group in replies):
        raise LatentThoughtsError(
            f"teacher {engine.identity}: returned {len(replies)} answers for {len(batch)} requests"
        )
    return [group[0] for group in replies]


def _answer_batch(
    batch: Sequence[WorkItem],
    engine: Engine,
    teacher: str,
    sampling: Sampling,
    refusal_patterns: Sequence[str],
) -> tuple[list[CacheRecord], list[CacheRecord]]:
    """The records of the requests answered (ok or failed on their content) and of those that raised."""
    try:
        replies = _chat(engine, batch, sampling)
    except Exception as batch_error:
        if len(batch) == 1:
            return [], [error_record(batch[0], teacher, batch_error)]
        logger.warning(
            "teacher %s: a batch of %d failed (%s); retrying one by one", teacher, len(batch), batch_error
        )
        answered, raised = [], []
        for item in batch:
            try:
                answered.append(
                    record_for(item, _chat(engine, [item], sampling)[0], teacher, refusal_patterns)
                )
            except Exception as error:
                raised.append(error_record(item, teacher, error))
        return answered, raised
    return [
        record_for(item, reply, teacher, refusal_patterns) for item, reply in zip(batch, replies, strict=True)
    ], []


# --- outputs ----------------------------------------------------------------------------------------


@dataclass
class OutputCounts:
    """Rows written: answers, failures, and items still without an answer (nothing is written then).

    Of the items (answered or not): ``cut`` had their first answer cut at the token limit; of those,
    ``cut_kept`` have the cut answer as their thought, ``cut_retried`` were asked again with a larger
    budget, and ``cut_raw`` were left raw (a row with a null thought); ``on_cut`` is the policy.
    """

    written: int = 0
    failures: int = 0
    missing: int = 0
    cut: int = 0
    cut_kept: int = 0
    cut_retried: int = 0
    cut_raw: int = 0
    on_cut: str = ""


def build_tables(
    items: Sequence[WorkItem], cache: ResultCache, mode: Mode, counts: OutputCounts | None = None
) -> tuple[pa.Table, pa.Table, int]:
    """The result and failure tables of ``items`` from the cache, in item order, and the count still missing.

    Each item's row comes from the request that decides it (:func:`resolve`): an answer, a failure,
    or a cut answer, kept as the thought (``keep``) or written with a null thought (left raw). The
    cut counts are added to ``counts`` when given.
    """
    counts = counts if counts is not None else OutputCounts()
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    missing = 0
    for item in items:
        current, record = resolve(item, cache)
        retried = current is not item  # its first answer was cut, and a longer one asked for
        counts.cut_retried += retried
        counts.cut += retried or (record is not None and is_cut(record))
        if record is None:
            missing += 1
            continue
        common = {
            "doc_id": item.doc_id,
            "key": current.key,
            "teacher": record.teacher,
            "prompt_version": item.prompt_version,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "finish_reason": record.finish_reason,
        }
        answer: str | None = record.text
        if is_cut(record):
            # an answer cut before any text has nothing to keep: left raw
            answer = record.text.strip() if item.on_cut == "keep" else ""
            if answer:
                counts.cut_kept += 1
            else:
                counts.cut_raw += 1
                answer = None
        elif record.status == "failed":
            failures.append(
                {
                    **common,
                    "chunk_index": item.chunk_index,
                    "style": item.style,
                    "reason": record.reason,
                    "answer": record.text,
                }
            )
            continue
        if mode == "thoughts":
            rows.append({**common, "chunk_index": item.chunk_index, "thought": answer})
        else:
            rows.append({**common, "style": item.style, "text": answer})
    schema = THOUGHT_SCHEMA if mode == "thoughts" else REPHRASE_SCHEMA
    return (
        pa.Table.from_pylist(rows, schema=schema),
        pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA),
        missing,
    )


def write_outputs(
    items: Sequence[WorkItem], cache: ResultCache, paths: OutputPaths, mode: Mode, metadata: dict[str, Any]
) -> OutputCounts:
    """Write the result and failure files of ``items`` unless some item has no answer yet."""
    counts = OutputCounts(on_cut=items[0].on_cut if items else "")
    table, failures, missing = build_tables(items, cache, mode, counts)
    if missing:
        counts.missing = missing
        return counts
    write_table(with_metadata(failures, metadata), paths.failures)
    # The result goes last: its presence means the run finished.
    write_table(with_metadata(table, metadata), paths.result)
    counts.written, counts.failures = table.num_rows, failures.num_rows
    return counts


def summary_record(
    stats: RunStats,
    counts: OutputCounts,
    *,
    teacher: str,
    prompt_version: str,
    mode: Mode,
    shard: tuple[int, int] | None,
    prices: Prices,
    batch_api: bool,
    paths: OutputPaths,
) -> dict[str, Any]:
    """The JSON summary of a run: what it found cached, sent, spent and wrote (with the output's cut
    counts in ``run``, where a merge adds them up)."""
    run = asdict(stats)
    run.update(
        cut=counts.cut, cut_kept=counts.cut_kept, cut_retried=counts.cut_retried, cut_raw=counts.cut_raw
    )
    return {
        "mode": mode,
        "teacher": teacher,
        "prompt_version": prompt_version,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "batch_api": batch_api,
        "on_cut": counts.on_cut or None,
        "run": run,
        "cost": round(prices.cost(stats.prompt_tokens, stats.completion_tokens, batch=batch_api), 6),
        "currency": prices.currency,
        "output": {
            "result": str(paths.result) if not counts.missing else None,
            "rows": counts.written,
            "failures": counts.failures,
            "missing": counts.missing,
        },
    }
