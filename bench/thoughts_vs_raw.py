"""The paper's first experiment on the testbed: raw documents vs the same documents with thoughts.

Runs the testbed recipe (:mod:`latent_thoughts.testbed.recipe`, defaults chosen as ``docs/testbed.md``
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
import statistics
import time
from pathlib import Path
from typing import Any

from latent_thoughts.config import load_config
from latent_thoughts.testbed import make_eval_problems
from latent_thoughts.testbed.recipe import TestbedRecipe, evaluate_arm, prepare_data, train_config
from latent_thoughts.train import train


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    """Run both arms over the seeds, print the table and write results.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/thoughts_vs_raw")
    parser.add_argument("--quick", action="store_true", help="24k tokens and 40 problems: plumbing only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. tokens=6M batch=16")
    args = parser.parse_args()
    overrides = ["tokens=24k", "world.eval_problems=40", *args.set] if args.quick else args.set
    recipe = load_config(TestbedRecipe, None, overrides)
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    out = Path(args.out)
    data = prepare_data(recipe, out / "data")
    problems = make_eval_problems(recipe.world)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for arm in ("raw", "thoughts"):
            config = train_config(
                recipe, arm, seed, data, out / f"seed{seed}" / arm, progress_bar=False, logging_steps=100
            )
            clock = time.perf_counter()
            result = train(config, resume=True)
            assert result.model_dir is not None
            train_s = time.perf_counter() - clock
            modes = ["latent", "raw"] if arm == "thoughts" else ["raw"]
            evaluations = {mode: evaluate_arm(result.model_dir, problems, mode) for mode in modes}
            row = {
                "arm": arm,
                "seed": seed,
                "tokens": result.tokens,
                "train_s": round(train_s, 1),
                "tokens_per_second": result.metrics.get("tokens_per_second"),
                "epochs": result.metrics.get("data", {}).get("sources", [{}])[0].get("epochs"),
                "evaluations": {mode: evaluation.as_dict() for mode, evaluation in evaluations.items()},
            }
            rows.append(row)
            first = evaluations[modes[0]]
            print(
                f"seed {seed} {arm:8s} ({modes[0]} mode): accuracy {first.accuracy:.3f}, "
                f"{row['epochs']:.1f} epochs of its data, {train_s:.0f}s training"
                + (
                    f", true claims {first.true_claim_share:.2f}, copied operand {first.copied_operand_share:.2f}"
                    if arm == "thoughts"
                    else ""
                ),
                flush=True,
            )

    print()
    print(
        f"Testbed, {len(problems)} held-out problems, {recipe.tokens:,} training tokens per run (scratch "
        f"Llama width {recipe.width}, {recipe.layers} layers, lr {recipe.lr:g}, batch {recipe.batch} x "
        f"{recipe.seq_len}), seeds {args.seeds}"
    )
    print("| arm | eval mode | accuracy mean ± std | per seed |")
    print("| --- | --- | --- | --- |")
    means = {}
    for arm, mode in (("raw", "raw"), ("thoughts", "latent"), ("thoughts", "raw")):
        values = [row["evaluations"][mode]["accuracy"] for row in rows if row["arm"] == arm]
        mean, std = mean_std(values)
        means[(arm, mode)] = mean
        print(f"| {arm} | {mode} | {mean:.3f} ± {std:.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    raw_mean, thought_mean = means[("raw", "raw")], means[("thoughts", "latent")]
    ratio = f"{thought_mean / raw_mean:.2f}" if raw_mean > 0 else "undefined (raw mean is 0)"
    print(f"ratio thoughts (latent) / raw: {ratio}")
    latent = [row["evaluations"]["latent"] for row in rows if row["arm"] == "thoughts"]
    claims, claims_std = mean_std([evaluation["true_claim_share"] for evaluation in latent])
    copied, copied_std = mean_std([evaluation["copied_operand_share"] for evaluation in latent])
    print(
        f"thought model's thoughts: true arithmetic claims {claims:.2f} ± {claims_std:.2f}, "
        f"start from the question's first factor {copied:.2f} ± {copied_std:.2f}"
    )
    print(f"total time {time.perf_counter() - started:.0f}s")
    payload = {"recipe": recipe.model_dump(mode="json"), "seeds": args.seeds, "runs": rows}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
