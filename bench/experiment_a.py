"""The paper's Experiment A in miniature: every arm of its comparison at matched tokens, on the testbed.

Trains the testbed recipe's model (:mod:`latent_thoughts.recipes.testbed`) on five kinds of data at
the same number of training tokens, over several seeds (:mod:`latent_thoughts.recipes.experiment_a`):
Raw-Repeat (the bootstrap documents repeated), Raw-Fresh (unique documents of the same world, read
once), WRAP-Orig and WRAP-CoT (the documents and the oracle's rephrasings of them) and latent thoughts
(the documents with the oracle's thoughts). The thought model is evaluated in latent mode; every other
model in raw mode, answering at once and (``reasoning``) after plain-text reasoning of its own.
Printed: a table of accuracy per arm, mean ± std and per seed; ``results.json`` holds every run, and
``latent-thoughts report OUT`` draws it (accuracy per arm with per-seed points).

    .venv/bin/python bench/experiment_a.py                       # 3 seeds at 2.5 M tokens, about an hour here
    .venv/bin/python bench/experiment_a.py --quick               # plumbing only, a few minutes
    .venv/bin/python bench/experiment_a.py --arms raw thoughts --set tokens=4M   # any recipe option
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import write_json
from latent_thoughts.config import load_config
from latent_thoughts.recipes.experiment_a import (
    ARM_LABELS,
    arm_config,
    evaluate_arm_modes,
    prepare_arm_sources,
)
from latent_thoughts.recipes.testbed import RecipeData, TestbedRecipe, prepare_data
from latent_thoughts.testbed import make_eval_problems

DEFAULT_TOKENS = "2.5M"
"""The demo's budget: two runs side by side train it in about 7 minutes on 2 cores."""


def run_arm(
    overrides: list[str],
    data: RecipeData,
    sources: list[dict[str, Any]],
    out: str,
    arm: str,
    seed: int,
    threads: int,
) -> dict[str, Any]:
    """Train one arm for one seed and evaluate it (in a worker process); returns its results row."""
    import torch

    from latent_thoughts.train import train

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    recipe = load_config(TestbedRecipe, None, overrides)
    problems = make_eval_problems(recipe.world)
    output_dir = Path(out) / f"seed{seed}" / arm
    config = arm_config(recipe, arm, seed, data, sources, output_dir, progress_bar=False, logging_steps=100)
    result = train(config, resume=True)
    assert result.model_dir is not None
    return {
        "arm": arm,
        "seed": seed,
        "tokens": result.tokens,
        "train_s": round(result.metrics["runtime_s"], 1),  # the trainer's, also for a run finished before
        "tokens_per_second": result.metrics.get("tokens_per_second"),
        "epochs": [source.get("epochs") for source in result.metrics.get("data", {}).get("sources", [])],
        "evaluations": evaluate_arm_modes(result.model_dir, problems, arm),
    }


def main() -> None:
    """Prepare every arm's data, train and evaluate the arms over the seeds, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/experiment_a")
    parser.add_argument("--quick", action="store_true", help="24k tokens and 40 problems: plumbing only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARM_LABELS), choices=list(ARM_LABELS))
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. tokens=4M")
    parser.add_argument("--parallel", type=int, default=2, help="runs trained at a time (default 2)")
    parser.add_argument("--report", action="store_true", help="print the table of a finished OUT and stop")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        print_table(out)
        return
    if args.parallel < 1:
        parser.error(f"--parallel must be at least 1, got {args.parallel}")
    overrides = [
        f"tokens={DEFAULT_TOKENS}",
        *(["tokens=24k", "world.eval_problems=40"] if args.quick else []),
        *args.set,
    ]
    recipe = load_config(TestbedRecipe, None, overrides)
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    data = prepare_data(recipe, out / "data")
    sources = {arm: prepare_arm_sources(recipe, data, arm, out / "data") for arm in args.arms}
    print(f"data ready in {time.perf_counter() - started:.0f}s", flush=True)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = [(seed, arm) for seed in args.seeds for arm in args.arms]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(run_arm, overrides, data, sources[arm], str(out), arm, seed, threads)
            for seed, arm in jobs
        ]
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            accuracies = ", ".join(f"{mode} {ev['accuracy']:.3f}" for mode, ev in row["evaluations"].items())
            print(
                f"seed {row['seed']} {ARM_LABELS[row['arm']]}: {accuracies}; {row['train_s']:.0f}s training "
                f"({row['tokens_per_second']} tokens/s)",
                flush=True,
            )
    rows.sort(key=lambda row: (row["seed"], list(ARM_LABELS).index(row["arm"])))
    payload = {
        "experiment": "A",
        "recipe": recipe.model_dump(mode="json"),
        "seeds": args.seeds,
        "arm_labels": {arm: ARM_LABELS[arm] for arm in args.arms},
        "parallel": args.parallel,
        "threads": threads,
        "seconds": round(time.perf_counter() - started),
        "runs": rows,
    }
    write_json(out / "results.json", payload)
    print_table(out)


def print_table(out: Path) -> None:
    """The bench's tables, from ``OUT/results.json``."""
    from latent_thoughts.report.tables import markdown_document, results_tables

    print(markdown_document(results_tables(out / "results.json")))


if __name__ == "__main__":
    main()
