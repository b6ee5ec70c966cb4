"""Typed options of ``latent-thoughts em`` (METHOD section 6); every number is a field, never a constant.

The defaults are the small testbed run that fits a 2-core CPU in under 25 minutes (warm start and two
iterations); ``configs/em/testbed-small.yaml`` spells them out, and ``bench/bolt.py`` runs larger ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from latent_thoughts.config import StageConfig, deep_merge, load_config
from latent_thoughts.em.stage import EStepConfig
from latent_thoughts.testbed.recipe import TestbedRecipe
from latent_thoughts.testbed.world import TestbedConfig
from latent_thoughts.train.config import parse_token_count


def _small_world() -> TestbedRecipe:
    """The testbed recipe at the small default's size: 200 warm-start and 100 bootstrap documents,
    1.5 M tokens per training run."""
    return TestbedRecipe(
        world=TestbedConfig(warm_start_documents=200, bootstrap_documents=100, eval_problems=200),
        tokens=1_500_000,
    )


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
        description="training tokens of every M-step (default: testbed.tokens, the warm start's); the "
        "paper gives the M-step 16x the warm start's tokens",
    )

    _parse = field_validator("tokens", mode="before")(parse_token_count)


class PretrainConfig(StageConfig):
    """An optional base model that is not random: pretrained on raw documents of a split that neither
    the warm start nor the E-step sees (the testbed world's validation bucket,
    ``testbed.world.validation_documents`` documents). The warm start and every M-step from the base
    continue from it, as the paper continues pretraining TinyLlama."""

    tokens: int | None = Field(
        None, gt=0, description="raw pretraining tokens of the base model (unset: a random base, the default)"
    )

    _parse = field_validator("tokens", mode="before")(parse_token_count)


class EvaluationConfig(StageConfig):
    """Evaluation of every model (warm start and each M-step) on the testbed's held-out problems."""

    max_thought_tokens: int = Field(96, gt=0, description="longest thought when answering")
    batch_size: int = Field(64, gt=0, description="problems per engine call")


class EMConfig(StageConfig):
    """The whole EM run: data, warm start, T iterations of E-step, M-step and evaluation.

    ``testbed`` is the recipe (world, tokenizer, model shape, optimiser) shared by every training
    stage; its ``tokens`` is the warm start's budget, and every M-step's unless ``mstep.tokens`` sets
    another (the M-steps are matched across iterations). The bootstrap split's size, relative to the
    warm-start split, is ``testbed.world.bootstrap_documents`` against ``warm_start_documents``.
    """

    out: str = Field("runs/em", description="run folder")
    seed: int = Field(0, description="seed of training; E-step t samples with estep.seed + t")
    iterations: int = Field(2, ge=0, description="EM iterations T after the warm start")
    warm_start_from: str | None = Field(
        None,
        description="another run folder whose data, warm start and its evaluation this run starts from",
    )
    testbed: TestbedRecipe = Field(default_factory=_small_world)
    estep: EStepConfig = Field(
        default_factory=lambda: EStepConfig(k=4, max_thought_tokens=64, batch_chunks=64)
    )
    mstep: MStepConfig = Field(default_factory=MStepConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    final_estep: bool = Field(
        False,
        description="after the last iteration, run the E-step once more with the last model (no M-step): "
        "it measures that model's fidelity and the next selection gain",
    )
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    device: str = Field("auto", description="where the E-step and evaluation run: auto, cpu, cuda")
    dtype: Literal["auto", "bf16", "fp32"] = Field("auto", description="E-step and evaluation dtype")
    progress: bool = Field(True, description="progress bars")

    @field_validator("testbed", "estep", mode="before")
    @classmethod
    def _over_small_default(cls, value: Any, info: ValidationInfo) -> Any:
        # A partial ``testbed:`` or ``estep:`` section overrides the small default, not the section's
        # own class defaults (the recipe's 1,000 documents, the reference 1,024-token thoughts).
        if isinstance(value, dict):
            default = cls.model_fields[str(info.field_name)].get_default(call_default_factory=True)
            return deep_merge(default.model_dump(mode="json"), value)
        return value


def load_em_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> EMConfig:
    """An :class:`EMConfig` from an optional YAML file and ``key=value`` overrides (one-line errors)."""
    return load_config(EMConfig, path, overrides)
