"""Continued pretraining on a data mixture with Hugging Face ``Trainer``.

:func:`train` is the one entry point (the CLI verb ``train``, the warm start and the EM M-step all
call it). It prepares the tokenizer and model as METHOD section 2 says, builds the packed windows
(:mod:`latent_thoughts.train.data`), turns the budget into steps (:mod:`latent_thoughts.train.budget`)
and hands the rest to ``transformers.Trainer``, which brings ``accelerate launch`` (several
processes, FSDP, DeepSpeed), checkpoints with optimizer and RNG state, resume, and ``report_to``.
On top of it this module adds tokens seen and tokens per second to every log line, a stop on a
non-finite loss that keeps the last good checkpoint, and an early stop for time-sliced jobs.

Layout of ``output_dir``::

    tokenizer/                    the run's tokenizer (with the latent tokens), made once
    data/train-<hash>.bin         the packed training windows, a memory-mapped window file
                                  (latent_thoughts.train.windows), rebuilt only when inputs change
    data/train-<hash>.json        what each source contributed (written last: the cache is complete)
    data/validation-<hash>.bin    the held-out windows, when the run has validation sources
    checkpoints/checkpoint-<N>/   HF model + tokenizer + optimizer/scheduler/RNG state
    model/                        the final model and tokenizer (from_pretrained, engines), and
                                  fingerprint.json: the weights' hash (latent_thoughts.fingerprint)
    train_config.yaml, metrics.json
    progress.json                 steps done of max_steps, rewritten every few seconds while training
                                  (what another process watches: ``latent-thoughts demo``'s bar)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from latent_thoughts.atomic import write_json, write_text
from latent_thoughts.config import dump_config
from latent_thoughts.engines.transformers_engine import cpu_supports_bf16
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.fingerprint import FINGERPRINT_FILE, write_fingerprint
from latent_thoughts.format import DocumentBuilder
from latent_thoughts.modeling import count_parameters, create_llama, load_causal_lm
from latent_thoughts.tokenizer import (
    add_latent_tokens,
    load_tokenizer,
    resize_model_embeddings,
    train_bpe_tokenizer,
)
from latent_thoughts.train.budget import model_flops_per_token, steps_for_tokens, tokens_for_steps
from latent_thoughts.train.config import OptimConfig, SourceConfig, TrainConfig
from latent_thoughts.train.data import (
    PackedDataset,
    SourceDocument,
    build_source,
    build_training_data,
    build_validation_data,
    data_fingerprint,
    epoch_windows,
    read_sources,
    thought_ids_tokenizer,
)
from latent_thoughts.train.muon import MuonWithAdamW, split_parameters
from latent_thoughts.train.sharding import (
    check_full_model_saved,
    deepspeed_on_cpu,
    distributed_kind,
    enable_fsdp_on_cpu,
)
from latent_thoughts.train.windows import PackedWindows, open_windows

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
TOKENIZER_DIR = "tokenizer"
FINISHED_MARKER = "metrics.json"


class NonFiniteLossError(LatentThoughtsError):
    """The training loss became NaN or infinite; the run stopped before the bad optimizer step."""


@dataclass
class TrainResult:
    """What a run produced.

    ``model_dir`` is the final model folder, or ``None`` when the run stopped early
    (``stop_after_steps``); ``last_checkpoint`` is the newest checkpoint folder, if any.
    """

    output_dir: Path
    model_dir: Path | None
    last_checkpoint: Path | None
    steps: int
    max_steps: int
    tokens: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the run reached its budget and saved the final model."""
        return self.model_dir is not None


# --- tokenizer and model --------------------------------------------------------------------------


