"""The synthesis stage end to end: what ``latent-thoughts synthesize``, ``merge`` and ``--dry-run`` do.

:func:`run_synthesis` reads the chunks, takes its shard, builds the work items and the teacher,
sends what the cache lacks (online, or through the Batch API), writes the outputs and a summary.
:func:`project_run` is the dry run. :func:`merge_shards` joins shard outputs into the file an
unsharded run writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from latent_thoughts.corpus import Chunk
from latent_thoughts.engines.base import Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.cache import ResultCache
from latent_thoughts.generation.shards import LoadedShard, order_shard_outputs, select_shard, shard_files
from latent_thoughts.outputs import check_outputs
from latent_thoughts.prompts import WRAP_STYLES, LatentThoughtPrompt, RephrasePrompt
from latent_thoughts.synthesis.costs import Projection, project_usage
from latent_thoughts.synthesis.pipeline import (
    Mode,
    OutputPaths,
    RunStats,
    WorkItem,
    build_tables,
    chunks_fingerprint,
    latent_work,
    load_chunks,
    output_paths,
    plan_work,
    read_metadata,
    rephrase_work,
    summary_record,
    synthesize_online,
    with_metadata,
    write_json,
    write_outputs,
    write_table,
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


@dataclass
class Plan:
    """A prepared run: the teacher, the shard's work items in output order, and where results go."""

    config: TeacherConfig
    engine: Engine | None
    teacher_identity: str
    items: list[WorkItem]
    paths: OutputPaths
    metadata: dict[str, Any]


def prompt_version(mode: Mode) -> str:
    """The prompt version of a mode (it goes into every key and output row)."""
    return LatentThoughtPrompt().version if mode == "thoughts" else RephrasePrompt("cot").version


def make_items(
    chunks: Sequence[Chunk], config: TeacherConfig, teacher: str, mode: Mode, style: str
) -> list[WorkItem]:
    """The work items of ``chunks`` for ``teacher``: one per chunk (thoughts) or per document (rephrase)."""
    if mode == "thoughts":
        return latent_work(chunks, teacher, config.sampling)
    if style not in REPHRASE_STYLES:
        raise LatentThoughtsError(f"--style {style!r}: expected one of {', '.join(REPHRASE_STYLES)}")
    return rephrase_work(chunks, style, teacher, config.sampling, config.style_seed)


def prepare(
    request: SynthesisRequest,
    *,
    need_engine: bool = True,
    engine: Engine | None = None,
    loaded: LoadedShard | None = None,
) -> Plan:
    """Load the teacher and the chunks, take the shard and build its work items.

    Without ``need_engine`` (the dry run) a teacher that cannot be built yet (say, no API key set)
    is not an error: the plan then has no engine and no cache look-ups are possible. A worker that
    already holds the teacher passes it as ``engine``, and the shard's chunks as ``loaded``.
    """
    config = load_teacher(request.teacher, request.overrides)
    if request.batch_api:
        require_kind(config, "http", "--batch-api")
    if request.mode == "thoughts" and request.style != "wrap":
        raise LatentThoughtsError("--style applies to --mode rephrase only")
    if loaded is None:
        chunks = load_chunks(request.chunks)
        selected = chunks if request.shard is None else _select(chunks, request.shard)
        fingerprint = chunks_fingerprint(chunks)
    else:
        selected, fingerprint = loaded.chunks, loaded.fingerprint
    try:
        engine = engine or build_teacher(config, str(request.teacher))
        identity = teacher_identity(config, engine)
    except LatentThoughtsError as exc:
        if need_engine:
            raise
        logger.warning("teacher not available (%s); the dry run cannot look up cached answers", exc)
        engine, identity = None, teacher_identity(config, None)
    metadata = {
        "format": 1,
        "mode": request.mode,
        "style": request.style if request.mode == "rephrase" else None,
        "teacher": identity,
        "prompt_version": prompt_version(request.mode),
        "chunks_fingerprint": fingerprint,
        "shard": f"{request.shard[0]}/{request.shard[1]}" if request.shard and request.shard[1] > 1 else None,
    }
    return Plan(
        config=config,
        engine=engine,
        teacher_identity=identity,
        items=make_items(selected, config, identity, request.mode, request.style),
        paths=output_paths(request.out, request.shard),
        metadata=metadata,
    )


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


def _select(chunks: Sequence[Chunk], shard: tuple[int, int]) -> list[Chunk]:
    return select_shard(chunks, *shard)


