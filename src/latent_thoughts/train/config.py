"""Typed options of the ``train`` stage (continued pretraining, warm start, M-step, baselines).

One :class:`TrainConfig` describes a whole run: which model to start from, which data sources in
which proportions, how many tokens, how to optimise, where to write. Every number of the reference
setup (METHOD section 6) is a field here, never a constant in code; ``configs/train/*.yaml`` holds
examples. Build one with :func:`load_train_config` (YAML plus ``key=value`` overrides).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from latent_thoughts.config import StageConfig, load_config
from latent_thoughts.format import FormatConfig
from latent_thoughts.modeling import ScratchModelConfig

SourceKind = Literal["raw", "thoughts", "rephrased"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_token_count(value: Any) -> Any:
    """``"13B"`` -> 13_000_000_000, ``"2.5M"`` -> 2_500_000; ints and other values pass through."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9_]*\.?[0-9]+)\s*([kKmMbBgGtT]?)\s*", value)
        if match is None:
            raise ValueError(f"not a token count: {value!r} (use e.g. 2000000, 2M or 13B)")
        number, suffix = match.groups()
        return round(float(number.replace("_", "")) * _SUFFIXES.get(suffix.lower(), 1))
    return value


class ModelConfig(StageConfig):
    """Where the model (and its tokenizer) come from.

    ``path`` set: a Hugging Face causal LM folder; its tokenizer comes from ``tokenizer`` or the
    same folder. ``path`` unset: a Llama of shape ``scratch`` is created from scratch; its tokenizer
    comes from ``tokenizer`` or, when that is unset too, a byte-level BPE of ``bpe_vocab_size`` ids
    is trained on the run's training texts. Either way the four latent tokens are added and the
    embeddings resized (METHOD section 2), new rows drawn with ``init_seed`` (default: the run seed).
    """

    path: str | None = Field(None, description="Hugging Face causal LM folder; unset: create from scratch")
    scratch: ScratchModelConfig = Field(default_factory=ScratchModelConfig)
    tokenizer: str | None = Field(
        None, description="tokenizer folder (default: the model folder, or train BPE)"
    )
    bpe_vocab_size: int = Field(8192, ge=262, description="vocabulary of the BPE trained for a scratch model")
    bpe_split_digits: bool = Field(True, description="the trained BPE gives every digit its own token")
    init_seed: int | None = Field(None, description="seed of new weights (default: the run seed)")


class SourceConfig(StageConfig):
    """One data source of the training mixture.

    - ``raw``: the documents of ``chunks`` (a chunks.parquet), each the concatenation of its chunks,
      as plain text;
    - ``thoughts``: the same documents with the thoughts of ``thoughts`` (a thoughts parquet)
      interleaved in the prior/posterior layouts; a chunk without a thought row is written raw;
    - ``rephrased``: the documents of ``rephrased`` (a rephrased parquet), as plain text.

    ``weight`` is the source's share of the training tokens (normalised over sources); unset, the
    share is proportional to the source's size, so one pass over the mixture is one pass over each
    source.
    """

    kind: SourceKind
    chunks: str | None = Field(None, description="chunks.parquet (kinds raw and thoughts)")
    thoughts: str | None = Field(None, description="thoughts parquet (kind thoughts)")
    rephrased: str | None = Field(None, description="rephrased parquet (kind rephrased)")
    weight: float | None = Field(None, gt=0.0, description="share of training tokens; unset: by size")
    name: str | None = Field(None, description="label in logs (default: kind and file name)")

    @model_validator(mode="after")
    def _paths_match_kind(self) -> SourceConfig:
        needed = {"raw": ["chunks"], "thoughts": ["chunks", "thoughts"], "rephrased": ["rephrased"]}[
            self.kind
        ]
        for key in needed:
            if getattr(self, key) is None:
                raise ValueError(f"a {self.kind} source needs {key!r} (a parquet path)")
        for key in {"chunks", "thoughts", "rephrased"} - set(needed):
            if getattr(self, key) is not None:
                raise ValueError(f"a {self.kind} source takes no {key!r}")
        return self

    @property
    def label(self) -> str:
        """A short name for logs: ``name``, or kind plus the file it reads."""
        if self.name:
            return self.name
        main = self.thoughts or self.rephrased or self.chunks or ""
        return f"{self.kind}:{Path(main).name}"