def prepare_tokenizer(
    config: TrainConfig, documents: Sequence[Sequence[SourceDocument]], output_dir: Path
) -> PreTrainedTokenizerBase:
    """The run's tokenizer with the latent tokens, saved once to ``output_dir/tokenizer``.

    Reused from there when present (resume, other processes), else loaded from
    ``model.tokenizer``/``model.path``, else a BPE trained on every text of the training sources.
    """
    saved = output_dir / TOKENIZER_DIR
    if (saved / "tokenizer_config.json").exists():
        return load_tokenizer(saved)
    source = config.model.tokenizer or config.model.path
    if source is not None:
        tokenizer = load_tokenizer(source)
    else:
        texts = (text for docs in documents for document in docs for text in document.texts())
        tokenizer = train_bpe_tokenizer(
            texts, config.model.bpe_vocab_size, split_digits=config.model.bpe_split_digits
        )
        logger.info("trained a BPE tokenizer of %d ids on the training texts", len(tokenizer))
    add_latent_tokens(tokenizer)
    tokenizer.save_pretrained(str(saved))
    return tokenizer


def prepare_model(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The model to train, in fp32: loaded from ``model.path`` and resized for the latent tokens, or a
    scratch Llama of ``model.scratch`` with the tokenizer's vocabulary, both seeded by ``init_seed``."""
    seed = config.seed if config.model.init_seed is None else config.model.init_seed
    if config.model.path is not None:
        # Weights stay fp32 for the optimizer; bf16 comes from autocast, not from the stored dtype.
        model = load_causal_lm(config.model.path, dtype=torch.float32)
        added = resize_model_embeddings(model, tokenizer, seed=seed)
        logger.info("loaded %s; added %d embedding rows", config.model.path, added)
    else:
        model = create_llama(
            config.model.scratch,
            vocab_size=len(tokenizer),
            seed=seed,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on a bf16-capable GPU, or on a CPU with native bf16 matrix instructions
    (AVX512-BF16 or AMX, where autocast about doubles training speed), else ``fp32``.

    Elsewhere bf16 is emulated: on an AVX2-only CPU (AMD Zen 3, for one) a bf16 matmul runs at about
    1 GFLOP/s against about 80 in fp32, and training is some 25 times slower.
    """
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


# --- Trainer pieces -----------------------------------------------------------------------------------


class _LatentTrainer(Trainer):
    """``Trainer`` plus tokens seen / tokens per second in every log and a non-finite loss stop."""

    tokens_per_step: int = 0
    start_step: int = 0
    optim_config: OptimConfig | None = None
    _mark: tuple[float, int] | None = None

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's ``Accelerator``, with a launcher's FSDP made real on a machine without a GPU
        (:mod:`latent_thoughts.train.sharding`) and a sharded-only FSDP configuration refused."""
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True
        check_full_model_saved(self.accelerator)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW (the Trainer's), or with ``optim.optimizer: muon`` :class:`MuonWithAdamW`."""
        optim = self.optim_config
        if optim is None or optim.optimizer != "muon" or self.optimizer is not None:
            return super().create_optimizer(model)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise LatentThoughtsError("optim.optimizer=muon needs whole matrices: not with DeepSpeed or FSDP")
        module = self.model if model is None else model
        assert module is not None
        decay = set(self.get_decay_parameter_names(module))
        muon_groups, adamw_groups = split_parameters(module, decay, optim.weight_decay)
        self.optimizer = MuonWithAdamW(
            muon_groups,
            adamw_groups,
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            muon_lr_scale=optim.muon_lr_scale,
        )
        return self.optimizer

    def mark_throughput(self, step: int) -> None:
        """Start a new tokens-per-second interval at optimizer step ``step``."""
        self._mark = (time.perf_counter(), step)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``tokens_seen`` and ``tokens_per_second`` (since the previous log) to training logs."""
        step = self.state.global_step
        if "loss" in logs:
            logs["tokens_seen"] = step * self.tokens_per_step
            if self._mark is not None and step > self._mark[1]:
                elapsed = time.perf_counter() - self._mark[0]
                logs["tokens_per_second"] = round((step - self._mark[1]) * self.tokens_per_step / elapsed, 1)
            self.mark_throughput(step)
        super().log(logs, start_time)

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """One micro-batch; raises :class:`NonFiniteLossError` (on every process) on a NaN/inf loss.

        The check runs after backward but before the optimizer step, so the weights are still those
        of the last good step and no bad state reaches a checkpoint.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss)).float()
        if self.accelerator.num_processes > 1:
            # Every process must stop together, or the others would hang in the next all-reduce.
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}")
        return loss


