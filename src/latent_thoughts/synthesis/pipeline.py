"""Running a teacher over chunks: work items, shards, the online loop and the output files.

A synthesis run turns every chunk of a chunk file (or every document, for the rephrasing baselines)
into one *work item*: the chat messages for the teacher and the cache key of the answer. Items whose
answer is in the cache are not sent again; the rest go to the engine in bounded batches, and each
batch's answers are appended to the cache (fsynced) before the next batch starts. When every item has
an answer or a recorded failure, the outputs are written atomically:

- ``NAME.parquet``: one row per chunk with its thought (or per document with its rephrasing);
- ``NAME.failures.parquet``: the items whose answer was refused, empty, cut at the token limit or an
  error, with the reason (never written as thoughts; ``--retry-failures`` sends only these again);
- ``NAME.summary.json``: counts, token usage and cost of the run.

With ``--shard i/N`` the names get ``.shard-i-of-N`` and ``latent-thoughts merge`` joins them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from latent_thoughts.atomic import atomic_write
from latent_thoughts.config import StageConfig
from latent_thoughts.corpus import Chunk, read_chunks
from latent_thoughts.engines.base import ChatMessage, ChatReply, Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.cache import CacheRecord, ResultCache, cache_key
from latent_thoughts.generation.shards import shard_writer
from latent_thoughts.prompts import WRAP_STYLES, LatentThoughtPrompt, RephrasePrompt
from latent_thoughts.synthesis.costs import Prices
from latent_thoughts.tables import open_parquet

logger = logging.getLogger(__name__)

Mode = Literal["thoughts", "rephrase"]

METADATA_KEY = b"latent_thoughts"
"""Parquet schema-metadata key holding the run description (mode, shard, chunk-file fingerprint)."""

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
    max_new_tokens: int = Field(1024, gt=0, description="answers cut at this length are failures")
    seed: int | None = Field(0, description="sampling seed passed to the engine (None: the engine's own)")


# --- chunks, shards and work items --------------------------------------------------------------


def load_chunks(path: str | Path) -> list[Chunk]:
    """All chunks of a chunk file (``latent-thoughts chunk`` output), in file order."""
    chunks = read_chunks(path)
    if not chunks:
        raise LatentThoughtsError(f"{path}: the chunk file holds no chunks")
    return chunks


def chunks_fingerprint(chunks: Sequence[Chunk]) -> str:
    """A short hash of the chunks' content, stored in outputs so that merge can refuse foreign shards."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(json.dumps([chunk.doc_id, chunk.chunk_index, chunk.prefix, chunk.text]).encode("utf-8"))
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class WorkItem:
    """One request to the teacher: which chunk or document it is for, its cache key and its prompt.

    ``chunk_index`` is -1 for a whole document (rephrasing); ``text`` is the chunk or document the
    answer is about (its length drives the dry-run's estimate of the answer's length). The chat
    messages are rendered on demand from ``prompt``, so a large run holds each text once.
    """

    doc_id: str
    chunk_index: int
    key: str
    prefix: str
    text: str
    prompt: LatentThoughtPrompt | RephrasePrompt | None
    style: str = ""

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


def latent_work(
    chunks: Sequence[Chunk], teacher: str, sampling: Sampling, prompt: LatentThoughtPrompt | None = None
) -> list[WorkItem]:
    """One latent-thought request per chunk (METHOD section 4): the teacher sees the prefix and the chunk."""
    prompt = prompt or LatentThoughtPrompt()
    params = sampling_key(sampling)
    return [
        WorkItem(
            doc_id=chunk.doc_id,
            chunk_index=chunk.chunk_index,
            key=cache_key(
                task="latent",
                prefix=chunk.prefix,
                text=chunk.text,
                teacher=teacher,
                prompt_version=prompt.version,
                sampling=params,
            ),
            prefix=chunk.prefix,
            text=chunk.text,
            prompt=prompt,
        )
        for chunk in chunks
    ]


def draw_wrap_style(doc_id: str, seed: int) -> str:
    """The WRAP style of a document: a seeded hash of its id picks one of the four styles."""
    styles = sorted(WRAP_STYLES)
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return styles[int.from_bytes(digest[:8], "little") % len(styles)]


