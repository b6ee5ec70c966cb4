"""``latent-thoughts serve`` as a real subprocess: completions, scoring, chat, files and batches.

The official ``openai`` client drives the Files and Batches endpoints, so what the synthesis
stage's batch mode relies on is checked end to end. Restart survival is checked in-process with
the same app and state folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.server import Store, create_app
from latent_thoughts.server.api import shared_prefix_groups


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_subprocess(
    model_dir: Path,
    state_dir: Path,
    timeout_s: float = 120.0,
    api_key: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run ``latent-thoughts serve`` (fp32) on a free port; yields the API root; kills it at the end.

    ``api_key`` is passed in the environment (``LATENT_THOUGHTS_API_KEY``); ``extra`` are more options."""
    port = free_port()
    log_path = state_dir / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "latent_thoughts", "serve", str(model_dir), "--port", str(port)),
                *("--dtype", "fp32", "--device", "cpu", "--state-dir", str(state_dir / "store")),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # One thread: the model is tiny, and OpenMP threads spinning against a busy machine are slow.
            env={**os.environ, "OMP_NUM_THREADS": "1", "LATENT_THOUGHTS_API_KEY": api_key or ""},
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {log_path.read_text()[-2000:]}")
            try:
                headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
                if httpx.get(f"{base_url}/models", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_subprocess(tiny_model_dir, tmp_path_factory.mktemp("serve")) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path) -> TransformersEngine:
    """The same model in process, to compare the server's answers with."""
    return TransformersEngine(TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu"))


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server, api_key="EMPTY", max_retries=0, timeout=60) as c:
        yield c


def post(server: str, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{server}{path}", json=body, timeout=60)


def test_models(server: str, tiny_model_dir: Path) -> None:
    data = httpx.get(f"{server}/models").json()
    assert [m["id"] for m in data["data"]] == [tiny_model_dir.name]


def test_echo_scores_prompt_tokens(server: str, local: TransformersEngine, tiny_model_dir: Path) -> None:
    ids = local.encode("We know that 37 x 24 = 888. Adding 129 gives 1017.")
    body = {"model": tiny_model_dir.name, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}
    answer = post(server, "/completions", {**body, "prompt_logprobs": 0}).json()
    choice = answer["choices"][0]
    logprobs = choice["logprobs"]
    assert logprobs["token_ids"] == ids and logprobs["token_logprobs"][0] is None
    expected = local.score([ids[:1]], [ids[1:]])[0].token_logprobs
    assert logprobs["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    vllm_style = [next(iter(entry.values()))["logprob"] for entry in choice["prompt_logprobs"][1:]]
    assert vllm_style == pytest.approx(expected, abs=1e-4)
    assert answer["usage"]["prompt_tokens"] == len(ids) and answer["usage"]["completion_tokens"] == 0


def test_shared_prefix_groups() -> None:
    prompts = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 9, 9], [1, 2, 3, 7], [1, 8], [6, 6], [6, 6]]
    # [1, 8] shares 1 of the run's 3 tokens: it starts a run of its own, which [6, 6] does not join
    assert shared_prefix_groups(prompts) == [(3, [0, 1, 2]), (2, [3]), (2, [4, 5])]
    assert shared_prefix_groups([]) == []