class DataConfig(StageConfig):
    """The training mixture, the optional held-out sources, and the document format."""

    sources: list[SourceConfig] = Field(min_length=1)
    validation: list[SourceConfig] = Field(
        default_factory=list, description="held-out sources for eval_loss (one pass, no repetition)"
    )
    format: FormatConfig = Field(default_factory=FormatConfig)


class BudgetConfig(StageConfig):
    """How much to train: total training tokens or passes over the mixture (exactly one).

    Training tokens count every token of a packed window, thoughts and special tokens included.
    Accepts ``13B``/``800M``-style strings for ``tokens``.
    """

    tokens: int | None = Field(None, gt=0, description="total training tokens")
    epochs: float | None = Field(None, gt=0.0, description="passes over the mixture's data")

    _parse = field_validator("tokens", mode="before")(parse_token_count)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetConfig:
        if (self.tokens is None) == (self.epochs is None):
            raise ValueError("set exactly one of budget.tokens and budget.epochs")
        return self


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


class OptimConfig(StageConfig):
    """AdamW with linear warm-up then a decay (``schedule``), gradient clipping and accumulation.

    ``schedule: cosine`` decays from ``lr`` to ``min_lr_ratio * lr`` over the whole run after the
    warm-up; ``schedule: wsd`` (warm-up, stable, decay) holds ``lr`` and decays linearly to
    ``min_lr_ratio * lr`` over the last ``decay_fraction`` of the steps, so a short run spends more
    of its steps at the peak rate.

    ``global_batch`` is in windows of ``data.format.seq_len`` tokens across all processes; each
    process runs ``micro_batch`` windows at a time and accumulates gradients over
    ``global_batch / (micro_batch * processes)`` micro-batches, so the optimisation is the same
    whatever the number of processes.
    """

    lr: float = Field(1e-4, gt=0.0)
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="muon: Muon for the hidden matrices, AdamW for the rest (train/muon.py)"
    )
    muon_lr_scale: float = Field(1.0, gt=0.0, description="optimizer muon: the hidden matrices' lr / lr")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="final lr as a fraction of lr")
    schedule: Literal["cosine", "wsd"] = Field("cosine", description="the decay after the warm-up")
    decay_fraction: float = Field(
        0.2, gt=0.0, le=1.0, description="schedule wsd: the share of steps spent decaying"
    )
    warmup_steps: int = Field(1000, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[Beta, Beta] = Field((0.9, 0.95), description="AdamW's two decay rates, each in [0, 1)")
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 disables clipping")
    global_batch: int = Field(192, gt=0, description="windows per optimizer step, all processes")
    micro_batch: int = Field(8, gt=0, description="windows per forward pass on one process")


class TrainConfig(StageConfig):
    """Everything one training run needs; see ``configs/train/*.yaml``.

    Outputs under ``output_dir``: ``checkpoints/checkpoint-<step>/`` (Hugging Face format plus
    optimizer, scheduler and RNG state, every ``save_steps``), ``model/`` (final weights and tokenizer,
    loadable by ``from_pretrained`` and the engines), ``tokenizer/``, ``train_config.yaml`` and
    ``metrics.json``.
    """

    output_dir: str
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    budget: BudgetConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    precision: Precision = Field("auto", description="auto: bf16 autocast where supported, else fp32")
    deterministic: bool | None = Field(
        None,
        description="deterministic kernels (full_determinism); unset: on for CPU, off on GPUs (slow there)",
    )
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(500, gt=0, description="checkpoint interval in optimizer steps")
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept (oldest deleted)")
    eval_steps: int | None = Field(None, gt=0, description="held-out loss interval (default: at the end)")
    report_to: list[str] = Field(default_factory=lambda: ["none"], description="tensorboard, wandb, ...")
    progress_bar: bool = True
    stop_after_steps: int | None = Field(
        None, gt=0, description="end this process after this step (checkpoint saved); --resume continues"
    )
    dataloader_workers: int = Field(0, ge=0)

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def load_train_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file and ``key=value`` overrides (one-line errors)."""
    return load_config(TrainConfig, path, overrides, defaults)
