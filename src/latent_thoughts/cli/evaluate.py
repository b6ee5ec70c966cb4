"""``latent-thoughts evaluate MODEL_DIR --problems eval.jsonl --mode raw|latent``: testbed accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` verb."""
    parser = subparsers.add_parser(
        "evaluate",
        help="greedy exact-match accuracy of a model on testbed problems",
        description=(
            "Evaluate a saved model (or one served over HTTP, --base-url) on held-out testbed problems: "
            "raw mode (the model continues the question, latent tokens banned) or latent mode (question, "
            "SOL PRIOR, thought, then answer)."
        ),
    )
    parser.add_argument(
        "model", metavar="MODEL_DIR", help="model folder with its tokenizer (train's OUTPUT/model)"
    )
    parser.add_argument(
        "--problems", required=True, help="eval.jsonl from `latent-thoughts testbed generate`"
    )
    parser.add_argument("--mode", choices=["raw", "latent"], required=True, help="how the model is prompted")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="compute dtype")
    parser.add_argument(
        "--base-url",
        help="evaluate the model served at this OpenAI-compatible API root instead (e.g. "
        "http://127.0.0.1:8000/v1 from `latent-thoughts serve` or vLLM); MODEL_DIR then gives the tokenizer",
    )
    parser.add_argument("--out", help="write accuracy and generations to this JSON file")
    parser.add_argument("--show", type=int, default=3, help="print this many generations (default 3)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the accuracy and a few generations, optionally save them."""
    from latent_thoughts.evaluate.testbed import evaluate_model_dir, evaluate_testbed
    from latent_thoughts.testbed.task import grade, read_problems

    problems = read_problems(args.problems)[: args.limit]
    if args.base_url:
        from latent_thoughts.engines.http_engine import HTTPEngine, HTTPEngineConfig
        from latent_thoughts.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.model)
        with HTTPEngine(HTTPEngineConfig(base_url=args.base_url)) as engine:
            result = evaluate_testbed(engine, tokenizer, problems, args.mode)
    else:
        engine_options = {"device": args.device, "dtype": args.dtype}
        result = evaluate_model_dir(args.model, problems, args.mode, engine_options=engine_options)
    print(f"{args.mode} mode: {result.correct}/{result.total} correct, accuracy {result.accuracy:.3f}")
    thoughts: dict[str, Any] = {}
    if args.mode == "latent":
        from latent_thoughts.testbed.recipe import thought_arithmetic

        claims, true_claims, copied = thought_arithmetic(problems, result.generations)
        thoughts = {
            "claims": claims,
            "true_claim_share": true_claims / claims if claims else 0.0,
            "copied_operand_share": copied / len(problems),
        }
        print(
            f"thoughts: {true_claims}/{claims} arithmetic claims true ({thoughts['true_claim_share']:.1%}); "
            f"{copied}/{len(problems)} start from the question's first factor"
        )
    for problem, generation in list(zip(problems, result.generations, strict=True))[: args.show]:
        mark = "right" if grade(problem, generation) else "wrong"
        print(f"  [{mark}] {problem.question!r} -> {generation.strip()[:160]!r} (answer {problem.answer})")
    if args.out:
        record = {
            "model": str(args.model),
            "mode": args.mode,
            "correct": result.correct,
            "total": result.total,
            "accuracy": result.accuracy,
            **thoughts,
            "generations": result.generations,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0
