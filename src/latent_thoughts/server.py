"""An OpenAI-compatible HTTP server over a :class:`TransformersEngine` (``latent-thoughts serve``).

Endpoints (under ``/v1``): ``models``; ``completions`` (prompt as text, token ids or lists of either;
``n``, ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``, ``logprobs``, ``echo``,
``logit_bias`` bans (-100), and vLLM's ``prompt_logprobs``, ``stop_token_ids``, ``ignore_eos``); ``chat/completions``; and the Files
and Batches endpoints that the synthesis stage's batch mode uses with the official ``openai``
client (``files``, ``files/{id}``, ``files/{id}/content``, ``batches``, ``batches/{id}``,
``batches/{id}/cancel``).

Two deliberate extensions over the OpenAI wire format: ``logprobs`` objects carry ``token_ids``
(exact ids, which text tokens cannot give back), and sampled tokens' log-probabilities are under the
sampling distribution (after temperature and top-p), as the engine protocol promises.
``top_logprobs`` lists only the chosen token (the engine computes no top-k).

Files and batches live in ``state_dir`` (``files/`` and ``batches/``), written atomically, so they
survive a restart: unfinished batches are resumed from their partial output when the server starts.
A batch runs in one background thread over the same engine (whose lock serialises model use), its
chat requests grouped by sampling parameters so that the engine batches them.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from latent_thoughts.engines.base import ChatMessage, Sample
from latent_thoughts.engines.transformers_engine import TransformersEngine
from latent_thoughts.errors import LatentThoughtsError

log = logging.getLogger(__name__)

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
TERMINAL = ("completed", "failed", "expired", "cancelled")
BATCH_GROUP = 16
"""How many batch requests go to the engine together (bounds the work lost to a cancel)."""


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _now() -> int:
    return int(time.time())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (no torn files on a crash)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- request parsing
def _get(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """Field ``name`` of ``body`` checked against ``kind`` (None means absent); a bad value is a 400."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise APIError(f"{name} must be a number, got {value!r}", param=name)
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise APIError(f"{name} must be {names}, got {json.dumps(value)[:80]}", param=name)
    return value


@dataclass(frozen=True)
class SamplingParams:
    """The sampling options of one request (hashable, so requests with equal options batch together)."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str | int, ...]
    seed: int | None
    ignore_eos: bool
    banned_ids: tuple[int, ...] = ()


def _sampling(body: dict[str, Any], default_max_tokens: int) -> SamplingParams:
    n = _get(body, "n", int, 1)
    temperature = _get(body, "temperature", float, 1.0)
    top_p = _get(body, "top_p", float, 1.0)
    max_tokens = _get(body, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = _get(body, "max_tokens", int, default_max_tokens)
    stop = body.get("stop")
    stops: list[str | int] = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) for s in stops):
        raise APIError("stop must be a string or a list of strings", param="stop")
    stop_ids = _get(body, "stop_token_ids", list, [])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in stop_ids):
        raise APIError("stop_token_ids must be a list of integers", param="stop_token_ids")
    if n < 1:
        raise APIError(f"n must be at least 1, got {n}", param="n")
    if temperature < 0:
        raise APIError(f"temperature must be >= 0, got {temperature}", param="temperature")
    if not 0 < top_p <= 1:
        raise APIError(f"top_p must be in (0, 1], got {top_p}", param="top_p")
    if max_tokens < 0:
        raise APIError(f"max_tokens must be >= 0, got {max_tokens}", param="max_tokens")
    return SamplingParams(
        banned_ids=_banned(body),
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=tuple(stops) + tuple(stop_ids),
        seed=_get(body, "seed", int, None),
        ignore_eos=bool(_get(body, "ignore_eos", bool, False)),
    )


def _banned(body: dict[str, Any]) -> tuple[int, ...]:
    """The token ids banned by ``logit_bias`` (``{"id": -100}``, as the OpenAI API spells a ban).

    Only bans are supported: a bias above -100 would change the law that sampled tokens'
    log-probabilities are reported under, so it is a 400 rather than silently ignored.
    """
    bias = _get(body, "logit_bias", dict, {})
    banned = []
    for key, value in bias.items():
        if not str(key).isdigit() or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise APIError("logit_bias must map token ids to numbers", param="logit_bias")
        if value > -100:
            raise APIError(
                f"logit_bias: only bans (-100) are supported, got {value} for token {key}", param="logit_bias"
            )
        banned.append(int(key))
    return tuple(sorted(banned))


def _prompts(body: dict[str, Any]) -> list[str | list[int]]:
    """The prompts of a completions request: text, token ids, or a list of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise APIError("prompt must be a string, a list of token ids, or a list of either", param="prompt")