def test_echoes_sharing_a_prefix_score_as_each_alone(server: str, local: TransformersEngine) -> None:
    """The E-step's K sequences of a chunk share its prompt: the server computes that prefix once
    (its tokens in one pass, the K rests after it), and the echoed log-probs are each sequence's own."""
    context = local.encode("We know that 37 x 24 = 888. Adding 129 gives 1017. So the total is")
    prompts = [*([*context, 40 + i, 50 + i, 60] for i in range(4)), context, local.encode("Let n be even.")]
    body = {"prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 0, "prompt_logprobs": 0}
    answer = post(server, "/completions", body).json()
    expected = local.score([seq[:1] for seq in prompts], [seq[1:] for seq in prompts])
    for choice, seq, want in zip(answer["choices"], prompts, expected, strict=True):
        assert choice["logprobs"]["token_ids"] == seq
        assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(want.token_logprobs, abs=1e-4)
        vllm_style = [next(iter(entry.values()))["logprob"] for entry in choice["prompt_logprobs"][1:]]
        assert vllm_style == pytest.approx(want.token_logprobs, abs=1e-4)


def test_an_echo_longer_than_the_context_is_a_400(server: str, local: TransformersEngine) -> None:
    limit = httpx.get(f"{server}/models").json()["data"][0]["max_model_len"]
    assert limit == local.max_context_tokens
    body = {"prompt": [[1] * (limit + 1)], "max_tokens": 0, "echo": True, "logprobs": 0}
    response = post(server, "/completions", body)
    assert response.status_code == 400
    assert f"context of {limit} (max_model_len)" in response.json()["error"]["message"]
    assert post(server, "/completions", {**body, "prompt": [[1] * limit]}).status_code == 200


def test_sampling_matches_the_engine(server: str, local: TransformersEngine) -> None:
    """Seeded sampling over HTTP gives exactly the in-process engine's samples and log-probs."""
    prompts = ["Let n be", "First compute 12 + 30"]
    answer = post(
        server, "/completions", {"prompt": prompts, "n": 2, "max_tokens": 6, "seed": 5, "logprobs": 1}
    )
    choices = answer.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    expected = local.sample(prompts, n=2, max_new_tokens=6, seed=5)
    for choice, sample in zip(choices, [s for group in expected for s in group], strict=True):
        assert choice["logprobs"]["token_ids"] == sample.token_ids == choice["token_ids"]
        assert choice["logprobs"]["token_logprobs"] == pytest.approx(sample.token_logprobs, abs=1e-5)
        assert choice["text"] == sample.text and choice["finish_reason"] == sample.finish_reason


def test_stop_token_ids_and_strings(server: str, local: TransformersEngine) -> None:
    free = local.sample([[5, 6, 7]], max_new_tokens=8, seed=1, stop_on_eos=False)[0][0]
    body = {"prompt": [5, 6, 7], "max_tokens": 8, "seed": 1, "logprobs": 0, "ignore_eos": True}
    answer = post(server, "/completions", {**body, "stop_token_ids": [free.token_ids[2]]}).json()
    ids = answer["choices"][0]["logprobs"]["token_ids"]
    assert ids == free.token_ids[: free.token_ids.index(free.token_ids[2]) + 1]
    assert answer["choices"][0]["finish_reason"] == "stop"
    answer = post(server, "/completions", {**body, "stop": ["zzzz-never"]}).json()
    assert answer["choices"][0]["finish_reason"] == "length"


def test_chat(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    reply = client.chat.completions.create(
        model=tiny_model_dir.name,
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
        max_tokens=5,
        n=2,
        seed=0,
    )
    assert len(reply.choices) == 2 and isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/completions", {"max_tokens": 2}, 400, "prompt"),
        ("/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
        ("/completions", {"prompt": "x", "n": "two"}, 400, "n"),
        ("/completions", {"prompt": [1, 999999]}, 400, "prompt"),
        ("/completions", {"prompt": "x", "model": "other"}, 404, "model"),
        ("/completions", {"prompt": "x", "logit_bias": {"5": 2.0}}, 400, "logit_bias"),
        ("/chat/completions", {"messages": "hi"}, 400, "messages"),
        (
            "/batches",
            {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"},
            400,
            "input_file_id",
        ),
    ],
)
def test_bad_requests_get_openai_errors(
    server: str, path: str, body: object, status: int, param: str
) -> None:
    response = post(server, path, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_and_unknown_ids(server: str) -> None:
    response = httpx.post(
        f"{server}/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    assert httpx.get(f"{server}/files/file-unknown").status_code == 404
    assert httpx.get(f"{server}/batches/batch_unknown").status_code == 404


def _requests_file(model: str, count: int) -> bytes:
    lines = []
    for i in range(count):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Say {i}"}],
            "max_tokens": 4,
            "seed": i,
        }
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
    return ("\n".join(json.dumps(line) for line in [*lines, bad]) + "\n").encode()


def _wait(client: openai.OpenAI, batch_id: str, timeout_s: float = 60) -> openai.types.Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired") or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def test_batch_round_trip_with_the_openai_client(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    uploaded = client.files.create(
        file=("requests.jsonl", _requests_file(tiny_model_dir.name, 3)), purpose="batch"
    )
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert created.status in ("validating", "in_progress")
    batch = _wait(client, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        4,
        3,
        1,
    )
    assert batch.output_file_id and batch.error_file_id
    lines = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["req-0", "req-1", "req-2"]
    for line in lines:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and isinstance(
            body["choices"][0]["message"]["content"], str
        )
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad"]
    assert errors[0]["response"]["status_code"] == 400 and "error" in errors[0]["response"]["body"]
    assert created.id in [b.id for b in client.batches.list(limit=100)]


def test_batch_with_a_broken_file_fails(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("broken.jsonl", b'{"custom_id": "a"\n'), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = _wait(client, created.id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert "line 1" in (batch.errors.data[0].message or "")


def test_cancel(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    uploaded = client.files.create(
        file=("many.jsonl", _requests_file(tiny_model_dir.name, 40)), purpose="batch"
    )
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = client.batches.cancel(created.id)
    assert cancelled.status in ("cancelling", "completed")
    batch = _wait(client, created.id)
    assert batch.status in ("cancelled", "completed")
    if batch.status == "cancelled":
        assert batch.request_counts is not None and batch.request_counts.completed < 40


def test_batches_survive_a_restart(tiny_model_dir: Path, tmp_path: Path, local: TransformersEngine) -> None:
    """An unfinished batch in the state folder is resumed, from its partial output, by a new server."""
    store = Store(tmp_path)
    model = tiny_model_dir.name
    meta = store.add_file(_requests_file(model, 3), "requests.jsonl", "batch")
    batch = {
        "id": "batch_restart",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": meta["id"],
        "completion_window": "24h",
        "status": "in_progress",
        "created_at": int(time.time()),
        "request_counts": {"total": 4, "completed": 1, "failed": 0},
    }
    store.save_batch(batch)
    done = {
        "id": "batch_req_x",
        "custom_id": "req-0",
        "response": {"status_code": 200, "body": {}},
        "error": None,
    }
    (store.batches / "batch_restart.output.partial.jsonl").write_text(json.dumps(done) + "\n")
    with TestClient(create_app(local, model, tmp_path)) as app:
        deadline = time.monotonic() + 60
        while (state := app.get("/v1/batches/batch_restart").json())["status"] != "completed":
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
        output = app.get(f"/v1/files/{state['output_file_id']}/content").text.splitlines()
        # req-0 was done before the restart and is not answered twice.
        assert sorted(json.loads(line)["custom_id"] for line in output) == ["req-0", "req-1", "req-2"]
        assert json.loads(output[0])["id"] == "batch_req_x"
    # A new app on the same folder still knows the batch and its files.
    with TestClient(create_app(local, model, tmp_path)) as app:
        assert app.get("/v1/batches/batch_restart").json()["status"] == "completed"
        assert app.get(f"/v1/files/{state['error_file_id']}").json()["purpose"] == "batch_output"
