"""``--executor slurm``: the submitit launcher of shard jobs and the merge.

submitit's ``local`` backend stands in for Slurm: every job is a real subprocess that unpickles the
job and runs one shard of the stage from its spec file (``latent_thoughts.generation.run_shard``),
exactly as on a Slurm node. The merged output must equal the single-process output, and a second
launch asks the teacher for nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import read_chunks
from latent_thoughts.generation.slurm import merge_command, shard_commands
from tests.test_synthesis import ORACLE_TEACHER, testbed_chunks  # noqa: F401  (a fixture)

pytest.importorskip("submitit")


def test_shard_jobs_run_the_stage_spec_with_shard_i_of_n_and_the_merge_joins_n(tmp_path: Path) -> None:
    spec = tmp_path / "stage.json"
    commands = shard_commands(spec, 3)
    assert commands == [[str(spec), "--shard", f"{i}/3"] for i in range(3)]
    assert shard_commands(spec, 1) == [[str(spec)]]  # one shard is the whole run: nothing to merge
    assert merge_command(spec, 2) == [str(spec), "--merge", "2"]


def test_each_job_runs_the_stage_the_command_line_built_without_its_executor_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a shard job runs is the stage the user's command built, its request serialised with absolute
    paths (a job may start in another folder); the executor options are not part of it, and the spec
    reads back as the same request."""
    from latent_thoughts.generation import slurm
    from latent_thoughts.generation.stage import stage_from_spec, stage_spec

    launched: list[Any] = []

    def fake_launch(stage: Any, options: slurm.SlurmOptions) -> slurm.Launched:
        launched.append(stage)
        return slurm.Launched([], None)

    monkeypatch.setattr(slurm, "launch", fake_launch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "t.yaml").write_text("kind: transformers\ntransformers: {model: m}\n")
    slurm_flags = ["--executor", "slurm", "--shards", "4", "--slurm-partition", "gpu"]
    files = ["--chunks", "c.parquet", "--out", "o.parquet"]
    assert main(["estep", "m", *files, "--k", "8", *slurm_flags]) == 0
    assert main(["synthesize", *files, "--teacher", "t.yaml", "--mode", "rephrase", "--style", "cot",
                 "--set", "batch_size=4", *slurm_flags]) == 0  # fmt: skip
    estep, synthesize = launched
    spec = json.loads(json.dumps(stage_spec(estep)))
    assert "executor" not in json.dumps(spec) and "partition" not in json.dumps(spec)
    again = stage_from_spec(spec).request
    assert again.model == (tmp_path / "m").resolve() and again.out == (tmp_path / "o.parquet").resolve()
    assert again.config.k == 8 and again.config == estep.request.config
    again = stage_from_spec(json.loads(json.dumps(stage_spec(synthesize)))).request
    assert (again.mode, again.style, again.overrides) == ("rephrase", "cot", ["batch_size=4"])
    assert again.teacher == (tmp_path / "t.yaml").resolve()


@pytest.mark.slow  # about 20 s: three job processes each importing the package
def test_a_local_array_of_shards_and_the_merge_write_the_single_process_output(
    testbed_chunks: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    single, launched = tmp_path / "single" / "oracle.parquet", tmp_path / "slurm" / "oracle.parquet"
    base = ["synthesize", "--chunks", str(testbed_chunks), "--teacher", str(ORACLE_TEACHER), "--no-progress"]
    assert main([*base, "--out", str(single)]) == 0
    slurm = ["--executor", "slurm", "--shards", "2", "--slurm-cluster", "local"]
    assert main([*base, "--out", str(launched), *slurm]) == 0
    assert "ran 2 shard job(s) and the merge with submitit (local)" in capsys.readouterr().out
    assert launched.read_bytes() == single.read_bytes()
    assert len(list(launched.with_name("oracle.slurm").glob("*_log.out"))) == 3  # two shards, one merge
    total = len(read_chunks(testbed_chunks))
    shards = [
        json.loads(launched.with_name(f"oracle.shard-{i}-of-2.summary.json").read_text()) for i in (0, 1)
    ]
    assert sum(s["run"]["requests"] for s in shards) == total

    assert main([*base, "--out", str(launched), *slurm]) == 0  # launched again: all from the cache
    shards = [
        json.loads(launched.with_name(f"oracle.shard-{i}-of-2.summary.json").read_text()) for i in (0, 1)
    ]
    assert sum(s["run"]["requests"] for s in shards) == 0
    assert launched.read_bytes() == single.read_bytes()
