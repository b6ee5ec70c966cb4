"""Teacher configuration (a TEACHER.yaml) and building the engine it names.

A teacher file says which engine writes the thoughts and how the run drives it::

    kind: http                  # http | transformers | oracle
    http: {base_url: ..., model: gpt-4o-mini, api_key_env: OPENAI_API_KEY, concurrency: 16}
    sampling: {temperature: 0.7, max_new_tokens: 1024}
    on_cut: raw                 # an answer cut at max_new_tokens: keep | retry_longer | raw
    prices: {input_per_million: 0.15, output_per_million: 0.60, batch_discount: 0.5}
    batch_size: 64              # conversations per engine call
    tokenizer: runs/model       # a served model's tokenizer folder: the dry run counts with it

The section of the chosen kind is validated by that engine's own options class, so a misspelt key
there is reported with a suggestion like anywhere else; the sections of other kinds are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from latent_thoughts.config import StageConfig, load_config
from latent_thoughts.engines import spec
from latent_thoughts.engines.base import Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.synthesis.costs import (
    Prices,
    TokenCounter,
    character_estimate,
    make_counter,
    tiktoken_counter,
    word_counter,
)
from latent_thoughts.synthesis.pipeline import (
    DEFAULT_REFUSAL_PATTERNS,
    CutPolicy,
    OnCut,
    Sampling,
    retry_budgets,
)

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
    on_cut: OnCut = Field(
        "raw",
        description="an answer cut at sampling.max_new_tokens: keep (the cut answer is the thought), "
        "retry_longer (ask again with twice the budget up to retry_max_new_tokens; still cut there: raw) "
        "or raw (the chunk gets no thought and trains as raw text); never a failure",
    )
    retry_max_new_tokens: int | None = Field(
        None, gt=0, description="retry_longer: the largest budget (default 4 x sampling.max_new_tokens)"
    )
    tokenizer: str | None = Field(
        None,
        description="the teacher model's tokenizer folder (a served model's, for kind http): the dry run "
        "counts tokens with it",
    )
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
        description="dry-run token counter: auto (the teacher's tokenizer folder, an OpenAI model's tiktoken "
        "encoding, the oracle's words, else 4 characters a token), chars, words, o200k_base, cl100k_base or a "
        "tokenizer folder",
    )
    thought_ratio: float = Field(2.3, gt=0, description="answer length over text length, for the dry run")
    style_seed: int = Field(0, description="seed of the per-document WRAP style draw")
    batch_api: BatchApiOptions = BatchApiOptions()

    @model_validator(mode="after")
    def _cap_above_budget(self) -> TeacherConfig:
        cap = self.retry_max_new_tokens
        if cap is not None and cap < self.sampling.max_new_tokens:
            raise ValueError(
                f"retry_max_new_tokens ({cap}) is below sampling.max_new_tokens ({self.sampling.max_new_tokens})"
            )
        return self

    @property
    def cut_policy(self) -> CutPolicy:
        """What a cut answer becomes, with the budgets ``retry_longer`` asks with in turn (each twice
        the last, up to ``retry_max_new_tokens``)."""
        if self.on_cut != "retry_longer":
            return CutPolicy(self.on_cut)
        first = self.sampling.max_new_tokens
        cap = self.retry_max_new_tokens or 4 * first
        return CutPolicy(self.on_cut, retry_budgets(first, cap))


def write_oracle_teacher(path: str | Path, **oracle: Any) -> Path:
    """Write a teacher file of the testbed oracle with the options ``oracle`` (``noise``, ``seed``,
    ``irrelevant_share``, ``plan_numbers``) to ``path``; returns the path."""
    import yaml

    from latent_thoughts.atomic import write_text

    write_text(path, yaml.safe_dump({"kind": "oracle", "oracle": oracle}, sort_keys=False))
    return Path(path)


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


OPENAI_MODEL_PREFIXES = ("gpt-", "chatgpt-", "o1", "o3", "o4", "davinci", "babbage")
"""Model names of OpenAI's models: the ones a tiktoken encoding counts."""


def is_openai_model(config: TeacherConfig) -> bool:
    """Whether an http teacher is one of OpenAI's models (api.openai.com, or a model name of theirs)."""
    if config.kind != "http":
        return False
    urls = config.http.get("base_url") or []
    urls = [urls] if isinstance(urls, str) else urls
    if any("api.openai.com" in str(url) for url in urls):
        return True
    model = str(config.http.get("model") or "").lower().removeprefix("openai/")
    return model.startswith(OPENAI_MODEL_PREFIXES)


def openai_encoding(model: str) -> str:
    """The tiktoken encoding of an OpenAI model: cl100k_base for GPT-4 and GPT-3.5, else o200k_base
    (GPT-4o, GPT-4.1, the o-series and later)."""
    model = model.lower().removeprefix("openai/")
    older = model.startswith(("gpt-4-", "gpt-3.5")) or model == "gpt-4"
    return "cl100k_base" if older else "o200k_base"


def teacher_tokenizer(config: TeacherConfig) -> str | None:
    """The teacher model's tokenizer folder: ``tokenizer``, else a transformers teacher's
    ``transformers.tokenizer`` or model folder; None when the file names none."""
    if config.tokenizer:
        return config.tokenizer
    if config.kind == "transformers":
        folder = config.transformers.get("tokenizer") or config.transformers.get("model")
        return str(folder) if folder else None
    return None


def token_counter(config: TeacherConfig) -> TokenCounter:
    """The dry run's token counter.

    ``count_tokens_with: auto`` counts with the teacher model's own tokenizer when the file names
    one (:func:`teacher_tokenizer`: a served or local model), with the model's tiktoken encoding for
    OpenAI's models only, words for the testbed oracle (its unit), and else four characters a token.
    """
    spec = config.count_tokens_with
    if spec != "auto":
        return make_counter(spec)
    folder = teacher_tokenizer(config)
    if folder is not None:
        return make_counter(folder)
    if config.kind == "oracle":
        return word_counter()
    if is_openai_model(config):
        return tiktoken_counter(openai_encoding(str(config.http.get("model") or ""))) or character_estimate()
    counter = character_estimate()
    return TokenCounter(
        f"{counter.name}; set tokenizer: to the served model's tokenizer folder to count exactly",
        counter.count,
    )


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
