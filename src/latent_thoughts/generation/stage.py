"""The one contract of a generation stage, and the runner that runs any stage on a shard.

Teacher synthesis (:class:`~latent_thoughts.synthesis.stage.SynthesisStage`) and the E-step
(:class:`~latent_thoughts.em.stage.EStepStage`) are both an engine over the work items of a chunk
file, with a result cache. Each implements :class:`GenerationStage`, and :func:`run_stage` is the
one loop that runs either on one shard (or on the whole file)::

    guard(stage)                                  # check_outputs on stage.run_paths(): here only
    stage.check()                                 # option errors, before any work
    chunks, fingerprint = shard_chunks(stage)     # the shard's chunks; the whole file's fingerprint
    with stage.engine() as engine:
        items = stage.items(chunks, engine)       # work items in output order, each with its keys
        with ResultCache(cache_dir, writer, keys, validate=stage.validate) as cache:
            todo = stage.pending(items, cache)    # what the cache lacks
            stage.run_batch(engine, todo, cache)  # each answer appended (fsynced) as it comes
            summary = stage.write(items, cache, engine, fingerprint)

The executors schedule stages through this contract and know none by name: one process
(:func:`run_stage`), a Ray actor pool (:mod:`~latent_thoughts.generation.ray_pipeline`: each actor
holds ``stage.engine()`` and runs ``run_stage`` on the shards it is handed, then
:func:`merge_stage`), a Slurm array (:mod:`~latent_thoughts.generation.slurm`: each job runs the
stage from its serialised request, :func:`stage_spec`, through
``python -m latent_thoughts.generation.run_shard``). A stage object runs one shard once: an
executor makes one per shard with ``stage.with_shard(shard)``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import TypeAdapter, ValidationError

from latent_thoughts.corpus import Chunk
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.cache import CacheRecord, ResultCache
from latent_thoughts.generation.outputs import read_metadata
from latent_thoughts.generation.shards import (
    LoadedShard,
    chunks_fingerprint,
    load_chunks,
    select_shard,
    shard_files,
)
from latent_thoughts.outputs import RunPaths, check_outputs, check_run

SPEC_FORMAT = 1
"""Version of a serialised stage request (:func:`stage_spec`)."""

STAGE_KEY = "stage"
"""The entry of an output's run description (:func:`~latent_thoughts.generation.outputs.with_metadata`)
naming the stage class that wrote it (:func:`stage_name`), so that a merge of shard files finds the
stage's merge (:func:`merge_outputs`) without a table of stages."""

Request = TypeVar("Request")


class StageItem(Protocol):
    """A stage's unit of work: its answer lies in the cache under ``key`` (and ``keys``: every key the
    item may read, as a request asked again with a larger budget has its own)."""

    @property
    def key(self) -> str: ...

    @property
    def keys(self) -> Sequence[str]: ...


class StageOutputs(Protocol):
    """Where one run of a stage writes: its result and summary, and the cache folder with the name this
    run (shard) writes under there."""

    @property
    def result(self) -> Path: ...

    @property
    def summary(self) -> Path: ...

    @property
    def cache_dir(self) -> Path: ...

    @property
    def writer(self) -> str: ...


