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
import secrets
import time
from dataclasses import dataclass
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


def sampling_params(body: dict[str, Any], default_max_tokens: int) -> SamplingParams:
    """The sampling options of a completions or chat request body (a bad value is a 400)."""
    n = get_field(body, "n", int, 1)
    temperature = get_field(body, "temperature", float, 1.0)
    top_p = get_field(body, "top_p", float, 1.0)
    max_tokens = get_field(body, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = get_field(body, "max_tokens", int, default_max_tokens)
    stop = body.get("stop")
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


def banned_ids(body: dict[str, Any]) -> tuple[int, ...]:
    """The token ids banned by ``logit_bias`` (``{"id": -100}``, as the OpenAI API spells a ban).

    Only bans are supported: a bias above -100 would change the law that sampled tokens'
    log-probabilities are reported under, so it is a 400 rather than silently ignored.
    """
    bias = get_field(body, "logit_bias", dict, {})
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
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
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
            content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
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
