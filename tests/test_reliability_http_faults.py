"""Synthesis and the E-step over HTTP through a fault-injecting proxy (``tests/fault_proxy.py``) in
front of a real ``latent-thoughts serve`` on the tiny model.

Whatever the faults (429 with and without Retry-After, 500, 503, resets, answers slower than the
client's timeout, truncated and malformed bodies), every chunk ends done or recorded as failed with
its reason, and what is done equals a fault-free run's (sampling is seeded per request, so a retried
request gets the same answer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.cli import main
from latent_thoughts.corpus import chunk_document, read_chunks, read_documents, write_chunks
from latent_thoughts.testbed.world import TestbedConfig, generate_documents, testbed_chunk_config
from tests.fault_proxy import FAULTS, FaultProxy
from tests.test_server import serve_subprocess

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# Columns that do not name the server's address (the teacher identity does).
COLUMNS = ["doc_id", "chunk_index", "thought", "completion_tokens", "finish_reason"]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # textbook chunks make chats over the default prompt limit of the tiny model's context: let them
    # through to be cut to fit, as in process
    extra = ("--max-prompt-tokens", "100000")
    with serve_subprocess(tiny_model_dir, tmp_path_factory.mktemp("serve"), extra=extra) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six chunks of the shared textbook corpus."""
    document = next(iter(read_documents([SHARED / "corpus" / "math_textbooks.jsonl"])))
    path = tmp_path_factory.mktemp("chunks") / "chunks.parquet"
    write_chunks(chunk_document(document.doc_id, document.text)[:6], path)
    return path


def teacher_file(folder: Path, base_url: str, **http: Any) -> Path:
    config = {
        "kind": "http",
        "http": {"base_url": base_url, "model": "", "concurrency": 2, "backoff_initial_s": 0.05, **http},
        "sampling": {"temperature": 0.7, "max_new_tokens": 48, "seed": 0},
        "batch_size": 2,
    }
    path = folder / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def synthesize(chunks: Path, teacher: Path, out: Path) -> tuple[int, dict[str, Any]]:
    status = main(["synthesize", "--chunks", str(chunks), "--teacher", str(teacher), "--out", str(out)])
    return status, json.loads(out.with_name(out.name.replace(".parquet", ".summary.json")).read_text())


