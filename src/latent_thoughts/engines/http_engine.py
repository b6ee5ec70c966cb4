"""An engine over an OpenAI-compatible HTTP server: OpenAI itself, vLLM, or ``latent-thoughts serve``.

- ``chat`` uses ``/chat/completions`` (the teacher);
- ``sample`` uses ``/completions`` with ``logprobs`` (prompts as text or token-id lists, both of which
  the completions API accepts);
- ``score`` uses ``/completions`` with ``echo=True``, ``logprobs`` and ``max_tokens`` (``score_max_tokens``:
  0, or 1 for vLLM, which needs at least one generated token), and also asks for vLLM's
  ``prompt_logprobs`` so that a vLLM server gives the same answer; ``score_many`` (one context,
  several continuations) falls back to ``score`` of the pairs (the server computes each context);
- banned token ids are sent as ``logit_bias`` of -100 (a ban in the OpenAI API and in vLLM);
  ``stop_on_eos=False`` as vLLM's ``ignore_eos``;
- ``max_context_tokens`` is the servers' ``max_model_len`` from ``/models`` (vLLM gives it, and so does
  ``latent-thoughts serve``; None from a server that does not): the E-step lays its sequences out
  within it, as within a local model's positions.

``base_url`` may list several servers of the same model (one vLLM per GPU, say): requests then go
round-robin over them, and a retried request goes to the next server, so a server that is down or
busy costs a retry, not the run. ``concurrency`` is the total of requests in flight over all of them.

Against vLLM, start the server with ``--logprobs-mode processed_logprobs`` so that sampled tokens'
log-probabilities are under the sampling distribution (after temperature and top-p), as the engine
protocol promises; ``latent-thoughts serve`` always does this.

Reliability is this module's job, not the client's: the ``openai`` client runs with
``max_retries=0`` and every request goes through :meth:`HTTPEngine._request`, which retries
timeouts, lost connections, 408/409/429/5xx and malformed bodies with exponential backoff and
jitter, honours ``Retry-After``, counts retries and failures in :attr:`HTTPEngine.usage`, and ends
with a one-line :class:`LatentThoughtsError` naming the URL after ``max_attempts``. Every prompt
gets its answer or the call raises: nothing is dropped.
"""

from __future__ import annotations

import email.utils
import functools
import itertools
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import openai
from pydantic import Field, field_validator

from latent_thoughts.config import StageConfig
from latent_thoughts.engines.base import (
    ChatMessage,
    ChatReply,
    FinishReason,
    Prompt,
    Sample,
    Score,
    Usage,
    usage_counts,
)
from latent_thoughts.errors import LatentThoughtsError

log = logging.getLogger(__name__)

T = TypeVar("T")


