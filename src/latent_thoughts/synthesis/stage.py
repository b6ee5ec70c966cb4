"""The synthesis stage end to end: what ``latent-thoughts synthesize``, ``merge`` and ``--dry-run`` do.

:class:`SynthesisStage` is teacher synthesis as a generation stage
(:class:`~latent_thoughts.generation.stage.GenerationStage`): its work items are one request per
chunk (or per document, rephrasing), its engine the teacher, its batch run the online loop or the
Batch API, its outputs the thoughts, failures and summary files. :func:`run_synthesis` runs it in
this process (:func:`~latent_thoughts.generation.stage.run_stage`); the Ray and Slurm executors run
it on shards. :func:`project_run` is the dry run. :func:`merge_shards` joins shard outputs into the
file an unsharded run writes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from latent_thoughts.atomic import write_json
from latent_thoughts.corpus import Chunk
from latent_thoughts.engines.base import Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.cache import CacheRecord, ResultCache
from latent_thoughts.generation.outputs import (
    OutputPaths,
    output_paths,
    read_metadata,
    with_metadata,
    write_table,
)
from latent_thoughts.generation.shards import order_shard_outputs, shard_files, shard_or_whole
from latent_thoughts.generation.stage import (
    STAGE_KEY,
    request_json,
    request_of,
    run_stage,
    shard_chunks,
    stage_name,
)
from latent_thoughts.outputs import RunPaths
from latent_thoughts.prompts import WRAP_STYLES, LatentThoughtPrompt, RephrasePrompt
from latent_thoughts.synthesis.costs import Projection, project_usage
from latent_thoughts.synthesis.pipeline import (
    Mode,
    RunStats,
    WorkItem,
    build_tables,
    is_final,
    latent_work,
    plan_work,
    rephrase_work,
    resolve,
    summary_record,
    synthesize_online,
    write_outputs,
)
from latent_thoughts.synthesis.teachers import (
    TeacherConfig,
    build_teacher,
    engine_options,
    load_teacher,
    require_kind,
    token_counter,
)
from latent_thoughts.tables import open_parquet, require_types

logger = logging.getLogger(__name__)

REPHRASE_STYLES = ("wrap", "cot", *sorted(WRAP_STYLES))
"""``--style`` values: the four WRAP styles drawn per document, WRAP-CoT, or one fixed WRAP style."""


@dataclass
class SynthesisRequest:
    """Everything one ``synthesize`` invocation asks for."""

    chunks: Path
    teacher: Path
    out: Path
    overrides: list[str] = field(default_factory=list)
    shard: tuple[int, int] | None = None
    mode: Mode = "thoughts"
    style: str = "wrap"
    retry_failures: bool = False
    batch_api: bool = False
    wait: bool = True
    progress: bool = True


def prompt_version(mode: Mode) -> str:
    """The prompt version of a mode (it goes into every key and output row)."""
    return LatentThoughtPrompt().version if mode == "thoughts" else RephrasePrompt("cot").version


def make_items(
    chunks: Sequence[Chunk], config: TeacherConfig, teacher: str, mode: Mode, style: str
) -> list[WorkItem]:
    """The work items of ``chunks`` for ``teacher``: one per chunk (thoughts) or per document (rephrase)."""
    if mode == "thoughts":
        return latent_work(chunks, teacher, config.sampling, cut=config.cut_policy)
    if style not in REPHRASE_STYLES:
        raise LatentThoughtsError(f"--style {style!r}: expected one of {', '.join(REPHRASE_STYLES)}")
    return rephrase_work(chunks, style, teacher, config.sampling, config.style_seed, cut=config.cut_policy)


def teacher_identity(config: TeacherConfig, engine: Engine | None) -> str:
    """The teacher's name in keys and outputs: the configured ``identity``, else the engine's own.

    An http engine without a configured model asks the server for its model name first, so that
    the identity (and every key) names the model.
    """
    if config.identity:
        return config.identity
    if engine is None:
        return "(unavailable)"
    if config.kind == "http":
        _ = getattr(engine, "model", None)  # resolves the model name, which completes the identity
    return engine.identity


@dataclass
class SynthesisStage:
    """Teacher synthesis as a :class:`~latent_thoughts.generation.stage.GenerationStage`: one request
    per chunk (or document), the teacher as the engine, answers cached as they come, the thoughts,
    failures and summary written when every item has an answer or a recorded failure (a Batch API
    run with ``wait=False`` whose batches are still in flight writes only its summary, with
    ``output.missing > 0``). One object runs one shard once."""

    request: SynthesisRequest
    name: ClassVar[str] = "synthesize"
    _stats: RunStats = field(default_factory=RunStats, init=False, repr=False, compare=False)

    @cached_property
    def config(self) -> TeacherConfig:
        """The teacher file with its overrides."""
        return load_teacher(self.request.teacher, self.request.overrides)

    @property
    def chunks(self) -> Path:
        return self.request.chunks

    @property
    def shard(self) -> tuple[int, int] | None:
        return self.request.shard

    def with_shard(self, shard: tuple[int, int] | None) -> SynthesisStage:
        return SynthesisStage(replace(self.request, shard=shard_or_whole(shard), progress=False))

    def check(self, executor: str | None = None) -> None:
        request = self.request
        if request.batch_api and executor is not None:
            raise LatentThoughtsError(
                f"--batch-api and --executor {executor} do not mix: the Batch API runs in one process"
            )
        config = self.config  # a bad teacher file fails here, once
        if request.batch_api:
            require_kind(config, "http", "--batch-api")
        if request.mode == "thoughts" and request.style != "wrap":
            raise LatentThoughtsError("--style applies to --mode rephrase only")

    def run_paths(self) -> RunPaths:
        paths = self.outputs()
        return RunPaths(
            inputs=[self.request.chunks, self.request.teacher],
            files=[paths.result, paths.failures, paths.summary, paths.batch_state],
            folders=[paths.cache_dir],
        )

    def outputs(self) -> OutputPaths:
        return output_paths(self.request.out, self.request.shard)

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        teacher = build_teacher(self.config, str(self.request.teacher))
        try:
            yield teacher
        finally:
            close = getattr(teacher, "close", None)
            if callable(close):
                close()

    def items(self, chunks: Sequence[Chunk], engine: Engine) -> list[WorkItem]:
        request = self.request
        return make_items(
            chunks, self.config, teacher_identity(self.config, engine), request.mode, request.style
        )

    def validate(self, record: CacheRecord) -> None:
        """A teacher's answer is the record's text, whose type the cache checks already."""

    def pending(self, items: Sequence[WorkItem], cache: ResultCache) -> list[WorkItem]:
        todo, self._stats = plan_work(items, cache, self.request.retry_failures)
        stats = self._stats
        logger.info(
            "%d items: %d cached, %d recorded failures kept, %d to send",
            stats.items,
            stats.cached,
            stats.cached_failures,
            len(todo),
        )
        return todo

    def run_batch(self, engine: Engine, todo: Sequence[WorkItem], cache: ResultCache) -> None:
        request, config = self.request, self.config
        teacher = teacher_identity(config, engine)
        if request.batch_api:  # also with nothing to send: it collects batches still in flight
            from latent_thoughts.synthesis.batch import synthesize_batch

            synthesize_batch(
                todo,
                cache,
                self._stats,
                client=batch_client(config, str(request.teacher)),
                model=str(getattr(engine, "model", "")),
                max_tokens_field=str(getattr(engine_options(config), "chat_max_tokens_field", "max_tokens")),
                teacher=teacher,
                sampling=config.sampling,
                state_path=self.outputs().batch_state,
                poll_interval_s=config.batch_api.poll_interval_s,
                max_requests_per_batch=config.batch_api.max_requests_per_batch,
                refusal_patterns=config.refusal_patterns,
                wait=request.wait,
                progress=request.progress,
            )
        elif todo:
            synthesize_online(
                todo,
                engine,
                cache,
                self._stats,
                teacher=teacher,
                sampling=config.sampling,
                batch_size=config.batch_size,
                delay_s=config.delay_s,
                max_consecutive_errors=config.max_consecutive_errors,
                refusal_patterns=config.refusal_patterns,
                prices=config.prices,
                progress=request.progress,
            )

    def write(
        self, items: Sequence[WorkItem], cache: ResultCache, engine: Engine, fingerprint: str
    ) -> dict[str, Any]:
        request, config, paths = self.request, self.config, self.outputs()
        teacher = teacher_identity(config, engine)
        shard = request.shard
        metadata = {
            "format": 1,
            STAGE_KEY: stage_name(type(self)),
            "mode": request.mode,
            "style": request.style if request.mode == "rephrase" else None,
            "teacher": teacher,
            "prompt_version": prompt_version(request.mode),
            "chunks_fingerprint": fingerprint,
            "shard": f"{shard[0]}/{shard[1]}" if shard and shard[1] > 1 else None,
        }
        counts = write_outputs(items, cache, paths, request.mode, metadata)
        self._stats.retries = engine.usage.retries
        summary = summary_record(
            self._stats,
            counts,
            teacher=teacher,
            prompt_version=str(metadata["prompt_version"]),
            mode=request.mode,
            shard=shard,
            prices=config.prices,
            batch_api=request.batch_api,
            paths=paths,
        )
        write_json(paths.summary, summary)
        return summary

    @classmethod
    def merge(cls, out: Path, shards: Sequence[Path]) -> dict[str, Any]:
        return merge_shards(out, shards)

    def combine(
        self, summaries: Sequence[dict[str, Any]], merged: dict[str, Any] | None, started: float
    ) -> dict[str, Any]:
        """The merged summary (a single shard's own), ``run.elapsed_s`` the wall time of the whole run."""
        summary = summaries[0] if merged is None else merged
        summary.setdefault("batch_api", False)
        summary["run"]["elapsed_s"] = round(time.monotonic() - started, 2)
        return summary

    def spec(self) -> dict[str, Any]:
        request = self.request
        absolute = {name: getattr(request, name).resolve() for name in ("chunks", "teacher", "out")}
        return request_json(replace(request, **absolute))

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> SynthesisStage:
        return cls(request_of(SynthesisRequest, data))


def run_synthesis(request: SynthesisRequest) -> dict[str, Any]:
    """Run (or resume) one synthesis job in this process; returns the summary also saved next to the
    output (:func:`~latent_thoughts.generation.stage.run_stage` of :class:`SynthesisStage`)."""
    return run_stage(SynthesisStage(request))


def batch_client(config: TeacherConfig, source: str = "teacher") -> Any:
    """An ``openai.OpenAI`` client for the http teacher's server, for the Batch API."""
    import os

    import openai

    options = engine_options(config, source)
    urls = getattr(options, "base_urls", None)
    base_url = urls[0] if urls else None  # a Batch API job goes to one server, the first
    key_env = getattr(options, "api_key_env", None) or "OPENAI_API_KEY"
    api_key = os.environ.get(key_env) or getattr(options, "api_key", None) or "EMPTY"
    timeout = float(getattr(options, "timeout_s", None) or getattr(options, "timeout", None) or 600.0)
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=3)


