"""Where each E-step of ``em`` runs (``estep_engine:``): in this process, on HTTP servers the run
starts for it, or spread over many engines by an executor, as ``latent-thoughts estep`` offers.

- ``local``: the transformers engine in this process;
- ``http``: one server per port for the model of t-1 (:mod:`latent_thoughts.em.servers`), started
  for the E-step and stopped after it; vLLM or ``latent-thoughts serve``;
- ``ray``: the shards of the E-step over a pool of actors, each holding the model
  (:func:`~latent_thoughts.generation.ray_pipeline.run_on_ray`), then the merge;
- ``slurm``: the shards as a Slurm array and the merge after it
  (:func:`~latent_thoughts.generation.slurm.launch`); the run waits for the jobs.

Every kind writes the samples an in-process E-step writes (the generation stage's contract, tested
for each executor), so the kind is left out of the stage's fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from latent_thoughts.config import StageConfig
from latent_thoughts.em.stage import EStepRequest, EStepStage, run_estep
from latent_thoughts.errors import LatentThoughtsError


class EStepEngine(StageConfig):
    """Where each E-step samples (see the module docstring)."""

    kind: Literal["local", "http", "ray", "slurm"] = Field("local", description="local, http, ray or slurm")
    command: str = Field(
        "{python} -m latent_thoughts serve {model} --port {port} --device {device} --dtype {dtype}",
        description="http: the server command; {model}, {port}, {python} (this interpreter), {device} and "
        "{dtype} (the run's, so that a served E-step draws what an in-process one draws) are filled in "
        "(vLLM: 'vllm serve {model} --port {port} --dtype bfloat16')",
    )
    ports: list[int] = Field(
        default_factory=lambda: [8100], min_length=1, description="http: one server per port"
    )
    ready_timeout_s: float = Field(600.0, gt=0, description="http: how long a server may take to start")
    http: dict[str, Any] = Field(
        default_factory=dict, description="http: the HTTP engine's options (concurrency, timeout_s, ...)"
    )
    workers: int = Field(2, ge=1, description="ray: actors, each holding one engine")
    shards: int | None = Field(None, ge=1, description="ray, slurm: shards of the E-step (slurm: needed)")
    ray_address: str | None = Field(None, description="ray: a running cluster (auto, ray://HOST:10001)")
    ray_cpus: int | None = Field(None, gt=0, description="ray: logical CPUs of a local instance")
    gpus_per_worker: float = Field(0.0, ge=0, description="ray: GPUs of each actor")
    slurm_cluster: Literal["slurm", "local", "debug"] = Field("slurm", description="slurm: where jobs run")
    slurm_partition: str | None = None
    slurm_time_min: int = Field(240, ge=1, description="slurm: each job's time limit")
    slurm_cpus: int = Field(2, ge=1)
    slurm_gpus: int = Field(0, ge=0)


def run_estep_on(engine: EStepEngine, request: EStepRequest, device: str, dtype: str) -> dict[str, Any]:
    """Run E-step ``request`` where ``engine`` says; returns its summary."""
    if engine.kind == "local":
        return run_estep(request)
    if engine.kind == "http":
        from latent_thoughts.em.servers import launched_servers

        logs = request.out.parent / "servers"
        fields = {"device": device, "dtype": dtype}
        with launched_servers(
            engine.command, request.model, engine.ports, logs, engine.ready_timeout_s, **fields
        ) as urls:
            return run_estep(dataclasses.replace(request, base_url=urls, engine_options=dict(engine.http)))
    stage = EStepStage(dataclasses.replace(request, shard=None))
    if engine.kind == "ray":
        from latent_thoughts.generation.ray_pipeline import RayOptions, run_on_ray

        options = RayOptions(
            workers=engine.workers,
            shards=engine.shards,
            address=engine.ray_address,
            cpus=engine.ray_cpus,
            gpus_per_worker=engine.gpus_per_worker,
            progress=request.progress,
        )
        return run_on_ray(stage, options)
    from latent_thoughts.generation.slurm import SlurmOptions, launch, wait_for

    if engine.shards is None:
        raise LatentThoughtsError("estep_engine.shards: the slurm kind needs the number of shards")
    launched = launch(
        stage,
        SlurmOptions(
            shards=engine.shards,
            folder=request.out.with_suffix(".slurm"),
            cluster=engine.slurm_cluster,
            partition=engine.slurm_partition,
            time_min=engine.slurm_time_min,
            cpus_per_task=engine.slurm_cpus,
            gpus_per_task=engine.slurm_gpus,
        ),
    )
    for job in [*launched.shard_jobs, *([launched.merge_job] if launched.merge_job is not None else [])]:
        wait_for(job)
    summary = Path(stage.outputs().summary)
    return dict(json.loads(summary.read_text()))