@runtime_checkable
class GenerationStage(Protocol):
    """An engine over the work items of a chunk file with a result cache: what :func:`run_stage`, the
    Ray pipeline and the Slurm array need of a stage. ``engine`` below is whatever ``engine()``
    yields (a teacher; the E-step's model with its identity and tokenizer)."""

    name: ClassVar[str]
    """The stage's verb, for messages and job names (never dispatched on)."""

    @property
    def chunks(self) -> Path:
        """The chunk file."""
        ...

    @property
    def shard(self) -> tuple[int, int] | None:
        """The shard ``(i, N)`` this stage runs, None for the whole file."""
        ...

    def with_shard(self, shard: tuple[int, int] | None) -> GenerationStage:
        """This stage on ``shard`` (N = 1 is the whole file), without a progress bar: what a worker runs."""
        ...

    def check(self, executor: str | None = None) -> None:
        """One-line errors for options that cannot work, before any work (``executor``: the one that
        spreads the stage over shards, None for this process)."""
        ...

    def run_paths(self) -> RunPaths:
        """What a run of this stage (of its shard) reads and writes, for the guard."""
        ...

    def outputs(self) -> StageOutputs:
        """Where a run of this stage (of its shard) writes."""
        ...

    def engine(self) -> AbstractContextManager[Any]:
        """The engine, open for the block (a worker holds it for many shards)."""
        ...

    def items(self, chunks: Sequence[Chunk], engine: Any) -> Sequence[StageItem]:
        """The work items of ``chunks``, in output order, with their cache keys."""
        ...

    def validate(self, record: CacheRecord) -> None:
        """Raise ValueError when an ``ok`` record does not hold this stage's answer (its request is
        then redone)."""
        ...

    def pending(self, items: Sequence[Any], cache: ResultCache) -> Sequence[Any]:
        """The requests the cache cannot answer yet."""
        ...

    def run_batch(self, engine: Any, todo: Sequence[Any], cache: ResultCache) -> None:
        """Run ``engine`` on ``todo`` (possibly none), appending every finished answer to ``cache``."""
        ...

    def write(
        self, items: Sequence[Any], cache: ResultCache, engine: Any, fingerprint: str
    ) -> dict[str, Any]:
        """Write the outputs of ``items`` from ``cache`` and the run's summary; returns the summary."""
        ...

    @classmethod
    def merge(cls, out: Path, shards: Sequence[Path]) -> dict[str, Any]:
        """Join the shard outputs ``shards`` of this stage into ``out`` (what a whole-file run writes);
        returns the merged summary. Needs no request: ``latent-thoughts merge`` has only the files."""
        ...

    def combine(
        self, summaries: Sequence[dict[str, Any]], merged: dict[str, Any] | None, started: float
    ) -> dict[str, Any]:
        """The summary of a run spread over shards: from the shards' summaries (in shard order) and the
        merge's (None for a single shard), with the wall time since ``started`` (``time.monotonic``)."""
        ...

    def spec(self) -> dict[str, Any]:
        """The stage's request as JSON, its paths absolute (a job may start in another folder)."""
        ...

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> GenerationStage:
        """The stage of a request serialised by :meth:`spec`."""
        ...


# --- one shard -------------------------------------------------------------------------------------


def guard(stage: GenerationStage) -> None:
    """The one check of a stage's paths before it runs (:func:`~latent_thoughts.outputs.check_run`)."""
    check_run(stage.run_paths())


def shard_chunks(stage: GenerationStage, loaded: LoadedShard | None = None) -> tuple[list[Chunk], str]:
    """The chunks of the stage's shard, and the fingerprint of the whole chunk file; ``loaded`` when a
    worker was handed them."""
    if loaded is not None:
        return loaded.chunks, loaded.fingerprint
    chunks = load_chunks(stage.chunks)
    selected = chunks if stage.shard is None else select_shard(chunks, *stage.shard)
    return selected, chunks_fingerprint(chunks)


def run_stage(
    stage: GenerationStage, *, engine: Any = None, loaded: LoadedShard | None = None
) -> dict[str, Any]:
    """Run (or resume) ``stage`` on its shard; returns the summary it also writes next to its output.

    A worker that runs many shards passes the ``engine`` it holds (``stage.engine()``, kept open) and
    the shard's chunks as ``loaded``.
    """
    guard(stage)
    stage.check()
    chunks, fingerprint = shard_chunks(stage, loaded)
    with contextlib.ExitStack() as stack:
        active = engine if engine is not None else stack.enter_context(stage.engine())
        items = stage.items(chunks, active)
        outputs = stage.outputs()
        keys = {key for item in items for key in item.keys}
        with ResultCache(outputs.cache_dir, outputs.writer, keys, validate=stage.validate) as cache:
            todo = stage.pending(items, cache)
            stage.run_batch(active, todo, cache)
            return stage.write(items, cache, active, fingerprint)


# --- shards and their merge ------------------------------------------------------------------------


def shard_results(stage: GenerationStage, count: int) -> list[Path]:
    """The result files a run of ``stage`` over ``count`` shards writes, in shard order."""
    return [stage.with_shard((index, count)).outputs().result for index in range(count)]


