"""``latent-thoughts export-lm-eval --out DIR``: lm-evaluation-harness tasks over the local files.

Writes ``DIR/lt_gsm8k_cot.yaml``, ``DIR/lt_math.yaml`` and ``DIR/lt_math500.yaml``
(:mod:`latent_thoughts.evaluate.lm_eval_export`) and prints the ``lm_eval`` command that runs them.
"""

from __future__ import annotations

import argparse
from typing import Any

from latent_thoughts.cli.evaluate import DATA_DIR_HELP, task_file
from latent_thoughts.cli.flags import add_options_file, deprecated_alias
from latent_thoughts.cli.numbers import positive_int
from latent_thoughts.outputs import RunPaths


def register(subparsers: Any) -> None:
    """Add the ``export-lm-eval`` verb."""
    parser = subparsers.add_parser(
        "export-lm-eval",
        help="write lm-evaluation-harness task YAMLs over the local GSM8K / MATH / MATH-500 files",
        description=(
            "Write lm-eval tasks (raw mode: GSM8K 8-shot chain of thought with this project's exemplars and "
            "strict/flexible filters using evaluate's own regular expressions; MATH and MATH-500 4-shot, "
            "string match of the final answer) over the local files, to cross-check `evaluate` with "
            "`lm_eval --include_path DIR --tasks lt_gsm8k_cot`."
        ),
    )
    parser.add_argument("--out", required=True, help="folder receiving the task YAMLs")
    parser.add_argument(
        "--tasks",
        default="gsm8k,math,math500",
        help="comma-separated among gsm8k, math, math500 (default all)",
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    for task in ("gsm8k", "math", "math500"):
        parser.add_argument(f"--{task}-file", help=f"the {task} JSONL file (overrides --data-dir)")
    parser.add_argument(
        "--max-answer-tokens",
        type=positive_int,
        default=384,
        help="longest answer in tokens, lm-eval's max_gen_toks (default 384)",
    )
    deprecated_alias(parser, "--max-gen-toks", canonical="--max-answer-tokens")
    add_options_file(parser, "export options")
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The benchmark files read (their paths go into the YAMLs); one YAML per task written."""
    from pathlib import Path

    from latent_thoughts.evaluate.lm_eval_export import TASK_NAMES

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip() in TASK_NAMES]
    out = Path(args.out)
    return RunPaths(
        inputs=[
            *(task_file(args, task, fetch=False) for task in tasks),
            args.config,
        ],
        files=[out / f"{TASK_NAMES[task]}.yaml" for task in tasks],
        folders=[out],
    )


def run(args: argparse.Namespace) -> int:
    """Write the YAMLs and print how to run them."""
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.evaluate.lm_eval_export import TASK_NAMES, export_tasks

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    for task in tasks:
        if task not in TASK_NAMES:
            raise LatentThoughtsError(f"--tasks: unknown task {task!r}; choose from gsm8k, math, math500")
    if args.max_answer_tokens <= 0:
        raise LatentThoughtsError(f"--max-answer-tokens must be positive, got {args.max_answer_tokens}")
    paths = {task: task_file(args, task, fetch=True) for task in tasks}
    for path in export_tasks(paths, args.out, max_gen_toks=args.max_answer_tokens):
        print(f"wrote {path}")
    names = ",".join(TASK_NAMES[task] for task in tasks)
    print(
        f"run: lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path {args.out} --tasks {names} "
        "--log_samples --output_path OUT"
    )
    return 0
