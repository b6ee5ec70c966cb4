"""The E-step stage over a chunk file: ``latent-thoughts estep`` (METHOD section 5).

For every chunk of ``chunks.parquet`` (or of one shard, ``--shard i/N``):

1. its layout: the document is tokenized once and cut at the chunks (the training format's cut,
   :func:`~latent_thoughts.format.tokenize_chunks`); the prefix c is the chunk file's prefix (the
   tokens of the chunks it covers) and :func:`~latent_thoughts.format.e_step_layout` makes the one
   truncation decision (oldest prefix tokens first, then the end of the chunk);
2. K thoughts from the model in the posterior role, scored in both roles on one numeric path
   (:func:`latent_thoughts.em.estep.estep_chunks`): log q, log p, log w = log p - log q;
3. per chunk the bound log (1/K) sum w and the effective sample size (sum w)^2 / sum w^2;
4. one thought chosen by a selection policy (:mod:`latent_thoughts.em.selection`).

Steps 1-3 of a batch of chunks are appended to the generation cache
(:mod:`latent_thoughts.generation.cache`, ``NAME.cache/``) before the next batch starts, so a killed
run resumes where it stopped and shards share one cache. The key hashes the prefix, the chunk, the
model (its identity and a hash of its weights), the layout version and the sampling settings (K,
thought budget, context, seed, proposal temperature); the record's payload is the chunk's
:class:`ChunkSamples` (records of older runs, which hold it as JSON text, read the same). Selection
runs when the output is written, from the cached samples, so changing the policy costs no sampling.

:class:`EStepStage` is the stage as the generation runner (and the Ray and Slurm executors) run it
(:mod:`latent_thoughts.generation.stage`); :func:`run_estep` runs it in this process. Its engine is
an engine spec (:func:`engine_spec`) opened by :func:`latent_thoughts.engines.spec.open_engine`.

The output ``NAME.parquet`` has one row per chunk: ``doc_id, chunk_index, thought`` (the selected
thought's text, null when the policy kept none) -- the columns the trainer's ``thoughts`` source
reads, the same as a teacher's thoughts file -- then ``thought_ids``, the selected thought's token
ids as they were sampled and weighted (its closing EOL left out), and every sample with its scores
(see :data:`SAMPLE_SCHEMA`). The text is a decoding (whitespace stripped, byte fragments and special
tokens turned into characters) that would not tokenize back to those ids, so the trainer trains on
the ids when the file's metadata names its tokenizer (entry ``tokenizer``: the
:func:`~latent_thoughts.format.tokenizer_fingerprint` of the E-step's tokenizer; absent in outputs
written before the ids were), on the text otherwise. ``NAME.summary.json`` holds the run's means. Shards write
``NAME.shard-i-of-N.parquet``; :func:`merge_sample_shards` (``latent-thoughts merge``) joins them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from latent_thoughts.atomic import write_json
from latent_thoughts.config import StageConfig
from latent_thoughts.corpus import Chunk
from latent_thoughts.em.estep import ThoughtScore, effective_sample_size, estep_chunks, log_mean_weight
from latent_thoughts.em.selection import Candidates, get_policy, select
from latent_thoughts.engines.base import Engine
from latent_thoughts.engines.spec import EngineSpec
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.fingerprint import model_fingerprint
from latent_thoughts.format import (
    TOKENIZER_KEY,
    EStepLayout,
    SpecialIds,
    TruncationCounter,
    e_step_layout,
    tokenize_chunks,
    tokenizer_fingerprint,
)
from latent_thoughts.generation.cache import CacheRecord, ResultCache, cache_key
from latent_thoughts.generation.outputs import (
    OutputPaths,
    output_paths,
    read_metadata,
    with_metadata,
    write_table,
)
from latent_thoughts.generation.shards import order_shard_outputs, shard_files, shard_or_whole
from latent_thoughts.generation.stage import STAGE_KEY, request_json, request_of, run_stage, stage_name
from latent_thoughts.outputs import RunPaths

logger = logging.getLogger(__name__)

LAYOUT_VERSION = "estep-v2"
"""Version of the E-step layout and record format (part of every cache key). v2: the sampler draws at
most ``max_thought_tokens - 1`` tokens (a cut thought's appended EOL fits the budget and the context),
and log q of a cut thought leaves out that appended EOL, which the sampler never drew."""

MODE = "estep"
"""The ``mode`` stored in an E-step output's metadata (its merge accepts only shards of this mode)."""

SAMPLE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("chunk_index", pa.int64()),
        ("thought", pa.string()),  # the selected thought (null: none kept); what the trainer reads
        ("chosen", pa.int64()),  # its index among the samples, -1 for none
        ("thought_ids", pa.list_(pa.int64())),  # its token ids as weighted, EOL excluded (null: none)
        ("key", pa.string()),
        ("samples", pa.list_(pa.string())),  # the K thoughts, EOL excluded
        ("sample_tokens", pa.list_(pa.int64())),  # their token counts, EOL excluded
        ("finish_reasons", pa.list_(pa.string())),  # stop (EOL) or length (thought budget)
        ("log_q", pa.list_(pa.float64())),
        ("log_p", pa.list_(pa.float64())),
        ("log_w", pa.list_(pa.float64())),
        ("ess", pa.float64()),  # (sum w)^2 / sum w^2
        ("log_mean_w", pa.float64()),  # log (1/K) sum w: the chunk's bound
        ("dropped_tokens", pa.int64()),  # prefix and chunk tokens cut by the truncation rule
        ("text", pa.string()),  # the chunk, for the testbed checker's coverage rule
    ]
)


