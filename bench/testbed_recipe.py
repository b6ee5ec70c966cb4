"""Search for the testbed recipe: train both arms under many settings and print what each gave.

Every setting is a set of ``key=value`` overrides of :class:`latent_thoughts.recipes.testbed.TestbedRecipe`
(``lr=1e-3``, ``batch=8``, ``tokens=2M``, ``world.bootstrap_documents=1000``...). ``--set`` applies to
every run, each ``--variant`` is one setting (several overrides separated by spaces), and each
``--grid key=v1,v2`` multiplies the settings by its values. Every setting trains the ``raw`` and the
``thoughts`` arm (``--arms``) for every seed and evaluates them as the recipe does (raw mode for the
raw model, latent mode for the thought model, with the share of true arithmetic claims in its
thoughts). Runs go to a pool of ``--parallel`` processes; results are appended to
``OUT/results.jsonl`` as they finish (a rerun skips finished runs) and summarised in a table.

    .venv/bin/python bench/testbed_recipe.py --set tokens=1M --grid lr=1e-3,2e-3,4e-3 --seeds 0 1
    .venv/bin/python bench/testbed_recipe.py --variant "batch=8" --variant "width=128 layers=6"
    .venv/bin/python bench/testbed_recipe.py --device cuda --parallel 8 ...   # a GPU sweep

``docs/testbed.md`` records the sweeps that chose the recipe's defaults and what each gave.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import shlex
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from latent_thoughts.config import load_config
from latent_thoughts.recipes.testbed import EVAL_MODE, TestbedRecipe, evaluate_arm, prepare_data, train_config


@dataclass(frozen=True)
class Job:
    """One training run: a setting (overrides), an arm and a seed."""

    setting: str
    overrides: tuple[str, ...]
    arm: str
    seed: int

    @property
    def name(self) -> str:
        digest = hashlib.sha256(" ".join(self.overrides).encode()).hexdigest()[:10]
        return f"{digest}-{self.arm}-s{self.seed}"


def settings(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...]]]:
    """(label, overrides) of every setting: variants x grid, each after the common ``--set``."""
    variants = [shlex.split(variant) for variant in args.variant] or [[]]
    axes = []
    for spec in args.grid:
        key, _, values = spec.partition("=")
        axes.append([f"{key}={value}" for value in values.split(",")])
    out = []
    for variant in variants:
        for combination in itertools.product(*axes):
            own = [*variant, *combination]
            out.append((" ".join(own) or "defaults", (*args.set, *own)))
    return out


def data_key(recipe: TestbedRecipe) -> str:
    """Runs whose world and tokenizer options agree share one prepared data folder."""
    fields = {"world": recipe.world.model_dump(mode="json"), "vocab": recipe.vocab_size}
    fields["split_digits"] = recipe.split_digits
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def run_job(job: Job, out: str, device: str, threads: int) -> dict[str, Any]:
    """Train and evaluate one run (in a worker process); returns its results row."""
    import torch

    from latent_thoughts.testbed import make_eval_problems
    from latent_thoughts.train import train

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    recipe = load_config(TestbedRecipe, None, job.overrides)
    data = prepare_data(recipe, Path(out) / "data" / data_key(recipe))
    config = train_config(
        recipe, job.arm, job.seed, data, Path(out) / "runs" / job.name, progress_bar=False, logging_steps=50
    )
    started = time.perf_counter()
    result = train(config, resume=True)
    assert result.model_dir is not None
    train_s = time.perf_counter() - started
    problems = make_eval_problems(recipe.world)
    evaluation = evaluate_arm(result.model_dir, problems, EVAL_MODE[job.arm], device=device)  # type: ignore[index]
    losses = [log["loss"] for log in result.metrics.get("log_history", []) if "loss" in log]
    return {
        **asdict(job),
        "accuracy": evaluation.accuracy,
        "true_claim_share": evaluation.true_claim_share,
        "claims": evaluation.claims,
        "copied_operand_share": evaluation.copied_operand_share,
        "problems": evaluation.problems,
        "final_loss": losses[-1] if losses else None,
        "tokens": result.tokens,
        "tokens_per_second": result.metrics.get("tokens_per_second"),
        "epochs": result.metrics.get("data", {}).get("sources", [{}])[0].get("epochs"),
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "example": evaluation.example,
    }


def summarise(rows: list[dict[str, Any]], order: list[str]) -> None:
    """Print one line per setting: accuracy mean (per seed) of each arm and the thoughts' true claims."""
    print(
        "| setting | raw acc | thoughts acc (latent) | true claims | copied operand | thoughts final loss | s/run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for setting in order:
        own = [row for row in rows if row["setting"] == setting]
        if not own:
            continue
        cells = []
        for arm in ("raw", "thoughts"):
            values = [row["accuracy"] for row in own if row["arm"] == arm]
            per_seed = "/".join(f"{v:.2f}" for v in values)
            cells.append(f"{statistics.fmean(values):.3f} ({per_seed})" if values else "-")
        thoughts = [row for row in own if row["arm"] == "thoughts"]
        claims = f"{statistics.fmean(r['true_claim_share'] for r in thoughts):.2f}" if thoughts else "-"
        copied = (
            f"{statistics.fmean(r.get('copied_operand_share', 0) for r in thoughts):.2f}" if thoughts else "-"
        )
        losses = [r["final_loss"] for r in thoughts if r["final_loss"] is not None]
        loss = f"{statistics.fmean(losses):.3f}" if losses else "-"
        seconds = statistics.fmean(row["total_s"] for row in own)
        print(f"| {setting} | {cells[0]} | {cells[1]} | {claims} | {copied} | {loss} | {seconds:.0f} |")


def main() -> None:
    """Run every (setting, arm, seed) not yet in results.jsonl and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/testbed_recipe")
    parser.add_argument("--set", nargs="*", default=[], help="overrides applied to every run")
    parser.add_argument("--variant", action="append", default=[], help="one setting: 'key=v key=v'")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,...: one setting per value")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=["raw", "thoughts"], choices=["raw", "thoughts"])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / parallel)")
    parser.add_argument("--device", default="cpu", help="evaluation device (training uses CUDA when present)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    finished = {(row["setting"], row["arm"], row["seed"]) for row in done}
    all_settings = settings(args)
    jobs = [
        Job(label, overrides, arm, seed)
        for label, overrides in all_settings
        for seed in args.seeds
        for arm in args.arms
        if (label, arm, seed) not in finished
    ]
    # Prepare each distinct data folder once, before the workers race for it.
    for _, overrides in all_settings:
        recipe = load_config(TestbedRecipe, None, overrides)
        prepare_data(recipe, out / "data" / data_key(recipe))
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
    print(f"{len(jobs)} runs to do ({len(finished)} already done), {args.parallel} at a time", flush=True)
    started = time.perf_counter()
    rows = [row for row in done if row["setting"] in {label for label, _ in all_settings}]
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job, str(out), args.device, threads): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # a failed run is reported and the sweep goes on
                print(f"FAILED {job.setting} {job.arm} seed {job.seed}: {exc!r}", flush=True)
                continue
            rows.append(row)
            with results.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                f"[{time.perf_counter() - started:5.0f}s] {job.setting} | {job.arm} s{job.seed}: acc "
                f"{row['accuracy']:.3f}, true claims {row['true_claim_share']:.2f}, copied {row['copied_operand_share']:.2f}, loss {row['final_loss']}, "
                f"{row['tokens_per_second']} tok/s, {row['total_s']}s",
                flush=True,
            )
    print()
    summarise(rows, [label for label, _ in all_settings])


if __name__ == "__main__":
    main()
