"""Kill and resume with a real SIGKILL: ``chunk``, ``train``, ``estep`` and ``em`` are killed at
several points (soon after the start, before any output; mid-stage, once some work is saved; between
EM stages; in the middle of writing an output), the same command is run again, and the final outputs
equal an uninterrupted run's (same seed). Nothing finished is redone: a resumed training run starts
from its last checkpoint, a resumed E-step samples only the chunks its cache lacks, a resumed EM run
skips its finished stages (their manifest records are untouched). A kill mid-write leaves only a
hidden ``.NAME.*.partial`` file, which the rerun of the same output removes.

(``synthesize`` is killed and resumed in ``tests/test_synthesis.py``, the EM loop inside its second
E-step in ``tests/test_em_loop.py``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from latent_thoughts.cli import main as cli_main
from latent_thoughts.corpus import chunk_document, write_chunks
from latent_thoughts.testbed.world import TestbedConfig, generate_documents, testbed_chunk_config
from tests.test_atomic import writer_mid_write
from tests.test_train import testbed_data, tiny_config  # noqa: F401  (testbed_data is a fixture)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CLI = [sys.executable, "-m", "latent_thoughts"]


def kill_when(command: list[str], ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Start ``command``, SIGKILL it as soon as ``ready()`` holds; fails if it finished first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout_s
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run in-process work on one torch thread, as the killed subprocesses run (``OMP_NUM_THREADS=1``):
    sums over other thread counts round differently, and outputs are compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def after(seconds: float) -> Callable[[], bool]:
    start = time.monotonic()
    return lambda: time.monotonic() - start > seconds


# --- chunk ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 200 documents of the shared textbook corpus."""
    lines = (SHARED / "corpus" / "math_textbooks.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("point", ["before any output (after 1 s)", "once the output exists"])
def test_chunk_killed_then_rerun_writes_what_an_uninterrupted_run_writes(
    point: str, corpus: Path, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh.parquet"
    assert cli_main(["chunk", str(corpus), "--out", str(fresh)]) == 0
    out = tmp_path / "killed" / "chunks.parquet"
    command = [*CLI, "chunk", str(corpus), "--out", str(out)]
    kill_when(command, after(1.0) if point.startswith("before") else out.exists)
    if point.startswith("before"):
        assert not out.exists()
    else:  # the output is renamed into place whole, so what exists is complete
        assert pq.read_table(out).equals(pq.read_table(fresh))
    subprocess.run(command, check=True, capture_output=True)
    assert pq.read_table(out).equals(pq.read_table(fresh))
    assert sorted(p.name for p in out.parent.iterdir()) == ["chunks.parquet"]  # no partial left


# --- train ----------------------------------------------------------------------------------------------


def train_command(data: Path, output: Path, config_path: Path) -> list[str]:
    config = tiny_config(data, output)
    config_path.write_text(json.dumps(config.model_dump(mode="json")))
    return [*CLI, "train", "--config", str(config_path)]


@pytest.fixture(scope="module")
def uninterrupted(testbed_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("train-fresh")
    command = train_command(testbed_data, folder / "run", folder / "train.json")
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return folder / "run" / "model" / "model.safetensors"


@pytest.mark.parametrize("point", ["after 2 s", "once checkpoint-12 exists"])
def test_train_killed_then_resumed_ends_with_the_uninterrupted_weights(
    point: str,
    testbed_data: Path,  # noqa: F811
    uninterrupted: Path,
    tmp_path: Path,
) -> None:
    output = tmp_path / "run"
    command = train_command(testbed_data, output, tmp_path / "train.json")
    checkpoint = output / "checkpoints" / "checkpoint-12"
    # The checkpoint is renamed into place whole only when trainer_state.json is in it.
    kill_when(
        command, after(2.0) if point.startswith("after") else (checkpoint / "trainer_state.json").exists
    )
    assert not (output / "model" / "model.safetensors").exists()
    resumed = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(uninterrupted), load_file(output / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    if point.startswith("once"):
        # Resumed from step 12: the first 12 steps' log entries (wall-clock throughput included)
        # are the killed run's, carried over from the checkpoint, not measured again.
        saved = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
        final = json.loads((output / "metrics.json").read_text())["log_history"]
        assert saved and [log for log in final if log["step"] <= 12] == saved


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a), load_file(b)
    return first.keys() == second.keys() and all(bool((first[k] == second[k]).all()) for k in first)


def complete_lines(path: Path) -> int:
    """Whole lines of a cache file (a line cut by the kill has no newline and is not trusted)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


# --- estep ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def estep_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two testbed documents, one sentence a chunk: 29 chunks."""
    world = TestbedConfig(bootstrap_documents=2, results_per_document=2)
    chunks = [
        chunk
        for document in generate_documents(world, "bootstrap")
        for chunk in chunk_document(document.doc_id, document.text, testbed_chunk_config(world))
    ]
    path = tmp_path_factory.mktemp("estep-chunks") / "chunks.parquet"
    write_chunks(chunks, path)
    return path


def estep_command(model: Path, chunks: Path, out: Path) -> list[str]:
    """K = 3 thoughts of up to 10 tokens per chunk, two chunks per cache write."""
    return [
        *["estep", str(model), "--chunks", str(chunks), "--out", str(out)],
        *["--k", "3", "--max-thought-tokens", "10", "--seed", "5", "--batch-chunks", "2"],
        *["--device", "cpu", "--dtype", "fp32", "--no-progress"],
    ]


@pytest.fixture(scope="module")
def estep_uninterrupted(
    tiny_model_dir: Path, estep_chunks: Path, tmp_path_factory: pytest.TempPathFactory
) -> pa.Table:
    out = tmp_path_factory.mktemp("estep-fresh") / "samples.parquet"
    with one_thread():
        assert cli_main(estep_command(tiny_model_dir, estep_chunks, out)) == 0
    return pq.read_table(out)


@pytest.mark.parametrize(
    "point",
    [
        "before any output (after 1 s)",
        "mid-stage, once a batch of samples is in the cache",
        "mid-write of the output (a writer of it SIGKILLed while writing)",
    ],
)
def test_estep_killed_then_rerun_writes_what_an_uninterrupted_run_writes_and_samples_only_the_rest(
    point: str, tiny_model_dir: Path, estep_chunks: Path, estep_uninterrupted: pa.Table, tmp_path: Path
) -> None:
    out = tmp_path / "samples.parquet"
    cache = tmp_path / "samples.cache" / "all.jsonl"
    command = estep_command(tiny_model_dir, estep_chunks, out)
    partial = None
    if point.startswith("before"):
        kill_when([*CLI, *command], after(1.0))
    elif point.startswith("mid-stage"):
        kill_when([*CLI, *command], lambda: complete_lines(cache) >= 1)
    else:
        kill_when([*CLI, *command], lambda: complete_lines(cache) >= 1)
        with writer_mid_write(out) as (process, partial):
            os.kill(process.pid, signal.SIGKILL)
    assert not out.exists()
    saved = complete_lines(cache)
    assert saved < estep_uninterrupted.num_rows, "the run finished its sampling before it was killed"
    with one_thread():
        assert cli_main(command) == 0
    assert pq.read_table(out).equals(estep_uninterrupted)
    summary = json.loads((tmp_path / "samples.summary.json").read_text())
    # What the killed run saved is read back, not sampled again; only the rest is sampled.
    assert (summary["from_cache"], summary["sampled_now"]) == (saved, summary["chunks"] - saved)
    assert complete_lines(cache) == summary["chunks"]  # each chunk's samples once
    if partial is not None:
        assert not partial.exists()
    leftovers = {p.name for p in tmp_path.iterdir()} - {"samples.parquet", "samples.summary.json"}
    assert leftovers == {"samples.cache"}


# --- em ---------------------------------------------------------------------------------------------

EM = {
    "iterations": 1,
    "seed": 3,
    "testbed": {
        "world": {"warm_start_documents": 2, "bootstrap_documents": 2, "eval_problems": 2},
        "vocab_size": 300,
        "width": 32,
        "layers": 2,
        "heads": 2,
        "seq_len": 128,
        "tokens": "2k",
        "batch": 4,
    },
    "estep": {"k": 2, "max_thought_tokens": 16, "batch_chunks": 2},
    "evaluation": {"max_thought_tokens": 16},
    "device": "cpu",
    "dtype": "fp32",
    "progress": False,
}
EM_STAGES = ["data", "warm_start", "eval_0", "estep_1", "mstep_1", "eval_1"]


def em_command(folder: Path) -> list[str]:
    config = folder / "em.yaml"
    config.write_text(yaml.safe_dump({**EM, "out": str(folder / "run")}))
    return [*CLI, "em", "--config", str(config)]


def stages(run: Path) -> dict[str, Any]:
    """The stage records of a run's manifest (none while it does not exist or is being replaced)."""
    try:
        return dict(json.loads((run / "manifest.json").read_text())["stages"])
    except (OSError, ValueError, KeyError):
        return {}


@pytest.fixture(scope="module")
def em_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("em-fresh")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(em_command(folder), check=True, capture_output=True, env=env)
    return folder / "run"


def assert_same_em_outputs(run: Path, reference: Path) -> None:
    """The artifacts of two EM runs are equal: models, samples, evaluations and the summary table."""
    for t in (0, 1):
        model = Path(f"iter_{t}/train/model/model.safetensors")
        assert same_weights(run / model, reference / model), model
        evaluation = Path(f"iter_{t}/eval.json")
        assert json.loads((run / evaluation).read_text()) == json.loads((reference / evaluation).read_text())
    # The cache key names the model by its folder, which differs between the two run folders.
    samples, expected = (
        pq.read_table(r / "iter_1" / "samples.parquet").drop(["key"]) for r in (run, reference)
    )
    assert samples.equals(expected)
    rows = [json.loads((r / "summary.json").read_text())["iterations"] for r in (run, reference)]
    assert rows[0] == rows[1]


EM_POINTS = [
    pytest.param("between stages, once warm_start is done", id="between-stages"),
    pytest.param("before any output (after 1 s)", id="before-output", marks=pytest.mark.slow),
    pytest.param(
        "mid E-step, once a batch of samples is in the cache", id="mid-estep", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize("point", EM_POINTS)
def test_em_killed_then_rerun_ends_with_the_uninterrupted_outputs_and_redoes_no_finished_stage(
    point: str, em_uninterrupted: Path, tmp_path: Path
) -> None:
    command, run = em_command(tmp_path), tmp_path / "run"
    cache = run / "iter_1" / "samples.cache" / "all.jsonl"
    if point.startswith("between"):
        kill_when(command, lambda: stages(run).get("warm_start", {}).get("status") == "done", 600)
    elif point.startswith("before"):
        kill_when(command, after(1.0))
    else:
        kill_when(command, lambda: complete_lines(cache) >= 1, 600)
    before = stages(run)
    finished = [name for name in EM_STAGES if before.get(name, {}).get("status") == "done"]
    assert finished != EM_STAGES, "the run finished before it was killed"
    saved = complete_lines(cache)
    rerun = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after_rerun = stages(run)
    for name in finished:  # skipped: the same record, the same finish time
        assert f"== {name}: done, skipped" in rerun.stdout
        assert after_rerun[name] == before[name]
    assert all(after_rerun[name]["status"] == "done" for name in EM_STAGES)
    if point.startswith("between"):
        assert finished[:2] == ["data", "warm_start"]
    if point.startswith("mid"):
        assert "== estep_1: resuming" in rerun.stdout
        assert saved >= 1 and after_rerun["estep_1"]["metrics"]["from_cache"] == saved
    assert_same_em_outputs(run, em_uninterrupted)