def merge_stage(stage: GenerationStage, count: int) -> dict[str, Any]:
    """Join the outputs of ``count`` shards of ``stage`` into its output; returns the merged summary.

    The guard: no file the merge writes is a file a shard wrote (or any other input).
    """
    shards = [stage.with_shard((index, count)).run_paths() for index in range(count)]
    check_outputs(inputs=[path for paths in shards for path in paths.files], files=stage.run_paths().files)
    return stage.merge(stage.outputs().result, shard_results(stage, count))


def merge_outputs(out: Path, shards: Sequence[Path] = ()) -> tuple[type[GenerationStage], dict[str, Any]]:
    """Join shard outputs into ``out`` with the merge of the stage that wrote them, found from the
    :data:`STAGE_KEY` their metadata records (what ``latent-thoughts merge`` runs: it has only the
    files); returns that stage class and the merged summary. ``shards`` defaults to every
    ``NAME.shard-i-of-N.parquet`` next to ``out``. The stage's merge checks the shards agree."""
    shards = list(shards) or shard_files(out)
    if not shards:
        raise LatentThoughtsError(
            f"{out}: no shard outputs ({out.with_suffix('')}.shard-i-of-N.parquet) to merge"
        )
    first = Path(shards[0])
    name = read_metadata(first).get(STAGE_KEY)
    if not isinstance(name, str):
        raise LatentThoughtsError(
            f"{first}: names no generation stage (an output of latent-thoughts written before outputs "
            "named their stage, or another program's); rerun that shard (its answers come from the cache) "
            "and merge again"
        )
    kind = stage_class(name, str(first))
    return kind, kind.merge(Path(out), [Path(path) for path in shards])


# --- a stage as data ------------------------------------------------------------------------------


def stage_name(kind: type[Any]) -> str:
    """The name of a stage class in spec files and output metadata: ``module:Class``."""
    return f"{kind.__module__}:{kind.__qualname__}"


def stage_class(name: Any, source: str) -> type[GenerationStage]:
    """The stage class :func:`stage_name` names; anything else is a one-line error naming ``source``."""
    module, _, attribute = str(name).partition(":")
    try:
        kind: Any = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        kind = None
    if not isinstance(kind, type) or not callable(getattr(kind, "from_spec", None)):
        raise LatentThoughtsError(f"{source}: {name!r} is not a generation stage")
    return kind


def stage_spec(stage: GenerationStage) -> dict[str, Any]:
    """``stage`` as JSON: which stage class (``module:Class``) and its request (:meth:`~GenerationStage.spec`)."""
    return {"format": SPEC_FORMAT, "stage": stage_name(type(stage)), "request": stage.spec()}


def stage_from_spec(data: Any, source: str = "stage spec") -> GenerationStage:
    """The stage of :func:`stage_spec`'s JSON; a spec naming no stage is a one-line error naming ``source``."""
    if (
        not isinstance(data, dict)
        or data.get("format") != SPEC_FORMAT
        or not isinstance(data.get("request"), dict)
    ):
        raise LatentThoughtsError(f"{source}: not a stage spec (format {SPEC_FORMAT}) of latent-thoughts")
    return stage_class(data.get("stage"), source).from_spec(data["request"])


def request_json(request: Any) -> dict[str, Any]:
    """A stage's request (a dataclass of paths, numbers, options) as JSON."""
    data: dict[str, Any] = TypeAdapter(type(request)).dump_python(request, mode="json")
    return data


def request_of(kind: type[Request], data: dict[str, Any]) -> Request:
    """The request of type ``kind`` serialised by :func:`request_json`; a one-line error when it is not one."""
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(request)"
        raise LatentThoughtsError(f"stage spec: {kind.__name__}.{where}: {first['msg']}") from None


__all__ = [
    "STAGE_KEY",
    "GenerationStage",
    "StageItem",
    "StageOutputs",
    "guard",
    "merge_outputs",
    "merge_stage",
    "request_json",
    "request_of",
    "run_stage",
    "shard_chunks",
    "shard_results",
    "stage_class",
    "stage_from_spec",
    "stage_name",
    "stage_spec",
]