def rows(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(thoughts, failures) of a synthesis output."""
    failures = out.with_name(out.name.replace(".parquet", ".failures.parquet"))
    return pq.read_table(out).to_pylist(), pq.read_table(failures).to_pylist()


@pytest.fixture(scope="module")
def fault_free(chunks: Path, server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault-free")
    status, _ = synthesize(chunks, teacher_file(folder, server), folder / "out.parquet")
    assert status == 0
    return folder / "out.parquet"


def keyed(records: list[dict[str, Any]], columns: list[str]) -> dict[tuple[str, int], tuple[Any, ...]]:
    return {(r["doc_id"], r["chunk_index"]): tuple(r[c] for c in columns) for r in records}


def test_synthesis_survives_every_fault_kind_and_equals_a_fault_free_run(
    chunks: Path, server: str, fault_free: Path, tmp_path: Path
) -> None:
    teacher = teacher_file(tmp_path, "", max_attempts=12, timeout_s=1.0)
    started = time.monotonic()
    with FaultProxy(server, rate=0.6, seed=1, slow_s=1.5) as proxy:
        teacher.write_text(teacher.read_text().replace("base_url: ''", f"base_url: {proxy.url}"))
        status, summary = synthesize(chunks, teacher, tmp_path / "out.parquet")
    elapsed = time.monotonic() - started
    assert status == 0 and set(proxy.injected) == set(FAULTS)  # every kind was injected
    # every fault cost a retry; on a loaded machine a clean answer can also pass the short timeout
    assert summary["run"]["retries"] >= sum(proxy.injected.values())
    thoughts, failures = rows(tmp_path / "out.parquet")
    reference_thoughts, reference_failures = rows(fault_free)
    assert reference_thoughts and keyed(thoughts, COLUMNS) == keyed(reference_thoughts, COLUMNS)
    assert keyed(failures, ["reason"]) == keyed(reference_failures, ["reason"])
    print(f"faults {dict(proxy.injected)}, passed {proxy.passed}, {elapsed:.1f} s")


def test_synthesis_records_a_chunk_whose_retries_run_out_as_failed_with_its_reason(
    chunks: Path, server: str, fault_free: Path, tmp_path: Path
) -> None:
    # The model is named, so that no request but the chunks' own can fail.
    model = httpx.get(f"{server}/models", timeout=5).json()["data"][0]["id"]
    teacher = teacher_file(tmp_path, "", max_attempts=1, concurrency=1, timeout_s=5.0, model=model)
    with FaultProxy(server, rate=0.5, seed=3, faults=("503", "reset", "malformed")) as proxy:
        teacher.write_text(teacher.read_text().replace("base_url: ''", f"base_url: {proxy.url}"))
        synthesize(chunks, teacher, tmp_path / "out.parquet")
    outcome, reference = outcomes(tmp_path / "out.parquet"), outcomes(fault_free)
    assert len(outcome) == len(rows(tmp_path / "out.parquet")[0]) + len(rows(tmp_path / "out.parquet")[1])
    assert set(outcome) == {(c.doc_id, c.chunk_index) for c in read_chunks(chunks)}  # each chunk once
    errors = {key: value[1] for key, value in outcome.items() if str(value[1]).startswith("error:")}
    assert errors and sum(proxy.injected.values()) >= len(errors)
    assert all("failed after 1 attempts" in reason for reason in errors.values()), errors
    done = {key: value for key, value in outcome.items() if key not in errors}
    assert done and all(value == reference[key] for key, value in done.items())


def outcomes(out: Path) -> dict[tuple[str, int], tuple[Any, ...]]:
    """Each chunk's outcome: ("thought", its columns) or ("failed", the reason)."""
    thoughts, failures = rows(out)
    result = {key: ("thought", value) for key, value in keyed(thoughts, COLUMNS).items()}
    result.update({key: ("failed", value[0]) for key, value in keyed(failures, ["reason"]).items()})
    return result


@pytest.fixture(scope="module")
def estep_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three chunks of a testbed document (one sentence a chunk)."""
    chunks = tmp_path_factory.mktemp("estep-chunks") / "chunks.parquet"
    world = TestbedConfig(bootstrap_documents=1, results_per_document=2)
    document = generate_documents(world, "bootstrap")[0]
    write_chunks(chunk_document(document.doc_id, document.text, testbed_chunk_config(world))[:3], chunks)
    return chunks


def estep(model: Path, chunks: Path, out: Path, *options: str) -> list[str]:
    """The command line of an E-step of ``chunks`` (K = 2, 8-token thoughts, seed 5)."""
    argv = ["estep", str(model), "--chunks", str(chunks), "--out", str(out)]
    return [*argv, "--k", "2", "--max-thought-tokens", "8", "--seed", "5", "--no-progress", *options]


@pytest.fixture(scope="module")
def estep_fault_free(
    tiny_model_dir: Path, server: str, estep_chunks: Path, tmp_path_factory: pytest.TempPathFactory
) -> pa.Table:
    out = tmp_path_factory.mktemp("estep-clean") / "clean.parquet"
    assert main(estep(tiny_model_dir, estep_chunks, out, "--base-url", server)) == 0
    return pq.read_table(out)


def same_samples(table: pa.Table, reference: pa.Table) -> None:
    """Every column equal but the cache key, which names the engine (the proxy's address, not the server's)."""
    assert table.num_rows == reference.num_rows == 3 and table.column_names == reference.column_names
    differ = [
        name for name in table.column_names if name != "key" and not table[name].equals(reference[name])
    ]
    assert differ == [], {
        name: (reference[name].to_pylist()[:1], table[name].to_pylist()[:1]) for name in differ
    }


def test_estep_over_http_through_every_fault_kind_equals_a_fault_free_run(
    tiny_model_dir: Path, server: str, estep_chunks: Path, estep_fault_free: pa.Table, tmp_path: Path
) -> None:
    # A 2 s request timeout and a short backoff, so that the slow answers (2.5 s) are retried soon.
    options = [
        "--timeout-s",
        "2",
        "--max-attempts",
        "30",
        "--backoff-initial-s",
        "0.05",
        "--concurrency",
        "2",
        "--batch-chunks",
        "1",
    ]
    out = tmp_path / "faulty.parquet"
    # One chunk per batch and a 0.7 rate: the E-step makes few requests (7 here: a sampling and a scoring
    # call per chunk, and the model list), and with seed 3 all eight kinds of fault come up (9 faults);
    # 30 attempts make running out of them (0.7^30 a request) negligible
    with FaultProxy(server, rate=0.7, seed=3, slow_s=2.5) as proxy:
        assert main(estep(tiny_model_dir, estep_chunks, out, "--base-url", proxy.url, *options)) == 0
    assert set(proxy.injected) == set(FAULTS)  # every kind was injected
    summary = json.loads(out.with_name("faulty.summary.json").read_text())
    # every fault cost a retry; on a loaded machine a clean answer can also pass the short timeout
    assert summary["retries"] >= sum(proxy.injected.values())
    same_samples(pq.read_table(out), estep_fault_free)


def test_an_estep_whose_retries_run_out_stops_in_one_line_and_its_rerun_samples_only_the_rest(
    tiny_model_dir: Path,
    server: str,
    estep_chunks: Path,
    estep_fault_free: pa.Table,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "samples.parquet"
    # The model is named, so that the chunks' requests are the only ones; with seed 0 the 4th request
    # is the first to fail: after the first chunk's requests (its sampling and its scoring, 2 or 3
    # requests), before the last chunk's.
    model = httpx.get(f"{server}/models", timeout=5).json()["data"][0]["id"]
    with FaultProxy(server, rate=0.3, seed=0, faults=("503",)) as proxy:
        engine = tmp_path / "engine.yaml"  # the engine file form of the options
        http = {"base_url": proxy.url, "model": model, "max_attempts": 1, "concurrency": 1}
        engine.write_text(yaml.safe_dump({"kind": "http", "http": http, "tokenizer": str(tiny_model_dir)}))
        command = estep(engine, estep_chunks, out, "--batch-chunks", "1")
        assert main(command) == 2
        error = capsys.readouterr().err.strip()
        assert (
            error.count("\n") == 0 and f"{proxy.url}/completions failed after 1 attempts: HTTP 503" in error
        )
        assert not out.exists()
        done = (out.parent / "samples.cache" / "all.jsonl").read_bytes().count(b"\n")
        assert 1 <= done < 3
        proxy.rate = 0.0  # the outage ends; the same address, so the same cache keys
        assert main(command) == 0
    summary = json.loads(out.with_name("samples.summary.json").read_text())
    assert (summary["from_cache"], summary["sampled_now"]) == (done, 3 - done)
    same_samples(pq.read_table(out), estep_fault_free)
