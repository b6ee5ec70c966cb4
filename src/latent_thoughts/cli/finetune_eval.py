"""``latent-thoughts finetune-eval MODEL --task gsm8k|math --out DIR``: fine-tune a copy, then evaluate it.

The protocol of :mod:`latent_thoughts.evaluate.finetune`: a copy of MODEL (a folder, or an engine file
of kind transformers) is fine-tuned on the task's training problems with the loss on the answer only,
in raw or latent format, saved to ``DIR/model``, and evaluated zero-shot in the same format by the
``evaluate`` code: ``DIR/eval/TASK_MODE.jsonl`` and ``.json``. ``DIR/finetune.json`` records the run.
``DIR`` may not hold MODEL (the copy's weights would go over it); the run locks ``DIR``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_thoughts.cli.evaluate import DATA_DIR_HELP, check_settings
from latent_thoughts.cli.flags import MODEL_METAVAR, add_options_file, add_progress_option
from latent_thoughts.cli.numbers import non_negative_int, positive_float, positive_int
from latent_thoughts.outputs import RunPaths

if TYPE_CHECKING:
    from latent_thoughts.evaluate.finetune import FinetuneSplit
    from latent_thoughts.evaluate.tasks import EvalProblem


def register(subparsers: Any) -> None:
    """Add the ``finetune-eval`` verb."""
    parser = subparsers.add_parser(
        "finetune-eval",
        help="fine-tune a copy of a model on GSM8K or MATH training problems, then evaluate it",
        description=(
            "Fine-tune a copy of MODEL on the task's training problems (loss on the answer only; latent "
            "mode: the prompt ends in SOL PRIOR and the worked solution is the thought), then evaluate it "
            "zero-shot in the same format. gsm8k trains on gsm8k_train.jsonl and evaluates on "
            "gsm8k_test.jsonl. math trains on math_train.jsonl when the data folder has one (or "
            "--train-file) and evaluates on MATH; the shared data and the cache fetched from the Hub have no "
            "MATH train split, so by default "
            "math trains on the 4,500 MATH test problems outside MATH-500 and evaluates on MATH-500 "
            "(a warning says so)."
        ),
    )
    parser.add_argument(
        "model",
        metavar=MODEL_METAVAR,
        help="model folder with its tokenizer, or an engine file of kind transformers",
    )
    parser.add_argument(
        "--task",
        required=True,
        choices=["gsm8k", "math"],
        help="the one task to fine-tune on and evaluate (one fine-tuned copy per task)",
    )
    parser.add_argument("--out", required=True, help="output folder: model/, eval/, finetune.json")
    parser.add_argument(
        "--mode", choices=["raw", "latent"], default="latent", help="prompt format of training and evaluation"
    )
    parser.add_argument(
        "--limit-train", type=positive_int, help="train on N problems drawn with --seed (default all)"
    )
    parser.add_argument("--limit", type=positive_int, help="evaluate the first N problems (default all)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--epochs", type=positive_float, default=1.0, help="passes over the training problems (default 1)"
    )
    budget.add_argument("--steps", type=positive_int, help="optimizer steps instead of --epochs")
    parser.add_argument(
        "--lr", type=positive_float, default=2e-5, help="peak learning rate (cosine decay; default 2e-5)"
    )
    parser.add_argument(
        "--train-batch-size", type=positive_int, default=8, help="examples per optimizer step"
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=1024,
        help="longest training example in tokens (longer ones skipped)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the training draw and of training"
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--train-file", help="the training JSONL file (overrides --data-dir)")
    parser.add_argument("--eval-file", help="the evaluated JSONL file (overrides --data-dir)")
    parser.add_argument(
        "--max-thought-tokens", type=positive_int, default=256, help="longest thought (latent mode)"
    )
    parser.add_argument("--max-answer-tokens", type=positive_int, default=384, help="longest answer")
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="problems per engine call in evaluation"
    )
    parser.add_argument(
        "--grading-timeout", type=positive_float, default=5.0, help="seconds per MATH comparison"
    )
    parser.add_argument("--device", help="evaluation: auto (a GPU when there is one; the default), cpu, cuda")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="evaluation: compute dtype")
    add_options_file(parser, "fine-tuning and evaluation options")
    add_progress_option(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """MODEL (and the model folder an engine file names) and the task files read; the fine-tuned
    copy (``model/``, ``checkpoints/``), ``eval/`` and ``finetune.json`` written in --out."""
    from latent_thoughts.engines.spec import is_engine_file, local_model_dir, read_engine_spec

    out = Path(args.out)
    engine_file = is_engine_file(args.model)
    model_dir = local_model_dir(read_engine_spec(args.model), "finetune-eval") if engine_file else None
    return RunPaths(
        inputs=[args.model, model_dir, args.train_file, args.eval_file, args.config],
        models=[args.model, model_dir],
        files=[out / "finetune.json"],
        folders=[out, out / "eval"],
        replaced=[out / "model", out / "checkpoints"],
    )


def run(args: argparse.Namespace) -> int:
    """Fine-tune, evaluate, print the training loss and the accuracy line."""
    from latent_thoughts.engines.spec import local_model_dir, read_engine_spec
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.evaluate.benchmark import summary_line
    from latent_thoughts.evaluate.benchmark_data import benchmark_file, locate_data
    from latent_thoughts.evaluate.finetune import FinetuneSettings, finetune, finetune_split, select_training
    from latent_thoughts.evaluate.tasks import read_task, select_problems
    from latent_thoughts.outputs import folder_lock

    for name in ("limit", "steps", "train_batch_size", "max_length"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise LatentThoughtsError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name in ("epochs", "lr"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise LatentThoughtsError(f"--{name} must be a positive finite number, got {value}")
    check_settings(args)  # the evaluation's settings, checked before training rather than after
    base = read_engine_spec(args.model)
    model_dir = local_model_dir(base, "finetune-eval")
    # Everything is read before training starts, so a wrong path fails at once.
    location = locate_data(args.data_dir)
    split = finetune_split(
        args.task,
        location.folder,
        train_file=args.train_file,
        eval_file=args.eval_file,
        files=lambda name: benchmark_file(name, location),
    )
    if split.note:
        print(f"warning: {split.note}")
    train = select_training(split.train, args.limit_train, args.seed)
    problems = select_problems(read_task(split.eval_task, split.eval_path), limit=args.limit)

    settings = FinetuneSettings(
        epochs=args.epochs,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.train_batch_size,
        max_length=args.max_length,
        seed=args.seed,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    with folder_lock(out, "finetune-eval"):  # a second run into --out fails at once
        metrics = finetune(model_dir, args.task, train, args.mode, out, settings)
        print(
            f"fine-tuned on {metrics['examples']} {args.task} problems ({metrics['skipped_too_long']} too long), "
            f"{metrics['steps']} steps: loss {metrics['first_loss']:.3f} -> {metrics['last_loss']:.3f}; "
            f"model in {out / 'model'}"
        )
        summary = _evaluate_copy(args, base.transformers, model_dir, split, problems, out)
    print(summary_line(summary))
    return 0


def _evaluate_copy(
    args: argparse.Namespace,
    base_options: dict[str, Any],
    model_dir: Path,
    split: FinetuneSplit,
    problems: list[EvalProblem],
    out: Path,
) -> dict[str, Any]:
    """Evaluate the fine-tuned copy in ``out/model`` into ``out/eval``; returns the aggregate."""
    from latent_thoughts.engines.spec import open_engine, read_engine_spec
    from latent_thoughts.evaluate.benchmark import BenchmarkSettings, evaluate_to_files

    # The copy runs in the base engine's options (device, dtype), with the command line's on top.
    options = {key: value for key, value in base_options.items() if key not in ("model", "tokenizer")}
    tuned = read_engine_spec(out / "model", {**options, "device": args.device, "dtype": args.dtype})
    evaluation = BenchmarkSettings(
        max_thought_tokens=args.max_thought_tokens,
        max_answer_tokens=args.max_answer_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        shots=0,
    )
    info = {
        "model": str(out / "model"),
        "base_model": str(model_dir),
        "file": str(split.eval_path),
        "shots": 0,
    }
    if split.note:
        info["note"] = split.note
    with open_engine(tuned) as (engine, tokenizer):
        summary = evaluate_to_files(
            engine,
            tokenizer,
            problems,
            args.mode,
            evaluation,
            out / "eval",
            grading_timeout=args.grading_timeout,
            info=info,
            progress=not args.no_progress,
        )
    return summary