class EStepConfig(StageConfig):
    """Options of the E-step (METHOD section 5; reference K = 4, thoughts up to 1,024 tokens)."""

    k: int = Field(4, ge=1, description="thoughts sampled per chunk")
    max_thought_tokens: int = Field(1024, gt=0, description="longest thought, its EOL included")
    temperature: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="proposal temperature (1.0 is the paper's); log q is scored at the same temperature",
    )
    context_tokens: int | None = Field(
        None, gt=8, description="longest E-step sequence (default: the model's max_position_embeddings)"
    )
    policy: str = Field("importance", description="importance, highest, uniform or checker")
    seed: int = Field(0, description="seed of the sampling and of the selection")
    batch_chunks: int = Field(32, gt=0, description="chunks per engine call and per cache write")
    batch_tokens: int | None = Field(
        None,
        gt=0,
        description="memory bound of one forward batch of a local engine, in cached positions: "
        "rows x (prompt + max_thought_tokens) when sampling, rows x (context + thought) when scoring "
        "(default: the engine's, 16,384)",
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        get_policy(value)  # a one-line error listing the policies
        return value


@dataclass
class EStepRequest:
    """One ``estep`` run: the model (a folder; with ``base_url`` only its tokenizer and context length
    are used), the chunk file, the output and the options. ``engine_options`` are the engine's own:
    the HTTP engine's with ``base_url`` (timeout, retries and backoff, concurrency, ...), else the
    transformers engine's (they win over ``device`` and ``dtype``)."""

    model: Path
    chunks: Path
    out: Path
    config: EStepConfig = field(default_factory=EStepConfig)
    base_url: str | list[str] | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True


@dataclass(frozen=True)
class EStepItem:
    """One chunk's E-step work: its layout and cache key."""

    chunk: Chunk
    layout: EStepLayout
    key: str

    @property
    def keys(self) -> list[str]:
        """The one cache key of this item."""
        return [self.key]


# --- model identity ----------------------------------------------------------------------------


def context_limit(model: Path, configured: int | None, engine: Any = None) -> int:
    """The E-step context: ``configured``, else the model folder's ``max_position_embeddings`` (else
    2048), never beyond the engine's own ``max_context_tokens`` (a server's ``max_model_len``), which
    also stands in for a folder without ``config.json`` (a served model's tokenizer folder)."""
    limit = getattr(engine, "max_context_tokens", None)
    if configured is not None:
        if limit is not None and configured > limit:
            raise LatentThoughtsError(
                f"context_tokens={configured} is longer than the model's context of {limit} tokens "
                "(the engine's max_context_tokens; a server's max_model_len)"
            )
        return configured
    config_file = model / "config.json"
    value = (
        json.loads(config_file.read_text()).get("max_position_embeddings") if config_file.exists() else None
    )
    known = [v for v in (value if isinstance(value, int) and value > 8 else None, limit) if v is not None]
    return min(known) if known else 2048


# --- layouts and keys -----------------------------------------------------------------------------


def chunk_layouts(
    chunks: Sequence[Chunk], tokenizer: Any, context_tokens: int, thought_tokens: int
) -> list[tuple[Chunk, EStepLayout]]:
    """Each chunk with its E-step layout, in the order given (a document's chunks contiguous, as in a
    chunk file): each document is tokenized once; a chunk's prefix is the tokens of the earlier
    chunks that its ``prefix`` text covers. A chunk left with no token of its own (whitespace whose
    token went to the next chunk) has nothing to explain: it is left out and stays raw in training."""
    special = SpecialIds.from_tokenizer(tokenizer)
    counter = TruncationCounter()
    layouts: dict[tuple[str, int], EStepLayout] = {}
    for document in _documents(chunks):
        ids = tokenize_chunks(tokenizer, [chunk.text for chunk in document]).ids
        for position, chunk in enumerate(document):
            if not ids[position]:
                continue
            prefix_start = chunk.start - len(chunk.prefix)
            prefix = [
                token
                for earlier, earlier_ids in zip(document[:position], ids[:position], strict=True)
                if earlier.start >= prefix_start
                for token in earlier_ids
            ]
            layout = e_step_layout(special, prefix, ids[position], context_tokens, thought_tokens)
            layouts[(chunk.doc_id, chunk.chunk_index)] = counter.add(layout)
    counter.log()
    empty = len(chunks) - len(layouts)
    if empty:
        logger.warning("%d chunks have no token of their own; they get no thought", empty)
    return [(c, layouts[(c.doc_id, c.chunk_index)]) for c in chunks if (c.doc_id, c.chunk_index) in layouts]


def _documents(chunks: Sequence[Chunk]) -> list[list[Chunk]]:
    """Runs of chunks of one document, each sorted by chunk index."""
    runs: list[list[Chunk]] = []
    for chunk in chunks:
        if not runs or runs[-1][0].doc_id != chunk.doc_id:
            runs.append([])
        runs[-1].append(chunk)
    return [sorted(run, key=lambda c: c.chunk_index) for run in runs]


def sampling_key(config: EStepConfig, context_tokens: int) -> dict[str, Any]:
    """What of the options determines the samples (the policy and batch size do not)."""
    return {
        "k": config.k,
        "max_thought_tokens": config.max_thought_tokens,
        "context_tokens": context_tokens,
        "seed": config.seed,
        "temperature": config.temperature,
        "top_p": 1.0,
    }


def make_items(
    laid_out: Sequence[tuple[Chunk, EStepLayout]], model: str, sampling: dict[str, Any]
) -> list[EStepItem]:
    """One work item per chunk with its cache key."""
    return [
        EStepItem(
            chunk,
            layout,
            cache_key(
                task=MODE,
                prefix=chunk.prefix,
                text=chunk.text,
                teacher=model,
                prompt_version=LAYOUT_VERSION,
                sampling=sampling,
            ),
        )
        for chunk, layout in laid_out
    ]


# --- the cache's payload ---------------------------------------------------------------------------


class ChunkSamples(BaseModel):
    """One chunk's K samples: the typed payload of its E-step cache record (token ids closed by EOL,
    log q, log p, and the finish of each: ``stop`` at EOL, ``length`` at the thought budget)."""

    model_config = ConfigDict(strict=True, frozen=True)

    thought_ids: list[list[int]]
    log_q: list[float]
    log_p: list[float]
    finish: list[str]

    @model_validator(mode="after")
    def _k_of_each(self) -> ChunkSamples:
        k = len(self.thought_ids)
        if k < 1 or not all(ids for ids in self.thought_ids):
            raise ValueError("E-step samples: no thought, or an empty one")
        if not len(self.log_q) == len(self.log_p) == len(self.finish) == k:
            raise ValueError("E-step samples: the lists of thoughts and of their scores differ in length")
        return self

    @classmethod
    def of_scores(cls, scores: Sequence[ThoughtScore]) -> ChunkSamples:
        """The samples of one chunk's K scored thoughts."""
        return cls(
            thought_ids=[score.thought_ids for score in scores],
            log_q=[score.log_q for score in scores],
            log_p=[score.log_p for score in scores],
            finish=[score.finish_reason for score in scores],
        )

    @classmethod
    def from_record(cls, record: CacheRecord) -> ChunkSamples:
        """The samples of a cache record; raises ValueError when it holds none of the right shape.

        Records written before the cache held typed payloads keep the same object as JSON in their
        ``text``; they read the same, so a killed run's samples are never drawn again.
        """
        data = record.payload if record.payload is not None else json.loads(record.text)
        return cls.model_validate(data)

    @property
    def scores(self) -> list[ThoughtScore]:
        return [
            ThoughtScore(ids, q, p, f)
            for ids, q, p, f in zip(self.thought_ids, self.log_q, self.log_p, self.finish, strict=True)
        ]


def record_of(item: EStepItem, scores: Sequence[ThoughtScore], model: str) -> CacheRecord:
    """The cache record of one chunk's K scored thoughts (its :class:`ChunkSamples` as the payload)."""
    return CacheRecord(
        key=item.key,
        status="ok",
        text="",
        teacher=model,
        prompt_version=LAYOUT_VERSION,
        finish_reason="stop" if all(score.finish_reason == "stop" for score in scores) else "length",
        completion_tokens=sum(len(score.thought_ids) for score in scores),
        doc_id=item.chunk.doc_id,
        chunk_index=item.chunk.chunk_index,
        payload=ChunkSamples.of_scores(scores).model_dump(),
    )


# --- running ----------------------------------------------------------------------------------------


def sample_batches(
    todo: Sequence[EStepItem],
    engine: Engine,
    cache: ResultCache,
    config: EStepConfig,
    model: str,
    progress: bool = True,
) -> int:
    """Run the E-step on ``todo`` in batches of ``config.batch_chunks`` chunks, each batch's records
    fsynced to the cache before the next starts; returns the number of chunks sampled."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="chunk", desc="estep", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(todo), config.batch_chunks):
            batch = todo[start : start + config.batch_chunks]
            layouts = [item.layout for item in batch]
            scored = estep_chunks(
                engine, layouts, config.k, config.max_thought_tokens, config.seed, config.temperature
            )
            cache.append(record_of(item, scores, model) for item, scores in zip(batch, scored, strict=True))
            bar.update(len(batch))
    finally:
        bar.close()
    return len(todo)


def drawn_ids(thought_ids: Sequence[int], eol: int) -> list[int]:
    """A sampled thought's token ids without its closing EOL: what the trainer writes between
    ``SOL PRIOR`` (or ``SOL POST``) and the EOL of the training format."""
    ids = list(thought_ids)
    return ids[:-1] if ids[-1:] == [eol] else ids


def thought_text(tokenizer: Any, thought_ids: Sequence[int], eol: int) -> str:
    """A sampled thought as text: its tokens without the closing EOL, decoded as they are (a special
    token drawn inside a thought stays as its text; the trainer reads it back as plain characters)."""
    return str(tokenizer.decode(drawn_ids(thought_ids, eol), skip_special_tokens=False)).strip()


def build_table(
    items: Sequence[EStepItem], cache: ResultCache, tokenizer: Any, policy: str, seed: int
) -> tuple[pa.Table, int]:
    """The output table of ``items`` from the cache (selection applied now), and the count missing."""
    eol = SpecialIds.from_tokenizer(tokenizer).eol
    rows: list[dict[str, Any]] = []
    missing = 0
    for item in items:
        record = cache.get(item.key)
        if record is None or record.status != "ok":
            missing += 1
            continue
        samples = ChunkSamples.from_record(record)
        scores = samples.scores
        texts = [thought_text(tokenizer, ids, eol) for ids in samples.thought_ids]
        log_w = [score.log_w for score in scores]
        chosen = select(
            policy, Candidates(item.chunk.doc_id, item.chunk.chunk_index, item.chunk.text, texts, log_w), seed
        )
        rows.append(
            {
                "doc_id": item.chunk.doc_id,
                "chunk_index": item.chunk.chunk_index,
                "thought": texts[chosen] if chosen is not None else None,
                "chosen": -1 if chosen is None else chosen,
                "thought_ids": drawn_ids(samples.thought_ids[chosen], eol) if chosen is not None else None,
                "key": item.key,
                "samples": texts,
                "sample_tokens": [len(ids) - (ids[-1:] == [eol]) for ids in samples.thought_ids],
                "finish_reasons": samples.finish,
                "log_q": samples.log_q,
                "log_p": samples.log_p,
                "log_w": log_w,
                "ess": effective_sample_size(scores),
                "log_mean_w": log_mean_weight(scores),
                "dropped_tokens": item.layout.dropped_prefix + item.layout.dropped_chunk,
                "text": item.chunk.text,
            }
        )
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), missing


def table_summary(table: pa.Table) -> dict[str, Any]:
    """Means over a samples table: bound, ESS, thought lengths, the share of thoughts closed by EOL."""
    rows = table.num_rows
    if rows == 0:
        return {"chunks": 0}
    bounds = table.column("log_mean_w").to_pylist()
    ess = table.column("ess").to_pylist()
    chosen = table.column("chosen").to_pylist()
    lengths = table.column("sample_tokens").to_pylist()
    finishes = [f for group in table.column("finish_reasons").to_pylist() for f in group]
    selected = [group[index] for group, index in zip(lengths, chosen, strict=True) if index >= 0]
    k = len(lengths[0])
    return {
        "chunks": rows,
        "k": k,
        "mean_bound": sum(bounds) / rows,
        "mean_ess": sum(ess) / rows,
        "mean_thought_tokens": sum(selected) / len(selected) if selected else 0.0,
        "mean_sample_tokens": sum(sum(group) for group in lengths) / (rows * k),
        "selected": len(selected),
        "closed_by_eol": sum(f == "stop" for f in finishes) / len(finishes),
    }


# --- the engine ---------------------------------------------------------------------------------------


class EStepEngine(NamedTuple):
    """The E-step's open engine: the engine, the model identity that goes into cache keys, and the
    tokenizer that lays the chunks out."""

    engine: Engine
    identity: str
    tokenizer: Any


def engine_spec(request: EStepRequest) -> EngineSpec:
    """The engine of ``request`` as an engine file would name it (opened by
    :func:`latent_thoughts.engines.spec.open_engine`): the model served at ``base_url``, with the
    vLLM extensions the E-step needs, or the local model with the stage's device, dtype and token
    batch (an engine file's options win over them)."""
    if request.base_url:
        if request.config.temperature != 1.0:  # refused before any sampling, not at the first score
            raise LatentThoughtsError(
                f"temperature={request.config.temperature}: a served model scores at temperature 1 only; "
                "use a local model for a tempered proposal"
            )
        # stop ids and ignore_eos (thoughts end at EOL, never at EOS) are vLLM extensions that
        # ``latent-thoughts serve`` also speaks
        served = {"vllm_extras": True, **request.engine_options, "base_url": request.base_url}
        return EngineSpec(kind="http", http=served, tokenizer=str(request.model))
    options: dict[str, Any] = {"device": request.device, "dtype": request.dtype}
    if request.config.batch_tokens is not None:
        options["batch_tokens"] = request.config.batch_tokens
    return EngineSpec(
        kind="transformers", transformers={**options, **request.engine_options, "model": str(request.model)}
    )


def model_identity(engine: Engine, request: EStepRequest) -> str:
    """The model's name in cache keys: a served model's identity (its name asked of the server), or a
    local model's with the hash of its weights (:func:`~latent_thoughts.fingerprint.model_fingerprint`:
    the one the trainer recorded beside them while they are unchanged, so no E-step hashes them)."""
    if request.base_url:
        _ = getattr(engine, "model", None)  # resolves the served model's name, which completes the identity
        return engine.identity
    return f"{engine.identity}:{model_fingerprint(request.model)}"


# --- the stage ----------------------------------------------------------------------------------------


@dataclass
class EStepStage:
    """The E-step as a :class:`~latent_thoughts.generation.stage.GenerationStage`: one work item per
    chunk (its layout and key), K thoughts sampled and scored per batch of chunks, the selection and
    the output written from the cache. One object runs one shard once."""

    request: EStepRequest
    name: ClassVar[str] = "estep"
    _started: float = field(default_factory=time.monotonic, init=False, repr=False, compare=False)
    _sampled: int = field(default=0, init=False, repr=False, compare=False)

    @property
    def chunks(self) -> Path:
        return self.request.chunks

    @property
    def shard(self) -> tuple[int, int] | None:
        return self.request.shard

    def with_shard(self, shard: tuple[int, int] | None) -> EStepStage:
        return EStepStage(replace(self.request, shard=shard_or_whole(shard), progress=False))

    def check(self, executor: str | None = None) -> None:
        engine_spec(self.request)

    def run_paths(self) -> RunPaths:
        paths = self.outputs()
        return RunPaths(
            inputs=[self.request.chunks, self.request.model],
            models=[self.request.model],
            files=[paths.result, paths.summary],
            folders=[paths.cache_dir],
        )

    def outputs(self) -> OutputPaths:
        return output_paths(self.request.out, self.request.shard)

    @contextmanager
    def engine(self) -> Iterator[EStepEngine]:
        from latent_thoughts.engines.spec import open_engine

        with open_engine(engine_spec(self.request)) as (engine, tokenizer):
            yield EStepEngine(engine, model_identity(engine, self.request), tokenizer)

    def items(self, chunks: Sequence[Chunk], engine: EStepEngine) -> list[EStepItem]:
        config = self.request.config
        context_tokens = context_limit(self.request.model, config.context_tokens, engine.engine)
        laid_out = chunk_layouts(chunks, engine.tokenizer, context_tokens, config.max_thought_tokens)
        return make_items(laid_out, engine.identity, sampling_key(config, context_tokens))

    def validate(self, record: CacheRecord) -> None:
        ChunkSamples.from_record(record)

    def pending(self, items: Sequence[EStepItem], cache: ResultCache) -> list[EStepItem]:
        todo = [item for item in items if cache.status(item.key) != "ok"]
        logger.info("%d chunks: %d cached, %d to sample", len(items), len(items) - len(todo), len(todo))
        return todo

    def run_batch(self, engine: EStepEngine, todo: Sequence[EStepItem], cache: ResultCache) -> None:
        config = self.request.config
        if todo:
            self._sampled = sample_batches(
                todo, engine.engine, cache, config, engine.identity, self.request.progress
            )

    def write(
        self, items: Sequence[EStepItem], cache: ResultCache, engine: EStepEngine, fingerprint: str
    ) -> dict[str, Any]:
        request, config, paths = self.request, self.request.config, self.outputs()
        table, missing = build_table(items, cache, engine.tokenizer, config.policy, config.seed)
        if missing:
            raise LatentThoughtsError(f"{request.out}: {missing} chunks have no samples after the run")
        shard = request.shard
        metadata = {
            "format": 1,
            STAGE_KEY: stage_name(type(self)),
            "mode": MODE,
            "model": engine.identity,
            "layout_version": LAYOUT_VERSION,
            "chunks_fingerprint": fingerprint,
            "sampling": sampling_key(
                config, context_limit(request.model, config.context_tokens, engine.engine)
            ),
            "policy": config.policy,
            "shard": f"{shard[0]}/{shard[1]}" if shard and shard[1] > 1 else None,
            TOKENIZER_KEY: tokenizer_fingerprint(engine.tokenizer),
        }
        write_table(with_metadata(table, metadata), paths.result)
        usage = engine.engine.usage
        summary = {
            **table_summary(table),
            "sampled_now": self._sampled,
            "from_cache": len(items) - self._sampled,
            "policy": config.policy,
            "model": engine.identity,
            "result": str(paths.result),
            "elapsed_s": round(time.monotonic() - self._started, 2),
            "shard": metadata["shard"],
            # requests the engine retried this run (timeouts, lost connections, 429/5xx) and why
            "retries": usage.retries,
            "failures": dict(usage.failures),
        }
        write_json(paths.summary, summary)
        return summary

    @classmethod
    def merge(cls, out: Path, shards: Sequence[Path]) -> dict[str, Any]:
        return merge_sample_shards(out, shards)

    def combine(
        self, summaries: Sequence[dict[str, Any]], merged: dict[str, Any] | None, started: float
    ) -> dict[str, Any]:
        """The shards' summaries with chunks sampled now and from the cache added up over them."""
        first = summaries[0]
        if merged is None:
            summary = dict(first)
        else:
            summary = {
                **merged,
                "sampled_now": sum(s.get("sampled_now", 0) for s in summaries),
                "from_cache": sum(s.get("from_cache", 0) for s in summaries),
                "policy": first["policy"],
                "model": first["model"],
                "result": str(self.outputs().result),
                "shard": None,
            }
        summary["elapsed_s"] = round(time.monotonic() - started, 2)
        return summary

    def spec(self) -> dict[str, Any]:
        request = self.request
        absolute = {name: getattr(request, name).resolve() for name in ("model", "chunks", "out")}
        return request_json(replace(request, **absolute))

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> EStepStage:
        return cls(request_of(EStepRequest, data))


def run_estep(request: EStepRequest) -> dict[str, Any]:
    """Run (or resume) the E-step of ``request`` in this process; returns the summary also written
    next to the output (:func:`~latent_thoughts.generation.stage.run_stage` of :class:`EStepStage`)."""
    return run_stage(EStepStage(request))


# --- merge -----------------------------------------------------------------------------------------


def merge_sample_shards(out: Path, inputs: Sequence[Path] = ()) -> dict[str, Any]:
    """Join ``NAME.shard-i-of-N.parquet`` E-step outputs into ``out`` (what an unsharded run writes).

    All shards 0..N-1 of one N must be there, from the same chunk file, model, sampling, policy and
    tokenizer. Shards written before the ``thought_ids`` column existed (none of them has it) merge
    with the column null: the trainer reads their thoughts' text, as it did; mixing them with newer
    shards is an error naming the file.
    """
    inputs = list(inputs) or shard_files(out)
    if not inputs:
        raise LatentThoughtsError(
            f"{out}: no shard outputs ({out.with_suffix('')}.shard-i-of-N.parquet) to merge"
        )
    ordered, first = order_shard_outputs(
        out,
        [(Path(path), read_metadata(Path(path))) for path in inputs],
        "estep",
        ("model", "layout_version", "chunks_fingerprint", "sampling", "policy"),
        accept=lambda meta: meta.get("mode") == MODE,
    )
    tables = [pq.read_table(path) for path in ordered]
    with_ids = ["thought_ids" in table.column_names for table in tables]
    if any(with_ids) and not all(with_ids):
        raise LatentThoughtsError(
            f"{ordered[with_ids.index(False)]}: written before E-step outputs held thought_ids, unlike "
            f"{ordered[with_ids.index(True)]}; rerun it (its samples come from the cache) and merge again"
        )
    for path in ordered[1:]:
        tokenizer = read_metadata(path).get(TOKENIZER_KEY)
        if tokenizer != first.get(TOKENIZER_KEY):
            raise LatentThoughtsError(
                f"{path}: its thought_ids are of another tokenizer ({tokenizer}) than shard 0's "
                f"({first.get(TOKENIZER_KEY)})"
            )
    if not all(with_ids):  # older shards: the trainer reads the text
        tables = [
            table.append_column("thought_ids", pa.nulls(table.num_rows, pa.list_(pa.int64())))
            for table in tables
        ]
    table = pa.concat_tables(
        [table.select(SAMPLE_SCHEMA.names).replace_schema_metadata(None) for table in tables]
    )
    write_table(with_metadata(table.cast(SAMPLE_SCHEMA), {**first, "shard": None}), output_paths(out).result)
    summary = {
        **table_summary(table),
        "merged_from": [str(path) for path in ordered],
        "result": str(out),
    }
    write_json(output_paths(out).summary, summary)
    return summary
