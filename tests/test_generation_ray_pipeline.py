"""``--executor ray``: synthesis and the E-step as a Ray Data pipeline on a real local Ray instance.

One local instance (4 logical CPUs, as the pipeline sizes it for 2 workers) serves the module: the
oracle teacher over testbed chunks and a tiny real Llama's E-step each run through a pool of 2
actors, and their outputs must equal the single-process outputs byte for byte; a rerun asks for
nothing. A driver killed with SIGKILL mid-run (joined to the instance with ``--ray-address``, as on
a cluster) is rerun and sends only what it had not finished. The default run keeps the oracle's
tests (about 50 s with the instance's start); the E-step's, whose actors import torch, are
``slow`` (``pytest -m slow tests/test_generation_ray_pipeline.py``).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import read_chunks
from latent_thoughts.generation.ray_pipeline import RayOptions, shard_count
from tests.test_em_stage import chunks_file  # noqa: F401  (a fixture)
from tests.test_server import serve_subprocess
from tests.test_synthesis import ORACLE_TEACHER, cache_lines, testbed_chunks  # noqa: F401  (a fixture)

ray = pytest.importorskip("ray")

ESTEP_SAMPLING = ["--k", "3", "--max-thought-tokens", "10", "--seed", "5"]
ESTEP_FLAGS = [*ESTEP_SAMPLING, "--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray instance with 4 logical CPUs for the module; yields its address for other drivers."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def run(*argv: str) -> None:
    assert main(list(argv)) == 0


def synthesize_argv(chunks: Path, out: Path, *extra: str) -> list[str]:
    return [
        "synthesize",
        "--chunks",
        str(chunks),
        "--teacher",
        str(ORACLE_TEACHER),
        "--out",
        str(out),
        *extra,
    ]


def test_synthesis_on_ray_writes_the_single_process_output_and_a_rerun_asks_nothing(
    testbed_chunks: Path,  # noqa: F811
    ray_address: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    single, on_ray = tmp_path / "single" / "oracle.parquet", tmp_path / "ray" / "oracle.parquet"
    run(*synthesize_argv(testbed_chunks, single, "--no-progress"))
    run(*synthesize_argv(testbed_chunks, on_ray, "--no-progress", "--executor", "ray", "--workers", "2"))
    assert "executor ray: 2 workers over 8 shards" in capsys.readouterr().out
    assert on_ray.read_bytes() == single.read_bytes()
    failures = "oracle.failures.parquet"
    assert on_ray.with_name(failures).read_bytes() == single.with_name(failures).read_bytes()
    # the 8 shard outputs were written as Parquet and merged; each shard wrote its own cache file
    assert len(list(on_ray.parent.glob("oracle.shard-*-of-8.parquet"))) == 8
    assert len(list(on_ray.with_name("oracle.cache").glob("shard-*-of-8.jsonl"))) == 8
    total = len(read_chunks(testbed_chunks))
    summary = json.loads(on_ray.with_name("oracle.summary.json").read_text())
    assert summary["run"]["requests"] == total and summary["executor"]["shards"] == 8

    run(*synthesize_argv(testbed_chunks, on_ray, "--no-progress", "--executor", "ray", "--workers", "2"))
    again = json.loads(on_ray.with_name("oracle.summary.json").read_text())
    assert again["run"]["requests"] == 0 and again["run"]["cached"] == total
    assert on_ray.read_bytes() == single.read_bytes()


@pytest.mark.slow  # about 50 s: the actors import torch
def test_estep_on_ray_writes_the_single_process_output_and_a_rerun_samples_nothing(
    tiny_model_dir: Path,
    chunks_file: Path,  # noqa: F811
    ray_address: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    single, on_ray = tmp_path / "single" / "samples.parquet", tmp_path / "ray" / "samples.parquet"
    common = ["estep", str(tiny_model_dir), "--chunks", str(chunks_file), *ESTEP_FLAGS]
    run(*common, "--out", str(single), "--no-progress")
    ray_run = [*common, "--out", str(on_ray), "--no-progress", "--executor", "ray", "--workers", "2"]
    run(*ray_run)
    chunks = len(read_chunks(chunks_file))
    # two documents: two shards of whole documents, one per actor
    assert f"{chunks} chunks x K=3: {chunks} sampled now, 0 from the cache" in capsys.readouterr().out
    assert pq.read_table(on_ray).equals(pq.read_table(single))
    assert pq.read_schema(on_ray).metadata == pq.read_schema(single).metadata
    run(*ray_run)
    assert f"0 sampled now, {chunks} from the cache" in capsys.readouterr().out
    assert pq.read_table(on_ray).equals(pq.read_table(single))


@pytest.mark.slow
def test_estep_on_ray_with_actors_as_clients_of_a_served_model(
    tiny_model_dir: Path,
    chunks_file: Path,  # noqa: F811
    ray_address: str,
    tmp_path: Path,
) -> None:
    """Each actor holds an HTTP client of one ``latent-thoughts serve`` endpoint (a real subprocess,
    standing in for vLLM); the pipeline's output equals a single process's against the same server."""
    single, on_ray = tmp_path / "single" / "samples.parquet", tmp_path / "ray" / "samples.parquet"
    common = [
        "estep",
        str(tiny_model_dir),
        "--chunks",
        str(chunks_file),
        *ESTEP_SAMPLING,  # the server decides device and dtype
        "--no-progress",
    ]
    with serve_subprocess(tiny_model_dir, tmp_path) as base_url:
        run(*common, "--base-url", base_url, "--out", str(single))
        run(*common, "--base-url", base_url, "--out", str(on_ray), "--executor", "ray", "--workers", "2")
    assert pq.read_table(on_ray).equals(pq.read_table(single))


def test_a_driver_killed_with_sigkill_is_rerun_without_asking_again(
    testbed_chunks: Path,  # noqa: F811
    ray_address: str,
    tmp_path: Path,
) -> None:
    """The killed driver joined the instance as a cluster driver does (``--ray-address``); Ray ends its
    actors with it. The rerun sends exactly the requests the killed run had not finished."""
    out, cache = tmp_path / "killed.parquet", tmp_path / "killed.cache"
    slow = ["--set", "batch_size=1", "delay_s=0.05"]
    argv = synthesize_argv(
        testbed_chunks, out, "--no-progress", "--executor", "ray", "--ray-address", ray_address
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "latent_thoughts", *argv, *slow],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(cache_lines(cache)) < 25 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    wait_for_writers_to_end(cache)
    assert not out.exists()
    finished = {line["key"] for line in cache_lines(cache) if line["status"] == "ok"}
    total = len(read_chunks(testbed_chunks))
    assert 25 <= len(finished) < total

    run(*argv)
    summary = json.loads(out.with_name("killed.summary.json").read_text())
    assert summary["run"]["cached"] == len(finished)
    assert summary["run"]["requests"] == total - len(finished)
    assert len({line["key"] for line in cache_lines(cache)}) == len(cache_lines(cache)) == total  # none twice
    single = tmp_path / "single" / "killed.parquet"
    run(*synthesize_argv(testbed_chunks, single, "--no-progress"))
    assert out.read_bytes() == single.read_bytes()


def wait_for_writers_to_end(cache: Path, timeout_s: float = 60.0) -> None:
    """Wait until no process holds a shard's writer lock (the killed driver's actors are gone)."""
    deadline = time.monotonic() + timeout_s
    for lock in cache.glob("*.lock"):
        with open(lock, "rb") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    assert time.monotonic() < deadline, f"{lock} is still held"
                    time.sleep(0.1)
                    continue
                fcntl.flock(handle, fcntl.LOCK_UN)
                break


@pytest.mark.slow  # about 20 s: actors importing torch only to fail
def test_an_engine_that_cannot_start_in_the_actors_is_a_one_line_error_naming_it(
    testbed_chunks: Path,  # noqa: F811
    ray_address: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(f"kind: transformers\ntransformers:\n  model: {tmp_path / 'no-model'}\n")
    argv = ["synthesize", "--chunks", str(testbed_chunks), "--teacher", str(teacher), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "x.parquet"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert (
        "latent-thoughts: error: shard 0 of 8:" in err
        and f"{tmp_path / 'no-model'}: not a model folder" in err
    )
    assert len(err.strip().splitlines()) == 1


def test_shards_default_to_four_per_worker_and_at_most_one_per_document(
    testbed_chunks: Path,  # noqa: F811
) -> None:
    chunks = read_chunks(testbed_chunks)
    assert shard_count(chunks, RayOptions(workers=2)) == 8
    assert shard_count(chunks, RayOptions(workers=2, shards=1000)) == len({c.doc_id for c in chunks})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--executor", "ray", "--workers", "2", "--ray-cpus", "2"], "--ray-cpus 2: need more logical CPUs"),
        (["--executor", "ray", "--workers", "0"], "argument --workers: must be a positive integer, got 0"),
        (["--executor", "ray", "--shard", "0/2"], "--shard and --executor ray do not mix"),
        (["--executor", "ray", "--batch-api"], "--batch-api and --executor ray do not mix"),
        (["--executor", "slurm"], "--executor slurm needs --shards N"),
    ],
)
def test_impossible_executor_options_are_one_line_errors(
    testbed_chunks: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(synthesize_argv(testbed_chunks, tmp_path / "x.parquet", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