def project_run(request: SynthesisRequest, sample_size: int = 200, seed: int = 0) -> Projection:
    """The dry run: projected tokens and cost of ``request`` from a seeded sample, spending nothing.

    A teacher that cannot be built yet (say, no API key set) is not an error: then no cache look-ups
    are possible.
    """
    stage = SynthesisStage(request)
    stage.check()
    config = stage.config
    chunks, _ = shard_chunks(stage)
    engine: Engine | None = None
    try:
        engine = build_teacher(config, str(request.teacher))
        identity = teacher_identity(config, engine)
    except LatentThoughtsError as exc:
        logger.warning("teacher not available (%s); the dry run cannot look up cached answers", exc)
        engine, identity = None, teacher_identity(config, None)
    close = getattr(engine, "close", None)
    if callable(close):
        close()  # the dry run sends nothing: the engine only named the teacher in the keys
    items = make_items(chunks, config, identity, request.mode, request.style)
    cached = [False] * len(items)
    cache_dir = stage.outputs().cache_dir
    if engine is not None and cache_dir.exists():
        # read-only: no lock is taken
        with ResultCache(cache_dir, None, {key for item in items for key in item.keys}) as cache:
            cached = [is_final(resolve(item, cache)[1]) for item in items]
    return project_usage(
        [(item.messages, item.text) for item in items],
        cached,
        token_counter(config),
        config.prices,
        sample_size=sample_size,
        seed=seed,
        output_ratio=config.thought_ratio,
        budgets=(config.sampling.max_new_tokens, *config.cut_policy.budgets),
        on_cut=config.on_cut,
    )


