"""Any generation stage as a Ray Data pipeline (``--executor ray``), on one machine or a cluster.

The chunk file is split into S shards of whole documents (the ``--shard i/N`` split of
:func:`~latent_thoughts.generation.shards.select_shard`). The shards, each carrying its chunks, are
the rows of a Ray dataset; the rows go one at a time to a pool of actors
(``map_batches(..., compute=ActorPoolStrategy(size=workers))``). Each actor opens the stage's engine
once (:meth:`~latent_thoughts.generation.stage.GenerationStage.engine`: a teacher of a teacher
file, a transformers model, a client of one vLLM / ``serve`` endpoint, the oracle, or the E-step's
model) and runs :func:`~latent_thoughts.generation.stage.run_stage` on every shard it is handed: the
content-addressed result cache (each finished request fsynced, each shard appending to its own file
of ``NAME.cache/``) and the shard's Parquet output ``NAME.shard-i-of-S.parquet``. The driver then
joins the shards with the stage's own merge (:func:`~latent_thoughts.generation.stage.merge_stage`),
so the output is exactly what a single process writes. A killed run is rerun the same way (or by
any other executor): every finished request is in the cache, so nothing finished is asked again.
The pipeline knows no stage by name: it asks the stage for everything through its contract.

Without an address the driver starts a local instance with ``cpus`` logical CPUs. They must exceed
the actors' share: the actors hold one CPU each for their lifetime and Ray Data's own tasks need
the rest (an actor pool of 2 on 2 logical CPUs never schedules them and hangs). With an address
(``auto``, ``ray://head:10001``) the same pipeline joins a cluster unchanged; the chunk file, the
model or teacher file and the output folder must then lie on a filesystem every node sees, as for
a Slurm array, and the package must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from latent_thoughts.atomic import write_json
from latent_thoughts.corpus import Chunk
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.shards import LoadedShard, chunks_fingerprint, load_chunks, select_shard
from latent_thoughts.generation.stage import GenerationStage, guard, merge_stage, run_stage

logger = logging.getLogger(__name__)


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


class ShardWorker:
    """A Ray Data actor: opens the stage's engine once, then runs each shard row it is handed (``__call__``)."""

    def __init__(self, stage: GenerationStage) -> None:
        self.stage = stage
        self.engine: Any = None
        self.error: LatentThoughtsError | None = None
        self._open = contextlib.ExitStack()  # the engine stays open for the actor's lifetime
        try:
            self.engine = self._open.enter_context(stage.engine())
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
        stage = self.stage.with_shard((loaded.index, loaded.count))
        summary = run_stage(stage, engine=self.engine, loaded=loaded)
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
    stage: GenerationStage, chunks: list[Chunk], fingerprint: str, options: RayOptions
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
            fn_constructor_kwargs={"stage": stage},
            num_cpus=1,
            num_gpus=options.gpus_per_worker or None,
        )
        summaries: dict[int, dict[str, Any]] = {}
        bar = tqdm(total=count, unit="shard", desc=f"{stage.name} (ray)", disable=not options.progress)
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


# --- a stage on the pipeline -----------------------------------------------------------------------------


def run_on_ray(stage: GenerationStage, options: RayOptions) -> dict[str, Any]:
    """``latent-thoughts synthesize|estep --executor ray``: the shards of ``stage`` (a whole-file stage)
    through the actor pool, then the merge.

    Returns the run's summary (the stage's :meth:`~latent_thoughts.generation.stage.GenerationStage.combine`
    of the shards'; its wall time that of the whole pipeline), also written next to the output, with an
    ``executor`` entry.
    """
    options.check()
    if stage.shard is not None:
        raise LatentThoughtsError("--shard and --executor ray do not mix: the pipeline makes its own shards")
    stage.check("ray")  # a bad option or teacher file fails here, not in every actor
    guard(stage)
    started = time.monotonic()
    chunks = load_chunks(stage.chunks)
    summaries = run_shards(stage, chunks, chunks_fingerprint(chunks), options)
    count = len(summaries)
    merged = merge_stage(stage, count) if count > 1 else None
    summary = stage.combine([summaries[index] for index in range(count)], merged, started)
    summary["executor"] = _executor_record(options, summaries, time.monotonic() - started)
    write_json(stage.outputs().summary, summary)
    return summary


__all__ = ["RayOptions", "ShardWorker", "connect", "run_on_ray", "run_shards", "shard_count", "shard_rows"]
