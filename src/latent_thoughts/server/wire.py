"""The OpenAI wire format of ``latent-thoughts serve``: errors, ids, request fields and bodies.

Everything here is plain data in, plain data out: request bodies are parsed into prompts,
conversations and :class:`SamplingParams` (a bad field is an :class:`APIError`, answered as the OpenAI
API answers: ``{"error": {"message", "type", "param", "code"}}``), and the pieces of batch output
files are built. No engine, no files, no HTTP framework.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import math
import mmap
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_thoughts.engines.base import ChatMessage


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


def new_id(prefix: str) -> str:
    """A fresh object id: ``prefix`` and 24 random hex digits (``cmpl-...``, ``file-...``)."""
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    """The current time in whole seconds since the epoch, as the API's ``created`` fields give it."""
    return int(time.time())


# ---------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; beyond them it is a 400 before any work is done.

    ``max_tokens`` and ``max_prompt_tokens`` of None mean the engine's context length and four
    times it (longer prompts are cut from the front to fit the context, but a prompt more than four
    contexts long is refused rather than tokenised and mostly thrown away). Text longer than
    ``max_prompt_chars`` is refused before it is tokenised at all.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    max_n: int = 128
    max_prompts: int = 1024
    max_sequences: int = 4096
    max_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_logprobs: int = 20
    max_prompt_chars: int | None = None
    """Longest text prompt (or chat conversation) in characters, checked before tokenising; None
    means ``CHARS_PER_TOKEN`` times ``max_prompt_tokens``."""


CHARS_PER_TOKEN = 16
"""Characters per token allowed for before tokenising: far more than any tokenizer needs, so a prompt
refused by this cap would have been refused by the token limit anyway, without the work."""


MAX_ID_CHARS = 128
"""Longest file or batch id accepted (ids this server makes are about 30 characters)."""


