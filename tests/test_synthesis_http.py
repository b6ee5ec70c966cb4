"""Teacher synthesis through the HTTP engine and the Batch API, against a real ``latent-thoughts serve``.

The server is a subprocess serving the tiny random Llama of ``conftest.tiny_model_dir`` on 127.0.0.1;
the chunks are real chunks of the shared textbook corpus. A random model's answers are gibberish,
and most run to the token limit: those are no failures but go by the teacher's ``on_cut`` (by
default the chunk is left raw: a row with a null thought), the rest are thoughts, every chunk exactly
once. Sampling is seeded, so the online and the batch paths must give the same files.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.cli import main
from latent_thoughts.corpus import chunk_document, read_chunks, read_documents, write_chunks

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(model_dir: Path, state: Path) -> Iterator[str]:
    """``latent-thoughts serve`` on ``model_dir`` (a subprocess, state under ``state``); yields its API root URL."""
    port = free_port()
    log = (state / "serve.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "latent_thoughts",
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(state / "store"),
            "--dtype",
            "fp32",
            # Textbook chunks make chats of a few thousand ids of the tiny BPE, over the default
            # limit of four 512-token contexts: let them through to be cut to fit, like in process.
            "--max-prompt-tokens",
            "100000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not start: {(state / 'serve.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield f"{url}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``latent-thoughts serve`` on the tiny model; yields its API root URL."""
    with served(tiny_model_dir, tmp_path_factory.mktemp("serve-state")) as url:
        yield url


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six chunks from two documents of the shared textbook corpus."""
    selected = []
    for document in read_documents([SHARED / "corpus" / "math_textbooks.jsonl"]):
        selected.extend(chunk_document(document.doc_id, document.text)[:3])
        if len(selected) >= 6:
            break
    path = tmp_path_factory.mktemp("chunks") / "chunks.parquet"
    write_chunks(selected[:6], path)
    return path


@pytest.fixture(scope="module")
def teacher(server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TEACHER.yaml for the server (kind http)."""
    config = {
        "kind": "http",
        "http": {"base_url": server, "model": "", "concurrency": 3, "max_attempts": 2, "timeout_s": 120},
        "sampling": {"temperature": 0.7, "max_new_tokens": 48, "seed": 0},
        "prices": {"input_per_million": 1.0, "output_per_million": 2.0},
        "batch_size": 4,
        "batch_api": {"poll_interval_s": 0.2},
    }
    path = tmp_path_factory.mktemp("teacher") / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_model_name(teacher: Path) -> str:
    """The model name the server reports (the model folder's name)."""
    base_url = yaml.safe_load(teacher.read_text())["http"]["base_url"]
    with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
        return str(json.load(response)["data"][0]["id"])


def synthesize(chunks: Path, teacher: Path, out: Path, *extra: str, status: int = 0) -> dict:
    argv = ["synthesize", "--chunks", str(chunks), "--teacher", str(teacher), "--out", str(out), *extra]
    assert main(argv) == status
    return json.loads(out.with_name(out.name.replace(".parquet", ".summary.json")).read_text())