# --- merge ---------------------------------------------------------------------------------------


def merge_shards(out: Path, inputs: Sequence[Path] = ()) -> dict[str, Any]:
    """Join the shard outputs of ``out`` into ``out`` (and its failures and summary files).

    ``inputs`` defaults to every ``NAME.shard-i-of-N.parquet`` next to ``out``. All shards 0..N-1
    of one N must be present and come from the same chunk file, mode, teacher and prompt version;
    the merged file equals what an unsharded run writes. Returns the merged summary.
    """
    paths = output_paths(out)
    inputs = list(inputs) or shard_files(out)
    if not inputs:
        raise LatentThoughtsError(
            f"{out}: no shard outputs ({out.with_suffix('')}.shard-i-of-N.parquet) to merge"
        )
    ordered, first = order_shard_outputs(
        out,
        [(Path(path), read_metadata(Path(path))) for path in inputs],
        "synthesize",
        ("mode", "style", "teacher", "prompt_version", "chunks_fingerprint"),
    )
    metadata = {**first, "shard": None}
    results = pa.concat_tables([pq.read_table(p) for p in ordered]).replace_schema_metadata(None)
    failure_paths = [p.with_name(p.name.replace(".parquet", ".failures.parquet")) for p in ordered]
    absent = [str(p) for p in failure_paths if not p.exists()]
    if absent:
        raise LatentThoughtsError(f"{absent[0]}: failures file of a shard is missing")
    failures = pa.concat_tables([pq.read_table(p) for p in failure_paths]).replace_schema_metadata(None)
    write_table(with_metadata(failures, metadata), paths.failures)
    write_table(with_metadata(results, metadata), paths.result)
    summary = _merged_summary(ordered, results.num_rows, failures.num_rows, metadata, paths)
    write_json(paths.summary, summary)
    return summary