def parse_json(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object; invalid, deeply nested or non-object JSON is a 400."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise APIError("the request body is nested too deeply") from None
    except ValueError:  # includes invalid UTF-8
        raise APIError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise APIError("the request body must be a JSON object")
    return data


# ---------------------------------------------------------------------- request fields
def get_field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
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
        raise APIError(f"{name} must be {names}, got {_short(value)}", param=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError(f"{name} must be a finite number, got {value}", param=name)
    return value


def _short(value: Any) -> str:
    """At most 80 characters of ``value`` as JSON (a nested or huge value stays one short line)."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


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


def sampling_params(
    body: dict[str, Any], default_max_tokens: int, limits: Limits | None = None
) -> SamplingParams:
    """The sampling options of a completions or chat request body (a bad value is a 400).

    ``limits`` caps ``n`` and ``max_tokens`` (its ``max_tokens`` must be resolved to a number)."""
    n = get_field(body, "n", int, 1)
    temperature = get_field(body, "temperature", float, 1.0)
    top_p = get_field(body, "top_p", float, 1.0)
    max_tokens = get_field(body, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = get_field(body, "max_tokens", int, default_max_tokens)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        raise APIError(f"stop must be a string or a list of strings, got {_short(stop)}", param="stop")
    stops: list[str | int] = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) for s in stops):
        raise APIError("stop must be a string or a list of strings", param="stop")
    stop_ids = get_field(body, "stop_token_ids", list, [])
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
    if limits is not None:
        if n > limits.max_n:
            raise APIError(f"n must be at most {limits.max_n} on this server, got {n}", param="n")
        if limits.max_tokens is not None and max_tokens > limits.max_tokens:
            raise APIError(
                f"max_tokens must be at most {limits.max_tokens} on this server, got {max_tokens}",
                param="max_tokens",
            )
    return SamplingParams(
        banned_ids=banned_ids(body),
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=tuple(stops) + tuple(stop_ids),
        seed=get_field(body, "seed", int, None),
        ignore_eos=bool(get_field(body, "ignore_eos", bool, False)),
    )


def logprobs_field(body: dict[str, Any], name: str, limits: Limits | None = None) -> int | None:
    """``logprobs`` or ``prompt_logprobs``: absent, or a count in [0, ``limits.max_logprobs``]."""
    value = get_field(body, name, int, None)
    if value is None:
        return None
    most = limits.max_logprobs if limits is not None else 20
    if not 0 <= value <= most:
        raise APIError(f"{name} must be in [0, {most}], got {value}", param=name)
    return int(value)


def valid_id(item_id: str) -> bool:
    """Whether ``item_id`` could name a stored file or batch (letters, digits, ``-`` and ``_``)."""
    return 0 < len(item_id) <= MAX_ID_CHARS and all(
        c.isascii() and (c.isalnum() or c in "-_") for c in item_id
    )


def banned_ids(body: dict[str, Any]) -> tuple[int, ...]:
    """The token ids banned by ``logit_bias`` (``{"id": -100}``, as the OpenAI API spells a ban).

    Only bans are supported: a bias above -100 would change the law that sampled tokens'
    log-probabilities are reported under, so it is a 400 rather than silently ignored.
    """
    bias = get_field(body, "logit_bias", dict, {})
    banned = []
    for key, value in bias.items():
        key = str(key)
        token_id = key.isascii() and key.isdigit() and len(key) <= 12
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        if not token_id or not number:
            raise APIError("logit_bias must map token ids to numbers", param="logit_bias")
        if value > -100:
            raise APIError(
                f"logit_bias: only bans (-100) are supported, got {value} for token {key}", param="logit_bias"
            )
        banned.append(int(key))
    return tuple(sorted(banned))


def prompts_of(body: dict[str, Any]) -> list[str | list[int]]:
    """The prompts of a completions request: text, token ids, or a list of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(
            isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in prompt
        ):
            return [list(p) for p in prompt]
    raise APIError("prompt must be a string, a list of token ids, or a list of either", param="prompt")


def messages_of(body: dict[str, Any]) -> list[ChatMessage]:
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
            parts = [part.get("text", "") for part in content if isinstance(part, dict)]
            if not all(isinstance(part, str) for part in parts):
                raise APIError(f"messages[{i}].content parts must hold text", param="messages")
            content = "".join(parts)
        if not isinstance(content, str):
            raise APIError(f"messages[{i}].content must be a string", param="messages")
        out.append({"role": message["role"], "content": content})
    return out


# ---------------------------------------------------------------------- batch output lines
def batch_errors(code: str, message: str) -> dict[str, Any]:
    """The ``errors`` list of a failed batch object, with one error."""
    return {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}


def batch_output_line(custom_id: str, response: dict[str, Any]) -> str:
    """One line of a batch output (or error) file: the request's ``custom_id`` and its response."""
    return json.dumps(
        {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": None}
    )


# ---------------------------------------------------------------------- uploads
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


MAX_PART_HEADER_BYTES = 16 * 1024
MAX_FIELD_BYTES = 64 * 1024


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type (a 400 when there is none)."""
    header = email.parser.Parser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise APIError("expected a multipart/form-data body", param="file")
    if not 0 < len(boundary) <= 200:
        raise APIError("the multipart boundary must be 1 to 200 characters", param="file")
    return boundary.encode("latin-1")


def parse_multipart_file(
    content_type: str, path: Path
) -> tuple[dict[str, str], dict[str, tuple[str, int, int]]]:
    """Form fields and uploaded files of a ``multipart/form-data`` body saved at ``path``.

    The body is searched through a memory map, never read whole: each file is returned as its
    filename and the byte range ``[start, end)`` of its content in ``path``. Fields are short text
    (at most ``MAX_FIELD_BYTES``); a malformed body is a 400.
    """
    boundary = b"--" + multipart_boundary(content_type)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, int, int]] = {}
    size = path.stat().st_size
    if size == 0:
        raise APIError("the multipart body is empty", param="file")
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as body:
        position = 0 if body[: len(boundary)] == boundary else body.find(b"\r\n" + boundary)
        if position < 0:
            raise APIError("the multipart body has no part", param="file")
        position += len(boundary) if position == 0 else len(boundary) + 2
        while True:
            if body[position : position + 2] == b"--":
                break  # the closing delimiter
            if body[position : position + 2] != b"\r\n":
                raise APIError("malformed multipart body (a delimiter without a line break)", param="file")
            start = position + 2
            end_of_headers = body.find(b"\r\n\r\n", start, start + MAX_PART_HEADER_BYTES)
            if end_of_headers < 0:
                raise APIError("malformed multipart body (part headers missing or too long)", param="file")
            headers = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                body[start:end_of_headers] + b"\r\n\r\n", headersonly=True
            )
            content_start = end_of_headers + 4
            content_end = body.find(b"\r\n" + boundary, content_start)
            if content_end < 0:
                raise APIError("malformed multipart body (a part is not closed)", param="file")
            name = headers.get_param("name", header="content-disposition")
            filename = headers.get_filename()
            if isinstance(name, str):
                if filename is not None:
                    files[name] = (filename, content_start, content_end)
                elif content_end - content_start > MAX_FIELD_BYTES:
                    raise APIError(f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes", param=name)
                else:
                    fields[name] = body[content_start:content_end].decode("utf-8", errors="replace")
            position = content_end + 2 + len(boundary)
    return fields, files
