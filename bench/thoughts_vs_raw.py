"""The paper's first experiment on the testbed: raw documents vs the same documents with thoughts.

Runs the testbed recipe (:mod:`latent_thoughts.recipes.testbed`, defaults chosen as ``docs/testbed.md``
records) for both arms over several seeds: the same scratch Llama, tokenizer, optimiser and number of
training tokens; only the data differ (raw documents, or the same documents one sentence a chunk with
the oracle teacher's thoughts in the METHOD section 2 layouts). Each model is evaluated greedily on
the held-out problems: the raw model in raw mode (latent tokens banned), the thought model in latent
mode (``question SOL PRIOR`` -> thought -> answer) and in raw mode. Printed: a table of accuracy mean
± std with per-seed values, the ratio of the means, and for the thought model the share of true
arithmetic claims in its thoughts (testbed checker) and of thoughts that start from the question's
first factor (copying).

    .venv/bin/python bench/thoughts_vs_raw.py                 # defaults: 3 seeds, under 40 minutes here
    .venv/bin/python bench/thoughts_vs_raw.py --seeds 0       # one seed
    .venv/bin/python bench/thoughts_vs_raw.py --quick         # plumbing only, about a minute
    .venv/bin/python bench/thoughts_vs_raw.py --set tokens=6M lr=2e-3   # any recipe option
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from latent_thoughts.config import load_config
from latent_thoughts.recipes.testbed import (
    RecipeData,
    TestbedRecipe,
    evaluate_arm,
    prepare_data,
    train_config,
)
from latent_thoughts.report.arms import accuracy_table, summary
from latent_thoughts.report.tables import markdown_document
from latent_thoughts.testbed import make_eval_problems


def run_arm(
    recipe_overrides: list[str], data: RecipeData, out: str, arm: str, seed: int, threads: int
) -> dict[str, Any]:
    """Train one arm for one seed and evaluate it (in a worker process); returns its results row."""
    import torch

    from latent_thoughts.train import train

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    recipe = load_config(TestbedRecipe, None, recipe_overrides)
    problems = make_eval_problems(recipe.world)
    config = train_config(
        recipe, arm, seed, data, Path(out) / f"seed{seed}" / arm, progress_bar=False, logging_steps=100
    )
    clock = time.perf_counter()
    result = train(config, resume=True)
    assert result.model_dir is not None
    train_s = time.perf_counter() - clock
    modes = ["latent", "raw"] if arm == "thoughts" else ["raw"]
    evaluations = {mode: evaluate_arm(result.model_dir, problems, mode) for mode in modes}
    return {
        "arm": arm,
        "seed": seed,
        "tokens": result.tokens,
        "train_s": round(train_s, 1),
        "tokens_per_second": result.metrics.get("tokens_per_second"),
        "epochs": result.metrics.get("data", {}).get("sources", [{}])[0].get("epochs"),
        "evaluations": {mode: evaluation.as_dict() for mode, evaluation in evaluations.items()},
    }


def report_row(row: dict[str, Any]) -> None:
    """One line per finished run, as it finishes."""
    mode = "latent" if row["arm"] == "thoughts" else "raw"
    first = row["evaluations"][mode]
    extra = (
        f", true claims {first['true_claim_share']:.2f}, copied operand {first['copied_operand_share']:.2f}"
        if row["arm"] == "thoughts"
        else ""
    )
    print(
        f"seed {row['seed']} {row['arm']:8s} ({mode} mode): accuracy {first['accuracy']:.3f}, "
        f"{row['epochs']:.1f} epochs of its data, {row['train_s']:.0f}s training "
        f"({row['tokens_per_second']} tokens/s){extra}",
        flush=True,
    )


def main() -> None:
    """Run both arms over the seeds, print the table and write results.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/thoughts_vs_raw")
    parser.add_argument("--quick", action="store_true", help="24k tokens and 40 problems: plumbing only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. tokens=6M batch=16")
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="runs trained at a time, each on cores/parallel threads (2: both arms of a seed at once, "
        "which on 2 small cores trains about 20%% more tokens per second than one run on both)",
    )
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error(f"--parallel must be at least 1, got {args.parallel}")
    overrides = ["tokens=24k", "world.eval_problems=40", *args.set] if args.quick else list(args.set)
    recipe = load_config(TestbedRecipe, None, overrides)
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    out = Path(args.out)
    data = prepare_data(recipe, out / "data")
    problems = make_eval_problems(recipe.world)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = [(seed, arm) for seed in args.seeds for arm in ("raw", "thoughts")]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_arm, overrides, data, str(out), arm, seed, threads) for seed, arm in jobs]
        for future in as_completed(futures):
            rows.append(future.result())
            report_row(rows[-1])
    rows.sort(key=lambda row: (row["seed"], row["arm"]))

    print()
    print(
        f"Testbed, {len(problems)} held-out problems, {recipe.tokens:,} training tokens per run (scratch "
        f"Llama width {recipe.width}, {recipe.layers} layers, {recipe.optimizer} lr {recipe.lr:g} "
        f"({recipe.schedule}, {recipe.warmup_steps} warm-up steps), batch {recipe.batch} x "
        f"{recipe.seq_len}, {recipe.world.bootstrap_documents} bootstrap documents), seeds {args.seeds}, "
        f"{args.parallel} run(s) at a time on {threads} thread(s) each"
    )
    payload = {"recipe": recipe.model_dump(mode="json"), "seeds": args.seeds, "runs": rows}
    # the table, the ratio and the thoughts' arithmetic: latent-thoughts report OUT --table arms (and summary)
    print(markdown_document([accuracy_table(payload), summary(payload)]))
    payload["seconds"] = round(time.perf_counter() - started)
    print(f"total time {payload['seconds']}s")
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
