"""Synthesis and the E-step as a Ray Data pipeline (``--executor ray``), on one machine or a cluster.

The chunk file is split into S shards of whole documents (the ``--shard i/N`` split of
:func:`~latent_thoughts.generation.shards.select_shard`). The shards, each carrying its chunks, are
the rows of a Ray dataset; the rows go one at a time to a pool of actors
(``map_batches(..., compute=ActorPoolStrategy(size=workers))``). Each actor builds one engine when it
starts -- the teacher of a teacher file (a transformers model, a client of one vLLM / ``serve``
endpoint, the oracle), or the E-step's model (in process, or a client of ``--base-url``) -- and runs
the stage's own shard code on every shard it is handed: the content-addressed result cache (each
finished request fsynced, each shard appending to its own file of ``NAME.cache/``) and the shard's
Parquet output ``NAME.shard-i-of-S.parquet``. The driver then joins the shards with the stage's own
merge (:func:`~latent_thoughts.generation.shards.order_shard_outputs`), so the output is exactly
what a single process writes. A killed run is rerun the same way (or by any other executor): every
finished request is in the cache, so nothing finished is asked again.

Without an address the driver starts a local instance with ``cpus`` logical CPUs. They must exceed
the actors' share: the actors hold one CPU each for their lifetime and Ray Data's own tasks need
the rest (an actor pool of 2 on 2 logical CPUs never schedules them and hangs). With an address
(``auto``, ``ray://head:10001``) the same pipeline joins a cluster unchanged; the chunk file, the
model or teacher file and the output folder must then lie on a filesystem every node sees, as for
a Slurm array, and the package must be installed on every node.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from latent_thoughts.corpus import Chunk
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.shards import LoadedShard, select_shard

logger = logging.getLogger(__name__)

Stage = Literal["synthesize", "estep"]


@dataclass(frozen=True)
class RayOptions:
    """How the pipeline runs: actors (one engine each), shards, and which Ray instance.

    ``shards`` defaults to 4 per worker (at most one per document) so that workers finishing early
    take more; ``cpus`` (a local instance's logical CPUs) defaults to ``workers + 2``;
    ``address`` joins a running cluster instead (``auto`` or ``ray://HOST:10001``).
    """

    workers: int = 2
    shards: int | None = None
    address: str | None = None
    cpus: int | None = None
    gpus_per_worker: float = 0.0
    progress: bool = True

    def check(self) -> None:
        """One-line errors for impossible settings, naming the option."""
        if self.workers < 1:
            raise LatentThoughtsError(f"--workers {self.workers}: need at least 1")
        if self.shards is not None and self.shards < 1:
            raise LatentThoughtsError(f"--ray-shards {self.shards}: need at least 1")
        if self.gpus_per_worker < 0:
            raise LatentThoughtsError(f"--gpus-per-worker {self.gpus_per_worker}: cannot be negative")
        if self.cpus is not None:
            if self.address is not None:
                raise LatentThoughtsError(
                    "--ray-cpus sizes a local instance; a cluster (--ray-address) has its own"
                )
            if self.cpus <= self.workers:
                raise LatentThoughtsError(
                    f"--ray-cpus {self.cpus}: need more logical CPUs than --workers {self.workers} (each actor "
                    f"holds one and the pipeline's own tasks need the rest); try {self.workers + 2}"
                )

    @property
    def local_cpus(self) -> int:
        """Logical CPUs of a local instance."""
        return self.cpus if self.cpus is not None else self.workers + 2


# --- the actor -----------------------------------------------------------------------------------


def open_stage_engine(stage: Stage, request: Any) -> Any:
    """The engine a worker holds for its lifetime: the teacher (synthesis) or ``(engine, identity)``."""
    if stage == "synthesize":
        from latent_thoughts.synthesis.teachers import build_teacher, load_teacher

        return build_teacher(load_teacher(request.teacher, request.overrides), str(request.teacher))
    from latent_thoughts.em.stage import open_engine

    return open_engine(request)


def run_stage_shard(stage: Stage, request: Any, engine: Any, loaded: LoadedShard) -> dict[str, Any]:
    """Run the stage on one shard with an open engine; returns the shard's summary."""
    shard = (loaded.index, loaded.count) if loaded.count > 1 else None
    shard_request = replace(request, shard=shard, progress=False)
    if stage == "synthesize":
        from latent_thoughts.synthesis.stage import run_synthesis

        return run_synthesis(shard_request, engine=engine, loaded=loaded)
    from latent_thoughts.em.stage import run_estep

    return run_estep(shard_request, engine=engine, loaded=loaded)


class ShardWorker:
    """A Ray Data actor: opens one engine, then runs each shard row it is handed (``__call__``)."""

    def __init__(self, stage: Stage, request: Any) -> None:
        self.stage = stage
        self.request = request
        self.engine: Any = None
        self.error: LatentThoughtsError | None = None
        try:
            self.engine = open_stage_engine(stage, request)
        except LatentThoughtsError as exc:
            self.error = exc  # reported with the first shard, as every error of a shard is

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Shard rows (``shard, count, fingerprint, chunks``) in; ``shard, summary`` (JSON) out, or the
        one-line ``error`` (with its exit ``status``) of a shard that failed.

        Errors travel as data: an exception would reach the driver wrapped by Ray, its message
        buried in a traceback.
        """
        shards, summaries, errors, statuses = [], [], [], []
        for row in batch.to_pylist():
            summary, error, status = {}, "", 0
            try:
                summary = self._run(row)
            except LatentThoughtsError as exc:
                error, status = str(exc), exc.exit_status
            shards.append(row["shard"])
            summaries.append(json.dumps(summary))
            errors.append(error)
            statuses.append(status)
        return pa.table(
            {
                "shard": pa.array(shards, pa.int64()),
                "summary": pa.array(summaries, pa.string()),
                "error": pa.array(errors, pa.string()),
                "status": pa.array(statuses, pa.int64()),
            }
        )

    def _run(self, row: dict[str, Any]) -> dict[str, Any]:
        """Run one shard row; its summary, with which process ran it and for how long."""
        if self.error is not None:
            raise self.error
        loaded = LoadedShard(
            index=row["shard"],
            count=row["count"],
            chunks=[Chunk(**chunk) for chunk in row["chunks"]],
            fingerprint=row["fingerprint"],
        )
        started = time.monotonic()
        summary = run_stage_shard(self.stage, self.request, self.engine, loaded)
        summary["worker"] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "seconds": round(time.monotonic() - started, 3),
        }
        return summary


# --- the driver ---------------------------------------------------------------------------------------


def shard_rows(chunks: list[Chunk], count: int, fingerprint: str) -> list[dict[str, Any]]:
    """The dataset's rows: shard ``i`` of ``count`` with its chunks (whole documents, file order)."""
    return [
        {
            "shard": index,
            "count": count,
            "fingerprint": fingerprint,
            "chunks": [asdict(chunk) for chunk in select_shard(chunks, index, count)],
        }
        for index in range(count)
    ]


def shard_count(chunks: list[Chunk], options: RayOptions) -> int:
    """S: ``options.shards`` (default 4 per worker), at most one per document."""
    documents = len({chunk.doc_id for chunk in chunks})
    return max(1, min(options.shards or 4 * options.workers, documents))


def connect(options: RayOptions) -> bool:
    """Start a local Ray instance or join ``options.address``; True when this call started it.

    An instance the caller already started (``ray.init`` before, as the tests do) is used as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    try:
        if options.address is not None:
            ray.init(address=options.address, **quiet)
        else:
            ray.init(num_cpus=options.local_cpus, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"--ray-address {options.address}" if options.address else "a local Ray instance"
        raise LatentThoughtsError(f"{where}: cannot start or join it ({_first_line(exc)})") from None
    return True


def run_shards(
    stage: Stage, request: Any, chunks: list[Chunk], fingerprint: str, options: RayOptions
) -> dict[int, dict[str, Any]]:
    """Run every shard of ``chunks`` through the actor pool; returns each shard's summary by index."""
    import ray
    import ray.data
    from tqdm import tqdm

    count = shard_count(chunks, options)
    started = connect(options)
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes would drown the bar
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # one bar over the shards instead
        dataset = ray.data.from_items(shard_rows(chunks, count, fingerprint), override_num_blocks=count)
        results = dataset.map_batches(
            ShardWorker,
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=options.workers, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"stage": stage, "request": request},
            num_cpus=1,
            num_gpus=options.gpus_per_worker or None,
        )
        summaries: dict[int, dict[str, Any]] = {}
        bar = tqdm(total=count, unit="shard", desc=f"{stage} (ray)", disable=not options.progress)
        try:
            for row in _rows(results):
                if row["error"]:
                    failed = LatentThoughtsError(f"shard {row['shard']} of {count}: {row['error']}")
                    failed.exit_status = int(row["status"])
                    raise failed
                summaries[int(row["shard"])] = json.loads(row["summary"])
                bar.update(1)
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
    return summaries


def _rows(dataset: Any) -> Iterator[dict[str, Any]]:
    """The dataset's rows; a failure of Ray itself (not of a shard: those come back as rows) is a
    one-line error naming the exception."""
    try:
        yield from dataset.iter_rows()
    except Exception as exc:
        raise LatentThoughtsError(
            f"the Ray pipeline failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _executor_record(
    options: RayOptions, summaries: dict[int, dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """What the summary records of the pipeline: its size, and which worker ran each shard for how long."""
    return {
        "kind": "ray",
        "workers": options.workers,
        "shards": len(summaries),
        "address": options.address,
        "wall_s": round(wall_s, 2),
        "shard_workers": [summaries[i].get("worker") for i in sorted(summaries)],
    }


# --- the two stages ------------------------------------------------------------------------------------


def synthesize_on_ray(request: Any, options: RayOptions) -> dict[str, Any]:
    """``latent-thoughts synthesize --executor ray``: the shards through the actor pool, then the merge.

    ``request`` is a :class:`~latent_thoughts.synthesis.stage.SynthesisRequest` (no ``--shard``, no
    Batch API). Returns the merged summary (also written next to the output) with an ``executor``
    entry; ``run.elapsed_s`` is the wall time of the whole pipeline.
    """
    from latent_thoughts.outputs import check_outputs
    from latent_thoughts.synthesis.pipeline import chunks_fingerprint, load_chunks, output_paths, write_json
    from latent_thoughts.synthesis.stage import merge_shards
    from latent_thoughts.synthesis.teachers import load_teacher

    options.check()
    if request.batch_api:
        raise LatentThoughtsError(
            "--batch-api and --executor ray do not mix: the Batch API runs in one process"
        )
    if request.shard is not None:
        raise LatentThoughtsError("--shard and --executor ray do not mix: the pipeline makes its own shards")
    final = output_paths(request.out)
    check_outputs(
        inputs=[request.chunks, request.teacher],
        files=[final.result, final.failures, final.summary],
        folders=[final.cache_dir],
    )
    load_teacher(request.teacher, request.overrides)  # a bad teacher file fails here, not in every actor
    started = time.monotonic()
    chunks = load_chunks(request.chunks)
    summaries = run_shards("synthesize", request, chunks, chunks_fingerprint(chunks), options)
    count = len(summaries)
    summary = summaries[0] if count == 1 else merge_shards(request.out, shard_paths(request.out, count))
    summary.setdefault("batch_api", False)
    summary["run"]["elapsed_s"] = round(time.monotonic() - started, 2)
    summary["executor"] = _executor_record(options, summaries, time.monotonic() - started)
    write_json(summary, final.summary)
    return summary


def estep_on_ray(request: Any, options: RayOptions) -> dict[str, Any]:
    """``latent-thoughts estep --executor ray``: the shards through the actor pool, then the merge.

    ``request`` is an :class:`~latent_thoughts.em.stage.EStepRequest` without ``shard``. Returns the
    summary ``estep`` prints (chunks sampled now and from the cache added over the shards, wall time),
    also written next to the output, with an ``executor`` entry.
    """
    from latent_thoughts.em.stage import merge_sample_shards
    from latent_thoughts.outputs import check_outputs
    from latent_thoughts.synthesis.pipeline import chunks_fingerprint, load_chunks, output_paths, write_json

    options.check()
    if request.shard is not None:
        raise LatentThoughtsError("--shard and --executor ray do not mix: the pipeline makes its own shards")
    final = output_paths(request.out)
    check_outputs(
        inputs=[request.chunks, request.model], files=[final.result, final.summary], folders=[final.cache_dir]
    )
    started = time.monotonic()
    chunks = load_chunks(request.chunks)
    summaries = run_shards("estep", request, chunks, chunks_fingerprint(chunks), options)
    count = len(summaries)
    first = summaries[0]
    if count == 1:
        summary = dict(first)
    else:
        merged = merge_sample_shards(request.out, shard_paths(request.out, count))
        summary = {
            **merged,
            "sampled_now": sum(s.get("sampled_now", 0) for s in summaries.values()),
            "from_cache": sum(s.get("from_cache", 0) for s in summaries.values()),
            "policy": first["policy"],
            "model": first["model"],
            "result": str(final.result),
            "shard": None,
        }
    summary["elapsed_s"] = round(time.monotonic() - started, 2)
    summary["executor"] = _executor_record(options, summaries, time.monotonic() - started)
    write_json(summary, final.summary)
    return summary


def shard_paths(out: Path, count: int) -> list[Path]:
    """The shard outputs a run with ``count`` shards writes next to ``out``."""
    from latent_thoughts.synthesis.pipeline import output_paths

    return [output_paths(out, (i, count)).result for i in range(count)] if count > 1 else [Path(out)]


__all__ = [
    "RayOptions",
    "ShardWorker",
    "connect",
    "estep_on_ray",
    "run_shards",
    "shard_count",
    "shard_paths",
    "shard_rows",
    "synthesize_on_ray",
]