RUN_ONLY_KEYS = frozenset(
    {
        "output_dir",
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "report_to",
        "progress_bar",
        "stop_after_steps",
        "dataloader_workers",
    }
)
"""Top-level options that change how a run is watched or saved, not the model it trains."""


def check_same_run(config: TrainConfig, output_dir: Path) -> None:
    """A finished run asked to resume must be the run ``config`` describes: an error naming the
    options that differ from its ``train_config.yaml`` (a changed budget, say), rather than its old
    model handed back as the new one. Options in :data:`RUN_ONLY_KEYS` may differ."""
    import yaml

    saved_path = output_dir / "train_config.yaml"
    if not saved_path.exists():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return  # not ours to judge: the finished marker and the model decide, as before
    if not isinstance(saved, dict):
        return
    current = config.model_dump(mode="json")
    differing = sorted(
        key
        for key in set(saved) | set(current)
        if key not in RUN_ONLY_KEYS and saved.get(key) != current.get(key)
    )
    if differing:
        raise LatentThoughtsError(
            f"{output_dir}: finished training with another configuration ({', '.join(differing)} differ from "
            "its train_config.yaml); choose a new output_dir, or remove this one to train anew"
        )


PROGRESS_FILE = "progress.json"
PROGRESS_EVERY_S = 2.0
"""How often ``progress.json`` is rewritten: often enough for a bar, rarely enough to cost nothing."""