def run_synthesis(
    request: SynthesisRequest, *, engine: Engine | None = None, loaded: LoadedShard | None = None
) -> dict[str, Any]:
    """Run (or resume) one synthesis job; returns the summary also saved next to the output.

    The outputs are written only when every item has an answer or a recorded failure; a Batch API
    run with ``wait=False`` whose batches are still in flight returns with ``output.missing > 0``.
    ``engine`` (the teacher, kept open) and ``loaded`` (the shard's chunks) come from a worker that
    runs many shards (:mod:`latent_thoughts.generation.ray_pipeline`).
    """
    paths = output_paths(request.out, request.shard)
    check_outputs(
        inputs=[request.chunks, request.teacher],
        files=[paths.result, paths.failures, paths.summary, paths.batch_state],
        folders=[paths.cache_dir],
    )
    plan = prepare(request, engine=engine, loaded=loaded)
    assert plan.engine is not None
    config = plan.config
    try:
        keys = {item.key for item in plan.items}
        with ResultCache(plan.paths.cache_dir, plan.paths.writer, keys) as cache:
            todo, stats = plan_work(plan.items, cache, request.retry_failures)
            logger.info(
                "%d items: %d cached, %d recorded failures kept, %d to send",
                stats.items,
                stats.cached,
                stats.cached_failures,
                len(todo),
            )
            if request.batch_api:
                from latent_thoughts.synthesis.batch import synthesize_batch

                synthesize_batch(
                    todo,
                    cache,
                    stats,
                    client=batch_client(config, str(request.teacher)),
                    model=str(getattr(plan.engine, "model", "")),
                    max_tokens_field=str(
                        getattr(engine_options(config), "chat_max_tokens_field", "max_tokens")
                    ),
                    teacher=plan.teacher_identity,
                    sampling=config.sampling,
                    state_path=plan.paths.batch_state,
                    poll_interval_s=config.batch_api.poll_interval_s,
                    max_requests_per_batch=config.batch_api.max_requests_per_batch,
                    refusal_patterns=config.refusal_patterns,
                    wait=request.wait,
                    progress=request.progress,
                )
            elif todo:
                synthesize_online(
                    todo,
                    plan.engine,
                    cache,
                    stats,
                    teacher=plan.teacher_identity,
                    sampling=config.sampling,
                    batch_size=config.batch_size,
                    delay_s=config.delay_s,
                    max_consecutive_errors=config.max_consecutive_errors,
                    refusal_patterns=config.refusal_patterns,
                    prices=config.prices,
                    progress=request.progress,
                )
            counts = write_outputs(plan.items, cache, plan.paths, request.mode, plan.metadata)
        stats.retries = plan.engine.usage.retries
    finally:
        close = getattr(plan.engine, "close", None)
        if engine is None and callable(close):  # a worker's own engine stays open for its next shard
            close()
    summary = summary_record(
        stats,
        counts,
        teacher=plan.teacher_identity,
        prompt_version=str(plan.metadata["prompt_version"]),
        mode=request.mode,
        shard=request.shard,
        prices=config.prices,
        batch_api=request.batch_api,
        paths=plan.paths,
    )
    write_json(summary, plan.paths.summary)
    return summary


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
    """The dry run: projected tokens and cost of ``request`` from a seeded sample, spending nothing."""
    plan = prepare(request, need_engine=False)
    cached = [False] * len(plan.items)
    if plan.engine is not None and plan.paths.cache_dir.exists():
        cached = _cached_flags(plan)
    return project_usage(
        [(item.messages, item.text) for item in plan.items],
        cached,
        token_counter(plan.config),
        plan.config.prices,
        sample_size=sample_size,
        seed=seed,
        output_ratio=plan.config.thought_ratio,
    )


def _cached_flags(plan: Plan) -> list[bool]:
    """Which items already have a successful answer in the cache (read-only: no lock is taken)."""
    with ResultCache(plan.paths.cache_dir, None, {item.key for item in plan.items}) as cache:
        return [cache.status(item.key) == "ok" for item in plan.items]


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
    companions = [
        Path(p).with_name(Path(p).name.replace(".parquet", suffix))
        for p in inputs
        for suffix in (".failures.parquet", ".summary.json")
    ]
    check_outputs(inputs=[*inputs, *companions], files=[paths.result, paths.failures, paths.summary])
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
    write_json(summary, paths.summary)
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
    "Plan",
    "SynthesisRequest",
    "build_tables",
    "make_items",
    "merge_shards",
    "prepare",
    "project_run",
    "read_output_tables",
    "run_synthesis",
]