class HTTPEngineConfig(StageConfig):
    """Options of :class:`HTTPEngine`."""

    base_url: str | list[str] = Field(
        default="http://127.0.0.1:8000/v1",
        description="the server's API root, or a list of roots of servers of one model (round-robin)",
    )
    model: str = Field(default="", description="model name sent with each request; '' asks /models")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="environment variable holding the key")
    timeout_s: float = Field(default=120.0, gt=0, description="per-request timeout")
    max_attempts: int = Field(default=6, ge=1, description="tries per request before giving up")
    backoff_initial_s: float = Field(default=1.0, ge=0, description="first retry delay")
    backoff_multiplier: float = Field(default=2.0, ge=1)
    backoff_max_s: float = Field(default=60.0, ge=0, description="cap of the exponential delay")
    jitter: float = Field(default=0.5, ge=0, le=1, description="a delay is scaled by uniform(1 - jitter, 1)")
    retry_after_max_s: float = Field(default=600.0, ge=0, description="longest Retry-After honoured")
    concurrency: int = Field(default=8, ge=1, description="requests in flight at once")
    requests_per_minute: float | None = Field(default=None, gt=0, description="request rate limit")
    tokens_per_minute: float | None = Field(default=None, gt=0, description="token rate limit (estimated)")
    prompts_per_request: int = Field(default=8, ge=1, description="prompts sent in one /completions request")
    vllm_extras: bool = Field(
        default=True,
        description="send vLLM's prompt_logprobs, stop_token_ids and return_token_ids (off for api.openai.com)",
    )
    score_max_tokens: int = Field(
        default=0, ge=0, description="max_tokens of scoring requests (vLLM wants 1)"
    )
    chat_max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    @field_validator("base_url")
    @classmethod
    def _some_urls(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("base_url: give at least one server")
        return value

    @property
    def base_urls(self) -> list[str]:
        """Every server's API root, without a trailing slash."""
        urls = self.base_url if isinstance(self.base_url, list) else [self.base_url]
        return [url.rstrip("/") for url in urls]


class _Malformed(Exception):
    """A response body that does not have the expected shape (retried like a server error)."""


class RateLimiter:
    """Request and token rate limits shared by all threads of one engine.

    Requests are spaced evenly (at most one every ``60 / requests_per_minute`` seconds); tokens come
    from a bucket holding one minute's allowance that refills continuously. A request larger than
    the whole bucket waits for a full bucket rather than forever.
    """

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.token_rate = (tokens_per_minute or 0.0) / 60.0
        self.token_capacity = float(tokens_per_minute or 0.0)
        self.tokens = self.token_capacity
        self.next_request = 0.0
        self.updated = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> None:
        """Block until a request of about ``tokens`` tokens may start."""
        while True:
            with self._lock:
                now = time.monotonic()
                if self.token_rate:
                    self.tokens = min(
                        self.token_capacity, self.tokens + (now - self.updated) * self.token_rate
                    )
                self.updated = now
                need = min(float(tokens), self.token_capacity)
                wait = max(self.next_request - now, 0.0)
                if self.token_rate and self.tokens < need:
                    wait = max(wait, (need - self.tokens) / self.token_rate)
                if wait <= 0:
                    self.next_request = now + self.interval
                    if self.token_rate:
                        self.tokens -= need
                    return
            time.sleep(wait)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _one_line(text: object, limit: int = 200) -> str:
    """``text`` squeezed onto one line and cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _error_message(exc: openai.APIStatusError) -> str:
    """The server's own error message when its body has one, else the client's summary."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return exc.message


def _finish(value: Any) -> FinishReason:
    """Map a server's finish_reason onto the protocol's three values."""
    if value == "length":
        return "length"
    if value in (None, "stop", "eos", "end_turn", "stop_sequence"):
        return "stop"
    return "error"


_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


def _context_length(value: Any) -> int | None:
    """A ``/models`` entry's ``max_model_len``: a positive whole number, else None (not said)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


class HTTPEngine:
    """The :class:`~latent_thoughts.engines.base.Engine` protocol over an OpenAI-compatible server.

    ``HTTPEngine(HTTPEngineConfig(base_url="http://host:8000/v1", model="name"))``. The API key is
    read from the environment variable ``api_key_env`` (a local server needs none). Use it as a
    context manager, or call :meth:`close`, to release its threads and connections.
    """

    def __init__(self, config: HTTPEngineConfig | None = None) -> None:
        """Create the client; no request is made until the first call."""
        self.config = config or HTTPEngineConfig()
        self.base_urls = self.config.base_urls
        self.base_url = self.base_urls[0]  # the first server; messages and the Batch API use it
        self.usage = Usage()
        self._usage_lock = threading.Lock()
        self._limiter = RateLimiter(self.config.requests_per_minute, self.config.tokens_per_minute)
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.concurrency, thread_name_prefix="http-engine"
        )
        self._rng = random.Random()
        self.clients = [
            openai.OpenAI(
                base_url=url,
                api_key=os.environ.get(self.config.api_key_env) or "EMPTY",
                timeout=self.config.timeout_s,
                max_retries=0,  # retries are ours, so that Retry-After is honoured and counted
            )
            for url in self.base_urls
        ]
        self.client = self.clients[0]
        self._turn = itertools.count()  # round-robin over the servers (next() is atomic in CPython)
        self.requests_per_server = [0] * len(self.clients)
        self._model = self.config.model
        self._listings: dict[int, list[dict[str, Any]]] = {}  # each server's /models, once asked
        self._context: tuple[int, ...] | None = None  # (max_model_len,), () when no server says one
        self.identity = self._identity()
        self.device = "remote"  # the server places the model (``latent-thoughts serve --set device=...``)

    def _identity(self) -> str:
        """``http:URL[,URL...]:MODEL``: the servers and the model, for cache keys."""
        return f"http:{','.join(self.base_urls)}:{self._model or '?'}"

    def __enter__(self) -> HTTPEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads and close the connection pool."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for client in self.clients:
            client.close()

    # ------------------------------------------------------------------ requests with retries
    def _listing(self, index: int) -> list[dict[str, Any]]:
        """Server ``index``'s ``GET /models`` entries, each ``{"id", "max_model_len"}`` (None where it
        says none); asked once, then remembered."""
        listing = self._listings.get(index)
        if listing is None:
            listing = self._request(
                "GET /models",
                lambda client: client.models.with_raw_response.list(),
                1,
                lambda body: [
                    {"id": str(entry["id"]), "max_model_len": _context_length(entry.get("max_model_len"))}
                    for entry in body["data"]
                ],
                server=index,
            )
            self._listings[index] = listing
        return listing

    @property
    def model(self) -> str:
        """The model name sent with requests; asked from ``/models`` when not configured."""
        if not self._model:
            served = {}
            for index, url in enumerate(self.base_urls):  # every server: one pool serves one model
                names = [entry["id"] for entry in self._listing(index)]
                if not names:
                    raise LatentThoughtsError(f"GET {url}/models lists no model; set model=NAME")
                served[url] = names[0]
            if len(set(served.values())) > 1:
                listing = ", ".join(f"{url} serves {name!r}" for url, name in served.items())
                raise LatentThoughtsError(f"base_url: the servers serve different models ({listing})")
            self._model = served[self.base_url]
            self.identity = self._identity()
        return self._model

    @property
    def max_context_tokens(self) -> int | None:
        """The longest sequence the servers compute (a prompt with its completion, or an echoed prompt):
        the smallest ``max_model_len`` their ``/models`` give for the model (vLLM and
        ``latent-thoughts serve`` give it), None when none does (the OpenAI API). A stage that lays
        out its own sequences (the E-step, the likelihood windows) stays within it, as it stays
        within a local model's ``max_position_embeddings``. Asked once per server."""
        if self._context is None:
            limits = []
            for index, url in enumerate(self.base_urls):
                try:
                    entries = self._listing(index)
                except LatentThoughtsError as exc:
                    log.warning("cannot ask %s/models for the context length: %s", url, exc)
                    continue
                named = [entry for entry in entries if entry["id"] == self._model] or entries[:1]
                limits += [entry["max_model_len"] for entry in named if entry["max_model_len"] is not None]
            self._context = (min(limits),) if limits else ()
        return self._context[0] if self._context else None

    def _count(self, reason: str) -> None:
        with self._usage_lock:
            self.usage.failures[reason] = self.usage.failures.get(reason, 0) + 1

    def _request(
        self,
        what: str,
        call: Callable[[openai.OpenAI], Any],
        tokens: int,
        parse: Callable[[dict[str, Any]], T],
        server: int | None = None,
    ) -> T:
        """Run ``call(client)`` (an openai ``with_raw_response`` call) until its JSON body ``parse``s; return that.

        Each attempt goes to the next server in turn (or always to ``server``, an index into
        ``base_urls``). ``what`` is ``"POST /completions"`` style, for messages. A body that is not
        JSON or that ``parse`` rejects is malformed and retried like a server error. Raises a one-line
        LatentThoughtsError for a request that cannot succeed (4xx other than 408/409/429) or after
        ``max_attempts`` tries.
        """
        method, _, path = what.partition(" ")
        config = self.config
        last = ""
        url = f"{self.base_url}{path}"
        for attempt in range(1, config.max_attempts + 1):
            index = server if server is not None else next(self._turn) % len(self.clients)
            url = f"{self.base_urls[index]}{path}"
            self._limiter.acquire(tokens)
            retry_after: float | None = None
            try:
                with self._usage_lock:
                    self.requests_per_server[index] += 1
                raw = call(self.clients[index])
                try:
                    body = json.loads(raw.text)
                    if not isinstance(body, dict):
                        raise _Malformed(f"not a JSON object: {raw.text!r:.80}")
                    prompt_tokens, completion_tokens = usage_counts(body)
                    result = parse(body)
                except (AttributeError, KeyError, IndexError, TypeError, ValueError, _Malformed) as exc:
                    raise _Malformed(f"{type(exc).__name__}: {exc}; body {raw.text!r:.80}") from None
                with self._usage_lock:
                    self.usage.requests += 1
                    self.usage.prompt_tokens += prompt_tokens
                    self.usage.completion_tokens += completion_tokens
                return result
            except openai.APITimeoutError:
                reason, last = "timeout", f"timed out after {config.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                reason, last = "connection", f"cannot connect ({_one_line(exc.__cause__ or exc, 120)})"
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in (408, 409, 429) and status < 500:
                    raise LatentThoughtsError(
                        f"{method} {url}: HTTP {status}: {_one_line(_error_message(exc))}"
                        + (f" (is ${config.api_key_env} set?)" if status == 401 else "")
                    ) from None
                reason, last = str(status), f"HTTP {status}: {_one_line(_error_message(exc), 120)}"
                retry_after = parse_retry_after(exc.response.headers)
            except _Malformed as exc:
                reason, last = "malformed", f"malformed response ({_one_line(exc, 160)})"
            self._count(reason)
            if attempt == config.max_attempts:
                break
            delay = min(
                config.backoff_initial_s * config.backoff_multiplier ** (attempt - 1), config.backoff_max_s
            )
            delay *= 1.0 - config.jitter * self._rng.random()
            if retry_after is not None:
                # The server said when to come back: never sooner than that.
                delay = max(delay, min(retry_after, config.retry_after_max_s))
            with self._usage_lock:
                self.usage.retries += 1
            log.warning("%s %s: %s; retry %d in %.2f s", method, url, last, attempt, delay)
            time.sleep(delay)
        raise LatentThoughtsError(f"{method} {url} failed after {config.max_attempts} attempts: {last}")

    def _run_all(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``jobs`` on the thread pool; results in order; the first failure cancels the rest."""
        futures: list[Future[T]] = [self._executor.submit(job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    # ------------------------------------------------------------------ completions
    @staticmethod
    def _wire_prompt(prompt: Prompt, where: str) -> str | list[int]:
        if isinstance(prompt, str):
            return prompt
        try:
            return [int(token) for token in prompt]
        except (TypeError, ValueError):
            raise LatentThoughtsError(
                f"{where}: expected text or a list of token ids, got {prompt!r:.80}"
            ) from None

    def _groups(self, prompts: Sequence[str | list[int]]) -> list[list[int]]:
        """Indices of prompts in request-sized groups of one kind (text or ids: a request holds one kind)."""
        groups: list[list[int]] = []
        for index, prompt in enumerate(prompts):
            kind = isinstance(prompt, str)
            if (
                groups
                and len(groups[-1]) < self.config.prompts_per_request
                and isinstance(prompts[groups[-1][0]], str) == kind
            ):
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    @staticmethod
    def _estimate(prompts: Sequence[str | list[int]]) -> int:
        """Prompt tokens for the rate limiter: exact for ids, about 4 characters a token for text."""
        return sum(len(p) // 4 + 1 if isinstance(p, str) else len(p) for p in prompts)

    @staticmethod
    def _choices(body: dict[str, Any], expected: int) -> list[dict[str, Any]]:
        """The choices of a response sorted by index; their number must be ``expected``."""
        choices = body["choices"]
        if not isinstance(choices, list) or len(choices) != expected:
            got = len(choices) if isinstance(choices, list) else type(choices).__name__
            raise _Malformed(f"expected {expected} choices, got {got}")
        return sorted(choices, key=lambda c: int(c.get("index", 0)))

    @staticmethod
    def _token_ids(choice: dict[str, Any], logprobs: dict[str, Any]) -> list[int]:
        """Exact ids of the generated tokens: our ``token_ids``, vLLM's, or ``token_id:N`` strings."""
        ids = logprobs.get("token_ids") or choice.get("token_ids")
        if ids is not None:
            return [int(i) for i in ids]
        tokens = logprobs.get("tokens") or []
        matches = [_TOKEN_ID.match(str(t)) for t in tokens]
        if tokens and all(matches):
            return [int(m.group(1)) for m in matches if m]
        return []

    def sample(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        stop: Sequence[str | int] = (),
        seed: int | None = None,
        stop_on_eos: bool | None = None,
        banned_ids: Sequence[int] = (),
    ) -> list[list[Sample]]:
        """Draw ``n`` samples per prompt through ``/completions`` with log-probabilities.

        Stop token ids and ``stop_on_eos=False`` need a vLLM-compatible server (``vllm_extras``);
        token ids of the samples come back from vLLM and ``latent-thoughts serve`` (empty from
        servers that do not send them). ``banned_ids`` go as ``logit_bias`` -100.
        """
        if n < 1:
            raise LatentThoughtsError(f"n must be at least 1, got {n}")
        wire = [self._wire_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        stop_ids = [int(s) for s in stop if not isinstance(s, str)]
        stop_strings = [s for s in stop if isinstance(s, str)]
        extra: dict[str, Any] = {}
        if self.config.vllm_extras:
            extra = {"return_token_ids": True, "skip_special_tokens": False}
            if stop_ids:
                extra["stop_token_ids"] = stop_ids
            if stop_on_eos is False:
                extra["ignore_eos"] = True
        elif stop_ids or stop_on_eos is False:
            raise LatentThoughtsError(
                "stop token ids and stop_on_eos=False need a vLLM-compatible server: set vllm_extras=true"
            )
        logit_bias = {str(int(token)): -100 for token in banned_ids} or None
        model = self.model

        def job(group: list[int]) -> list[list[Sample]]:
            group_prompts = [wire[i] for i in group]

            def call(client: openai.OpenAI) -> Any:
                return client.completions.with_raw_response.create(
                    model=model,
                    prompt=group_prompts,  # type: ignore[arg-type]
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_new_tokens,
                    stop=stop_strings or None,
                    seed=seed,
                    logprobs=1,
                    logit_bias=logit_bias,
                    extra_body=extra or None,
                )

            def parse(body: dict[str, Any]) -> list[list[Sample]]:
                out: list[list[Sample]] = [[] for _ in group]
                for position, choice in enumerate(self._choices(body, len(group) * n)):
                    logprobs = choice.get("logprobs") or {}
                    values = logprobs.get("token_logprobs")
                    if values is None or any(v is None for v in values):
                        raise _Malformed("a choice has no token_logprobs")
                    ids = self._token_ids(choice, logprobs)
                    if ids and len(ids) != len(values):
                        raise _Malformed(f"{len(ids)} token ids but {len(values)} log-probs")
                    out[position // n].append(
                        Sample(
                            token_ids=ids,
                            text=str(choice["text"]),
                            token_logprobs=[float(v) for v in values],
                            finish_reason=_finish(choice.get("finish_reason")),
                        )
                    )
                return out

            tokens = self._estimate(group_prompts) + n * max_new_tokens * len(group)
            return self._request("POST /completions", call, tokens, parse)

        groups = self._groups(wire)
        results: list[list[Sample]] = [[] for _ in wire]
        for group, answer in zip(
            groups, self._run_all([functools.partial(job, g) for g in groups]), strict=True
        ):
            for index, samples in zip(group, answer, strict=True):
                results[index] = samples
        return results

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[Score]:
        """Log-probability of each continuation token given its context, via ``echo`` + ``logprobs``.

        Token-id pairs are exact. Text pairs are scored on the server's tokenisation of the joined
        text; the continuation is the shortest suffix of tokens that covers its characters.
        """
        if len(contexts) != len(continuations):
            raise LatentThoughtsError(
                f"score: {len(contexts)} contexts but {len(continuations)} continuations (they pair by position)"
            )
        joined: list[str | list[int]] = []
        lengths: list[int] = []  # continuation length: tokens for ids, characters for text
        for i, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
            ctx = self._wire_prompt(context, f"context {i}")
            cont = self._wire_prompt(continuation, f"continuation {i}")
            if isinstance(ctx, str) != isinstance(cont, str):
                raise LatentThoughtsError(
                    f"score pair {i}: context and continuation must both be text or both ids"
                )
            if not isinstance(ctx, str) and not ctx:
                raise LatentThoughtsError(
                    f"context {i} is empty: the first token has nothing to condition on"
                )
            joined.append(ctx + cont)  # type: ignore[operator]
            lengths.append(len(cont))
        extra = {"prompt_logprobs": 0} if self.config.vllm_extras else None
        model = self.model

        def job(group: list[int]) -> list[Score]:
            group_prompts = [joined[i] for i in group]

            def call(client: openai.OpenAI) -> Any:
                return client.completions.with_raw_response.create(
                    model=model,
                    prompt=group_prompts,  # type: ignore[arg-type]
                    max_tokens=self.config.score_max_tokens,
                    echo=True,
                    logprobs=1,
                    temperature=1.0,
                    extra_body=extra,
                )

            def parse(body: dict[str, Any]) -> list[Score]:
                choices = self._choices(body, len(group))
                return [
                    Score(
                        token_logprobs=self._continuation_logprobs(
                            choice, joined[i], lengths[i], self.config.score_max_tokens
                        )
                    )
                    for choice, i in zip(choices, group, strict=True)
                ]

            return self._request("POST /completions", call, self._estimate(group_prompts), parse)

        scores: list[Score] = [Score(token_logprobs=[]) for _ in joined]
        todo = [i for i, length in enumerate(lengths) if length]
        groups = [[todo[i] for i in g] for g in self._groups([joined[i] for i in todo])]
        for group, answer in zip(
            groups, self._run_all([functools.partial(job, g) for g in groups]), strict=True
        ):
            for index, score in zip(group, answer, strict=True):
                scores[index] = score
        return scores

    def score_many(
        self, context: Prompt, continuations: Sequence[Prompt], *, temperature: float = 1.0
    ) -> list[Score]:
        """Log-probabilities of several continuations of one context: echo scoring of each pair
        (an OpenAI-compatible server has no shared-context form; vLLM's prefix cache shares the work).
        Temperature 1 only (see :meth:`score_groups`)."""
        return self.score_groups([(context, continuations)], temperature=temperature)[0]

    def score_groups(
        self,
        groups: Sequence[tuple[Prompt, Sequence[Prompt]]],
        *,
        temperature: float | Sequence[float] = 1.0,
    ) -> list[list[Score]]:
        """:meth:`score_many` of several groups as ONE :meth:`score` call, so that the requests of
        all groups run concurrently; ``result[g][i]`` scores continuation i of group g.

        Only at ``temperature`` 1: echoed prompt log-probs (ours and vLLM's ``prompt_logprobs``) are
        the model's own law whatever the request's temperature, so a tempered score is refused."""
        values = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
        if any(float(value) != 1.0 for value in values):
            raise LatentThoughtsError(
                "a served model scores at temperature 1 only (echoed prompt log-probs are untempered): "
                "use a local model for a tempered E-step proposal"
            )
        flat = self.score(
            [context for context, continuations in groups for _ in continuations],
            [continuation for _, continuations in groups for continuation in continuations],
        )
        out: list[list[Score]] = []
        for _, continuations in groups:
            out.append(flat[: len(continuations)])
            flat = flat[len(continuations) :]
        return out

    @staticmethod
    def _continuation_logprobs(
        choice: dict[str, Any], prompt: str | list[int], length: int, generated: int = 0
    ) -> list[float]:
        """The log-probs of the last ``length`` prompt tokens (ids) or characters (text) of an echo.

        ``generated`` is the request's max_tokens: with 0 every echoed token is a prompt token;
        otherwise the prompt's text tokens are told apart by their text offsets.
        """
        if not isinstance(prompt, str):
            prompt_logprobs = choice.get("prompt_logprobs")
            if prompt_logprobs is not None:
                # vLLM: one entry per prompt token ({id: {"logprob": ...}}), None for the first.
                if len(prompt_logprobs) != len(prompt):
                    raise _Malformed(
                        f"{len(prompt_logprobs)} prompt_logprobs for {len(prompt)} prompt tokens"
                    )
                values = []
                for token, entry in zip(prompt[-length:], prompt_logprobs[-length:], strict=True):
                    item = entry.get(str(token), entry.get(token)) if isinstance(entry, dict) else None
                    if item is None:
                        raise _Malformed(f"prompt_logprobs has no entry for token {token}")
                    values.append(float(item["logprob"] if isinstance(item, dict) else item))
                return values
            echoed = choice["logprobs"]["token_logprobs"]
            if len(echoed) < len(prompt):
                raise _Malformed(f"echo has {len(echoed)} log-probs for {len(prompt)} prompt tokens")
            values = echoed[len(prompt) - length : len(prompt)]
        else:
            logprobs = choice["logprobs"]
            tokens, echoed = logprobs["tokens"], logprobs["token_logprobs"]
            offsets = logprobs.get("text_offset")
            # Echo covers the prompt and any generated tokens: keep the tokens inside the prompt text.
            end = len(tokens)
            if generated and offsets:
                end = sum(1 for offset in offsets if offset < len(prompt))
            covered, start = 0, end
            while start > 0 and covered < length:
                start -= 1
                covered += len(tokens[start])
            values = echoed[start:end]
        if any(v is None for v in values):
            raise _Malformed("a continuation token has no log-probability (is its context empty?)")
        return [float(v) for v in values]

    # ------------------------------------------------------------------ chat
    def chat(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 1024,
        seed: int | None = None,
        stop: Sequence[str | int] = (),
    ) -> list[list[ChatReply]]:
        """Answer each conversation ``n`` times through ``/chat/completions`` (one request each).

        With ``n`` > 1 a reply's ``completion_tokens`` is the request's total split evenly (the API
        reports one total per request).
        """
        if n < 1:
            raise LatentThoughtsError(f"n must be at least 1, got {n}")
        stop_strings = [s for s in stop if isinstance(s, str)]
        model = self.model

        def job(index: int) -> list[ChatReply]:
            messages = [dict(m) for m in conversations[index]]
            for j, message in enumerate(messages):
                if "role" not in message or "content" not in message:
                    raise LatentThoughtsError(f"conversation {index} message {j} needs 'role' and 'content'")
            request: dict[str, Any] = {
                "model": model,
                "messages": messages,
                "n": n,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "stop": stop_strings or None,
                self.config.chat_max_tokens_field: max_new_tokens,
            }

            def call(client: openai.OpenAI) -> Any:
                return client.chat.completions.with_raw_response.create(**request)

            def parse(body: dict[str, Any]) -> list[ChatReply]:
                prompt_tokens, completion_tokens = usage_counts(body)
                replies = []
                for choice in self._choices(body, n):
                    content = choice["message"]["content"]
                    if content is None:
                        raise _Malformed("a choice has no message content")
                    if not isinstance(content, str):
                        raise _Malformed(f"a choice's message content is {type(content).__name__}, not text")
                    replies.append(
                        ChatReply(
                            text=str(content),
                            finish_reason=_finish(choice.get("finish_reason")),
                            prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens // n,
                        )
                    )
                return replies

            tokens = sum(len(str(m.get("content", ""))) // 4 + 1 for m in messages) + n * max_new_tokens
            return self._request("POST /chat/completions", call, tokens, parse)

        return self._run_all([functools.partial(job, i) for i in range(len(conversations))])
