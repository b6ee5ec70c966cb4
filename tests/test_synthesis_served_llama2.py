"""A teacher served by ``latent-thoughts serve`` with the Llama-2 tokenizer, as a new user runs one.

The served model is a tiny random Llama over the shared Llama-2 SentencePiece vocabulary (with the
latent tokens); its answers never end on their own, so a small ``max_new_tokens`` cuts every one
(finish reason ``length``). The chunks are real chunks of the shared textbook corpus.

- The dry run counts a served model's tokens with the tokenizer the teacher file names, so its
  projected input tokens are the tokens the server then bills, and it bounds every answer by
  ``max_new_tokens``.
- A cut answer is no failure: ``on_cut`` leaves the chunk raw (the default), keeps the cut answer,
  or asks again with doubled budgets under new cache keys (``retry_longer``), deterministically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.cli import main
from latent_thoughts.corpus import chunk_document, read_chunks, read_documents, write_chunks
from latent_thoughts.synthesis import Sampling, latent_work
from latent_thoughts.tokenizer import add_latent_tokens, load_tokenizer
from tests.conftest import SHARED, save_tiny_llama
from tests.test_synthesis_http import served

LLAMA2 = SHARED / "tokenizers" / "llama2"
CORPUS = SHARED / "corpus" / "math_textbooks.jsonl"
pytestmark = pytest.mark.skipif(
    not (LLAMA2 / "tokenizer.model").exists() or not CORPUS.exists(),
    reason="shared Llama-2 tokenizer or corpus not present",
)
CHUNKS = 6


@pytest.fixture(scope="module")
def llama2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (2 layers, width 32) over the Llama-2 vocabulary, saved with its tokenizer."""
    tokenizer = load_tokenizer(LLAMA2)
    add_latent_tokens(tokenizer)
    return save_tiny_llama(tmp_path_factory.mktemp("llama2_tiny"), tokenizer, positions=4096)


