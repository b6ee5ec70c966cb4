"""``latent-thoughts train --config TRAIN.yaml [--set key=value ...]``: continued pretraining on a mixture.

Works unchanged under ``accelerate launch`` (several processes, FSDP, DeepSpeed):
``accelerate launch --multi_gpu --num_processes 2 -m latent_thoughts train --config TRAIN.yaml``
(on a CPU-only machine ``--multi_gpu`` is what makes accelerate start several gloo processes);
FSDP and DeepSpeed ZeRO-2 with ``--config_file configs/accelerate/NAME.yaml`` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from latent_thoughts.cli.flags import add_progress_option, deprecated_alias, deprecated_overrides
from latent_thoughts.outputs import RunPaths


def register(subparsers: Any) -> None:
    """Add the ``train`` verb."""
    parser = subparsers.add_parser(
        "train",
        help="train a model on raw / thought-augmented / rephrased data",
        description=(
            "Train a Hugging Face causal LM (or a Llama from scratch) on a mixture of raw chunks, chunks "
            "with thoughts and rephrased documents, to a token budget. Writes checkpoints to "
            "OUT/checkpoints and the final model and tokenizer to OUT/model (OUT: --out, else the "
            "configuration's output_dir)."
        ),
    )
    parser.add_argument("--config", help="YAML file of TrainConfig options (see configs/train/)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="option overrides, e.g. optim.lr=3e-4"
    )
    deprecated_overrides(parser)
    parser.add_argument("--out", help="run folder: checkpoints/ and model/ (shorthand for output_dir=...)")
    deprecated_alias(parser, "--output-dir", canonical="--out")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    add_progress_option(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def _config(args: argparse.Namespace) -> Any:
    from latent_thoughts.train import load_train_config

    overrides = [*args.overrides, *args.set]
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.no_progress:
        overrides.append("progress_bar=false")
    return load_train_config(args.config, overrides)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The configuration, the model, tokenizer and data it names read; OUT (``output_dir``) written, its
    ``model/`` and ``checkpoints/`` filled with model files (so no input may lie there, and OUT may
    not lie in the input model's folder)."""
    from latent_thoughts.train.trainer import CHECKPOINT_DIR, MODEL_DIR

    config = _config(args)
    out = Path(config.output_dir)
    return RunPaths(
        inputs=[args.config, *_input_paths(config.model_dump())],
        models=[config.model.path, config.model.tokenizer],
        files=[out / "train_config.yaml", out / "metrics.json"],
        folders=[out],
        replaced=[out / MODEL_DIR, out / CHECKPOINT_DIR],
        flag="--out" if args.out else "output_dir",
    )


def run(args: argparse.Namespace) -> int:
    """Load the configuration, train, and print where the model went."""
    from latent_thoughts.train import train
    from latent_thoughts.train.sharding import end_process_group

    config = _config(args)
    result = train(config, resume=args.resume)
    end_process_group()  # after a failure the launcher stops the other processes itself
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under a launcher, only the first process reports
    if result.model_dir is None:
        print(f"stopped at step {result.steps} of {result.max_steps}; checkpoint: {result.last_checkpoint}")
        return 0
    metrics = result.metrics
    line = f"model: {result.model_dir} ({result.steps} steps, {result.tokens:,} tokens"
    if "eval_loss" in metrics:
        line += f", held-out loss {metrics.get('eval_loss_start', float('nan')):.4f} -> {metrics['eval_loss']:.4f}"
    print(line + ")")
    return 0


_INPUT_KEYS = ("path", "tokenizer", "chunks", "thoughts", "rephrased")


def _input_paths(options: Any) -> list[str]:
    """Every file or folder a training configuration reads (its model, tokenizer and sources)."""
    if isinstance(options, dict):
        found = [value for key, value in options.items() if key in _INPUT_KEYS and isinstance(value, str)]
        return found + [path for value in options.values() for path in _input_paths(value)]
    if isinstance(options, list):
        return [path for value in options for path in _input_paths(value)]
    return []
