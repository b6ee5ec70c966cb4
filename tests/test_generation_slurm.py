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


def test_each_job_runs_the_command_line_without_its_executor_options(tmp_path: Path) -> None:
    """What a shard job runs is the user's command with absolute paths, its stage options kept and
    the executor options dropped; it parses back to the same stage options."""
    from latent_thoughts.cli import build_parser
    from latent_thoughts.cli.estep import shard_argv as estep_argv
    from latent_thoughts.cli.synthesize import shard_argv as synthesize_argv

    parser = build_parser()
    slurm = ["--executor", "slurm", "--shards", "4", "--slurm-partition", "gpu"]
    estep = parser.parse_args(
        ["estep", "--model", "m", "--chunks", "c.parquet", "--out", "o.parquet", "--k", "8", *slurm]
    )
    argv = estep_argv(estep)
    assert "--executor" not in argv and "--slurm-partition" not in argv
    again = parser.parse_args(argv)
    assert again.model == Path("m").resolve() and again.out == Path("o.parquet").resolve()
    assert again.set == ["k=8"] and again.executor == "local"

    files = ["--chunks", "c.parquet", "--teacher", "t.yaml", "--out", "o.parquet"]
    options = ["--mode", "rephrase", "--style", "cot", "--set", "batch_size=4"]
    synthesize = parser.parse_args(["synthesize", *files, *options, *slurm])
    again = parser.parse_args(synthesize_argv(synthesize))
    assert (again.mode, again.style, again.set, again.executor) == (
        "rephrase",
        "cot",
        ["batch_size=4"],
        "local",
    )
    assert again.teacher == Path("t.yaml").resolve()


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
