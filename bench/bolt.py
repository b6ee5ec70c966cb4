"""BoLT on the testbed: does the importance-weighted E-step select better thoughts, and does the model
trained on them beat its warm start? (METHOD sections 5-6; the issue's calibration.)

One warm start (the testbed recipe trained on the warm-start split with the oracle teacher's
thoughts, ``latent-thoughts em`` with ``iterations=0``) is shared by every run below; each run is an
``em`` run that starts from it (``warm_start_from``):

1. seeds: ``--seeds`` (default 0 1 2) runs of ``--iterations`` (default 1) iterations at K = 4: the
   seed sets the E-step's sampling and selection seed and the M-step's training seed and base
   weights. Printed: accuracy of the warm start and of each iteration, mean and standard deviation
   over seeds, and the validity of the selected against the raw sampled thoughts (share of true
   claims, share of valid thoughts by the testbed checker);
2. K: iteration 1 at K in ``--ks`` (default 1 4 16), seed 0: accuracy and selected validity against K.

Everything is written under ``--out`` (``results.json``); every run is resumable, so a rerun only
computes what is missing. ``--set`` changes any ``em`` option (``testbed.tokens=6M``,
``mstep.keep_warm_start=true``, ``estep.policy=highest``...). The defaults are the recipe's scale
(1,000 warm-start and 1,000 bootstrap documents, 4 M tokens per training run): hours on a 2-core
CPU, minutes on a GPU. ``--scale cpu`` (250 and 500 documents, 2 M tokens) takes about 40 minutes
on a 2-core CPU with ``--parallel 2``, the warm start included; ``--quick`` is a plumbing check of a
few minutes.
``--warm-start DIR`` starts every run from another bench's warm start (a variant of the same
experiment); ``--warm-start-only`` trains and evaluates the warm start alone (``--warm-start-seed``
sets its training seed), to see how much the warm start itself varies.

    .venv/bin/python bench/bolt.py                       # the full bench
    .venv/bin/python bench/bolt.py --quick               # plumbing only
    .venv/bin/python bench/bolt.py --scale cpu --parallel 2 --threads 1   # a 2-core CPU
    .venv/bin/python bench/bolt.py --iterations 2 --set mstep.keep_warm_start=true
    .venv/bin/python bench/bolt.py --out runs/bench/bolt_keep --warm-start runs/bench/bolt/warm_start \
        --set mstep.keep_warm_start=true               # a variant from the same warm start
    .venv/bin/python bench/bolt.py --scale cpu --warm-start-only --warm-start-seed 1 --out runs/bench/ws1
    python bench/bolt.py --parallel 5 --set estep.batch_chunks=256   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from latent_thoughts.em.config import load_em_config
from latent_thoughts.em.loop import run_em
from latent_thoughts.errors import LatentThoughtsError

FULL = [
    "testbed.world.warm_start_documents=1000",
    "testbed.world.bootstrap_documents=1000",
    "testbed.world.eval_problems=200",
    "testbed.tokens=4M",
]
"""The recipe's scale (docs/testbed.md: 1,000 documents and 4 M tokens reached 21.5% on one seed)."""

CPU = [
    "testbed.world.warm_start_documents=250",
    "testbed.world.bootstrap_documents=500",
    "testbed.world.eval_problems=200",
    "testbed.tokens=2M",
    "estep.batch_chunks=256",
]
"""A scale that fits about 40 minutes on a 2-core CPU with ``--parallel 2``: the bootstrap split twice
the warm-start split (the reference's is four times), 2 M tokens per training run."""