class _RunCallback(TrainerCallback):
    """Starts the throughput clock, writes ``progress.json`` (main process) and ends the process
    early after ``stop_after_steps``."""

    def __init__(self, trainer: _LatentTrainer, stop_after_steps: int | None, progress: Path) -> None:
        self.trainer = trainer
        self.stop_after_steps = stop_after_steps
        self.progress = progress
        self.written = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.trainer.start_step = state.global_step
        self.trainer.mark_throughput(state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        stop = self.stop_after_steps
        if stop is not None and stop <= state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
        now = time.monotonic()
        if state.is_world_process_zero and (
            now - self.written >= PROGRESS_EVERY_S or state.global_step >= state.max_steps
        ):
            self.written = now
            tokens = state.global_step * self.trainer.tokens_per_step
            write_json(
                self.progress, {"step": state.global_step, "max_steps": state.max_steps, "tokens": tokens}
            )


def _world_size() -> int:
    """Processes of this run, as launchers (accelerate, torchrun) announce them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def scheduler_arguments(optim: OptimConfig, max_steps: int) -> dict[str, Any]:
    """The ``TrainingArguments`` fields of ``optim.schedule`` for a run of ``max_steps`` steps."""
    if optim.schedule == "wsd":
        decay_steps = max(1, round(optim.decay_fraction * max_steps))
        kwargs = {"num_decay_steps": decay_steps, "decay_type": "linear", "min_lr_ratio": optim.min_lr_ratio}
        return {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": kwargs}
    kwargs = {"min_lr_rate": optim.min_lr_ratio}
    return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": kwargs}


def training_arguments(config: TrainConfig, max_steps: int, has_validation: bool) -> TrainingArguments:
    """The ``TrainingArguments`` of a run: every optimisation option comes from ``config``."""
    optim = config.optim
    world = _world_size()
    per_step = optim.micro_batch * world
    if optim.global_batch % per_step:
        raise LatentThoughtsError(
            f"optim.global_batch={optim.global_batch} is not a multiple of optim.micro_batch="
            f"{optim.micro_batch} x {world} processes"
        )
    precision = resolve_precision(config.precision)
    eval_strategy = "steps" if has_validation else "no"
    # DeepSpeed without a GPU: no "CPU device" (accelerate would bypass DeepSpeed) but a gloo group.
    cpu_deepspeed = deepspeed_on_cpu()
    return TrainingArguments(
        output_dir=str(Path(config.output_dir) / CHECKPOINT_DIR),
        max_steps=max_steps,
        per_device_train_batch_size=optim.micro_batch,
        per_device_eval_batch_size=optim.micro_batch,
        gradient_accumulation_steps=optim.global_batch // per_step,
        learning_rate=optim.lr,
        **scheduler_arguments(optim, max_steps),
        warmup_steps=min(optim.warmup_steps, max_steps),
        weight_decay=optim.weight_decay,
        adam_beta1=optim.betas[0],
        adam_beta2=optim.betas[1],
        adam_epsilon=optim.eps,
        max_grad_norm=optim.grad_clip,
        optim="adamw_torch",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available() and not cpu_deepspeed,
        ddp_backend="gloo" if cpu_deepspeed else None,
        seed=config.seed,
        data_seed=config.seed,
        full_determinism=(
            config.deterministic if config.deterministic is not None else not torch.cuda.is_available()
        ),
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy=eval_strategy,
        eval_steps=(config.eval_steps or max_steps) if has_validation else None,
        eval_on_start=has_validation,
        report_to=config.report_to,
        disable_tqdm=not config.progress_bar,
        dataloader_num_workers=config.dataloader_workers,
        dataloader_drop_last=True,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
    )


# --- data ------------------------------------------------------------------------------------------------


def _data_key(sources: Sequence[SourceConfig], builder: DocumentBuilder, **extra: Any) -> str:
    """The cache key of windows built from ``sources`` with this format and vocabulary (and ``extra``).

    ``redraw_layouts`` enters the key only when on, so windows built before the option existed keep
    their key. The tokenizer's fingerprint enters it only when a thoughts file holds thoughts as
    token ids of a named tokenizer (an E-step output), since whether those ids are written as they
    are or the text is encoded depends on it; windows of text-only sources keep their key.
    """
    fmt = builder.config
    exclude = None if fmt.redraw_layouts else {"redraw_layouts"}
    key: dict[str, Any] = {
        "format": fmt.model_dump(mode="json", exclude=exclude),
        "vocab": len(builder.tokenizer),
    }
    if any(source.kind == "thoughts" and thought_ids_tokenizer(source.thoughts or "") for source in sources):
        key["tokenizer"] = builder.fingerprint
    return data_fingerprint(sources, {**key, **extra})


def _load_or_build(
    config: TrainConfig,
    documents: Sequence[Sequence[SourceDocument]],
    builder: DocumentBuilder,
    output_dir: Path,
) -> tuple[dict[str, Any], PackedWindows, int]:
    """Training windows from the window file in ``output_dir/data``, built there first if missing.

    Returns the data summary (per-source documents, tokens, epochs), the windows and the steps.
    """
    fmt = builder.config
    global_batch = config.optim.global_batch
    key = _data_key(
        config.data.sources,
        builder,
        budget=config.budget.model_dump(mode="json"),
        global_batch=global_batch,
        seed=config.seed,
    )
    cache = output_dir / "data" / f"train-{key}.bin"
    summary_path = cache.with_suffix(".json")
    if cache.exists() and summary_path.exists():
        windows = open_windows(cache)
        return json.loads(summary_path.read_text()), windows, len(windows) // global_batch
    built_sources = [build_source(docs, builder) for docs in documents]
    built = [source.documents for source in built_sources]
    if config.budget.tokens is not None:
        steps = steps_for_tokens(config.budget.tokens, fmt.seq_len, global_batch)
    else:
        # Epochs: the windows one pass makes, rounded up to whole optimizer steps.
        assert config.budget.epochs is not None
        steps = max(1, math.ceil(epoch_windows(built, config.budget.epochs, fmt.seq_len) / global_batch))
    redraws = [source.redraw for source in built_sources]
    data = build_training_data(
        config.data.sources, built, builder, steps * global_batch, config.seed, cache, redraws
    )
    if len(data.windows) < steps * global_batch:
        raise LatentThoughtsError("the training sources produced fewer windows than the budget needs")
    summary = data.summary()
    write_json(summary_path, summary)
    return summary, data.windows, steps


def _load_or_build_validation(
    config: TrainConfig, builder: DocumentBuilder, output_dir: Path
) -> PackedWindows | None:
    """Held-out windows from ``output_dir/data``, built there first if missing; None without any."""
    if not config.data.validation:
        return None
    path = output_dir / "data" / f"validation-{_data_key(config.data.validation, builder)}.bin"
    if path.exists():
        return open_windows(path)
    return build_validation_data(config.data.validation, builder, path)


# --- the entry point -------------------------------------------------------------------------------------


def check_checkpoint(folder: Path) -> None:
    """Refuse (one line naming the file) a checkpoint with a damaged file, before resuming from it.

    JSON files must parse, ``.safetensors`` headers must describe the whole file, and ``.pt`` /
    ``.pth`` / ``.bin`` files (``torch.save`` zip archives) must pass their checksums; this reads each
    file once without loading tensors, so a cut or overwritten file is named rather than a traceback.
    """
    import zipfile

    from safetensors import SafetensorError, safe_open

    hint = f"delete {folder} to resume from the checkpoint before it"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_bytes())
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as weights:
                    weights.keys()
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as archive:
                    broken = archive.testzip()
                if broken is not None:
                    raise ValueError(f"bad checksum in {broken}")
        except (OSError, ValueError, SafetensorError, zipfile.BadZipFile, EOFError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise LatentThoughtsError(f"{path}: damaged checkpoint file ({reason}); {hint}") from None


def train(
    config: TrainConfig, resume: bool = False, callbacks: Sequence[TrainerCallback] = ()
) -> TrainResult:
    """Train (or continue training) a causal LM on ``config``'s data mixture and budget.

    ``resume=True`` continues from the newest checkpoint in ``output_dir/checkpoints`` (weights,
    optimizer, scheduler, RNG and data position), so an interrupted run ends with the weights of an
    uninterrupted one; a run already finished returns at once; without a checkpoint it starts fresh.
    Without ``resume``, an ``output_dir`` that already holds checkpoints is an error.

    Returns a :class:`TrainResult`; ``result.model_dir`` (``output_dir/model``) holds the final model and
    tokenizer in Hugging Face format. A non-finite loss raises :class:`NonFiniteLossError` naming the
    last good checkpoint.
    """
    output_dir = Path(config.output_dir)
    checkpoints = output_dir / CHECKPOINT_DIR
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    finished = output_dir / FINISHED_MARKER
    if resume and finished.exists() and (output_dir / MODEL_DIR / "config.json").exists():
        check_same_run(config, output_dir)
        done = json.loads(finished.read_text())
        logger.info("%s already finished; nothing to do", output_dir)
        return TrainResult(
            output_dir,
            output_dir / MODEL_DIR,
            Path(last) if last else None,
            done.get("steps", 0),
            done.get("max_steps", 0),
            done.get("tokens", 0),
            done,
        )
    if last is not None and not resume:
        raise LatentThoughtsError(
            f"{output_dir}: holds checkpoints already; pass --resume to continue, or choose a new output_dir"
        )
    if resume and last is None:
        logger.info("%s: no checkpoint to resume from; starting fresh", checkpoints)
    if resume and last is not None:
        check_checkpoint(Path(last))

    # TrainingArguments sets up the process group, so it must exist before main_process_first; it
    # needs max_steps, which is fixed once the data is built (replaced below).
    has_validation = bool(config.data.validation)
    args = training_arguments(config, max_steps=1, has_validation=has_validation)
    with args.main_process_first(desc="tokenizer and training windows"):
        documents = read_sources(config.data.sources)
        output_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = prepare_tokenizer(config, documents, output_dir)
        builder = DocumentBuilder(tokenizer, config.data.format)
        data_summary, windows, max_steps = _load_or_build(config, documents, builder, output_dir)
        validation = _load_or_build_validation(config, builder, output_dir)
    del documents
    args = training_arguments(config, max_steps=max_steps, has_validation=has_validation)
    if args.process_index == 0:
        write_text(output_dir / "train_config.yaml", dump_config(config))
        for stats in data_summary["sources"]:
            logger.info(
                "source %s: %d documents, %d tokens, weight %.3f, drew %d tokens (%.2f epochs)",
                stats["name"],
                stats["documents"],
                stats["tokens"],
                stats["weight"],
                stats["drawn_tokens"],
                stats["epochs"],
            )

    seq_len = config.data.format.seq_len
    model = prepare_model(config, tokenizer)
    tokens_per_step = seq_len * config.optim.global_batch
    trainer = _LatentTrainer(
        model=model,
        args=args,
        train_dataset=PackedDataset(windows),
        eval_dataset=PackedDataset(validation) if validation is not None else None,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.tokens_per_step = tokens_per_step
    trainer.optim_config = config.optim
    trainer.add_callback(_RunCallback(trainer, config.stop_after_steps, output_dir / PROGRESS_FILE))
    logger.info(
        "training %s parameters for %d steps of %d x %d tokens (%s tokens), precision %s",
        f"{count_parameters(model):,}",
        max_steps,
        config.optim.global_batch,
        seq_len,
        f"{tokens_for_steps(max_steps, seq_len, config.optim.global_batch):,}",
        resolve_precision(config.precision),
    )

    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=last if resume else None)
    except NonFiniteLossError as exc:
        good = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        kept = f"last good checkpoint: {good}" if good else "no checkpoint was saved before it"
        raise NonFiniteLossError(f"{exc}; training stopped, nothing saved after it; {kept}") from None
    runtime = time.perf_counter() - started

    steps = trainer.state.global_step
    last_now = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if steps < max_steps:
        logger.info("stopped after step %d of %d; checkpoint %s", steps, max_steps, last_now)
        return TrainResult(
            output_dir, None, Path(last_now) if last_now else None, steps, max_steps, steps * tokens_per_step
        )

    model_dir = output_dir / MODEL_DIR
    model.config.use_cache = True  # the saved model generates with a KV cache
    if trainer.is_world_process_zero():  # a record of earlier weights never stands beside the new ones
        (model_dir / FINGERPRINT_FILE).unlink(missing_ok=True)
    trainer.save_model(str(model_dir))
    if trainer.is_world_process_zero():
        # hashed once, from the files just written, so that no E-step has to hash them again
        write_fingerprint(model_dir)
    metrics: dict[str, Any] = {
        "steps": steps,
        "max_steps": max_steps,
        "tokens": steps * tokens_per_step,
        "parameters": count_parameters(model),
        "flops_per_token": model_flops_per_token(model, seq_len),
        "precision": resolve_precision(config.precision),
        "processes": args.world_size,
        "distributed": distributed_kind(trainer.accelerator),
        "train_loss": output.training_loss,
        "runtime_s": round(runtime, 2),
        "tokens_per_second": round((steps - trainer.start_step) * tokens_per_step / runtime, 1),
        "data": data_summary,
        "log_history": trainer.state.log_history,
    }
    if validation is not None:
        evals = [log for log in trainer.state.log_history if "eval_loss" in log]
        # The Trainer evaluates at the last step already (eval_steps defaults to max_steps).
        final = evals[-1]["eval_loss"] if evals and evals[-1]["step"] == steps else None
        metrics["eval_loss"] = final if final is not None else trainer.evaluate()["eval_loss"]
        if evals and evals[0]["step"] == 0:
            metrics["eval_loss_start"] = evals[0]["eval_loss"]
    if trainer.is_world_process_zero():
        write_json(finished, metrics)
    logger.info("saved the final model to %s", model_dir)
    return TrainResult(
        output_dir,
        model_dir,
        Path(last_now) if last_now else None,
        steps,
        max_steps,
        steps * tokens_per_step,
        metrics,
    )
