"""Any generation stage as a Slurm job array through submitit (``--executor slurm``): N shard jobs, then the merge.

The launcher writes the stage's serialised request (:func:`~latent_thoughts.generation.stage.stage_spec`)
to ``FOLDER/stage-HASH.json`` and submits N jobs that each run one shard of it, as
``python -m latent_thoughts.generation.run_shard SPEC.json --shard i/N`` does (submitit pickles that
module's :func:`~latent_thoughts.generation.run_shard.run` with its arguments); the merge
(``SPEC.json --merge N``) is submitted at once with the dependency ``afterok`` on the whole array,
so the launcher returns while the jobs wait in the queue. The shards share the content-addressed
cache, so a failed or preempted task is simply resubmitted (or the whole launch repeated): nothing
finished is asked again. The launcher knows no stage by name: a job runs whatever stage the spec
names.

``cluster`` ``local`` (a subprocess per job) and ``debug`` (in this process) are submitit's own
stand-ins for Slurm, used to try a launch on one machine; they know no job dependencies, so there
the launcher waits for the shards before it runs the merge.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from latent_thoughts.atomic import write_text
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.stage import GenerationStage, guard, stage_spec

Cluster = Literal["slurm", "local", "debug"]


@dataclass(frozen=True)
class SlurmOptions:
    """The array: ``shards`` tasks, logs and pickles under ``folder``, and what each task asks Slurm for."""

    shards: int
    folder: Path
    cluster: Cluster = "slurm"
    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 2
    gpus_per_task: int = 0
    mem_gb: float | None = None
    parallelism: int | None = None

    def check(self) -> None:
        """One-line errors for impossible settings, naming the option."""
        if self.shards < 1:
            raise LatentThoughtsError(f"--shards {self.shards}: need at least 1")
        if self.time_min < 1:
            raise LatentThoughtsError(f"--slurm-time {self.time_min}: need at least 1 minute")
        if self.cpus_per_task < 1 or self.gpus_per_task < 0:
            raise LatentThoughtsError("--slurm-cpus must be at least 1 and --slurm-gpus at least 0")


@dataclass
class Launched:
    """The submitted jobs (submitit ``Job`` objects): one per shard, then the merge (None for 1 shard)."""

    shard_jobs: list[Any]
    merge_job: Any | None

    @property
    def job_ids(self) -> list[str]:
        """Every job id, the merge's last."""
        jobs = [*self.shard_jobs, *([self.merge_job] if self.merge_job is not None else [])]
        return [str(job.job_id) for job in jobs]


def write_spec(stage: GenerationStage, folder: Path) -> Path:
    """Write ``stage``'s spec into ``folder`` as ``stage-HASH.json`` (the same launch, the same file)."""
    text = json.dumps(stage_spec(stage), indent=2, sort_keys=True) + "\n"
    path = Path(folder) / f"stage-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    write_text(path, text)
    return path


def shard_commands(spec: Path, shards: int) -> list[list[str]]:
    """The arguments of each array task's ``run_shard``: ``SPEC --shard i/N`` (the whole run for one shard)."""
    if shards == 1:
        return [[str(spec)]]
    return [[str(spec), "--shard", f"{index}/{shards}"] for index in range(shards)]


def merge_command(spec: Path, shards: int) -> list[str]:
    """The merge job's ``run_shard`` arguments: join the N shard outputs of the spec's stage."""
    return [str(spec), "--merge", str(shards)]


def launch(stage: GenerationStage, options: SlurmOptions) -> Launched:
    """Submit the shards of ``stage`` (a whole-file stage) as an array, then the merge; returns the jobs.

    On Slurm the merge waits in the queue (``afterok`` on the array) and this returns at once; with
    ``local`` or ``debug`` this waits for the shards, runs the merge and returns when it is done.
    """
    import submitit

    from latent_thoughts.generation.run_shard import run

    options.check()
    if stage.shard is not None:
        raise LatentThoughtsError("--shard and --executor slurm do not mix: the array makes its own shards")
    stage.check("slurm")
    guard(stage)
    spec = write_spec(stage, options.folder)
    executor = submitit.AutoExecutor(folder=options.folder, cluster=options.cluster)
    parameters: dict[str, Any] = {
        "name": f"latent-thoughts-{stage.name}",
        "timeout_min": options.time_min,
        "cpus_per_task": options.cpus_per_task,
    }
    if options.gpus_per_task:
        parameters["gpus_per_node"] = options.gpus_per_task
    if options.mem_gb is not None:
        parameters["mem_gb"] = options.mem_gb
    if options.partition is not None:
        parameters["slurm_partition"] = options.partition
    if options.parallelism is not None:
        parameters["slurm_array_parallelism"] = options.parallelism
    executor.update_parameters(**parameters)
    shard_jobs = executor.map_array(run, shard_commands(spec, options.shards))
    if options.shards == 1:
        if options.cluster != "slurm":
            wait_for(shard_jobs[0])
        return Launched(shard_jobs, None)
    if options.cluster == "slurm":
        array_id = str(shard_jobs[0].job_id).split("_")[0]
        executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{array_id}"})
        return Launched(shard_jobs, executor.submit(run, merge_command(spec, options.shards)))
    for job in shard_jobs:
        wait_for(job)
    merge = executor.submit(run, merge_command(spec, options.shards))
    wait_for(merge)
    return Launched(shard_jobs, merge)


def wait_for(job: Any) -> None:
    """Wait for a local job; its failure is a one-line error naming the job and its log folder."""
    try:
        job.result()
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        last = next((line for line in reversed(lines) if line.strip()), type(exc).__name__)
        raise LatentThoughtsError(
            f"job {job.job_id} failed: {last.strip()} (logs: {job.paths.folder})"
        ) from None


__all__ = ["Launched", "SlurmOptions", "launch", "merge_command", "shard_commands", "wait_for", "write_spec"]
