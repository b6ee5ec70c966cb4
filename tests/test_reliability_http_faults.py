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
    with serve_subprocess(tiny_model_dir, tmp_path_factory.mktemp("serve")) as base_url:
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
    # Every fault cost exactly one retry, and nothing else did.
    assert summary["run"]["retries"] == sum(proxy.injected.values())
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


def test_estep_over_http_through_faults_equals_a_fault_free_run(
    tiny_model_dir: Path, server: str, tmp_path: Path
) -> None:
    chunks = tmp_path / "chunks.parquet"
    world = TestbedConfig(bootstrap_documents=1, results_per_document=2)
    document = generate_documents(world, "bootstrap")[0]
    write_chunks(chunk_document(document.doc_id, document.text, testbed_chunk_config(world))[:3], chunks)

    def estep(base_url: str, out: Path) -> None:
        argv = ["estep", "--model", str(tiny_model_dir), "--chunks", str(chunks), "--out", str(out)]
        argv += [
            "--k",
            "2",
            "--max-thought-tokens",
            "8",
            "--seed",
            "5",
            "--base-url",
            base_url,
            "--no-progress",
        ]
        assert main(argv) == 0

    estep(server, tmp_path / "clean.parquet")
    # The E-step's engine keeps its default retry policy (6 tries, 1 s first backoff, 120 s timeout),
    # so no slow answers here; the other kinds are all drawn.
    with FaultProxy(server, rate=0.2, seed=2, faults=tuple(f for f in FAULTS if f != "slow")) as proxy:
        estep(proxy.url, tmp_path / "faulty.parquet")
    assert sum(proxy.injected.values()) > 0
    clean, faulty = pq.read_table(tmp_path / "clean.parquet"), pq.read_table(tmp_path / "faulty.parquet")
    assert faulty.num_rows == clean.num_rows == 3
    assert faulty.column_names == clean.column_names
    # Everything but the cache key, which names the engine (the proxy's address, not the server's).
    differ = [name for name in clean.column_names if name != "key" and not faulty[name].equals(clean[name])]
    assert differ == [], {
        name: (clean[name].to_pylist()[:1], faulty[name].to_pylist()[:1]) for name in differ
    }