def _messages(body: dict[str, Any]) -> list[ChatMessage]:
    """The conversation of a chat request; content given as text parts is joined."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list", param="messages")
    out: list[ChatMessage] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(f"messages[{i}] must be an object with a role", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise APIError(f"messages[{i}].content must be a string", param="messages")
        out.append({"role": message["role"], "content": content})
    return out


# ---------------------------------------------------------------------- the model API
class ModelAPI:
    """Completions and chat answered by an engine, as plain dict-in, dict-out functions.

    The HTTP routes and the batch runner both use these, so a batch line gets exactly the body the
    online endpoint would have returned.
    """

    def __init__(self, engine: TransformersEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def check_model(self, body: dict[str, Any]) -> None:
        """A request naming another model is a 404, as vLLM answers."""
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise APIError(
                f"The model `{model}` does not exist (this server has {self.model_name!r})", 404, "model"
            )

    def models(self) -> dict[str, Any]:
        """The ``/v1/models`` list."""
        entry = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "latent-thoughts"}
        return {"object": "list", "data": [entry]}

    def _token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.engine.decode([i]) for i in ids]

    def _logprobs(self, ids: list[int], values: list[float | None]) -> dict[str, Any]:
        tokens = self._token_strings(ids)
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": [None if v is None else {t: v} for t, v in zip(tokens, values, strict=True)],
            "text_offset": offsets,
            "token_ids": ids,
        }

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        """A ``/v1/completions`` response body for request ``body``."""
        self.check_model(body)
        prompts = _prompts(body)
        params = _sampling(body, default_max_tokens=16)
        echo = bool(_get(body, "echo", bool, False))
        logprobs = _get(body, "logprobs", int, None)
        prompt_logprobs = _get(body, "prompt_logprobs", int, None)
        engine = self.engine
        try:
            ids = [engine.encode(p, where=f"prompt {i}") for i, p in enumerate(prompts)]
            prompt_scores: list[list[float]] = []
            if echo or prompt_logprobs is not None:
                for i, seq in enumerate(ids):
                    if len(seq) < 1:
                        raise APIError(f"prompt {i} is empty", param="prompt")
                scores = engine.score([seq[:1] for seq in ids], [seq[1:] for seq in ids])
                prompt_scores = [s.token_logprobs for s in scores]
            samples: list[list[Sample]]
            if params.max_tokens == 0:
                samples = [[Sample([], "", [], "length") for _ in range(params.n)] for _ in ids]
            else:
                samples = engine.sample(
                    ids,
                    params.n,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_new_tokens=params.max_tokens,
                    stop=params.stop,
                    seed=params.seed,
                    stop_on_eos=not params.ignore_eos,
                    banned_ids=params.banned_ids,
                )
        except LatentThoughtsError as exc:
            raise APIError(str(exc), param="prompt") from None
        choices = []
        for p, (prompt, seq, group) in enumerate(zip(prompts, ids, samples, strict=True)):
            for j, sample in enumerate(group):
                text = sample.text
                choice: dict[str, Any] = {"index": p * params.n + j, "finish_reason": sample.finish_reason}
                if echo:
                    prompt_text = prompt if isinstance(prompt, str) else engine.decode(seq)
                    text = prompt_text + text
                if logprobs is not None:
                    token_ids, values = list(sample.token_ids), list[float | None](sample.token_logprobs)
                    if echo:
                        token_ids = seq + token_ids
                        values = [None, *prompt_scores[p], *values]
                    choice["logprobs"] = self._logprobs(token_ids, values)
                else:
                    choice["logprobs"] = None
                if prompt_logprobs is not None:
                    choice["prompt_logprobs"] = [None] + [
                        {str(t): {"logprob": v, "decoded_token": engine.decode([t])}}
                        for t, v in zip(seq[1:], prompt_scores[p], strict=True)
                    ]
                    choice["prompt_token_ids"] = seq
                choice["text"] = text
                choice["token_ids"] = list(sample.token_ids)
                choices.append(choice)
        prompt_tokens = sum(len(seq) for seq in ids)
        completion_tokens = sum(len(s.token_ids) for group in samples for s in group)
        return {
            "id": _new_id("cmpl-"),
            "object": "text_completion",
            "created": _now(),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def chat_many(self, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any] | APIError]:
        """Answer several chat requests, batching those with equal sampling options; errors per request."""
        results: list[dict[str, Any] | APIError] = [APIError("not answered", 500)] * len(bodies)
        groups: dict[SamplingParams, list[tuple[int, list[ChatMessage]]]] = {}
        for i, body in enumerate(bodies):
            try:
                self.check_model(body)
                default = min(1024, max(self.engine.max_context_tokens // 2, 1))
                groups.setdefault(_sampling(body, default), []).append((i, _messages(body)))
            except APIError as exc:
                results[i] = exc
        for params, members in groups.items():
            try:
                replies = self.engine.chat(
                    [conversation for _, conversation in members],
                    params.n,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_new_tokens=params.max_tokens,
                    seed=params.seed,
                    stop=params.stop,
                    banned_ids=params.banned_ids,
                )
            except LatentThoughtsError as exc:
                for i, _ in members:
                    results[i] = APIError(str(exc), param="messages")
                continue
            for (i, _), group in zip(members, replies, strict=True):
                prompt_tokens = group[0].prompt_tokens if group else 0
                completion_tokens = sum(r.completion_tokens for r in group)
                results[i] = {
                    "id": _new_id("chatcmpl-"),
                    "object": "chat.completion",
                    "created": _now(),
                    "model": self.model_name,
                    "choices": [
                        {
                            "index": j,
                            "message": {"role": "assistant", "content": reply.text},
                            "logprobs": None,
                            "finish_reason": reply.finish_reason,
                        }
                        for j, reply in enumerate(group)
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
        return results

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """A ``/v1/chat/completions`` response body for request ``body``."""
        result = self.chat_many([body])[0]
        if isinstance(result, APIError):
            raise result
        return result


# ---------------------------------------------------------------------- files and batches
class Store:
    """Files and batches as JSON and content files under ``root`` (safe across threads and restarts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.batches = root / "batches"
        self.files.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def add_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store ``content`` as a new file object and return it."""
        meta = {
            "id": _new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": _now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self.lock:
            _write_atomic(self.files / f"{meta['id']}.data", content)
            _write_atomic(self.files / f"{meta['id']}.json", json.dumps(meta).encode())
        return meta

    def file(self, file_id: str) -> dict[str, Any]:
        """The file object ``file_id`` (404 when unknown)."""
        return self._read(self.files, file_id, "file")

    def file_content(self, file_id: str) -> bytes:
        """The bytes of file ``file_id``."""
        self.file(file_id)
        return (self.files / f"{file_id}.data").read_bytes()

    def delete_file(self, file_id: str) -> None:
        """Remove file ``file_id``."""
        self.file(file_id)
        with self.lock:
            for suffix in (".json", ".data"):
                (self.files / f"{file_id}{suffix}").unlink(missing_ok=True)

    def list_files(self) -> list[dict[str, Any]]:
        """Every file object, newest first."""
        items = [json.loads(p.read_text()) for p in self.files.glob("*.json")]
        return sorted(items, key=lambda f: (-f["created_at"], f["id"]))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch object ``batch_id`` (404 when unknown)."""
        return self._read(self.batches, batch_id, "batch")

    def save_batch(self, batch: dict[str, Any]) -> None:
        """Persist a batch object."""
        with self.lock:
            _write_atomic(self.batches / f"{batch['id']}.json", json.dumps(batch).encode())

    def list_batches(self) -> list[dict[str, Any]]:
        """Every batch object, newest first."""
        items = [json.loads(p.read_text()) for p in self.batches.glob("*.json")]
        return sorted(items, key=lambda b: (-b["created_at"], b["id"]))

    def _read(self, folder: Path, item_id: str, kind: str) -> dict[str, Any]:
        path = folder / f"{item_id}.json"
        if "/" in item_id or item_id.startswith(".") or not path.exists():
            raise APIError(f"No such {kind}: {item_id!r}", 404, param=f"{kind}_id")
        with self.lock:
            data: dict[str, Any] = json.loads(path.read_text())
        return data


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
                    batch_id, status="failed", failed_at=_now(), errors=_errors("server_error", str(exc))
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
                batch_id, status="failed", failed_at=_now(), errors=_errors(exc.param or "", exc.message)
            )
            return
        done: set[str] = set()
        for kind in ("output", "error"):
            path = self._partial(batch_id, kind)
            if path.exists():
                done.update(
                    json.loads(line)["custom_id"] for line in path.read_text().splitlines() if line.strip()
                )
        counts = {"total": len(requests), "completed": 0, "failed": 0}
        counts["completed"] = _count_lines(self._partial(batch_id, "output"))
        counts["failed"] = _count_lines(self._partial(batch_id, "error"))
        batch = self._update(
            batch_id,
            only_from=("validating",),
            status="in_progress",
            in_progress_at=_now(),
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
                        "request_id": _new_id("req_"),
                        "body": answer.body(),
                    }
                    errors.append(_line(request["custom_id"], response))
                else:
                    response = {"status_code": 200, "request_id": _new_id("req_"), "body": answer}
                    outputs.append(_line(request["custom_id"], response))
            _append(self._partial(batch_id, "output"), outputs)
            _append(self._partial(batch_id, "error"), errors)
            counts["completed"] += len(outputs)
            counts["failed"] += len(errors)
            self._update(batch_id, request_counts=dict(counts))
        self._finalize(batch_id, counts)

    def _answer(self, endpoint: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | APIError]:
        if endpoint == "/v1/chat/completions":
            return self.api.chat_many(bodies)
        answers: list[dict[str, Any] | APIError] = []
        for body in bodies:
            try:
                answers.append(self.api.completions(body))
            except APIError as exc:
                answers.append(exc)
        return answers

    def _finalize(self, batch_id: str, counts: dict[str, int]) -> None:
        batch = self._update(batch_id, only_from=("in_progress",), status="finalizing", finalizing_at=_now())
        cancelled = batch["status"] == "cancelling"
        changes: dict[str, Any] = {"request_counts": counts}
        for kind in ("output", "error"):
            path = self._partial(batch_id, kind)
            if path.exists() and path.stat().st_size:
                meta = self.store.add_file(path.read_bytes(), f"{batch_id}_{kind}.jsonl", "batch_output")
                changes[f"{kind}_file_id"] = meta["id"]
        if cancelled:
            changes.update(status="cancelled", cancelled_at=_now())
        else:
            changes.update(status="completed", completed_at=_now())
        self._update(batch_id, **changes)
        for kind in ("output", "error"):
            self._partial(batch_id, kind).unlink(missing_ok=True)


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}


