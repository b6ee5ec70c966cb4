"""``--executor slurm``: the submitit launcher of ``--shard i/N`` jobs and the merge.

submitit's ``local`` backend stands in for Slurm: every job is a real subprocess that unpickles the
job and runs the command line, exactly as on a Slurm node. The merged output must equal the
single-process output, and a second launch asks the teacher for nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import read_chunks
from latent_thoughts.generation.slurm import merge_command, shard_commands
from tests.test_synthesis import ORACLE_TEACHER, testbed_chunks  # noqa: F401  (a fixture)

pytest.importorskip("submitit")


def test_shard_jobs_run_the_command_with_shard_i_of_n_and_the_merge_names_every_shard(tmp_path: Path) -> None:
    commands = shard_commands(["synthesize", "--out", "o.parquet"], 3)
    assert commands == [["synthesize", "--out", "o.parquet", "--shard", f"{i}/3"] for i in range(3)]
    assert shard_commands(["estep"], 1) == [["estep"]]  # one shard is the whole run: nothing to merge
    assert merge_command(tmp_path / "o.parquet", 2) == [
        "merge",
        "--out",
        str(tmp_path / "o.parquet"),
        str(tmp_path / "o.shard-0-of-2.parquet"),
        str(tmp_path / "o.shard-1-of-2.parquet"),
    ]


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
