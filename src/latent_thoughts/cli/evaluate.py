"""``latent-thoughts evaluate MODEL --tasks gsm8k,math,math500,testbed --mode latent|raw --out RUN/eval/``.

GSM8K (8-shot), MATH and MATH-500 (4-shot) with latent-aware prompting and symbolic grading
(:mod:`latent_thoughts.evaluate.benchmark`), and the testbed task (``--problems``,
:mod:`latent_thoughts.evaluate.testbed`), all through one engine: MODEL is a model folder or an engine
file (:mod:`latent_thoughts.engines.spec`: a model served over HTTP, or a local one with engine
options); ``--base-url URL`` with a model folder is short for an http engine file. With benchmark tasks ``--out`` is a folder receiving, per task, ``TASK_MODE.jsonl``
(one graded record per problem) and ``TASK_MODE.json`` (the aggregate), both written under temporary
names and renamed when the task is done, while the run holds a lock on the folder (a second evaluate
into it fails at once); with the testbed task alone it is the JSON file of accuracy and generations,
as before.

Benchmark files come from ``--TASK-file``, else a data folder: ``--data-dir``, else
``$LATENT_THOUGHTS_DATA``, else the cache folder, which fetches a missing file once from the Hugging
Face Hub (:mod:`latent_thoughts.evaluate.benchmark_data`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import write_text
from latent_thoughts.cli.flags import MODEL_METAVAR, add_options_file, add_progress_option
from latent_thoughts.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int
from latent_thoughts.outputs import RunPaths

DATA_DIR_HELP = (
    "folder of gsm8k_test.jsonl, gsm8k_train.jsonl, math_test.jsonl, math500_test.jsonl (default: "
    "$LATENT_THOUGHTS_DATA, else the cache folder $LATENT_THOUGHTS_CACHE/data or "
    "~/.cache/latent-thoughts/data, which fetches a missing file once from the Hugging Face Hub: "
    "openai/gsm8k, EleutherAI/hendrycks_math, HuggingFaceH4/MATH-500)"
)


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` verb."""
    parser = subparsers.add_parser(
        "evaluate",
        help="few-shot GSM8K/MATH accuracy and testbed accuracy of a model, raw or latent mode",
        description=(
            "Evaluate a saved model (a folder, or an engine file naming a served or local model) on GSM8K, "
            "MATH, MATH-500 and the testbed task: raw mode (latent tokens banned) or latent mode (question, SOL PRIOR, thought "
            "until EOL, then the answer)."
        ),
    )
    parser.add_argument(
        "model",
        metavar=MODEL_METAVAR,
        help="model folder with its tokenizer (train's OUT/model), or an engine file (YAML: kind http "
        "with http.base_url and tokenizer, or kind transformers with transformers.model and options)",
    )
    parser.add_argument(
        "--tasks",
        help="comma-separated tasks among gsm8k, math, math500, testbed (default: testbed when --problems "
        "is given)",
    )
    parser.add_argument(
        "--problems", help="testbed problems: eval.jsonl from `latent-thoughts testbed generate`"
    )
    parser.add_argument(
        "--mode", choices=["raw", "latent"], default="latent", help="how the model is prompted"
    )
    parser.add_argument(
        "--limit", type=positive_int, help="evaluate N problems per task (the first, or --seed's draw)"
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        help="draw the --limit problems at random with this seed (also seeds sampling)",
    )
    parser.add_argument("--subjects", help="MATH: comma-separated subjects (e.g. Algebra,Geometry)")
    parser.add_argument("--levels", help="MATH: comma-separated levels (e.g. 1,2)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    for task in ("gsm8k", "math", "math500"):
        parser.add_argument(f"--{task}-file", help=f"the {task} JSONL file (overrides --data-dir)")
    parser.add_argument(
        "--samples", type=positive_int, default=1, help="samples per problem: maj@k and pass@k (default 1)"
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        help="sampling temperature (default 0, greedy; 1 with --samples)",
    )
    parser.add_argument(
        "--shots", type=non_negative_int, help="few-shot exemplars (default 8 for GSM8K, 4 for MATH)"
    )
    parser.add_argument(
        "--max-thought-tokens", type=positive_int, default=256, help="longest thought (latent mode)"
    )
    parser.add_argument("--max-answer-tokens", type=positive_int, default=384, help="longest answer")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="problems per engine call")
    parser.add_argument(
        "--grading-timeout", type=positive_float, default=5.0, help="seconds per MATH comparison"
    )
    parser.add_argument(
        "--device", help="local model: auto (a GPU when there is one; the default), cpu, cuda, cuda:N"
    )
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="local model: compute dtype")
    parser.add_argument(
        "--base-url",
        help="evaluate the model served at this OpenAI-compatible API root instead (e.g. "
        "http://127.0.0.1:8000/v1 from `latent-thoughts serve` or vLLM); MODEL is then the tokenizer's folder",
    )
    parser.add_argument("--out", help="output folder (benchmark tasks) or JSON file (testbed task alone)")
    parser.add_argument(
        "--show", type=non_negative_int, default=3, help="print this many testbed generations (default 3)"
    )
    add_options_file(parser, "evaluation options")
    add_progress_option(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def _tasks(args: argparse.Namespace) -> list[str]:
    """The tasks asked for, checked; a wrong one is a one-line error."""
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.evaluate.tasks import BENCHMARKS

    if args.limit is not None and args.limit <= 0:
        raise LatentThoughtsError(f"--limit must be a positive number of problems, got {args.limit}")
    check_settings(args)
    if args.tasks is None:
        if args.problems is None:
            raise LatentThoughtsError("choose --tasks (gsm8k, math, math500, testbed) or give --problems")
        return ["testbed"]
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if not tasks:
        raise LatentThoughtsError(
            f"--tasks {args.tasks!r} names no task; choose from gsm8k, math, math500, testbed"
        )
    for task in tasks:
        if task not in (*BENCHMARKS, "testbed"):
            raise LatentThoughtsError(
                f"--tasks: unknown task {task!r}; choose from gsm8k, math, math500, testbed"
            )
    if "testbed" in tasks and args.problems is None:
        raise LatentThoughtsError("--tasks testbed needs --problems (eval.jsonl of the testbed)")
    return tasks


def check_settings(args: argparse.Namespace) -> None:
    """The evaluation settings shared with ``finetune-eval``, checked before any work: the batch size
    and samples positive, shots 0 or more, the grading timeout a positive finite number of seconds."""
    from latent_thoughts.errors import LatentThoughtsError

    for name in ("batch_size", "samples"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise LatentThoughtsError(f"--{name.replace('_', '-')} must be positive, got {value}")
    shots = getattr(args, "shots", None)
    if shots is not None and shots < 0:
        raise LatentThoughtsError(f"--shots must be 0 or more few-shot exemplars, got {shots}")
    timeout = args.grading_timeout
    if not (math.isfinite(timeout) and timeout > 0):
        raise LatentThoughtsError(f"--grading-timeout must be a positive number of seconds, got {timeout}")


@contextmanager
def _engine(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """``(engine, tokenizer)`` of MODEL (a folder or an engine file), or of the server at ``--base-url``."""
    from latent_thoughts.engines.spec import command_line_spec, open_engine

    spec = command_line_spec(args.model, args.base_url, {"device": args.device, "dtype": args.dtype})
    with open_engine(spec) as pair:
        yield pair


def run(args: argparse.Namespace) -> int:
    """Evaluate every task asked for, print one line per task and write the outputs.

    Every task's problems are read before the model is loaded, so a wrong path fails at once."""
    from latent_thoughts.outputs import folder_lock

    tasks = _tasks(args)
    benchmarks = {task: _benchmark_problems(args, task) for task in tasks if task != "testbed"}
    testbed = _testbed_problems(args) if "testbed" in tasks else None
    # Two runs writing one --out folder would interleave their logs: the second fails at once.
    lock = folder_lock(args.out, "evaluate") if args.out and benchmarks else nullcontext()
    with lock, _engine(args) as (engine, tokenizer):
        for task, (path, problems) in benchmarks.items():
            _run_benchmark(args, task, path, problems, engine, tokenizer)
        if testbed is not None:
            out = args.out
            if out and benchmarks:
                out = str(Path(out) / f"testbed_{args.mode}.json")
            _run_testbed(args, testbed, engine, tokenizer, out)
    return 0


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The model and the task files read; with --out, the logs and aggregates (or the testbed's JSON
    file) written."""
    tasks = _tasks(args)
    benchmarks = [task for task in tasks if task != "testbed"]
    paths = [task_file(args, task, fetch=False) for task in benchmarks]
    inputs = [args.model, args.problems, *paths, args.config]
    if not args.out:
        return RunPaths(inputs=inputs)
    out = Path(args.out)
    files = [out / f"{task}_{args.mode}{suffix}" for task in benchmarks for suffix in (".jsonl", ".json")]
    if "testbed" in tasks:
        files.append(out / f"testbed_{args.mode}.json" if benchmarks else out)
    return RunPaths(inputs=inputs, models=[args.model], files=files, folders=[out] if benchmarks else [])


def task_file(args: argparse.Namespace, task: str, *, fetch: bool) -> Path:
    """The file of a benchmark task: ``--TASK-file``, else its file in the data folder
    (:func:`~latent_thoughts.evaluate.benchmark_data.locate_data`); with ``fetch`` a file missing
    from the cache folder is fetched from the Hub first."""
    from latent_thoughts.evaluate.benchmark_data import benchmark_file, locate_data
    from latent_thoughts.evaluate.tasks import DEFAULT_FILES, task_path

    explicit = getattr(args, f"{task}_file")
    if explicit:
        return task_path(task, ".", explicit)
    task_path(task, ".")  # an unknown task is a one-line error
    return benchmark_file(DEFAULT_FILES[task], locate_data(args.data_dir), fetch=fetch)


def _benchmark_problems(args: argparse.Namespace, task: str) -> tuple[Path, list[Any]]:
    """The file of a benchmark task and the chosen subset of its problems."""
    from latent_thoughts.evaluate.tasks import read_task, select_problems

    path = task_file(args, task, fetch=True)
    problems = select_problems(
        read_task(task, path),
        limit=args.limit,
        subjects=_list(args.subjects) if task != "gsm8k" else (),
        levels=_list(args.levels) if task != "gsm8k" else (),
        seed=args.seed,
    )
    return path, problems


def _testbed_problems(args: argparse.Namespace) -> list[Any]:
    """The testbed problems of ``--problems`` (the first ``--limit`` of them)."""
    from latent_thoughts.testbed.task import read_problems

    return read_problems(args.problems)[: args.limit]


def _run_benchmark(
    args: argparse.Namespace, task: str, path: Path, problems: list[Any], engine: Any, tokenizer: Any
) -> None:
    """Evaluate one benchmark task; write the records to TASK_MODE.jsonl, the aggregate to TASK_MODE.json."""
    from latent_thoughts.evaluate.benchmark import BenchmarkSettings, evaluate_to_files, summary_line

    temperature = args.temperature if args.temperature is not None else (1.0 if args.samples > 1 else 0.0)
    settings = BenchmarkSettings(
        samples=args.samples,
        temperature=temperature,
        max_thought_tokens=args.max_thought_tokens,
        max_answer_tokens=args.max_answer_tokens,
        batch_size=args.batch_size,
        seed=args.seed or 0,
        shots=args.shots,
    )
    info = {"model": str(args.model), "file": str(path)}
    summary = evaluate_to_files(
        engine,
        tokenizer,
        problems,
        args.mode,
        settings,
        args.out,
        grading_timeout=args.grading_timeout,
        info=info,
        progress=not args.no_progress,
    )
    print(summary_line(summary))


def _list(text: str | None) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()] if text else []


def _run_testbed(
    args: argparse.Namespace, problems: list[Any], engine: Any, tokenizer: Any, out: str | None
) -> None:
    """The testbed task: accuracy, the thoughts' arithmetic in latent mode, a few generations."""
    from latent_thoughts.evaluate.testbed import evaluate_testbed
    from latent_thoughts.testbed.task import grade

    result = evaluate_testbed(engine, tokenizer, problems, args.mode, progress=not args.no_progress)
    print(f"{args.mode} mode: {result.correct}/{result.total} correct, accuracy {result.accuracy:.3f}")
    thoughts: dict[str, Any] = {}
    if args.mode == "latent":
        from latent_thoughts.recipes.testbed import thought_arithmetic, thought_steps

        claims, true_claims, copied = thought_arithmetic(problems, result.generations)
        products, last_operands = thought_steps(problems, result.generations)
        thoughts = {
            "claims": claims,
            "true_claim_share": true_claims / claims if claims else 0.0,
            "copied_operand_share": copied / len(problems),
            "right_product_share": products / len(problems),
            "right_last_operand_share": last_operands / len(problems),
        }
        print(
            f"thoughts: {true_claims}/{claims} arithmetic claims true ({thoughts['true_claim_share']:.1%}); "
            f"{copied}/{len(problems)} start from the question's first factor; {products}/{len(problems)} reach "
            f"its product, {last_operands}/{len(problems)} end with its last step on the right number"
        )
    for problem, generation in list(zip(problems, result.generations, strict=True))[: args.show]:
        mark = "right" if grade(problem, generation) else "wrong"
        print(f"  [{mark}] {problem.question!r} -> {generation.strip()[:160]!r} (answer {problem.answer})")
    if out:
        record = {
            "model": str(args.model),
            "mode": args.mode,
            "correct": result.correct,
            "total": result.total,
            "accuracy": result.accuracy,
            **thoughts,
            "generations": result.generations,
        }
        write_text(out, json.dumps(record, indent=2) + "\n")