@pytest.fixture(scope="module")
def server(llama2_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``latent-thoughts serve`` on the tiny Llama-2 model; yields its API root URL."""
    with served(llama2_model, tmp_path_factory.mktemp("serve-llama2")) as url:
        yield url


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first three chunks of two documents of the shared textbook corpus."""
    selected = []
    for document in read_documents([CORPUS]):
        selected.extend(chunk_document(document.doc_id, document.text)[:3])
        if len(selected) >= CHUNKS:
            break
    path = tmp_path_factory.mktemp("chunks") / "chunks.parquet"
    write_chunks(selected[:CHUNKS], path)
    return path


def teacher_file(folder: Path, server: str, model: Path, **options: Any) -> Path:
    """A TEACHER.yaml for the server, naming the served model's tokenizer folder; ``options`` are
    top-level keys, ``max_new_tokens`` goes to ``sampling``."""
    config: dict[str, Any] = {
        "kind": "http",
        "http": {"base_url": server, "model": "", "concurrency": 3, "max_attempts": 2, "timeout_s": 120},
        "sampling": {"temperature": 0.7, "max_new_tokens": options.pop("max_new_tokens", 8), "seed": 0},
        "tokenizer": str(model),
        "prices": {"input_per_million": 1.0, "output_per_million": 2.0},
        "batch_size": 4,
        "batch_api": {"poll_interval_s": 0.2},
        **options,
    }
    path = folder / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def synthesize(chunks: Path, teacher: Path, out: Path, *extra: str) -> dict:
    argv = ["synthesize", "--chunks", str(chunks), "--teacher", str(teacher), "--out", str(out), *extra]
    assert main([*argv, "--no-progress"]) == 0
    return json.loads(out.with_name(out.name.replace(".parquet", ".summary.json")).read_text())


def projected(printed: str, what: str) -> int:
    """The number on the dry run's ``projected WHAT tokens:`` line."""
    found = re.search(rf"projected {what} tokens:\s+([\d,]+)", printed)
    assert found, printed
    return int(found.group(1).replace(",", ""))


def cache_records(folder: Path) -> list[dict]:
    return [
        json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()
    ]


def test_dry_run_counts_with_the_served_models_tokenizer_and_bounds_answers_by_max_new_tokens(
    chunks: Path, server: str, llama2_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = teacher_file(tmp_path, server, llama2_model, max_new_tokens=16)
    out = tmp_path / "thoughts.parquet"
    argv = ["synthesize", "--chunks", str(chunks), "--teacher", str(teacher), "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, "--dry-run", "--sample", "1000"]) == 0
    printed = capsys.readouterr().out
    assert f"with tokenizer at {llama2_model}" in printed, printed
    # Every answer is bounded by max_new_tokens (textbook chunks' thoughts would run to hundreds).
    assert projected(printed, "output") <= CHUNKS * 16
    assert f"answers past max_new_tokens: {CHUNKS} of {CHUNKS} sampled (on_cut raw: left raw)" in printed
    assert f"output tokens at most:   {CHUNKS * 16:>14,}" in printed

    # The projection is what the served model then bills: its own tokens of every chat request.
    summary = synthesize(chunks, teacher, out)
    assert summary["run"]["prompt_tokens"] == projected(printed, "input")
    assert summary["run"]["completion_tokens"] == CHUNKS * 16

    # Without a tokenizer a served model is not counted with GPT-4o's tokenizer, which is for OpenAI's.
    assert main([*argv, "--dry-run", "--set", "tokenizer=null"]) == 0
    printed = capsys.readouterr().out
    assert "o200k_base" not in printed and "set tokenizer:" in printed
    openai = Path(__file__).resolve().parents[1] / "configs" / "teachers" / "openai-gpt-4o-mini.yaml"
    openai_argv = ["synthesize", "--chunks", str(chunks), "--teacher", str(openai), "--out", str(out)]
    assert main([*openai_argv, "--dry-run"]) == 0
    assert "o200k_base" in capsys.readouterr().out


def test_cut_answers_are_left_raw_or_kept_never_failures(
    chunks: Path, server: str, llama2_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = teacher_file(tmp_path, server, llama2_model, max_new_tokens=8)
    out = tmp_path / "cut.parquet"
    summary = synthesize(chunks, teacher, out)  # on_cut: raw, the default
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == CHUNKS and pq.read_table(tmp_path / "cut.failures.parquet").num_rows == 0
    assert {(r["thought"], r["finish_reason"], r["completion_tokens"]) for r in rows} == {(None, "length", 8)}
    run = summary["run"]
    assert (run["failed"], run["answered_cut"], run["cut"], run["cut_raw"]) == (0, CHUNKS, CHUNKS, CHUNKS)
    capsys.readouterr()
    assert main(["thoughts", "--chunks", str(chunks), "--thoughts", str(out)]) == 0
    assert "no thought: left raw, its answer was cut at the token limit" in capsys.readouterr().out
    # Nothing to retry: asked again with the same budget, the answer would be cut the same way.
    assert synthesize(chunks, teacher, out, "--retry-failures")["run"]["requests"] == 0

    kept = synthesize(chunks, teacher, out, "--set", "on_cut=keep")  # the cached answers, kept
    assert kept["run"]["requests"] == 0 and kept["run"]["cut_kept"] == CHUNKS
    answers = {r["key"]: r["text"].strip() for r in cache_records(tmp_path / "cut.cache")}
    rows = pq.read_table(out).to_pylist()
    assert all(r["thought"] and r["thought"] == answers[r["key"]] for r in rows)
    assert {r["finish_reason"] for r in rows} == {"length"}


def test_retry_longer_asks_again_with_doubled_budgets_under_new_keys_deterministically(
    chunks: Path, server: str, llama2_model: Path, tmp_path: Path
) -> None:
    options = {"max_new_tokens": 4, "on_cut": "retry_longer", "retry_max_new_tokens": 16}
    teacher = teacher_file(tmp_path, server, llama2_model, **options)
    out = tmp_path / "first" / "retry.parquet"
    summary = synthesize(chunks, teacher, out)
    run = summary["run"]
    # 4, then 8, then 16 tokens for every chunk; still cut at 16, the chunk is left raw.
    assert (run["requests"], run["longer_requests"], run["answered_cut"]) == (
        3 * CHUNKS,
        2 * CHUNKS,
        3 * CHUNKS,
    )
    assert (run["cut"], run["cut_retried"], run["cut_raw"], run["failed"]) == (CHUNKS, CHUNKS, CHUNKS, 0)
    records = cache_records(out.with_name("retry.cache"))
    assert len({r["key"] for r in records}) == len(records) == 3 * CHUNKS
    assert sorted(r["completion_tokens"] for r in records) == sorted([4, 8, 16] * CHUNKS)
    # A longer request's key is the key of a plain run with that max_new_tokens.
    plain = Sampling(temperature=0.7, max_new_tokens=16, seed=0)
    at_16 = [item.key for item in latent_work(read_chunks(chunks), summary["teacher"], plain)]
    rows = pq.read_table(out).to_pylist()
    assert [r["key"] for r in rows] == at_16 and {r["completion_tokens"] for r in rows} == {16}
    assert synthesize(chunks, teacher, out)["run"]["requests"] == 0  # every budget's answer cached

    again = tmp_path / "second" / "retry.parquet"
    assert synthesize(chunks, teacher, again)["run"]["requests"] == 3 * CHUNKS
    assert pq.read_table(again).equals(pq.read_table(out))
    texts = {r["key"]: r["text"] for r in records}
    assert {r["key"]: r["text"] for r in cache_records(again.with_name("retry.cache"))} == texts

    # Through the Batch API: a cut answer's longer request goes in a later batch, with the same result.
    batch = tmp_path / "batch" / "retry.parquet"
    through_batches = synthesize(chunks, teacher, batch, "--batch-api")
    assert (
        through_batches["run"]["requests"] == 3 * CHUNKS
        and through_batches["run"]["longer_requests"] == 2 * CHUNKS
    )
    assert pq.read_table(batch).equals(pq.read_table(out))
