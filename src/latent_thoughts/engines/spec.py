"""Which engine runs a model: a model folder, or an engine file naming a served or local model.

The ``MODEL`` argument of ``evaluate``, ``finetune-eval`` and ``estep`` is either a Hugging Face model folder
(run in-process by the transformers engine) or a YAML engine file. An engine file names its engine
the way a teacher file does, ``kind`` and that kind's own options (validated by the engine's
options class, so a misspelt key gets a suggestion), plus the tokenizer that lays prompts out as
token ids::

    kind: http                               # a model behind `latent-thoughts serve`, vLLM or an API
    http: {base_url: http://127.0.0.1:8000/v1, model: ""}  # or a list of servers (round-robin)
    tokenizer: runs/thoughts/model           # the served model's tokenizer folder (needed for http)

    kind: transformers                       # a local model with engine options
    transformers: {model: runs/thoughts/model, device: cuda:1, dtype: bf16}

:func:`read_engine_spec` turns the argument into an :class:`EngineSpec`; :func:`engine_options`
validates a kind's options and :func:`build_engine` makes the engine (teacher files use both too).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from latent_thoughts.config import StageConfig, load_config, validate_config
from latent_thoughts.engines.base import Engine
from latent_thoughts.errors import LatentThoughtsError

EngineKind = Literal["http", "transformers"]

ENGINE_FILE_SUFFIXES = (".yaml", ".yml")
"""File names that make a ``MODEL`` argument an engine file rather than a model folder."""


class EngineSpec(StageConfig):
    """An engine file: the kind of engine, that kind's options and (for http) the model's tokenizer."""

    kind: EngineKind
    http: dict[str, Any] = Field(default_factory=dict, description="HTTP engine options (kind: http)")
    transformers: dict[str, Any] = Field(
        default_factory=dict, description="transformers engine options (kind: transformers)"
    )
    tokenizer: str | None = Field(
        None, description="kind http: the served model's tokenizer folder (prompts are laid out as ids)"
    )

    @model_validator(mode="after")
    def _tokenizer_where_needed(self) -> EngineSpec:
        if self.kind == "http" and not self.tokenizer:
            raise ValueError("kind http needs 'tokenizer' (the served model's tokenizer folder)")
        if self.kind == "transformers" and self.tokenizer:
            raise ValueError("kind transformers takes its tokenizer as 'transformers.tokenizer'")
        return self


def engine_options(kind: EngineKind, options: Mapping[str, Any], source: str = "engine") -> StageConfig:
    """``options`` validated by the options class of ``kind``'s engine (one-line errors naming ``source``)."""
    if kind == "http":
        from latent_thoughts.engines.http_engine import HTTPEngineConfig

        return validate_config(HTTPEngineConfig, options, f"{source}: http")
    from latent_thoughts.engines.transformers_engine import TransformersEngineConfig

    return validate_config(TransformersEngineConfig, options, f"{source}: transformers")


def build_engine(kind: EngineKind, options: Mapping[str, Any], source: str = "engine") -> Engine:
    """The engine of ``kind`` with ``options`` (a transformers model is loaded here)."""
    config = engine_options(kind, options, source)
    if kind == "http":
        from latent_thoughts.engines.http_engine import HTTPEngine, HTTPEngineConfig

        assert isinstance(config, HTTPEngineConfig)
        return HTTPEngine(config)
    from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

    assert isinstance(config, TransformersEngineConfig)
    return TransformersEngine(config)


def is_engine_file(model: str | Path) -> bool:
    """Whether a ``MODEL`` argument names an engine file (``.yaml``/``.yml``) rather than a folder."""
    return Path(model).suffix.lower() in ENGINE_FILE_SUFFIXES


def read_engine_spec(model: str | Path, local_options: Mapping[str, Any] | None = None) -> EngineSpec:
    """The engine of a ``MODEL`` argument: an engine file, or a model folder (kind transformers).

    ``local_options`` (``device``, ``dtype``, ...: what the command line set; None values are
    ignored) are merged into a transformers engine's options; they are an error for a served model,
    where the server decides.
    """
    local = {key: value for key, value in (local_options or {}).items() if value is not None}
    if is_engine_file(model):
        spec = load_config(EngineSpec, model)
        source = str(model)
    else:
        if not Path(model).is_dir():
            raise LatentThoughtsError(f"{model}: no such model folder (or engine file, *.yaml)")
        spec = EngineSpec(kind="transformers", transformers={"model": str(model)})
        source = "MODEL"
    if local:
        if spec.kind == "http":
            names = ", ".join(f"--{key}" for key in local)
            raise LatentThoughtsError(f"{names}: {model} is a served model (kind http); its server decides")
        spec = spec.model_copy(update={"transformers": {**spec.transformers, **local}})
    engine_options(spec.kind, spec.http if spec.kind == "http" else spec.transformers, source)
    return spec


def http_spec(base_url: str, tokenizer: str | Path) -> EngineSpec:
    """The engine of ``--base-url URL``: the model served there, prompts laid out by ``tokenizer``."""
    return EngineSpec(kind="http", http={"base_url": base_url}, tokenizer=str(tokenizer))


def command_line_spec(
    model: str | Path, base_url: str | None, local_options: Mapping[str, Any] | None = None
) -> EngineSpec:
    """The engine a command's ``MODEL``, ``--base-url`` and local flags (``--device``, ``--dtype``) name.

    With ``base_url``, MODEL is the served model's tokenizer folder, and an engine file or a local flag
    is a one-line error (the file or the server already decides); without, :func:`read_engine_spec`.
    """
    if base_url:
        if is_engine_file(model):
            raise LatentThoughtsError(
                f"--base-url: {model} is an engine file already; set http.base_url there"
            )
        if any(value is not None for value in (local_options or {}).values()):
            raise LatentThoughtsError(
                "--device/--dtype: the model served at --base-url runs where its server puts it"
            )
        return http_spec(base_url, model)
    return read_engine_spec(model, local_options)


@contextmanager
def open_engine(spec: EngineSpec) -> Iterator[tuple[Engine, Any]]:
    """``(engine, tokenizer)`` of ``spec``, closed (an HTTP client) when the block ends."""
    if spec.kind == "http":
        from latent_thoughts.engines.http_engine import HTTPEngine
        from latent_thoughts.tokenizer import load_tokenizer

        assert spec.tokenizer is not None
        tokenizer = load_tokenizer(spec.tokenizer)
        engine = build_engine("http", spec.http)
        assert isinstance(engine, HTTPEngine)
        with engine:
            yield engine, tokenizer
        return
    from latent_thoughts.engines.transformers_engine import TransformersEngine

    local = build_engine("transformers", spec.transformers)
    assert isinstance(local, TransformersEngine)
    yield local, local.tokenizer


def local_model_dir(spec: EngineSpec, what: str) -> Path:
    """The model folder of a local (transformers) engine; a served model is a one-line error for ``what``."""
    if spec.kind != "transformers":
        raise LatentThoughtsError(
            f"{what} needs a local model (a folder or kind transformers), not kind http"
        )
    folder = spec.transformers.get("model")
    if not folder or not Path(folder).is_dir():
        raise LatentThoughtsError(f"{folder or '(none)'}: no such model folder")
    return Path(folder)