def rephrase_work(
    chunks: Sequence[Chunk], style: str, teacher: str, sampling: Sampling, seed: int
) -> list[WorkItem]:
    """One rephrasing request per document.

    ``style`` is ``wrap`` (one of the four WRAP styles drawn per document by :func:`draw_wrap_style`),
    ``cot`` (WRAP-CoT), or one style name to use for every document. The document is the
    concatenation of its chunks, which gives back its text exactly.
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
        key = cache_key(
            task=f"rephrase:{chosen}",
            prefix="",
            text=text,
            teacher=teacher,
            prompt_version=prompt.version,
            sampling=params,
        )
        items.append(WorkItem(doc_id, -1, key, "", text, prompt, chosen))
    return items


# --- judging answers ------------------------------------------------------------------------------


def failure_reason(
    reply: ChatReply, refusal_patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS
) -> str | None:
    """Why ``reply`` cannot be used as a thought, or None when it can.

    Reasons: ``length`` (cut at the token limit), ``error: ...`` (the engine gave up), ``empty``,
    ``refusal`` (the answer opens like a refusal).
    """
    if reply.finish_reason == "error":
        return f"error: {one_line(reply.text) or 'the engine reported an error'}"
    if reply.finish_reason == "length":
        return "length"
    if not reply.text.strip():
        return "empty"
    opening = reply.text.strip()[:200]
    if any(re.search(pattern, opening, flags=re.IGNORECASE) for pattern in refusal_patterns):
        return "refusal"
    return None


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
    """

    items: int = 0
    cached: int = 0
    cached_failures: int = 0
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    retries: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def count(self, record: CacheRecord) -> None:
        """Add one newly finished record."""
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        if record.status == "ok":
            self.succeeded += 1
        else:
            self.failed += 1
            reason = record.reason.split(":")[0]
            self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1


def plan_work(
    items: Sequence[WorkItem], cache: ResultCache, retry_failures: bool
) -> tuple[list[WorkItem], RunStats]:
    """The items still to send (each distinct key once), and stats counting what the cache already has.

    Recorded failures are kept as they are unless ``retry_failures``, in which case only they (and
    items never answered) are sent.
    """
    stats = RunStats(items=len(items))
    todo: list[WorkItem] = []
    queued: set[str] = set()
    for item in items:
        status = cache.status(item.key)
        if status == "ok":
            stats.cached += 1
            continue
        if status == "failed" and not retry_failures:
            stats.cached_failures += 1
            continue
        if item.key not in queued:  # identical requests (same text and prefix) are sent once
            queued.add(item.key)
            todo.append(item)
    return todo, stats


