"""``latent-thoughts serve`` facing a network: an API key on every route, limits on what one request
may ask, generation stopped when the client leaves, hostile requests answered with 4xx, and a
damaged state folder that does not stop the server. A real server runs in a subprocess."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.test_server import free_port, serve_subprocess

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder that already holds an empty (damaged) batch object."""
    root = tmp_path_factory.mktemp("serve_app")
    (root / "store" / "batches").mkdir(parents=True)
    (root / "store" / "batches" / "batch_empty.json").write_text("")
    return root


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, state: Path) -> Iterator[str]:
    extra = ("--max-body-mb", "1", "--max-n", "128", "--max-prompt-tokens", "600")
    with serve_subprocess(tiny_model_dir, state, api_key=KEY, extra=extra) as base_url:
        yield base_url


def post(server: str, path: str, body: object, headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(f"{server}{path}", json=body, headers=headers, timeout=60)


def test_a_damaged_batch_object_does_not_stop_the_server(server: str) -> None:
    listed = httpx.get(f"{server}/batches", headers=AUTH).json()
    assert listed["data"] == []
    assert httpx.get(f"{server}/batches/batch_empty", headers=AUTH).status_code == 500


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/models"), ("POST", "/completions"), ("POST", "/chat/completions"), ("GET", "/files"),
     ("POST", "/files"), ("GET", "/batches"), ("POST", "/batches"), ("GET", "/files/file-x/content"),
     ("DELETE", "/files/file-x"), ("POST", "/batches/batch_x/cancel")],
)  # fmt: skip
def test_every_route_asks_for_the_key(server: str, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.request(method, f"{server}{path}", headers=headers, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert "API key" in response.json()["error"]["message"]
    assert httpx.get(f"{server.removesuffix('/v1')}/health").status_code == 401


def test_the_openai_client_with_the_key_gets_answers(server: str, tiny_model_dir: Path) -> None:
    with openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60) as client:
        reply = client.completions.create(model=tiny_model_dir.name, prompt="We know", max_tokens=3)
        assert reply.choices[0].text is not None
    with (
        openai.OpenAI(base_url=server, api_key="wrong", max_retries=0, timeout=60) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "stop": 123}, "stop"),
        ({"prompt": "x", "stop": {"a": 1}}, "stop"),
        ({"prompt": "x", "n": 129}, "n"),
        ({"prompt": "x", "n": 20000}, "n"),
        ({"prompt": "x", "max_tokens": 100000}, "max_tokens"),
        ({"prompt": "x", "logprobs": -5}, "logprobs"),
        ({"prompt": "x", "prompt_logprobs": -1}, "prompt_logprobs"),
        ({"prompt": list(range(5, 200)) * 4}, "prompt"),  # 780 tokens > --max-prompt-tokens 600
        ({"prompt": "x", "logit_bias": {"²": -100}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"9" * 5000: -100}}, "logit_bias"),
    ],
)
def test_requests_beyond_the_limits_or_malformed_are_400(server: str, body: dict, param: str) -> None:
    response = post(server, "/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_temperatures_are_400(server: str, value: str) -> None:
    content = f'{{"prompt": "We know", "max_tokens": 3, "temperature": {value}}}'.encode()
    response = httpx.post(f"{server}/completions", content=content, headers=AUTH, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "temperature"


def test_a_tiny_temperature_is_greedy(server: str) -> None:
    greedy = post(server, "/completions", {"prompt": "We know", "max_tokens": 6, "temperature": 0}).json()
    tiny = post(server, "/completions", {"prompt": "We know", "max_tokens": 6, "temperature": 1e-300}).json()
    assert tiny["choices"][0]["token_ids"] == greedy["choices"][0]["token_ids"]


def test_oversized_and_deeply_nested_bodies_and_long_ids_are_4xx(server: str) -> None:
    big = json.dumps({"prompt": "x " * 700_000}).encode()  # 1.4 MB > --max-body-mb 1
    response = httpx.post(f"{server}/completions", content=big, headers=AUTH, timeout=60)
    assert response.status_code == 400 and "limit" in response.json()["error"]["message"]
    deep = b"[" * 100_000 + b"]" * 100_000
    response = httpx.post(f"{server}/completions", content=deep, headers=AUTH, timeout=60)
    assert response.status_code == 400 and "nested" in response.json()["error"]["message"]
    for path in ("/files/file-" + "a" * 5000, "/batches/batch_" + "a" * 5000, "/files/..%2F..%2Fetc"):
        assert httpx.get(f"{server}{path}", headers=AUTH, timeout=30).status_code == 404


def test_usage_counts_the_prompt_tokens_actually_used(server: str) -> None:
    # The tiny model has 512 positions: 4 new tokens leave room for the last 508 prompt tokens.
    prompt = list(range(5, 105)) * 5 + list(range(5, 55))  # 550 tokens
    answer = post(server, "/completions", {"prompt": prompt, "max_tokens": 4}).json()
    assert answer["usage"]["prompt_tokens"] == 508
    short = post(server, "/completions", {"prompt": prompt[:50], "max_tokens": 4}).json()
    assert short["usage"]["prompt_tokens"] == 50


def _raw_request(server: str, body: dict) -> socket.socket:
    """Send a completions request on a raw socket and return the socket (to be closed unanswered)."""
    url = httpx.URL(server)
    payload = json.dumps(body).encode()
    head = (
        f"POST {url.path}/completions HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((url.host, url.port))
    sock.sendall(head + payload)
    return sock


def test_generation_stops_when_the_client_goes_away(server: str, state: Path) -> None:
    # 8 prompts x 128 samples x 500 tokens take about half a minute here; the client leaves after one second.
    body = {"prompt": ["We know", "Let n be"] * 4, "n": 128, "max_tokens": 500, "ignore_eos": True}
    sock = _raw_request(server, body)
    time.sleep(1.0)
    sock.close()
    # The next request waits for the engine, which the abandoned one frees at its next decode step.
    answer = post(server, "/completions", {"prompt": "We know", "max_tokens": 2})
    assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while "POST /v1/completions -> 499" not in (log := (state / "serve.log").read_text()):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.2)
    assert "the client went away; generation stopped" in log


def test_one_bad_batch_line_fails_alone(server: str, tiny_model_dir: Path) -> None:
    lines = []
    for i in range(6):
        body: dict = {
            "model": tiny_model_dir.name,
            "messages": [{"role": "user", "content": f"Say {i}"}],
            "max_tokens": 3,
        }
        if i == 2:
            body["stop"] = 123
        if i == 4:
            body["temperature"] = float("nan")
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    content = "\n".join(json.dumps(line) for line in lines).encode()
    with openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=60) as client:
        uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 120
        while (batch := client.batches.retrieve(created.id)).status not in ("completed", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 2)
        assert batch.error_file_id is not None
        errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    reasons = {e["custom_id"]: e["response"]["body"]["error"] for e in errors}
    assert sorted(reasons) == ["req-2", "req-4"]
    assert reasons["req-2"]["param"] == "stop" and reasons["req-4"]["param"] == "temperature"


# --- issue 22: bounds applied before the work (a few MB at most here) ----------------------------------


def test_a_text_prompt_too_long_for_the_token_limit_is_refused_before_tokenising(server: str) -> None:
    # --max-prompt-tokens 600 allows 16 characters a token: 9,600 characters.
    response = post(server, "/completions", {"prompt": "a" * 9_601, "max_tokens": 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert "9,601 characters" in response.json()["error"]["message"]


@pytest.mark.parametrize(("content", "culprit"), [(" 7" * 1_000, "tokens"), ("a" * 9_601, "characters")])
def test_chat_has_the_prompt_token_limit_too(server: str, content: str, culprit: str) -> None:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1}
    response = post(server, "/chat/completions", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and culprit in error["message"] and "600" in error["message"]
    short = post(server, "/chat/completions", {**body, "messages": [{"role": "user", "content": " 7" * 20}]})
    assert short.status_code == 200, short.text


@contextlib.contextmanager
def _serve_in_thread(app: object) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in this process (to trace its memory)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _multipart(boundary: str, size: int, piece: bytes) -> Iterator[bytes]:
    """A multipart upload of ``size`` bytes of ``piece`` repeated, sent piece by piece."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for _ in range(size // len(piece)):
        yield piece
    yield f"\r\n--{boundary}--\r\n".encode()


def test_an_upload_is_streamed_to_disk_within_the_limit(tiny_model_dir: Path, tmp_path: Path) -> None:
    import tracemalloc

    from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from latent_thoughts.server import create_app
    from latent_thoughts.server.wire import Limits

    engine = TransformersEngine(
        TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu")
    )
    app = create_app(engine, "tiny", tmp_path / "store", limits=Limits(max_upload_bytes=6 * 2**20))
    boundary, piece, size = "b0undary", b"0123456789abcdef" * 4096, 5 * 2**20  # 64 KiB pieces, 5 MiB
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with _serve_in_thread(app) as base_url:
        tracemalloc.start()
        try:
            response = httpx.post(
                f"{base_url}/files", content=_multipart(boundary, size, piece), headers=headers, timeout=60
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 200, response.text
        meta = response.json()
        assert meta["bytes"] == size and meta["filename"] == "big.jsonl" and meta["purpose"] == "batch"
        assert peak < 2 * 2**20, f"{peak:,} bytes traced while receiving a {size:,}-byte upload"
        stored = tmp_path / "store" / "files" / f"{meta['id']}.data"
        assert stored.stat().st_size == size and stored.read_bytes()[:16] == piece[:16]

        too_big = httpx.post(
            f"{base_url}/files", content=_multipart(boundary, 7 * 2**20, piece), headers=headers, timeout=60
        )
        assert too_big.status_code == 400 and "limit" in too_big.json()["error"]["message"]
    assert sorted(p.name for p in (tmp_path / "store" / "files").iterdir()) == sorted(
        [f"{meta['id']}.data", f"{meta['id']}.json"]
    )  # nothing left of the refused upload
