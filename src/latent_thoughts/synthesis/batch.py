"""Synthesis through the OpenAI Batch API: upload requests, create batches, poll, collect, resume.

Batch prices are half the online ones. Each work item becomes one line of a JSONL request file whose
``custom_id`` is the item's cache key, so results are matched back to chunks by key, whatever order
they come in. The state of every batch (its id, its input file and its keys) is saved in
``NAME.cache/<writer>.batches.json`` before and after it is created, so a run stopped while batches
are in flight (or started with ``--no-wait``) resumes by polling them instead of paying twice.
Collected answers go into the same cache as online answers, with the same success and failure rules.
A cut answer whose item has a larger budget left (``on_cut: retry_longer``) is submitted again with
that budget in a later batch (by a waiting run as soon as its batch is collected, else by the next).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import write_json
from latent_thoughts.engines.base import ChatReply, FinishReason, usage_counts
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.cache import CacheRecord, ResultCache
from latent_thoughts.synthesis.pipeline import (
    RunStats,
    Sampling,
    WorkItem,
    failed_record,
    longer_requests,
    one_line,
    record_for,
)

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchJob:
    """One submitted batch: ``batch_id`` is None while it is being created (between upload and create)."""

    input_file_id: str
    keys: list[str]
    batch_id: str | None = None
    status: str = "submitting"
    collected: bool = False
    created: float = field(default_factory=time.time)


def load_jobs(path: Path) -> list[BatchJob]:
    """The batches recorded for this writer (none when the file does not exist)."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [BatchJob(**job) for job in data["jobs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise LatentThoughtsError(f"{path}: unreadable batch state ({exc}); delete it to resubmit") from None


def save_jobs(path: Path, jobs: Sequence[BatchJob]) -> None:
    """Record the batches atomically."""
    write_json(path, {"jobs": [asdict(job) for job in jobs]})