def _line(custom_id: str, response: dict[str, Any]) -> str:
    return json.dumps(
        {"id": _new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": None}
    )


def _append(path: Path, lines: list[str]) -> None:
    """Append lines and flush them to disk before the batch's counts say they exist."""
    if not lines:
        return
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """Form fields and uploaded files of a ``multipart/form-data`` body (stdlib parser, no extra package)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise APIError("expected a multipart/form-data body", param="file")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, data)
        else:
            fields[name] = data.decode("utf-8", errors="replace")
    return fields, files


# ---------------------------------------------------------------------- the app
def create_app(engine: TransformersEngine, model_name: str, state_dir: str | Path) -> FastAPI:
    """The FastAPI application serving ``engine`` as ``model_name``, keeping files in ``state_dir``."""
    app = FastAPI(title="latent-thoughts", version="1")
    api = ModelAPI(engine, model_name)
    store = Store(Path(state_dir))
    runner = BatchRunner(store, api)
    app.state.api, app.state.store, app.state.runner = api, store, runner

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        log.info(
            "%s %s -> %d (%.0f ms)",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        log.info("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(str(exc.errors()[:1])).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(str(exc.detail), exc.status_code).body(), status_code=exc.status_code)

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise APIError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        return body

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return api.models()

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if body.get("stream"):
            raise APIError("stream is not supported", param="stream")
        return await run_in_threadpool(api.completions, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if body.get("stream"):
            raise APIError("stream is not supported", param="stream")
        return await run_in_threadpool(api.chat, body)

    @app.post("/v1/files")
    async def upload_file(request: Request) -> dict[str, Any]:
        fields, files = parse_multipart(request.headers.get("content-type", ""), await request.body())
        if "file" not in files:
            raise APIError("missing the file part", param="file")
        purpose = fields.get("purpose", "")
        if purpose not in ("batch", "user_data", "fine-tune", "assistants"):
            raise APIError(f"unsupported purpose {purpose!r}", param="purpose")
        filename, content = files["file"]
        return store.add_file(content, filename, purpose)

    @app.get("/v1/files")
    async def list_files() -> dict[str, Any]:
        return {"object": "list", "data": store.list_files(), "has_more": False}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict[str, Any]:
        return store.file(file_id)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict[str, Any]:
        store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        return Response(store.file_content(file_id), media_type="application/octet-stream")

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        input_file_id = _get(body, "input_file_id", str, "")
        endpoint = _get(body, "endpoint", str, "")
        window = _get(body, "completion_window", str, "24h")
        if endpoint not in BATCH_ENDPOINTS:
            raise APIError(
                f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}, got {endpoint!r}", param="endpoint"
            )
        if window != "24h":
            raise APIError(f"completion_window must be '24h', got {window!r}", param="completion_window")
        try:
            store.file(input_file_id)
        except APIError:
            raise APIError(f"no input file {input_file_id!r}", param="input_file_id") from None
        created = _now()
        batch = {
            "id": _new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "model": model_name,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None,
            "expires_at": created + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": _get(body, "metadata", dict, None),
        }
        store.save_batch(batch)
        runner.submit(batch["id"])
        return batch

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20, after: str | None = None) -> dict[str, Any]:
        batches = store.list_batches()
        if after is not None:
            ids = [b["id"] for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[: max(limit, 1)]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(batches) > len(page),
        }

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str) -> dict[str, Any]:
        return store.batch(batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> dict[str, Any]:
        with store.lock:
            batch = store.batch(batch_id)
            if batch["status"] in ("validating", "in_progress"):
                batch.update(status="cancelling", cancelling_at=_now())
                store.save_batch(batch)
        return batch

    return app


def serve(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    state_dir: str | Path | None = None,
    model_name: str | None = None,
    engine_options: dict[str, Any] | None = None,
) -> None:
    """Load the model in ``model_dir`` and serve it until interrupted (blocks)."""
    import socket
    import tempfile

    import uvicorn

    from latent_thoughts.config import validate_config
    from latent_thoughts.engines.transformers_engine import TransformersEngineConfig

    with socket.socket() as probe:  # a busy port is a one-line error, not a uvicorn traceback
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LatentThoughtsError(f"{host}:{port}: cannot listen ({exc.strerror})") from None
    config = validate_config(
        TransformersEngineConfig, {**(engine_options or {}), "model": str(model_dir)}, "serve options"
    )
    engine = TransformersEngine(config)
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="latent-thoughts-serve-"))
    name = model_name or Path(model_dir).resolve().name
    app = create_app(engine, name, state)
    log.info("serving %s as %r on http://%s:%d/v1 (state in %s)", model_dir, name, host, port, state)
    uvicorn.run(app, host=host, port=port, log_level="warning")
