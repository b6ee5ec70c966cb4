"""The EM loop (``latent-thoughts em``) at a tiny size: resumable stage by stage, lineage recorded."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.em.config import load_em_config
from latent_thoughts.em.loop import run_em, stage_names
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.train.config import SourceConfig
from latent_thoughts.train.data import read_source

TINY = {
    "iterations": 2,
    "seed": 3,
    "testbed": {
        "world": {"warm_start_documents": 2, "bootstrap_documents": 6, "eval_problems": 4},
        "vocab_size": 300,
        "width": 32,
        "layers": 2,
        "heads": 2,
        "seq_len": 128,
        "tokens": "2k",
        "batch": 4,
    },
    # two chunks per cache write, so that a kill lands between writes of the second E-step
    "estep": {"k": 2, "max_thought_tokens": 16, "batch_chunks": 2},
    "evaluation": {"max_thought_tokens": 16},
    "device": "cpu",
    "dtype": "fp32",
    "progress": False,
}
FIRST_ITERATION = ["data", "warm_start", "eval_0", "estep_1", "mstep_1", "eval_1"]


def em_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "latent_thoughts", "em", "--config", str(config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def read_manifest(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "manifest.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {"stages": {}}


@dataclass
class KilledRun:
    run: Path
    config: Path
    before: dict[str, Any]
    cached_before_kill: int
    weights_mtime: float
    rerun_log: str


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    """`em` started in a subprocess, SIGKILLed once the second E-step has written some samples, then
    run again to the end."""
    folder = tmp_path_factory.mktemp("em")
    run = folder / "run"
    config = folder / "em.yaml"
    config.write_text(yaml.safe_dump({**TINY, "out": str(run)}))
    log = folder / "first.log"
    process = em_process(config, log)
    cache = run / "iter_2" / "samples.cache" / "all.jsonl"
    deadline = time.monotonic() + 600
    try:
        while not (cache.exists() and cache.read_bytes().count(b"\n") >= 1):
            assert process.poll() is None, f"em ended before the second E-step: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the second E-step did not start in time"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    before = read_manifest(run)
    assert before["stages"]["estep_2"]["status"] == "running"
    cached = cache.read_bytes().count(b"\n")
    weights_mtime = (run / "iter_1" / "train" / "model" / "model.safetensors").stat().st_mtime
    rerun_log = folder / "rerun.log"
    rerun = em_process(config, rerun_log)
    assert rerun.wait(timeout=600) == 0, rerun_log.read_text()[-3000:]
    return KilledRun(run, config, before, cached, weights_mtime, rerun_log.read_text())


def test_a_run_killed_in_the_second_e_step_resumes_there_and_redoes_nothing_of_the_first_iteration(
    killed_run: KilledRun,
) -> None:
    after = read_manifest(killed_run.run)
    for name in FIRST_ITERATION:
        assert after["stages"][name] == killed_run.before["stages"][name]  # same record: same finish time
        assert f"== {name}: done, skipped" in killed_run.rerun_log
    assert "== estep_2: resuming" in killed_run.rerun_log
    weights = killed_run.run / "iter_1" / "train" / "model" / "model.safetensors"
    assert weights.stat().st_mtime == killed_run.weights_mtime
    estep = after["stages"]["estep_2"]["metrics"]
    assert estep["from_cache"] >= 2 * killed_run.cached_before_kill - 2  # two chunks per cache line write
    assert estep["from_cache"] + estep["sampled_now"] == estep["chunks"]
    assert all(after["stages"][name]["status"] == "done" for name in stage_names(2))


def test_the_manifest_records_what_produced_every_artifact(killed_run: KilledRun) -> None:
    stages = read_manifest(killed_run.run)["stages"]
    for name, record in stages.items():
        assert record["code_version"] and record["fingerprint"] and record["outputs"], name
        assert "config" in record and "seed" in record and "inputs" in record
    assert stages["estep_2"]["inputs"]["model"] == str(killed_run.run / "iter_1" / "train" / "model")
    assert stages["estep_2"]["seed"] == 2  # estep.seed + t
    assert stages["mstep_2"]["inputs"]["data"][0]["thoughts"] == str(
        killed_run.run / "iter_2" / "samples.parquet"
    )
    assert stages["mstep_1"]["inputs"]["model"] == "base (scratch)"
    summary = json.loads((killed_run.run / "summary.json").read_text())
    rows = summary["iterations"]
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    assert rows[0]["train_tokens"] == rows[1]["train_tokens"] == rows[2]["train_tokens"] == 2048  # matched
    for row in rows[1:]:
        # the summary's ESS and bound are the means, over chunks, of those the samples' weights give
        weights = pq.read_table(killed_run.run / f"iter_{row['iteration']}" / "samples.parquet").column(
            "log_w"
        )
        ess, bounds = [], []
        for log_w in weights.to_pylist():
            w = [math.exp(value - max(log_w)) for value in log_w]
            ess.append(sum(w) ** 2 / sum(v * v for v in w))
            bounds.append(max(log_w) + math.log(sum(w) / len(w)))
        assert row["mean_ess"] == pytest.approx(sum(ess) / len(ess), rel=1e-9)
        assert row["mean_bound"] == pytest.approx(sum(bounds) / len(bounds), rel=1e-9)
        assert row["accuracy"] is not None
    # the M-step read the samples through the trainer's thoughts source: selected thoughts interleaved
    samples = killed_run.run / "iter_2" / "samples.parquet"
    selected = {(r["doc_id"], r["chunk_index"]): r["thought"] for r in pq.read_table(samples).to_pylist()}
    source = SourceConfig(
        kind="thoughts", chunks=str(killed_run.run / "data/bootstrap/chunks.parquet"), thoughts=str(samples)
    )
    for document in read_source(source):
        assert document.thoughts == [
            selected[(document.doc_id, i)] or None for i in range(len(document.chunks))
        ]


def test_changing_the_config_of_a_finished_stage_is_an_error_naming_it(killed_run: KilledRun) -> None:
    overrides = [f"out={killed_run.run}"]
    with pytest.raises(
        LatentThoughtsError, match=r"stage estep_1 finished with another configuration.*--force-from estep_1"
    ):
        run_em(load_em_config(killed_run.config, [*overrides, "estep.k=3"]), say=lambda line: None)
    with pytest.raises(LatentThoughtsError, match="stage warm_start finished"):
        run_em(load_em_config(killed_run.config, [*overrides, "testbed.lr=0.002"]), say=lambda line: None)
    with pytest.raises(LatentThoughtsError, match="--force-from 'estep_9': not a stage"):
        run_em(load_em_config(killed_run.config, overrides), force_from="estep_9", say=lambda line: None)


def test_force_from_redoes_that_stage_and_the_later_ones_only(killed_run: KilledRun) -> None:
    before = read_manifest(killed_run.run)["stages"]
    lines: list[str] = []
    run_em(
        load_em_config(killed_run.config, [f"out={killed_run.run}"]), force_from="eval_2", say=lines.append
    )
    after = read_manifest(killed_run.run)["stages"]
    assert after["eval_2"]["finished"] > before["eval_2"]["finished"]
    for name in stage_names(2)[:-1]:
        assert after[name] == before[name]
    assert lines[-1] == "== eval_2: starting over"


def test_the_shipped_small_config_spells_out_the_built_in_defaults() -> None:
    shipped = Path(__file__).resolve().parents[1] / "configs" / "em" / "testbed-small.yaml"
    assert load_em_config(shipped).model_dump() == load_em_config(None).model_dump()


def test_a_finished_stage_whose_output_was_deleted_or_emptied_is_redone_with_the_later_ones(
    tmp_path: Path,
) -> None:
    """``em`` once reported success over a deleted model or an emptied ``eval.json``: the manifest
    said done, so the stage was skipped. Now a done stage's recorded outputs must still be there."""
    path = tmp_path / "em.yaml"
    path.write_text(yaml.safe_dump({**TINY, "iterations": 1, "out": str(tmp_path / "run")}))
    config = load_em_config(path, [])
    run_em(config, say=lambda line: None)
    names = stage_names(1)
    first = read_manifest(tmp_path / "run")["stages"]

    # eval.json of the last evaluation emptied: that stage alone is redone.
    evaluation = Path(first["eval_1"]["outputs"]["evaluation"])
    evaluation.write_text("")
    lines: list[str] = []
    run_em(config, say=lines.append)
    assert (
        f"== eval_1: its output {evaluation} is missing or empty; redoing it and every later stage" in lines
    )
    assert [line for line in lines if "skipped" in line] == [
        f"== {name}: done, skipped" for name in names[:-1]
    ]
    assert json.loads(evaluation.read_text())

    # the M-step's model deleted: the M-step and the evaluation after it are redone, nothing before.
    model = Path(first["mstep_1"]["outputs"]["model"])
    for file in model.iterdir():
        file.unlink()
    lines.clear()
    run_em(config, say=lines.append)
    after = read_manifest(tmp_path / "run")["stages"]
    assert "== mstep_1: starting over" in lines and "== eval_1: starting over" in lines
    for name in names[: names.index("mstep_1")]:
        assert after[name] == first[name]
    assert (model / "model.safetensors").stat().st_size > 0


def test_the_testbed_wrap_baseline_rephrases_with_the_worlds_oracle_and_trains_without_thoughts(
    tmp_path: Path,
) -> None:
    values = {**TINY, "iterations": 1, "out": str(tmp_path / "run"), "baselines": ["wrap"]}
    path = tmp_path / "em.yaml"
    path.write_text(yaml.safe_dump(values))
    summary = run_em(load_em_config(path), say=lambda line: None)
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert list(stages)[-3:] == ["rephrase_wrap", "baseline_wrap", "eval_wrap"]
    rephrased = pq.read_table(tmp_path / "run" / "baselines" / "wrap" / "rephrased.parquet")
    assert rephrased.num_rows == TINY["testbed"]["world"]["bootstrap_documents"]  # type: ignore[index]
    sources = [source["name"].split(":")[0] for source in stages["baseline_wrap"]["metrics"]["sources"]]
    assert sources == ["rephrased"]  # the rephrased text only (METHOD section 2)
    evaluation = json.loads((tmp_path / "run" / "baselines" / "wrap" / "eval.json").read_text())
    assert evaluation["mode"] == "raw"
    assert summary["baselines"]["wrap"]["accuracy"] == evaluation["accuracy"]