@pytest.fixture(scope="module")
def online(chunks: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output of an online run through the HTTP engine."""
    out = tmp_path_factory.mktemp("online") / "tiny.parquet"
    synthesize(chunks, teacher, out)
    return out


def test_http_teacher_against_a_real_server(chunks: Path, teacher: Path, online: Path) -> None:
    rows = pq.read_table(online).to_pylist()
    failures = pq.read_table(online.with_name("tiny.failures.parquet")).to_pylist()
    expected = [(c.doc_id, c.chunk_index) for c in read_chunks(chunks)]
    assert sorted((r["doc_id"], r["chunk_index"]) for r in rows) == sorted(expected) and not failures
    thoughts = [r for r in rows if r["thought"] is not None]
    cut = [r for r in rows if r["thought"] is None]  # left raw (on_cut: raw, the default)
    assert cut and all(r["finish_reason"] == "stop" and r["thought"] for r in thoughts)
    assert all(r["finish_reason"] == "length" and r["completion_tokens"] == 48 for r in cut)
    base_url = yaml.safe_load(teacher.read_text())["http"]["base_url"]
    assert {r["teacher"] for r in rows} == {f"http:{base_url}:{tiny_model_name(teacher)}"}
    summary = json.loads(online.with_name("tiny.summary.json").read_text())
    run = summary["run"]
    assert run["requests"] == len(expected) and run["prompt_tokens"] > 0
    assert run["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert (run["failed"], run["answered_cut"], run["cut"], run["cut_raw"]) == (
        0,
        len(cut),
        len(cut),
        len(cut),
    )
    assert summary["cost"] == pytest.approx(
        (run["prompt_tokens"] * 1.0 + run["completion_tokens"] * 2.0) / 1e6
    )
    # Rerun: nothing is asked again, the cut answers included.
    again = synthesize(chunks, teacher, online)
    assert again["run"]["requests"] == 0 and again["run"]["cached"] == len(expected)


def test_tiny_token_limit_leaves_every_chunk_raw_and_no_failures(
    chunks: Path, teacher: Path, tmp_path: Path
) -> None:
    out = tmp_path / "short.parquet"
    synthesize(chunks, teacher, out, "--set", "sampling.max_new_tokens=2")
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len(read_chunks(chunks)) and {r["thought"] for r in rows} == {None}
    assert {r["finish_reason"] for r in rows} == {"length"}
    assert pq.read_table(out.with_name("short.failures.parquet")).num_rows == 0


def test_batch_api_through_the_server_equals_the_online_run(
    chunks: Path, teacher: Path, online: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiny.parquet"
    summary = synthesize(chunks, teacher, out, "--batch-api")
    assert summary["batch_api"] and summary["run"]["requests"] == len(read_chunks(chunks))
    assert pq.read_table(out).equals(pq.read_table(online))
    assert pq.read_table(out.with_name("tiny.failures.parquet")).equals(
        pq.read_table(online.with_name("tiny.failures.parquet"))
    )
    assert summary["cost"] == pytest.approx(
        (summary["run"]["prompt_tokens"] * 0.5 + summary["run"]["completion_tokens"] * 1.0) / 1e6
    )


def test_a_batch_in_flight_is_resumed_not_resubmitted(
    chunks: Path, teacher: Path, online: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiny.parquet"
    first = synthesize(chunks, teacher, out, "--batch-api", "--no-wait", status=3)
    assert first["run"]["requests"] == len(read_chunks(chunks)) and first["output"]["missing"] > 0
    assert not out.exists()
    state = json.loads((tmp_path / "tiny.cache" / "all.batches.json").read_text())
    assert [job["collected"] for job in state["jobs"]] == [False]

    resumed = synthesize(chunks, teacher, out, "--batch-api")
    assert resumed["run"]["requests"] == 0  # collected, not resubmitted
    state = json.loads((tmp_path / "tiny.cache" / "all.batches.json").read_text())
    assert len(state["jobs"]) == 1 and state["jobs"][0]["collected"]
    assert pq.read_table(out).equals(pq.read_table(online))


def test_transformers_teacher_in_process_answers_like_the_server(
    chunks: Path, online: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    teacher = tmp_path / "local.yaml"
    teacher.write_text(
        yaml.safe_dump(
            {
                "kind": "transformers",
                "transformers": {"model": str(tiny_model_dir), "device": "cpu", "dtype": "fp32"},
                "sampling": {"temperature": 0.7, "max_new_tokens": 48, "seed": 0},
                "batch_size": 4,
            }
        )
    )
    out = tmp_path / "local.parquet"
    summary = synthesize(chunks, teacher, out)
    assert summary["teacher"] == f"transformers:{tiny_model_dir.resolve()}:fp32"
    # Same model, same seed, same chat rendering: the same answers as through the server.
    columns = ["doc_id", "chunk_index", "thought", "completion_tokens", "finish_reason"]
    assert pq.read_table(out).select(columns).equals(pq.read_table(online).select(columns))
    reasons = ["doc_id", "chunk_index", "reason"]
    assert (
        pq.read_table(out.with_name("local.failures.parquet"))
        .select(reasons)
        .equals(pq.read_table(online.with_name("tiny.failures.parquet")).select(reasons))
    )