QUICK = [
    "testbed.world.warm_start_documents=4",
    "testbed.world.bootstrap_documents=4",
    "testbed.world.eval_problems=10",
    "testbed.tokens=8k",
    "testbed.width=32",
    "testbed.layers=2",
    "testbed.heads=2",
    "testbed.vocab_size=300",
    "estep.max_thought_tokens=24",
    "evaluation.max_thought_tokens=24",
]


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample standard deviation; 0 for one value)."""
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_one(
    common: list[str], out: str, name: str, overrides: tuple[str, ...], threads: int | None = None
) -> dict[str, Any]:
    """One ``em`` run named ``name`` under ``out`` (in this process or a worker, on ``threads`` CPU
    threads when given); returns its summary."""
    logging.basicConfig(level=logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    config = load_em_config(None, [*common, f"out={Path(out) / name}", *overrides])
    clock = time.perf_counter()
    summary = run_em(config, say=lambda line: print(f"[{name}] {line}", flush=True))
    summary["seconds"] = round(time.perf_counter() - clock, 1)
    return summary


def main() -> None:
    """Run the warm start, the seed runs and the K runs; print the tables; write results.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/bolt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--iterations", type=int, default=1, help="EM iterations of the seed runs (1 or 2)")
    parser.add_argument(
        "--scale",
        choices=["full", "cpu", "quick"],
        default="full",
        help="full: the recipe's (hours on a CPU); cpu: about 40 minutes on 2 cores; quick: plumbing only",
    )
    parser.add_argument("--quick", action="store_true", help="the same as --scale quick")
    parser.add_argument("--set", nargs="*", default=[], help="em overrides, e.g. testbed.tokens=6M")
    parser.add_argument(
        "--parallel", type=int, default=1, help="EM runs at a time after the warm start (a GPU takes several)"
    )
    parser.add_argument(
        "--warm-start",
        default=None,
        help="the warm-start run folder of another bench at the same scale (default: OUT/warm_start)",
    )
    parser.add_argument("--warm-start-seed", type=int, default=0, help="training seed of the warm start")
    parser.add_argument(
        "--warm-start-only", action="store_true", help="train and evaluate the warm start, then stop"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads of each parallel run (the warm start uses all)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    scale = {"full": FULL, "cpu": CPU, "quick": QUICK}["quick" if args.quick else args.scale]
    common = [*scale, "progress=false", *args.set]
    started = time.perf_counter()

    def em(name: str, *overrides: str) -> dict[str, Any]:
        return run_one(common, str(out), name, overrides)

    # The warm start: trained here, or another bench's (``--warm-start``), reused as it is when done.
    warm_dir = Path(args.warm_start) if args.warm_start else out / "warm_start"
    if args.warm_start and not (warm_dir / "manifest.json").is_file():
        parser.error(f"--warm-start {warm_dir}: not an em run folder (no manifest.json)")
    warm_run = run_one(
        common, str(warm_dir.parent), warm_dir.name, ("iterations=0", f"seed={args.warm_start_seed}")
    )
    warm = warm_run["iterations"][0]
    print(
        f"warm start: accuracy {cell(warm['accuracy'])}, its thoughts' true claims {cell(warm['eval_true_claims'])}"
    )
    if args.warm_start_only:
        return
    base = f"warm_start_from={warm_dir}"

    jobs: dict[str, tuple[str, ...]] = {}
    for seed in args.seeds:
        jobs[f"seed{seed}_k4"] = (
            base,
            f"seed={seed}",
            f"estep.seed={1000 * seed}",
            "estep.k=4",
            f"iterations={args.iterations}",
        )
    for k in args.ks:
        jobs.setdefault(f"seed0_k{k}", (base, "seed=0", "estep.seed=0", f"estep.k={k}", "iterations=1"))
    runs: dict[str, dict[str, Any]] = {}
    if args.parallel > 1:
        # Independent EM runs from the same warm start: on a GPU machine several share the device.
        # The largest K first, so the longest E-step does not start last and run alone.
        longest_first = sorted(jobs, key=lambda name: -int(name.rsplit("_k", 1)[1]))
        with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
            futures = {
                name: pool.submit(run_one, common, str(out), name, jobs[name], args.threads)
                for name in longest_first
            }
            runs = {name: future.result() for name, future in futures.items()}
    else:
        runs = {name: em(name, *job) for name, job in jobs.items()}

    print()
    print(f"BoLT on the testbed ({', '.join(scale)}{', ' + ', '.join(args.set) if args.set else ''})")
    print(f"warm start: accuracy {cell(warm['accuracy'])}")
    print()
    print(
        "| seed | iter | accuracy | true claims sampled / selected | valid sampled / selected | mean ESS | mean bound |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    by_iteration: dict[int, dict[str, list[float]]] = {}
    for seed in args.seeds:
        for row in runs[f"seed{seed}_k4"]["iterations"][1:]:
            t = row["iteration"]
            print(
                f"| {seed} | {t} | {cell(row['accuracy'])} | {cell(row['sampled_true_claims'])} / "
                f"{cell(row['selected_true_claims'])} | {cell(row['sampled_valid'])} / {cell(row['selected_valid'])} | "
                f"{cell(row['mean_ess'])} | {cell(row['mean_bound'])} |"
            )
            values = by_iteration.setdefault(t, {})
            for key in (
                "accuracy",
                "sampled_true_claims",
                "selected_true_claims",
                "sampled_valid",
                "selected_valid",
            ):
                if row[key] is not None:
                    values.setdefault(key, []).append(row[key])
    print()
    print(
        "| iter | accuracy mean ± std | true claims sampled | true claims selected | valid sampled | valid selected |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| 0 (warm start) | {cell(warm['accuracy'])} | - | - | - | - |")
    for t, values in sorted(by_iteration.items()):
        print(
            f"| {t} | {mean_std(values.get('accuracy', []))} | {mean_std(values.get('sampled_true_claims', []))} | "
            f"{mean_std(values.get('selected_true_claims', []))} | {mean_std(values.get('sampled_valid', []))} | "
            f"{mean_std(values.get('selected_valid', []))} |"
        )
    print()
    print(
        "| K | accuracy (iter 1) | true claims selected | valid selected | true claims sampled | mean ESS |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for k in args.ks:
        row = runs[f"seed0_k{k}"]["iterations"][1]
        print(
            f"| {k} | {cell(row['accuracy'])} | {cell(row['selected_true_claims'])} | {cell(row['selected_valid'])} | "
            f"{cell(row['sampled_true_claims'])} | {cell(row['mean_ess'])} |"
        )
    print(f"total time {time.perf_counter() - started:.0f}s")
    payload = {
        "scale": scale,
        "overrides": args.set,
        "warm_start_folder": str(warm_dir),
        "warm_start": warm,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    try:
        main()
    except LatentThoughtsError as exc:  # a bad option or a changed finished stage: one line, no traceback
        sys.exit(f"bolt.py: error: {exc}")
