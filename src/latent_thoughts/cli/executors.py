"""The ``--executor`` options that ``synthesize`` and ``estep`` share: one process, Ray, or a Slurm array.

Not a verb (no ``register``): the two verbs add these options and hand their stage to :func:`execute`,
which runs any generation stage (:class:`~latent_thoughts.generation.stage.GenerationStage`) with the
executor the command line names.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_thoughts.cli.numbers import non_negative_float, non_negative_int, positive_int

if TYPE_CHECKING:
    from latent_thoughts.generation.stage import GenerationStage


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--executor`` with its Ray and Slurm options to a verb's parser."""
    group = parser.add_argument_group("executor (scale-out)")
    group.add_argument(
        "--executor",
        choices=("local", "ray", "slurm"),
        default="local",
        help="local: this process (default); ray: a Ray Data pipeline over an actor pool (one engine per actor); "
        "slurm: a submitit job array of --shard i/N jobs, then the merge",
    )
    group.add_argument(
        "--workers", type=positive_int, default=2, help="ray: actors, each holding one engine (default 2)"
    )
    group.add_argument(
        "--shards",
        type=positive_int,
        help="ray: shards of whole documents the actors share (default 4 per worker); slurm: array tasks (required)",
    )
    group.add_argument(
        "--ray-address",
        help="ray: join this cluster (auto, ray://HOST:10001) instead of starting a local instance",
    )
    group.add_argument(
        "--ray-cpus",
        type=positive_int,
        help="ray: logical CPUs of the local instance, more than --workers (default workers + 2)",
    )
    group.add_argument(
        "--gpus-per-worker", type=non_negative_float, default=0.0, help="ray: GPUs each actor reserves"
    )
    group.add_argument("--slurm-folder", type=Path, help="slurm: logs and job files (default OUT.slurm/)")
    group.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        default="slurm",
        help="slurm: submitit's backend; local and debug run the jobs on this machine (to try a launch)",
    )
    group.add_argument("--slurm-partition", help="slurm: partition")
    group.add_argument(
        "--slurm-time", type=positive_int, default=240, help="slurm: minutes per task (default 240)"
    )
    group.add_argument("--slurm-cpus", type=positive_int, default=2, help="slurm: CPUs per task (default 2)")
    group.add_argument(
        "--slurm-gpus", type=non_negative_int, default=0, help="slurm: GPUs per task (default 0)"
    )
    group.add_argument(
        "--slurm-parallelism", type=positive_int, help="slurm: most array tasks running at once"
    )


def check_executor(args: argparse.Namespace) -> None:
    """One-line errors for executor options that cannot go together."""
    from latent_thoughts.errors import LatentThoughtsError

    if args.executor != "local" and args.shard:
        raise LatentThoughtsError(
            f"--shard and --executor {args.executor} do not mix: the executor makes the shards"
        )
    if args.executor == "slurm" and args.shards is None:
        raise LatentThoughtsError("--executor slurm needs --shards N (the array's size)")


def ray_options(args: argparse.Namespace, progress: bool) -> Any:
    """The :class:`~latent_thoughts.generation.ray_pipeline.RayOptions` of the command line."""
    from latent_thoughts.generation.ray_pipeline import RayOptions

    return RayOptions(
        workers=args.workers,
        shards=args.shards,
        address=args.ray_address,
        cpus=args.ray_cpus,
        gpus_per_worker=args.gpus_per_worker,
        progress=progress,
    )


def slurm_options(args: argparse.Namespace) -> Any:
    """The :class:`~latent_thoughts.generation.slurm.SlurmOptions` of the command line."""
    from latent_thoughts.generation.slurm import SlurmOptions

    return SlurmOptions(
        shards=args.shards,
        folder=args.slurm_folder or Path(args.out).with_suffix(".slurm"),
        cluster=args.slurm_cluster,
        partition=args.slurm_partition,
        time_min=args.slurm_time,
        cpus_per_task=args.slurm_cpus,
        gpus_per_task=args.slurm_gpus,
        parallelism=args.slurm_parallelism,
    )


def execute(args: argparse.Namespace, stage: GenerationStage, progress: bool) -> dict[str, Any] | None:
    """Run ``stage`` (a whole-file stage, or one ``--shard``) with ``--executor``: in this process, on
    Ray, or as a Slurm array (whose launch lines are printed here). Returns the run's summary, None
    for Slurm (the jobs run on their own)."""
    check_executor(args)
    if args.executor == "slurm":
        from latent_thoughts.generation.slurm import launch

        for line in launch_lines(launch(stage, slurm_options(args)), args.slurm_cluster, args.out):
            print(line)
        return None
    if args.executor == "ray":
        from latent_thoughts.generation.ray_pipeline import run_on_ray

        summary: dict[str, Any] = run_on_ray(stage, ray_options(args, progress))
        return summary
    from latent_thoughts.generation.stage import run_stage

    return run_stage(stage)


def launch_lines(launched: Any, cluster: str, out: Path) -> list[str]:
    """What ``--executor slurm`` prints: the jobs submitted and where the result lands."""
    shards = len(launched.shard_jobs)
    ids = launched.job_ids
    if cluster == "slurm":
        merge = f"; merge job {ids[-1]} runs after them" if launched.merge_job is not None else ""
        return [f"submitted {shards} shard job(s) {', '.join(ids[:shards])}{merge} -> {out}"]
    return [f"ran {shards} shard job(s) and the merge with submitit ({cluster}) -> {out}"]


__all__ = [
    "add_executor_options",
    "check_executor",
    "execute",
    "launch_lines",
    "ray_options",
    "slurm_options",
]