def request_line(
    item: WorkItem, model: str, sampling: Sampling, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """The Batch API request of one work item (a chat completion), keyed by the item's cache key.

    ``max_tokens_field`` is ``max_tokens`` or, for OpenAI's newer models, ``max_completion_tokens``;
    its value is the item's own budget (a longer request's under ``retry_longer``).
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": item.messages,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        max_tokens_field: item.budget(sampling),
        "n": 1,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    return {"custom_id": item.key, "method": "POST", "url": ENDPOINT, "body": body}


def reply_from_completion(body: dict[str, Any]) -> tuple[ChatReply, str | None]:
    """A chat-completion response body as a reply, plus a failure reason the body itself gives.

    The API's own refusal field and content filter are failures whatever the text says. A body of
    the wrong shape (``choices`` not a list, content not text, usage not token counts) raises
    ValueError naming the field.
    """
    if not isinstance(body, dict):
        raise ValueError(f"the response body is {type(body).__name__}, not an object")
    choices = body.get("choices") or [{}]
    if not isinstance(choices, list):
        raise ValueError(f"choices is {type(choices).__name__}, not a list")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ValueError(f"choices[0] is {type(choice).__name__}, not an object")
    message = choice.get("message") or {}
    if not isinstance(message, dict):
        raise ValueError(f"choices[0].message is {type(message).__name__}, not an object")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"message.content is {type(content).__name__}, not text")
    raw_finish = choice.get("finish_reason") or "stop"
    if not isinstance(raw_finish, str):
        raise ValueError(f"finish_reason is {type(raw_finish).__name__}, not text")
    prompt_tokens, completion_tokens = usage_counts(body)
    finish: FinishReason = "length" if raw_finish == "length" else "stop"
    reply = ChatReply(
        text=content or "",
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    if message.get("refusal"):
        return reply, "refusal"
    if raw_finish == "content_filter":
        return reply, "content_filter"
    return reply, None


def records_from_output(
    lines: str,
    items: dict[str, WorkItem],
    teacher: str,
    refusal_patterns: Sequence[str],
) -> list[CacheRecord]:
    """Cache records of a batch output (or error) file; lines for unknown keys are ignored.

    A malformed line of a known key is a failure of that item alone (reason ``error: malformed
    batch result ...``), so the good answers of the batch are still cached.
    """
    records = []
    for number, line in enumerate(lines.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            item = items.get(entry["custom_id"])
        except (ValueError, KeyError, TypeError):
            logger.warning("batch output line %d is not a batch result; ignored", number)
            continue
        if item is None:
            continue
        try:
            records.append(_record_of(entry, item, teacher, refusal_patterns))
        except (AttributeError, IndexError, KeyError, OverflowError, TypeError, ValueError) as exc:
            logger.warning("batch output line %d (%s): malformed result (%s)", number, item.key[:12], exc)
            reason = f"error: malformed batch result (line {number}): {one_line(str(exc), 200)}"
            records.append(failed_record(item, teacher, reason))
    return records


def _record_of(
    entry: dict[str, Any], item: WorkItem, teacher: str, refusal_patterns: Sequence[str]
) -> CacheRecord:
    """The record of one batch output line of ``item``; raises on a line of the wrong shape."""
    response = entry.get("response") or {}
    if not isinstance(response, dict):
        raise ValueError(f"response is {type(response).__name__}, not an object")
    body = response.get("body") or {}
    error = entry.get("error") or (body.get("error") if isinstance(body, dict) else None)
    raw_status = response.get("status_code") or 0
    if isinstance(raw_status, bool) or not isinstance(raw_status, int):
        raise ValueError(f"status_code is {type(raw_status).__name__}, not a number")
    status = raw_status
    if error or (status and status != 200):
        message = error.get("message") if isinstance(error, dict) else error
        return failed_record(item, teacher, f"error: HTTP {status or '?'}: {one_line(str(message))}")
    reply, reason = reply_from_completion(body)
    record = record_for(item, reply, teacher, refusal_patterns)
    if reason is not None:
        record.status, record.reason = "failed", reason
    return record


def _file_text(client: Any, file_id: str) -> str:
    content = client.files.content(file_id)
    return content.text if hasattr(content, "text") else content.read().decode("utf-8")


def synthesize_batch(
    todo: Sequence[WorkItem],
    cache: ResultCache,
    stats: RunStats,
    *,
    client: Any,
    model: str,
    max_tokens_field: str = "max_tokens",
    teacher: str,
    sampling: Sampling,
    state_path: Path,
    poll_interval_s: float,
    max_requests_per_batch: int,
    refusal_patterns: Sequence[str],
    wait: bool = True,
    progress: bool = True,
) -> bool:
    """Answer ``todo`` through the Batch API of ``client`` (an ``openai.OpenAI``); True when all are collected.

    Batches recorded in ``state_path`` that are still in flight are polled, not resubmitted; items
    not in any of them are submitted in batches of at most ``max_requests_per_batch``. With ``wait``
    the call polls every ``poll_interval_s`` seconds until every batch has ended and its results
    are in the cache; without, it returns after one look. Items of an expired or cancelled batch
    without a result stay unanswered, so the next run submits them again. Cut answers with a larger
    budget left are submitted again with it as their batch is collected (:func:`longer_requests`).
    """
    from tqdm import tqdm

    started = time.monotonic()
    items = {item.key: item for item in todo}
    jobs = load_jobs(state_path)
    in_flight = {key for job in jobs if not job.collected for key in job.keys}
    fresh = [item for item in todo if item.key not in in_flight]
    for job in jobs:
        # Answers of a batch in flight that this run does not need are still paid for: keep them.
        for key in job.keys:
            items.setdefault(key, WorkItem("", -1, key, "", "", None))
    try:
        for job in jobs:
            if not job.collected and job.batch_id is None:
                _create(client, job, jobs, state_path, teacher)

        def submit(fresh: Sequence[WorkItem]) -> None:
            for start in range(0, len(fresh), max_requests_per_batch):
                group = fresh[start : start + max_requests_per_batch]
                payload = "".join(
                    json.dumps(request_line(item, model, sampling, max_tokens_field)) + "\n" for item in group
                )
                uploaded = client.files.create(
                    file=("requests.jsonl", payload.encode("utf-8")), purpose="batch"
                )
                job = BatchJob(input_file_id=uploaded.id, keys=[item.key for item in group])
                jobs.append(job)
                save_jobs(state_path, jobs)  # before creating: a crash here must not create a second batch
                _create(client, job, jobs, state_path, teacher)
                stats.requests += len(group)
                stats.longer_requests += sum(item.max_new_tokens is not None for item in group)

        submit(fresh)
        bar = tqdm(
            total=sum(len(job.keys) for job in jobs if not job.collected),
            unit="req",
            desc="batch",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            while True:
                for job in jobs:
                    if job.collected or job.batch_id is None:
                        continue
                    batch = client.batches.retrieve(job.batch_id)
                    job.status = str(batch.status)
                    if job.status in TERMINAL:
                        records = _collect(client, batch, job, items, teacher, refusal_patterns)
                        cache.append(records)
                        for record in records:
                            stats.count(record)
                        job.collected = True
                        save_jobs(state_path, jobs)
                        bar.update(len(job.keys))
                        following = longer_requests(records, items, cache)
                        if following:
                            items.update((item.key, item) for item in following)
                            submit(following)
                            bar.total += len(following)
                        if job.status == "failed":
                            raise LatentThoughtsError(f"batch {job.batch_id} failed: {_batch_errors(batch)}")
                pending = [job for job in jobs if not job.collected]
                bar.set_postfix({"in_flight": len(pending), "failed": stats.failed}, refresh=True)
                if not pending or not wait:
                    return not pending
                time.sleep(poll_interval_s)
        finally:
            bar.close()
    except LatentThoughtsError:
        raise
    except Exception as exc:
        raise LatentThoughtsError(
            f"Batch API of {teacher}: {type(exc).__name__}: {one_line(str(exc), 200)}; rerun to resume"
        ) from None
    finally:
        stats.elapsed_s += time.monotonic() - started


def _create(client: Any, job: BatchJob, jobs: list[BatchJob], state_path: Path, teacher: str) -> None:
    """Create the batch of ``job`` unless one for its input file exists already (a resumed crash)."""
    existing = None
    try:
        existing = next(
            (b for b in client.batches.list(limit=100) if b.input_file_id == job.input_file_id), None
        )
    except Exception as exc:
        logger.debug("could not list batches (%s)", exc)
    batch = existing or client.batches.create(
        input_file_id=job.input_file_id,
        endpoint=ENDPOINT,
        completion_window="24h",
        metadata={"source": "latent-thoughts", "teacher": teacher[:500]},
    )
    job.batch_id, job.status = batch.id, str(batch.status)
    save_jobs(state_path, jobs)
    logger.info("batch %s: %d requests submitted", batch.id, len(job.keys))


def _collect(
    client: Any,
    batch: Any,
    job: BatchJob,
    items: dict[str, WorkItem],
    teacher: str,
    refusal_patterns: Sequence[str],
) -> list[CacheRecord]:
    """The records of a finished batch: its outputs, its errors, and for a completed batch the rest as failures."""
    records: list[CacheRecord] = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            records.extend(records_from_output(_file_text(client, file_id), items, teacher, refusal_patterns))
    if job.status == "completed":
        answered = {record.key for record in records}
        records.extend(
            failed_record(items[key], teacher, "error: missing from the batch output")
            for key in job.keys
            if key not in answered
        )
    return records


def _batch_errors(batch: Any) -> str:
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    messages = [getattr(error, "message", str(error)) for error in data]
    return one_line("; ".join(messages) or "no reason given")
