"""Typed options of ``latent-thoughts em`` (METHOD section 6); every number is a field, never a constant.

:class:`EMConfig` holds what every EM run has (the run folder, seed, iterations, the E-step, the
M-step); an experiment (:mod:`latent_thoughts.em.experiment`) extends it with its own sections: the
testbed its recipe (``experiment: testbed``, the default, ``configs/em/testbed-small.yaml``), a real
corpus its documents, teacher, model and evaluations (``experiment: corpus``,
``configs/em/textbooks-tiny.yaml``). :func:`load_em_config` picks the experiment's class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from latent_thoughts.config import (
    ConfigError,
    StageConfig,
    deep_merge,
    parse_overrides,
    read_yaml,
    validate_config,
)
from latent_thoughts.em.estep_engine import EStepEngine
from latent_thoughts.em.stage import EStepConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.train.config import parse_token_count

DEFAULT_EXPERIMENT = "testbed"


class MStepConfig(StageConfig):
    """How each M-step trains (METHOD section 6: from the base model, on the bootstrap split)."""

    init: Literal["base", "previous"] = Field(
        "base", description="base: the base model's weights, as the paper; previous: the model of t-1"
    )
    keep_warm_start: bool = Field(
        False, description="also train on the warm-start split with its teacher thoughts"
    )
    warm_start_weight: float | None = Field(
        None, gt=0.0, lt=1.0, description="its share of the tokens when kept (default: by size)"
    )
    redraw_layouts: bool = Field(
        False,
        description="draw each chunk's prior/posterior layout anew on every pass over the data and in every "
        "iteration, as the reference does (false: one layout per chunk, fixed by the seed)",
    )
    tokens: int | None = Field(
        None,
        gt=0,
        description="training tokens of every M-step (default: the warm start's budget); the paper gives "
        "the M-step 16x the warm start's tokens",
    )
    epochs: float | None = Field(
        None, gt=0.0, description="passes over the M-step's data instead of a token budget"
    )

    _parse = field_validator("tokens", mode="before")(parse_token_count)

    @model_validator(mode="after")
    def _one_budget(self) -> MStepConfig:
        if self.tokens is not None and self.epochs is not None:
            raise ValueError("set at most one of mstep.tokens and mstep.epochs")
        return self

    def budget(self) -> dict[str, Any] | None:
        """The M-step's budget as a TrainConfig ``budget`` section, None for the warm start's."""
        if self.tokens is not None:
            return {"tokens": self.tokens}
        if self.epochs is not None:
            return {"epochs": self.epochs}
        return None


def _small_estep() -> EStepConfig:
    return EStepConfig(k=4, max_thought_tokens=64, batch_chunks=64)


class EMConfig(StageConfig):
    """What every EM run has: a warm start, then T iterations of E-step, M-step and evaluation.

    The experiment's own class adds its data, model and evaluation sections.
    """

    experiment: str = Field(DEFAULT_EXPERIMENT, description="testbed or corpus (or a plug-in's)")
    out: str = Field("runs/em", description="run folder")
    seed: int = Field(0, description="seed of training; E-step t samples with estep.seed + t")
    iterations: int = Field(2, ge=0, description="EM iterations T after the warm start")
    warm_start_from: str | None = Field(
        None,
        description="another run folder whose data, warm start and its evaluation this run starts from",
    )
    estep: EStepConfig = Field(default_factory=_small_estep)
    estep_engine: EStepEngine = Field(default_factory=EStepEngine)
    mstep: MStepConfig = Field(default_factory=MStepConfig)
    final_estep: bool = Field(
        False,
        description="after the last iteration, run the E-step once more with the last model (no M-step): "
        "it measures that model's fidelity and the next selection gain",
    )
    baselines: list[Literal["raw_token_match", "raw_flop_match", "wrap"]] = Field(
        default_factory=list,
        description="models without thoughts trained after the loop from the base model, evaluated in raw "
        "mode: raw_token_match (the first M-step's training tokens), raw_flop_match (those plus the first "
        "E-step's compute in training tokens), wrap (the raw documents and their WRAP rephrasings by the "
        "experiment's teacher, at the first M-step's tokens)",
    )
    device: str = Field("auto", description="where the E-step and evaluation run: auto, cpu, cuda")
    dtype: Literal["auto", "bf16", "fp32"] = Field("auto", description="E-step and evaluation dtype")
    progress: bool = Field(True, description="progress bars")

    @field_validator("estep", mode="before")
    @classmethod
    def _over_small_default(cls, value: Any, info: ValidationInfo) -> Any:
        # A partial section overrides the small default, not the section's own class defaults (the
        # reference 1,024-token thoughts); experiments apply this to their own sections too.
        if isinstance(value, dict):
            default = cls.model_fields[str(info.field_name)].get_default(call_default_factory=True)
            return deep_merge(default.model_dump(mode="json"), value)
        return value


def load_em_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """The EM configuration of an optional YAML file and ``key=value`` overrides, validated by its
    experiment's class (``experiment:``, default testbed); one-line errors."""
    values: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        values = read_yaml(path)
        source = str(path)
    return em_config_from(deep_merge(values, parse_overrides(overrides)), source)


def em_config_from(values: dict[str, Any], source: str = "config") -> Any:
    """Validate ``values`` (a YAML mapping, or a manifest's recorded ``config``) as its experiment's
    configuration class."""
    from latent_thoughts.em.experiment import get_experiment

    name = values.get("experiment", DEFAULT_EXPERIMENT)
    if not isinstance(name, str):
        raise ConfigError(f"{source}: experiment: expected a name, got {name!r}")
    try:
        experiment = get_experiment(name)
    except LatentThoughtsError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return validate_config(experiment.config_class, values, source)
