"""A pilot of BoLT variants: does the growth g·f of the training thoughts' quality rise further?

From the warm start of a finished ``bench/bolt.py`` (``--warm-start``, seed 0), each variant runs
one EM iteration and then the E-step of its new model (``final_estep``), which measures that model's
fidelity f and the next selection gain g (``latent_thoughts.recipes.testbed_em.loop_dynamics``):

- ``previous_k4`` / ``previous_k1``: the M-step continues from the previous model (``mstep.init=previous``)
  instead of the base, at K = 4 and its K = 1 control;
- ``redraw_k4``: the M-step draws every chunk's layout anew on each pass (``mstep.redraw_layouts``), as
  the reference does, instead of one layout per chunk for the whole run;
- ``t0.7_k4``: the E-step proposes at temperature 0.7 (``estep.temperature``; log q under the same
  tempered law, so the weights stay exact);
- ``tokens8m_k4``: the M-step at 8 M tokens (4x the warm start's) instead of 4 M: how fidelity grows
  with the M-step's budget;
- ``pretrained_k4``: a base that is not random: pretrained on raw documents of the world's
  validation split (``pretrain.tokens``), from which a new warm start continues; its first E-step
  only (iteration 0 with ``final_estep``), so its g·f at iteration 1 compares with the random base's.

The reference is the ``bench/bolt.py`` run ``seed0_k4`` of the same warm start (M-steps from the random
base at temperature 1). Printed: per variant, accuracy of the model of iteration 1, and for iterations
1 and 2 the true claims sampled and selected, f, g and g·f. ``--report OUT`` prints the table again.

    .venv/bin/python bench/bolt_pilot.py --warm-start runs/bench/bolt_cpu/warm_start \\
        --reference runs/bench/bolt_cpu/seed0_k4 --out runs/bench/bolt_pilot --parallel 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bolt import SCALES, cell, finished_warm_start, run_one
from latent_thoughts.em.config import em_config_from
from latent_thoughts.em.manifest import Manifest
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.recipes.testbed_em import summarize

ONE_ITERATION = ("seed=0", "estep.seed=0", "iterations=1", "final_estep=true")
VARIANTS: dict[str, tuple[str, ...]] = {
    "t0.7_k4": (*ONE_ITERATION, "estep.k=4", "estep.temperature=0.7"),
    "previous_k4": (*ONE_ITERATION, "estep.k=4", "mstep.init=previous"),
    "previous_k1": (*ONE_ITERATION, "estep.k=1", "mstep.init=previous"),
    "redraw_k4": (*ONE_ITERATION, "estep.k=4", "mstep.redraw_layouts=true"),
    "tokens8m_k4": (*ONE_ITERATION, "estep.k=4", "mstep.tokens=8M"),
}
"""The variants in the order they start (the pretrained base's comes third)."""
PRETRAINED = ("pretrain.tokens=2M", "testbed.world.validation_documents=500")
"""The pretrained base: 2 M raw tokens (the warm start's budget) over 500 documents of the validation split."""


def read_summary(folder: Path) -> dict[str, Any]:
    """The summary of a finished em run folder, recomputed from its manifest."""
    manifest = Manifest.open(folder)
    return summarize(em_config_from(manifest.data["config"]), manifest.stages)


def table(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The pilot's g·f table as Markdown lines."""
    lines = [
        "| variant | iter | accuracy of model t | true claims sampled / selected | result-chunk valid selected "
        "| f | g | g·f |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        rows = run["iterations"]
        first = 0 if name.startswith("pretrained") else 1  # its own warm start: show its accuracy too
        for row in rows[first:3]:
            if row.get("accuracy") is None and row.get("sampled_true_claims") is None:
                continue  # a stage not run (yet)
            lines.append(
                f"| {name} | {row['iteration']} | {cell(row.get('accuracy'))} | "
                f"{cell(row.get('sampled_true_claims'))} / {cell(row.get('selected_true_claims'))} | "
                f"{cell(row.get('selected_result_valid'))} | {cell(row.get('fidelity'))} | "
                f"{cell(row.get('selection_gain'))} | {cell(row.get('growth'))} |"
            )
    return lines


def _variant_folders(out: Path) -> list[tuple[str, str]]:
    return [(name, str(out / name)) for name in [*VARIANTS, "pretrained_k4"]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warm-start", help="the warm-start folder of a finished bench/bolt.py")
    parser.add_argument("--reference", help="that bench's seed0_k4 run folder (the random base at T = 1)")
    parser.add_argument("--out", default="runs/bench/bolt_pilot")
    parser.add_argument(
        "--report", metavar="OUT", help="print the table of a pilot (done or running) and stop"
    )
    parser.add_argument(
        "--quick", action="store_true", help="plumbing only (with a --quick bolt.py warm start)"
    )
    parser.add_argument("--only", nargs="*", help="run only these variants (previous_k4 ... pretrained_k4)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    out = Path(args.report or args.out)
    if args.report:  # from the run folders, so a pilot still running shows what it has
        runs = {
            name: read_summary(folder)
            for name, folder in [("base_k4 (bench/bolt.py seed0_k4)", args.reference), *_variant_folders(out)]
            if folder and (Path(folder) / "manifest.json").is_file()
        }
        print("\n".join(table(runs)))
        return
    if not args.warm_start:
        parser.error("--warm-start is required")
    started = time.perf_counter()
    common = [*SCALES["quick" if args.quick else "cpu"], "progress=false"]
    warm_dir = Path(args.warm_start)
    finished_warm_start(warm_dir)  # a folder that is not a finished warm start fails here
    wanted = set(args.only or [*VARIANTS, "pretrained_k4"])
    jobs = {
        name: (common, str(out), name, (f"warm_start_from={warm_dir}", *overrides))
        for name, overrides in VARIANTS.items()
        if name in wanted
    }
    if "pretrained_k4" in wanted:
        # its own data, pretraining and warm start, then one E-step with the new warm start
        jobs["pretrained_k4"] = (
            [*common, *PRETRAINED],
            str(out),
            "pretrained_k4",
            ("seed=0", "estep.seed=0", "estep.k=4", "iterations=0", "final_estep=true"),
        )
    order = [name for name in jobs if name != "pretrained_k4"]
    if "pretrained_k4" in jobs:
        order.insert(min(2, len(order)), "pretrained_k4")
    with ProcessPoolExecutor(max(args.parallel, 1), mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(run_one, *jobs[name], args.threads) for name in order}
        runs = {name: futures[name].result() for name in order}
    if args.reference:
        runs = {"base_k4 (bench/bolt.py seed0_k4)": read_summary(Path(args.reference)), **runs}
    results = {"warm_start": str(warm_dir), "runs": runs, "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(table(runs)))
    print(f"total time {results['seconds']:.0f}s")


if __name__ == "__main__":
    try:
        main()
    except LatentThoughtsError as exc:
        sys.exit(f"bolt_pilot.py: error: {exc}")
