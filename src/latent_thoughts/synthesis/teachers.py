"""Teacher configuration (a TEACHER.yaml) and building the engine it names.

A teacher file says which engine writes the thoughts and how the run drives it::

    kind: http                  # http | transformers | oracle
    http: {base_url: ..., model: gpt-4o-mini, api_key_env: OPENAI_API_KEY, concurrency: 16}
    sampling: {temperature: 0.7, max_new_tokens: 1024}
    prices: {input_per_million: 0.15, output_per_million: 0.60, batch_discount: 0.5}
    batch_size: 64              # conversations per engine call

The section of the chosen kind is validated by that engine's own options class, so a misspelt key
there is reported with a suggestion like anywhere else; the sections of other kinds are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from latent_thoughts.config import StageConfig, load_config
from latent_thoughts.engines import spec
from latent_thoughts.engines.base import Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.synthesis.costs import Prices, TokenCounter, make_counter
from latent_thoughts.synthesis.pipeline import DEFAULT_REFUSAL_PATTERNS, Sampling

TeacherKind = Literal["http", "transformers", "oracle"]


class OracleTeacher(StageConfig):
    """Options of the testbed's oracle teacher (:class:`latent_thoughts.testbed.TestbedOracle`)."""

    noise: float = Field(0.0, ge=0, le=1, description="chance a thought is wrong")
    irrelevant_share: float = Field(
        0.5, ge=0, le=1, description="share of wrong thoughts that are irrelevant"
    )
    seed: int = Field(0, description="seed of the noise when a call passes none")
    plan_numbers: bool = Field(True, description="a posing sentence's plan restates its numbers")


class BatchApiOptions(StageConfig):
    """How ``--batch-api`` drives the OpenAI Batch API (files + batches endpoints)."""

    poll_interval_s: float = Field(
        30.0, gt=0, description="seconds between status checks of a batch in flight"
    )
    max_requests_per_batch: int = Field(50_000, gt=0, le=50_000, description="the API allows 50,000")
    completion_window: Literal["24h"] = "24h"


class TeacherConfig(StageConfig):
    """A teacher: which engine, how to sample, what it costs, and how the run drives it."""

    kind: TeacherKind
    identity: str | None = Field(
        None,
        description="names the teacher in cache keys and outputs; default the engine's own identity, which "
        "for http includes the server URL (set it when shards talk to different servers of one model)",
    )
    http: dict[str, Any] = Field(default_factory=dict, description="HTTP engine options (kind: http)")
    transformers: dict[str, Any] = Field(
        default_factory=dict, description="transformers engine options (kind: transformers)"
    )
    oracle: OracleTeacher = OracleTeacher()
    sampling: Sampling = Sampling()
    prices: Prices = Prices()
    batch_size: int = Field(32, gt=0, description="conversations per engine call; results are saved per call")
    delay_s: float = Field(0.0, ge=0, description="pause before every engine call (crude rate limiting)")
    max_consecutive_errors: int = Field(16, gt=0, description="requests failing in a row that stop the run")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS),
        description="case-insensitive regular expressions; an answer opening with one is a refusal",
    )
    count_tokens_with: str = Field(
        "auto",
        description="dry-run token counter: auto, chars, o200k_base, cl100k_base or a tokenizer folder",
    )
    thought_ratio: float = Field(2.3, gt=0, description="answer length over text length, for the dry run")
    style_seed: int = Field(0, description="seed of the per-document WRAP style draw")
    batch_api: BatchApiOptions = BatchApiOptions()


def load_teacher(path: str | Path, overrides: Sequence[str] = ()) -> TeacherConfig:
    """Read a TEACHER.yaml with ``key=value`` overrides; the chosen engine's section is validated too."""
    config = load_config(TeacherConfig, path, overrides)
    engine_options(config, source=str(path))
    return config


def engine_options(config: TeacherConfig, source: str = "teacher") -> StageConfig:
    """The validated options of the engine ``config`` names (its own options class)."""
    if config.kind == "oracle":
        return config.oracle
    section = config.http if config.kind == "http" else config.transformers
    return spec.engine_options(config.kind, section, source)


def build_teacher(config: TeacherConfig, source: str = "teacher") -> Engine:
    """The engine of ``config``, ready to chat (a transformers model is loaded here)."""
    if config.kind != "oracle":
        section = config.http if config.kind == "http" else config.transformers
        return spec.build_engine(config.kind, section, source)
    from latent_thoughts.testbed.oracle import TestbedOracle

    oracle = config.oracle
    return TestbedOracle(oracle.noise, oracle.irrelevant_share, oracle.seed, oracle.plan_numbers)


def token_counter(config: TeacherConfig) -> TokenCounter:
    """The dry run's token counter; ``auto`` uses a transformers teacher's own tokenizer."""
    folder = None
    if config.kind == "transformers":
        folder = config.transformers.get("tokenizer") or config.transformers.get("model")
    return make_counter(config.count_tokens_with, folder)


def describe_teacher(config: TeacherConfig) -> str:
    """A short description for messages, e.g. ``http gpt-4o-mini at https://...``."""
    if config.kind == "http":
        urls = config.http.get("base_url", "?")
        where = ", ".join(urls) if isinstance(urls, list) else urls
        return f"http {config.http.get('model', '?')} at {where}"
    if config.kind == "transformers":
        return f"transformers {config.transformers.get('model', '?')}"
    return f"testbed oracle (noise {config.oracle.noise})"


def require_kind(config: TeacherConfig, kind: TeacherKind, what: str) -> None:
    """Raise a one-line error unless the teacher is of ``kind`` (e.g. the Batch API needs http)."""
    if config.kind != kind:
        raise LatentThoughtsError(f"{what} needs a teacher of kind {kind!r}, this one is {config.kind!r}")