def _merged_summary(
    shard_results: Sequence[Path], rows: int, failures: int, metadata: dict[str, Any], paths: OutputPaths
) -> dict[str, Any]:
    """The shards' summaries added up."""
    run = RunStats()
    cost = 0.0
    currency = "USD"
    for path in shard_results:
        summary_path = path.with_name(path.name.replace(".parquet", ".summary.json"))
        if not summary_path.exists():
            continue
        data = json.loads(summary_path.read_text(encoding="utf-8"))
        cost += float(data.get("cost", 0.0))
        currency = data.get("currency", currency)
        for name, value in data.get("run", {}).items():
            if name == "failure_reasons":
                for reason, count in value.items():
                    run.failure_reasons[reason] = run.failure_reasons.get(reason, 0) + count
            elif hasattr(run, name):
                setattr(run, name, getattr(run, name) + value)
    return {
        "mode": metadata["mode"],
        "teacher": metadata["teacher"],
        "prompt_version": metadata["prompt_version"],
        "shard": None,
        "merged_from": [str(p) for p in shard_results],
        "run": run.__dict__,
        "cost": round(cost, 6),
        "currency": currency,
        "output": {"result": str(paths.result), "rows": rows, "failures": failures, "missing": 0},
    }


def read_output_tables(path: Path) -> tuple[pa.Table, pa.Table | None]:
    """A synthesis output and its failures file (None when absent)."""
    if not path.exists():
        raise LatentThoughtsError(f"{path}: thoughts file not found (run latent-thoughts synthesize first)")
    failures_path = path.with_name(path.name.replace(".parquet", ".failures.parquet"))
    tables: list[pa.Table | None] = []
    for name, what in ((path, "thoughts"), (failures_path, "failures")):
        if not name.exists():
            tables.append(None)
            continue
        parquet = open_parquet(name, what, ["doc_id", "chunk_index"])
        require_types(parquet, name, what, _KEY_SCHEMA)
        tables.append(parquet.read())
    assert tables[0] is not None
    return tables[0], tables[1]


_KEY_SCHEMA = pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int64())])


__all__ = [
    "REPHRASE_STYLES",
    "SynthesisRequest",
    "SynthesisStage",
    "build_tables",
    "make_items",
    "merge_shards",
    "project_run",
    "read_output_tables",
    "run_synthesis",
]
