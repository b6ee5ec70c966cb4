"""The HTTP engine against a real ``latent-thoughts serve`` and against a real misbehaving server."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from latent_thoughts.engines import Engine
from latent_thoughts.engines.http_engine import HTTPEngine, HTTPEngineConfig, RateLimiter, parse_retry_after
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.synthesis.teachers import engine_options, load_teacher
from tests.test_server import free_port, serve_subprocess


# ---------------------------------------------------------------------- against the real server
@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_subprocess(tiny_model_dir, tmp_path_factory.mktemp("serve-http")) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu"))


@pytest.fixture(scope="module")
def remote(server: str) -> Iterator[HTTPEngine]:
    with HTTPEngine(
        HTTPEngineConfig(base_url=server, prompts_per_request=2, concurrency=3, timeout_s=60)
    ) as engine:
        yield engine


def _pairs(local: TransformersEngine) -> tuple[list[list[int]], list[list[int]]]:
    texts = [
        "We know that 37 x 24 = 888.",
        "The derivative of x^2 is 2x.",
        "Let n",
        "First compute 12 + 30 = 42.",
    ]
    contexts = [local.encode(t) for t in texts]
    continuations = [
        local.encode(" Adding 129 gives 1017.", bos=False),
        [5, 6, 7],
        [300],
        [17, 18, 19, 20, 21],
    ]
    return contexts, continuations


def test_resolves_the_model_name(remote: HTTPEngine, tiny_model_dir: Path) -> None:
    assert isinstance(remote, Engine)
    assert remote.model == tiny_model_dir.name and remote.identity.endswith(tiny_model_dir.name)


@pytest.mark.parametrize(("vllm_extras", "score_max_tokens"), [(True, 0), (False, 0), (True, 1), (False, 1)])
def test_scores_equal_the_transformers_engine(
    server: str, local: TransformersEngine, vllm_extras: bool, score_max_tokens: int
) -> None:
    """Both the vLLM prompt_logprobs path and the plain echo path give the in-process scores, also
    with one generated token per scoring request (what vLLM needs, configs/teachers/vllm.yaml)."""
    contexts, continuations = _pairs(local)
    config = HTTPEngineConfig(
        base_url=server, vllm_extras=vllm_extras, prompts_per_request=3, score_max_tokens=score_max_tokens
    )
    with HTTPEngine(config) as remote:
        scores = remote.score(contexts, continuations)
        assert remote.usage.requests == 3  # /models, then 4 pairs in requests of 3 and 1
    expected = local.score(contexts, continuations)
    for got, want, continuation in zip(scores, expected, continuations, strict=True):
        assert len(got.token_logprobs) == len(continuation)
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-4)


def test_the_vllm_teacher_config_carries_the_scoring_settings() -> None:
    config = load_teacher(Path(__file__).resolve().parents[1] / "configs" / "teachers" / "vllm.yaml")
    options = engine_options(config)
    assert isinstance(options, HTTPEngineConfig)
    assert options.vllm_extras and options.score_max_tokens == 1


def test_text_scoring(remote: HTTPEngine) -> None:
    scores = remote.score(["We know that 37 x 24 = 888."], [" Adding 129 gives 1017."])
    assert scores[0].token_logprobs and all(v < 0 for v in scores[0].token_logprobs)
    assert remote.score(["x"], [""])[0].token_logprobs == []


def test_samples_carry_logprobs_and_ids(remote: HTTPEngine, local: TransformersEngine) -> None:
    prompts: list[str | list[int]] = ["Let n be", local.encode("First compute"), "The derivative"]
    samples = remote.sample(prompts, n=3, max_new_tokens=6, seed=4)
    expected = local.sample(prompts, n=3, max_new_tokens=6, seed=4)
    assert [len(group) for group in samples] == [3, 3, 3]
    for group, want_group, prompt in zip(samples, expected, prompts, strict=True):
        for got, want in zip(group, want_group, strict=True):
            assert got.token_ids == want.token_ids and len(got.token_logprobs) == len(got.token_ids)
            assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-4)
            assert got.text == want.text and got.finish_reason == want.finish_reason
            score = local.score([local.encode(prompt)], [got.token_ids])[0]
            assert got.logprob == pytest.approx(score.logprob, abs=1e-4)


def test_stop_token_ids_over_http(remote: HTTPEngine, local: TransformersEngine) -> None:
    free = local.sample([[9, 8, 7]], max_new_tokens=8, seed=2)[0][0]
    stop_id = free.token_ids[1]
    sample = remote.sample([[9, 8, 7]], max_new_tokens=8, seed=2, stop=[stop_id])[0][0]
    assert sample.token_ids == free.token_ids[: free.token_ids.index(stop_id) + 1]
    assert sample.finish_reason == "stop"


def test_banned_ids_and_no_eos_stop_over_http(remote: HTTPEngine, local: TransformersEngine) -> None:
    prompt = local.encode("The derivative")
    banned = [5, 6, 7, *local.sample([prompt], max_new_tokens=4, temperature=0)[0][0].token_ids]
    got = remote.sample([prompt], n=2, max_new_tokens=8, seed=3, banned_ids=banned, stop_on_eos=False)[0]
    want = local.sample([prompt], n=2, max_new_tokens=8, seed=3, banned_ids=banned, stop_on_eos=False)[0]
    assert [s.token_ids for s in got] == [s.token_ids for s in want]
    assert not set(banned) & {token for s in got for token in s.token_ids}
    assert all(len(s.token_ids) == 8 for s in got)  # ignore_eos: only the length ends them


def test_score_many_falls_back_to_echo_scoring(remote: HTTPEngine, local: TransformersEngine) -> None:
    context = local.encode("We know that 37 x 24 = 888.")
    continuations = [[5, 6, 7], [300], [], [17, 18, 19, 20, 21]]
    got = remote.score_many(context, continuations)
    want = local.score_many(context, continuations)
    assert [s.token_logprobs for s in got] == [pytest.approx(s.token_logprobs, abs=1e-4) for s in want]
    assert remote.device == "remote"


def test_score_groups_sends_every_group_at_once(remote: HTTPEngine, local: TransformersEngine) -> None:
    groups = [
        (local.encode("We know that 37 x 24 = 888."), [[5, 6, 7], [300], []]),
        (local.encode("Let n"), [[17, 18, 19, 20, 21]]),
    ]
    got = remote.score_groups(groups)
    want = local.score_groups(groups)
    assert [[s.token_logprobs for s in group] for group in got] == [
        [pytest.approx(s.token_logprobs, abs=1e-4) for s in group] for group in want
    ]


def test_chat_over_http(remote: HTTPEngine) -> None:
    before = remote.usage.prompt_tokens
    replies = remote.chat(
        [[{"role": "user", "content": "What is 2 + 2?"}]] * 2, n=2, max_new_tokens=4, seed=1
    )
    assert [len(r) for r in replies] == [2, 2]
    assert all(isinstance(r.text, str) and r.prompt_tokens > 0 for group in replies for r in group)
    assert remote.usage.prompt_tokens > before


# ---------------------------------------------------------------------- against a misbehaving server
@dataclass
class Script:
    """What the fake server answers, one action per request (then plain successes)."""

    actions: deque[tuple[Any, ...]] = field(default_factory=deque)
    seen: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _success(path: str, body: dict[str, Any]) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    if path.endswith("/chat/completions"):
        choices = [
            {"index": i, "message": {"role": "assistant", "content": "four"}, "finish_reason": "stop"}
            for i in range(n)
        ]
    else:
        prompts = body["prompt"]
        count = (
            len(prompts)
            if isinstance(prompts, list) and prompts and isinstance(prompts[0], (list, str))
            else 1
        )
        logprobs = {"tokens": ["o", "k"], "token_logprobs": [-1.0, -0.5], "token_ids": [11, 12]}
        choices = [
            {"index": i, "text": "ok", "logprobs": logprobs, "finish_reason": "stop"}
            for i in range(count * n)
        ]
    return {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 2 * len(choices)}}


class Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass

    def do_POST(self) -> None:
        script: Script = self.server.script
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        with script.lock:
            script.seen.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
            action = script.actions.popleft() if script.actions else ("ok",)
            script.in_flight += 1
            script.most_in_flight = max(script.most_in_flight, script.in_flight)
        finished = False
        try:
            kind = action[0]
            if kind == "sleep":
                time.sleep(action[1])
                kind = "ok"
            # The request stops counting as in flight before its answer is sent: once the client has
            # the answer it may send the next request before this thread would reach `finally`.
            with script.lock:
                script.in_flight -= 1
                finished = True
            if kind == "ok":
                self._send(200, json.dumps(_success(self.path, body)).encode())
            elif kind == "status":
                _, code, headers = action
                error = {"error": {"message": f"scripted {code}", "type": "x", "param": None, "code": None}}
                self._send(code, json.dumps(error).encode(), headers)
            elif kind == "raw":
                self._send(200, action[1])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): that is the point of the test
        finally:
            if not finished:
                with script.lock:
                    script.in_flight -= 1

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def fake() -> Iterator[tuple[str, Script]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.script = Script()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd.script  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _engine(base_url: str, **options: Any) -> HTTPEngine:
    defaults: dict[str, Any] = {
        "base_url": base_url,
        "model": "fake",
        "timeout_s": 5.0,
        "max_attempts": 4,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "jitter": 0.0,
    }
    return HTTPEngine(HTTPEngineConfig(**{**defaults, **options}))


def test_retry_after_is_honoured(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.actions.extend([("status", 429, {"Retry-After": "0.6"}), ("ok",)])
    with _engine(url) as engine:
        started = time.monotonic()
        samples = engine.sample(["hi"], n=2, max_new_tokens=2)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.6  # the 0.01 s backoff would have come back much sooner
    assert [[s.token_ids for s in g] for g in samples] == [[[11, 12], [11, 12]]]
    assert engine.usage.retries == 1 and engine.usage.failures == {"429": 1}
    assert engine.usage.requests == 1 and engine.usage.completion_tokens == 4


def test_server_errors_timeouts_and_malformed_bodies_are_retried(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.actions.extend(
        [
            ("status", 500, {}),
            ("sleep", 1.5),  # past the 0.4 s timeout
            ("raw", b"{not json"),
            ("raw", b'{"choices": []}'),  # one choice missing: never silently dropped
            ("status", 503, {"retry-after-ms": "50"}),
            ("ok",),
        ]
    )
    with _engine(url, timeout_s=0.4, max_attempts=6) as engine:
        replies = engine.chat([[{"role": "user", "content": "2 + 2?"}]])
    assert replies[0][0].text == "four"
    assert engine.usage.failures == {"500": 1, "timeout": 1, "malformed": 2, "503": 1}
    assert engine.usage.retries == 5 and len(script.seen) == 6


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (("status", 500, {}), "HTTP 500"),
        (("raw", b"<html>oops</html>"), "malformed response"),
        (("sleep", 1.0), "timed out after 0.3 s"),
    ],
)
def test_persistent_failure_is_one_clear_line(
    fake: tuple[str, Script], action: tuple[Any, ...], reason: str
) -> None:
    url, script = fake
    script.actions.extend([action] * 3)
    with _engine(url, max_attempts=3, timeout_s=0.3) as engine, pytest.raises(LatentThoughtsError) as info:
        engine.sample(["hi"], max_new_tokens=2)
    message = str(info.value)
    assert "\n" not in message
    assert f"POST {url}/completions failed after 3 attempts" in message and reason in message
    assert len(script.seen) == 3


def test_unreachable_server(fake: tuple[str, Script]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with _engine(url, max_attempts=2) as engine, pytest.raises(LatentThoughtsError) as info:
        engine.score([[1, 2]], [[3]])
    assert f"{url}/completions failed after 2 attempts: cannot connect" in str(info.value)
    assert engine.usage.failures == {"connection": 2}


def test_client_errors_are_not_retried(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.actions.append(("status", 400, {}))
    with _engine(url) as engine, pytest.raises(LatentThoughtsError, match="HTTP 400: scripted 400"):
        engine.sample(["hi"])
    assert len(script.seen) == 1


def test_api_key_concurrency_and_grouping(fake: tuple[str, Script], monkeypatch: pytest.MonkeyPatch) -> None:
    url, script = fake
    monkeypatch.setenv("LT_TEST_KEY", "sekret")
    script.actions.extend([("sleep", 0.2)] * 6)
    with _engine(url, api_key_env="LT_TEST_KEY", concurrency=2, prompts_per_request=2) as engine:
        samples = engine.sample(["a", "b", "c", [1, 2], [3], "d"], n=1)
    assert [len(g) for g in samples] == [1] * 6
    # Requests hold one kind of prompt: [a, b], [c], [[1, 2], [3]], [d].
    groups = sorted(json.dumps(s["body"]["prompt"]) for s in script.seen)  # threads race: compare as a set
    assert groups == sorted(json.dumps(g) for g in [["a", "b"], ["c"], [[1, 2], [3]], ["d"]])
    assert script.most_in_flight == 2
    assert {s["auth"] for s in script.seen} == {"Bearer sekret"}


def test_request_rate_limit(fake: tuple[str, Script]) -> None:
    url, script = fake
    with _engine(url, requests_per_minute=600, prompts_per_request=1, concurrency=4) as engine:
        started = time.monotonic()
        engine.sample(["a", "b", "c", "d", "e"])
        assert time.monotonic() - started >= 0.4  # five requests at most one per 0.1 s
    assert len(script.seen) == 5


def test_rate_limiter_tokens_and_retry_after_parsing() -> None:
    limiter = RateLimiter(None, tokens_per_minute=600)  # 10 tokens a second, a bucket of 600
    started = time.monotonic()
    limiter.acquire(600)
    limiter.acquire(3)  # the bucket is empty: 0.3 s to refill 3 tokens
    assert 0.25 <= time.monotonic() - started < 2
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None


def test_bad_input_is_a_one_line_error(fake: tuple[str, Script]) -> None:
    url, _ = fake
    with _engine(url) as engine:
        with pytest.raises(LatentThoughtsError, match="both be text or both ids"):
            engine.score(["text"], [[1, 2]])
        with pytest.raises(LatentThoughtsError, match="context 0 is empty"):
            engine.score([[]], [[1]])
        with pytest.raises(LatentThoughtsError, match="2 contexts but 1"):
            engine.score([[1], [2]], [[3]])
    with _engine(url, vllm_extras=False) as engine, pytest.raises(LatentThoughtsError, match="vllm_extras"):
        engine.sample([[1]], stop=[5])


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 3, "completion_tokens": 1e300},
        {"prompt_tokens": -3, "completion_tokens": 2},
        {"prompt_tokens": "many", "completion_tokens": 2},
        "abc",
    ],
)
def test_impossible_usage_is_a_malformed_reply_retried(fake: tuple[str, Script], usage: object) -> None:
    """A teacher claiming 1e300 or negative tokens must not be cached, priced or written to Parquet."""
    url, script = fake
    choice = {"index": 0, "message": {"role": "assistant", "content": "four"}, "finish_reason": "stop"}
    script.actions.append(("raw", json.dumps({"choices": [choice], "usage": usage}).encode()))
    with _engine(url) as engine:
        replies = engine.chat([[{"role": "user", "content": "2 + 2?"}]])
    assert replies[0][0].text == "four" and replies[0][0].completion_tokens == 2
    assert engine.usage.failures == {"malformed": 1}
    assert engine.usage.prompt_tokens == 3 and engine.usage.completion_tokens == 2


def test_the_context_is_the_smallest_max_model_len_of_the_servers() -> None:
    """``max_context_tokens`` reads the served model's ``max_model_len`` in each server's ``/models``
    (asked once): the smallest bounds the E-step; entries of other models, and values that are not
    positive whole numbers, say nothing."""
    urls = ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]
    with HTTPEngine(HTTPEngineConfig(base_url=urls, model="m")) as engine:
        engine._listings = {
            0: [{"id": "other", "max_model_len": 64}, {"id": "m", "max_model_len": 4096}],
            1: [{"id": "m", "max_model_len": 2048}],
        }
        assert engine.max_context_tokens == 2048
    with HTTPEngine(HTTPEngineConfig(base_url=urls[0], model="m")) as engine:
        engine._listings = {0: [{"id": "m", "max_model_len": None}]}
        assert engine.max_context_tokens is None


def test_a_server_without_models_says_no_context(fake: tuple[str, Script]) -> None:
    """A server that answers no ``GET /models`` (this fake, some gateways) leaves the context to the
    tokenizer folder's ``config.json`` (a warning, no error)."""
    url, _ = fake
    with _engine(url) as engine:
        assert engine.max_context_tokens is None
        assert engine.model == "fake"  # named: nothing asked