def batched(items: Sequence[WorkItem], size: int) -> Iterator[Sequence[WorkItem]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


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

    Each batch is one ``engine.chat`` call (the engine spreads it over its own concurrency); its
    answers are appended to the cache before the next call. When a batch raises, its conversations
    are retried one by one so that one bad request is recorded as a failure on its own. Requests that
    raised are held back until a later request succeeds: ``max_consecutive_errors`` of them in a row
    mean the teacher is down, and the run stops with an error without recording them, so that a
    plain rerun sends them again. ``teacher`` is the identity recorded with the answers (the one in
    the items' keys). ``stats`` is updated in place and returned.
    """
    from tqdm import tqdm

    started = time.monotonic()
    held: list[CacheRecord] = []  # requests that raised, not yet known to be isolated failures
    bar = tqdm(total=len(todo), unit="req", desc="synthesize", disable=not progress, dynamic_ncols=True)

    def keep(records: Sequence[CacheRecord]) -> None:
        cache.append(records)
        for record in records:
            stats.count(record)

    try:
        for batch in batched(todo, batch_size):
            if delay_s > 0:
                time.sleep(delay_s)
            answered, raised = _answer_batch(batch, engine, teacher, sampling, refusal_patterns)
            stats.requests += len(batch)
            if answered:
                keep([*held, *answered, *raised])
                held = []
            else:
                held.extend(raised)
                if len(held) >= max_consecutive_errors:
                    raise LatentThoughtsError(
                        f"teacher {teacher}: {len(held)} requests in a row failed (last: {held[-1].reason}); "
                        "finished work is kept, rerun to resume"
                    )
            bar.update(len(batch))
            postfix: dict[str, Any] = {"failed": stats.failed + len(held), "tok_out": stats.completion_tokens}
            if prices is not None:
                postfix["cost"] = f"{prices.cost(stats.prompt_tokens, stats.completion_tokens):.4f}"
            bar.set_postfix(postfix, refresh=False)
        keep(held)  # isolated errors at the very end of the run
    finally:
        bar.close()
        stats.elapsed_s += time.monotonic() - started
    return stats


def _chat(engine: Engine, batch: Sequence[WorkItem], sampling: Sampling) -> list[ChatReply]:
    replies = engine.chat(
        [item.messages for item in batch],
        1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
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


@dataclass(frozen=True)
class OutputPaths:
    """Where one run writes: the result, its failures and summary, the shared cache folder and writer name."""

    result: Path
    failures: Path
    summary: Path
    cache_dir: Path
    writer: str
    batch_state: Path


def output_paths(out: str | Path, shard: tuple[int, int] | None = None) -> OutputPaths:
    """The files of a run writing ``out`` (``NAME.parquet``), or of one shard of it.

    Shards write ``NAME.shard-i-of-N.parquet`` (and matching failures and summary files); every
    shard shares the cache folder ``NAME.cache/``, writing its own file there.
    """
    out = Path(out)
    if out.suffix != ".parquet":
        raise LatentThoughtsError(f"--out {out}: the output must be a .parquet file")
    stem = out.with_suffix("")
    writer = shard_writer(shard)
    base = stem if writer == "all" else stem.with_name(f"{stem.name}.{writer}")
    return OutputPaths(
        result=base.with_name(base.name + ".parquet"),
        failures=base.with_name(base.name + ".failures.parquet"),
        summary=base.with_name(base.name + ".summary.json"),
        cache_dir=stem.with_name(stem.name + ".cache"),
        writer=writer,
        batch_state=stem.with_name(stem.name + ".cache") / f"{writer}.batches.json",
    )


def write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` as Parquet, atomically (:func:`~latent_thoughts.atomic.atomic_write`)."""
    with atomic_write(path) as partial:
        pq.write_table(table.combine_chunks(), partial)


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON to ``path``, atomically (:func:`~latent_thoughts.atomic.atomic_write`)."""
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def with_metadata(table: pa.Table, metadata: dict[str, Any]) -> pa.Table:
    """``table`` with the run description stored in its schema metadata."""
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode("utf-8")})


def read_metadata(path: Path) -> dict[str, Any]:
    """The run description stored in a synthesis output (empty when absent)."""
    schema = open_parquet(path, "synthesis output").schema_arrow
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


@dataclass
class OutputCounts:
    """Rows written: answers, failures, and items still without an answer (nothing is written then)."""

    written: int = 0
    failures: int = 0
    missing: int = 0


def build_tables(items: Sequence[WorkItem], cache: ResultCache, mode: Mode) -> tuple[pa.Table, pa.Table, int]:
    """The result and failure tables of ``items`` from the cache, in item order, and the count still missing."""
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    missing = 0
    for item in items:
        record = cache.get(item.key)
        if record is None:
            missing += 1
            continue
        common = {
            "doc_id": item.doc_id,
            "key": item.key,
            "teacher": record.teacher,
            "prompt_version": item.prompt_version,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "finish_reason": record.finish_reason,
        }
        if record.status == "failed":
            failures.append(
                {
                    **common,
                    "chunk_index": item.chunk_index,
                    "style": item.style,
                    "reason": record.reason,
                    "answer": record.text,
                }
            )
        elif mode == "thoughts":
            rows.append({**common, "chunk_index": item.chunk_index, "thought": record.text})
        else:
            rows.append({**common, "style": item.style, "text": record.text})
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
    table, failures, missing = build_tables(items, cache, mode)
    if missing:
        return OutputCounts(missing=missing)
    write_table(with_metadata(failures, metadata), paths.failures)
    # The result goes last: its presence means the run finished.
    write_table(with_metadata(table, metadata), paths.result)
    return OutputCounts(written=table.num_rows, failures=failures.num_rows)


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
    """The JSON summary of a run: what it found cached, sent, spent and wrote."""
    return {
        "mode": mode,
        "teacher": teacher,
        "prompt_version": prompt_version,
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "batch_api": batch_api,
        "run": asdict(stats),
        "cost": round(prices.cost(stats.prompt_tokens, stats.completion_tokens, batch=batch_api), 6),
        "currency": prices.currency,
        "output": {
            "result": str(paths.result) if not counts.missing else None,
            "rows": counts.written,
            "failures": counts.failures,
            "missing": counts.missing,
        },
    }
