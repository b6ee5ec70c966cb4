"""The batch runner of ``latent-thoughts serve``: OpenAI Batch API jobs answered in the background.

Batches run one after another in one background thread over the same engine (whose lock serialises
model use), their chat requests grouped by sampling parameters so that the engine batches them.
Answers are appended (and fsynced) to ``BATCH.output.partial.jsonl`` / ``BATCH.error.partial.jsonl``
before the batch's counts say they exist, so an unfinished batch is resumed from its partial output
when the server starts again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latent_thoughts.server.api import ModelAPI
from latent_thoughts.server.store import Store
from latent_thoughts.server.wire import APIError, batch_errors, batch_output_line, new_id, now

log = logging.getLogger(__name__)

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
TERMINAL = ("completed", "failed", "expired", "cancelled")
BATCH_GROUP = 16
"""How many batch requests go to the engine together (bounds the work lost to a cancel)."""


class BatchRunner:
    """Runs batches one after another in a background thread; resumes unfinished ones on start."""

    def __init__(self, store: Store, api: ModelAPI) -> None:
        self.store = store
        self.api = api
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
        for batch in store.list_batches()[::-1]:
            if batch["status"] not in TERMINAL:
                log.info("resuming batch %s (%s)", batch["id"], batch["status"])
                self.queue.put(batch["id"])
        self.thread.start()

    def submit(self, batch_id: str) -> None:
        """Queue a batch for processing."""
        self.queue.put(batch_id)

    def _loop(self) -> None:
        while True:
            batch_id = self.queue.get()
            try:
                self.process(batch_id)
            except Exception as exc:  # keep serving; the batch records why it failed
                log.exception("batch %s failed", batch_id)
                self._update(
                    batch_id, status="failed", failed_at=now(), errors=batch_errors("server_error", str(exc))
                )

    def _update(self, batch_id: str, only_from: Sequence[str] = (), **changes: Any) -> dict[str, Any]:
        """Apply ``changes`` to a saved batch (only when its status is in ``only_from``, if given).

        The check and the write share the store's lock, so a cancel that lands in between is never
        overwritten by the runner.
        """
        with self.store.lock:
            batch = self.store.batch(batch_id)
            if not only_from or batch["status"] in only_from:
                batch.update(changes)
                self.store.save_batch(batch)
        return batch

    def _partial(self, batch_id: str, kind: str) -> Path:
        return self.store.batches / f"{batch_id}.{kind}.partial.jsonl"

    def _requests(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The validated request lines of a batch's input file; a bad line fails the batch (APIError)."""
        content = self.store.file_content(batch["input_file_id"]).decode("utf-8", errors="replace")
        requests, seen = [], set()
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError:
                raise APIError(f"line {number}: not valid JSON", param="invalid_json_line") from None
            if not isinstance(request, dict) or not isinstance(request.get("custom_id"), str):
                raise APIError(f"line {number}: needs a string custom_id", param="missing_custom_id")
            if request["custom_id"] in seen:
                raise APIError(
                    f"line {number}: duplicate custom_id {request['custom_id']!r}",
                    param="duplicate_custom_id",
                )
            if request.get("url") != batch["endpoint"]:
                raise APIError(f"line {number}: url must be {batch['endpoint']}", param="invalid_url")
            if not isinstance(request.get("body"), dict):
                raise APIError(f"line {number}: needs a JSON object body", param="invalid_body")
            seen.add(request["custom_id"])
            requests.append(request)
        if not requests:
            raise APIError("the input file holds no requests", param="empty_file")
        return requests

    def process(self, batch_id: str) -> None:
        """Answer every request of a batch not answered yet, then write its output and error files."""
        batch = self.store.batch(batch_id)
        if batch["status"] in TERMINAL:
            return
        try:
            requests = self._requests(batch)
        except APIError as exc:
            self._update(
                batch_id, status="failed", failed_at=now(), errors=batch_errors(exc.param or "", exc.message)
            )
            return
        done: set[str] = set()
        for kind in ("output", "error"):
            done.update(_answered(self._partial(batch_id, kind)))
        counts = {"total": len(requests), "completed": 0, "failed": 0}
        counts["completed"] = _count_lines(self._partial(batch_id, "output"))
        counts["failed"] = _count_lines(self._partial(batch_id, "error"))
        batch = self._update(
            batch_id,
            only_from=("validating",),
            status="in_progress",
            in_progress_at=now(),
            request_counts=counts,
        )
        pending = [r for r in requests if r["custom_id"] not in done]
        for start in range(0, len(pending), BATCH_GROUP):
            if self.store.batch(batch_id)["status"] == "cancelling":
                break
            group = pending[start : start + BATCH_GROUP]
            answers = self._answer(batch["endpoint"], [r["body"] for r in group])
            outputs, errors = [], []
            for request, answer in zip(group, answers, strict=True):
                if isinstance(answer, APIError):
                    response = {
                        "status_code": answer.status,
                        "request_id": new_id("req_"),
                        "body": answer.body(),
                    }
                    errors.append(batch_output_line(request["custom_id"], response))
                else:
                    response = {"status_code": 200, "request_id": new_id("req_"), "body": answer}
                    outputs.append(batch_output_line(request["custom_id"], response))
            _append(self._partial(batch_id, "output"), outputs)
            _append(self._partial(batch_id, "error"), errors)
            counts["completed"] += len(outputs)
            counts["failed"] += len(errors)
            self._update(batch_id, request_counts=dict(counts))
        self._finalize(batch_id, counts)

    def _answer(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | APIError]:
        """One answer or error per body: a request that fails, for whatever reason, fails alone."""
        if endpoint == "/v1/chat/completions":
            try:
                return self.api.chat_many(bodies)
            except Exception:  # one body broke the group: answer each alone to find it
                if len(bodies) == 1:
                    return [self._unexpected(bodies[0])]
                return [answer for body in bodies for answer in self._answer(endpoint, [body])]
        answers: list[dict[str, Any] | APIError] = []
        for body in bodies:
            try:
                answers.append(self.api.completions(body))
            except APIError as exc:
                answers.append(exc)
            except Exception:
                answers.append(self._unexpected(body))
        return answers

    @staticmethod
    def _unexpected(body: dict[str, Any]) -> APIError:
        log.exception("a batch request failed unexpectedly")
        return APIError("the server could not answer this request (see its log)", 500)

    def _finalize(self, batch_id: str, counts: dict[str, int]) -> None:
        batch = self._update(batch_id, only_from=("in_progress",), status="finalizing", finalizing_at=now())
        cancelled = batch["status"] == "cancelling"
        changes: dict[str, Any] = {"request_counts": counts}
        for kind in ("output", "error"):
            path = self._partial(batch_id, kind)
            if path.exists() and path.stat().st_size:
                meta = self.store.add_file(path.read_bytes(), f"{batch_id}_{kind}.jsonl", "batch_output")
                changes[f"{kind}_file_id"] = meta["id"]
        if cancelled:
            changes.update(status="cancelled", cancelled_at=now())
        else:
            changes.update(status="completed", completed_at=now())
        self._update(batch_id, **changes)
        for kind in ("output", "error"):
            self._partial(batch_id, kind).unlink(missing_ok=True)


def _append(path: Path, lines: list[str]) -> None:
    """Append lines and flush them to disk before the batch's counts say they exist."""
    if not lines:
        return
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


def _answered(path: Path) -> list[str]:
    """The ``custom_id`` of every whole line of a partial output (a damaged line's request is redone)."""
    if not path.exists():
        return []
    ids = []
    for line in path.read_bytes().splitlines():
        try:
            custom_id = json.loads(line)["custom_id"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(custom_id, str):
            ids.append(custom_id)
    return ids


def _count_lines(path: Path) -> int:
    return len(_answered(path))
