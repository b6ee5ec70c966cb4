"""The E-step against ``latent-thoughts serve`` with a SentencePiece (Llama-2) tokenizer, as a new user
runs it: the served model's tokenizer folder as ``--model``, long LaTeX chunks that the context cuts,
and bf16 where the CPU runs it natively.

Two things broke there and are pinned here:

- the client's context budget came from the tokenizer folder (no ``config.json``: 2048) while the
  server computes at most its model's positions: the server cut the sampling prompts to fit, then
  refused the scoring requests with a 400. The client now reads the server's ``max_model_len`` from
  ``/models`` (vLLM's field, which ``serve`` gives);
- in bf16 the thoughts drawn through the server differed from the in-process ones: a sampling batch
  was left-padded to its longest prompt, and the attention's rounding depends on that width, so a
  prompt's draws depended on which other prompts shared its batch (the server's requests hold other
  prompts than the in-process calls). A prompt's padded width now depends on its own length only.

The server runs in this process (uvicorn in a thread, the app of ``latent-thoughts serve``), so that
both sides run on the same torch threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import ChunkConfig, chunk_document, read_documents, write_chunks
from latent_thoughts.em.stage import EStepConfig, EStepRequest, run_estep
from latent_thoughts.engines.http_engine import HTTPEngine, HTTPEngineConfig
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.generation.outputs import read_metadata
from latent_thoughts.server import create_app
from latent_thoughts.tokenizer import add_latent_tokens, load_tokenizer
from tests.conftest import SHARED, save_tiny_llama

LLAMA2 = SHARED / "tokenizers" / "llama2"
CORPUS = SHARED / "corpus" / "math_textbooks.jsonl"

pytestmark = [
    pytest.mark.numeric,
    pytest.mark.skipif(
        not (LLAMA2 / "tokenizer.model").exists() or not CORPUS.exists(),
        reason="shared Llama-2 tokenizer or corpus not present",
    ),
]

POSITIONS = 192
"""The served model's context: far below the 2048 a folder without config.json stood for."""

THOUGHT_TOKENS = 40


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Llama over the Llama-2 tokenizer with the latent tokens (``POSITIONS`` positions),
    and a folder holding only that tokenizer (what ``--model`` names with ``--base-url``)."""
    tokenizer = load_tokenizer(LLAMA2)
    add_latent_tokens(tokenizer)
    root = tmp_path_factory.mktemp("llama2_estep")
    model = save_tiny_llama(root / "model", tokenizer, positions=POSITIONS)
    tokenizer.save_pretrained(root / "tokenizer")
    return model, root / "tokenizer"


@pytest.fixture(scope="module")
def chunks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 chunks of two textbook documents (two sentences a chunk, the previous chunk as prefix): of
    every length from a few tokens to several hundred, so the context cuts many and not all."""
    documents = [doc for doc in read_documents([CORPUS]) if 2_000 < len(doc.text) < 20_000][:2]
    chunks = [
        chunk
        for doc in documents
        for chunk in chunk_document(doc.doc_id, doc.text[:3_000], ChunkConfig(mean_sentences=2))[:7]
    ]
    path = tmp_path_factory.mktemp("llama2_chunks") / "chunks.parquet"
    write_chunks(chunks, path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def served(model: Path, state: Path, **options: Any) -> Iterator[str]:
    """``latent-thoughts serve``'s app over ``model`` (cpu, engine ``options``) on a free port of
    127.0.0.1, in a thread of this process; yields the API root."""
    import uvicorn

    engine = TransformersEngine(TransformersEngineConfig(model=str(model), device="cpu", **options))
    app = create_app(engine, model.name, state)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.config.port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_served_model_says_its_context(folders: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = folders
    with served(model, tmp_path, dtype="fp32", max_context_tokens=150) as base_url:
        [entry] = httpx.get(f"{base_url}/models", timeout=10).json()["data"]
        with HTTPEngine(HTTPEngineConfig(base_url=base_url)) as client:
            assert client.max_context_tokens == 150
    assert entry["max_model_len"] == 150


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_estep_over_http_at_default_options_cuts_chunks_to_the_servers_context(
    folders: tuple[Path, Path], chunks_file: Path, tmp_path: Path, dtype: str
) -> None:
    """``estep --base-url URL --model TOKENIZER_FOLDER`` with only a thought budget given: the
    context is the server's (``POSITIONS``), the long chunks are cut to it, and the run succeeds.
    Before, the budget was 2048 and the first scoring request was a 400 (``continuation 0 has N
    tokens, more than max_context_tokens=192 - 1``)."""
    model, tokenizer = folders
    out = tmp_path / "samples.parquet"
    argv = ["estep", str(tokenizer), "--chunks", str(chunks_file), "--out", str(out)]
    with served(model, tmp_path, dtype=dtype) as base_url:
        options = ["--max-thought-tokens", str(THOUGHT_TOKENS), "--k", "2", "--no-progress"]
        assert main([*argv, "--base-url", base_url, *options]) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 14
    assert sum(row["dropped_tokens"] > 0 for row in rows) >= 4  # truncation happened ...
    assert any(row["dropped_tokens"] == 0 for row in rows)  # ... where the chunk did not fit
    assert all(len(row["samples"]) == 2 for row in rows)
    assert read_metadata(out)["sampling"]["context_tokens"] == POSITIONS


def test_a_context_longer_than_the_servers_is_a_one_line_error(
    folders: tuple[Path, Path], chunks_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer = folders
    out = tmp_path / "samples.parquet"
    argv = ["estep", str(tokenizer), "--chunks", str(chunks_file), "--out", str(out)]
    with served(model, tmp_path, dtype="fp32") as base_url:
        options = ["--context-tokens", "400", "--max-thought-tokens", str(THOUGHT_TOKENS), "--no-progress"]
        assert main([*argv, "--base-url", base_url, *options]) == 2
    error = capsys.readouterr().err
    assert "context_tokens=400 is longer than the model's context of 192 tokens" in error
    assert not out.exists()


def test_served_and_in_process_estep_draw_the_same_thoughts_in_bf16(
    folders: tuple[Path, Path], chunks_file: Path, tmp_path: Path
) -> None:
    """One model, one seed, one dtype (bf16): the same thoughts through the server (requests of one
    prompt each: batches unlike the in-process ones) as in process, their log q within rounding of
    bf16 (echo scoring of each sequence against the shared-context scoring of a chunk)."""
    model, _ = folders
    config = EStepConfig(k=3, max_thought_tokens=THOUGHT_TOKENS, seed=3)
    local = tmp_path / "local.parquet"
    run_estep(EStepRequest(model, chunks_file, local, config, device="cpu", dtype="bf16", progress=False))
    remote = tmp_path / "served.parquet"
    with served(model, tmp_path, dtype="bf16") as base_url:
        request = EStepRequest(
            model, chunks_file, remote, config, base_url=base_url, engine_options={"prompts_per_request": 1}
        )
        run_estep(request)
    local_rows, served_rows = pq.read_table(local).to_pylist(), pq.read_table(remote).to_pylist()
    assert sum(row["dropped_tokens"] > 0 for row in local_rows) >= 4
    assert [row["samples"] for row in served_rows] == [row["samples"] for row in local_rows]
    assert [row["sample_tokens"] for row in served_rows] == [row["sample_tokens"] for row in local_rows]
    assert [row["thought_ids"] for row in served_rows] == [row["thought_ids"] for row in local_rows]
    for served_row, local_row in zip(served_rows, local_rows, strict=True):
        assert served_row["log_q"] == pytest.approx(local_row["log_q"], abs=2e-2)  # 5e-4 here
