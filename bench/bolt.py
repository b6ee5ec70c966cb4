"""BoLT on the testbed (METHOD sections 5-6): does the loop bootstrap, and why or why not?

One warm start (the testbed recipe trained on the warm-start split with the oracle teacher's
thoughts, ``latent-thoughts em`` with ``iterations=0``) is shared by every run below. Then, each at
the M-step's training budget (``mstep.tokens``) and evaluated on the same held-out problems:

1. BoLT: for each seed of ``--seeds``, an ``em`` run of ``--iterations`` iterations at K = 4 (the seed
   sets the E-step's sampling and selection and the M-step's training seed and base weights);
2. the K = 1 control of each seed (no selection: the model retrained on its own samples), which
   separates the effect of selection from the effect of more training (``--no-control`` skips it);
3. baselines on the bootstrap split (``--no-baselines`` skips them): the oracle ceiling (the
   teacher's thoughts), Raw Token-Match (the raw text at the M-step's tokens) and Raw FLOP-Match
   (the raw text at the M-step's tokens plus one E-step's inference compute in training-token
   equivalents: a forward pass costs a third of a training step per token);
4. optionally a sweep of K at iteration 1, seed 0 (``--ks 1 4 16``).

Printed, per iteration: accuracy mean ± std over seeds, true claims of the sampled and the selected
thoughts, validity on chunks that state a result, and the loop's dynamics: fidelity f (how much of
its training thoughts' quality a model keeps in its own samples), selection gain g and growth g·f
(quality rises only while g·f > 1; :func:`latent_thoughts.recipes.testbed_em.loop_dynamics`). Everything is
written under ``--out`` (``results.json``); every run resumes, so a rerun computes only what is
missing; ``--report OUT`` prints the tables again from ``results.json`` without running anything
(they are :mod:`latent_thoughts.report.bolt`'s: ``latent-thoughts report OUT`` shows them too, as an
HTML page with plots).

Scales: ``--scale cpu`` is ``configs/em/testbed-bolt-cpu.yaml`` (250 warm-start and 500 bootstrap
documents; warm start 2 M tokens, every M-step 4 M); ``--scale full`` the recipe's size for a GPU
machine (1,000 and 4,000 documents, 4 M and 16 M tokens: the paper's ratios); ``--quick`` is a
plumbing check. ``--set`` changes any ``em`` option of the BoLT runs and the baselines' budget
(``mstep.tokens=8M``, ``mstep.init=previous``, ``estep.temperature=0.7``...); with ``--warm-start
DIR`` the warm start is another bench's, used as it is, so M-step settings may differ from it.

    .venv/bin/python bench/bolt.py --scale cpu --parallel 2 --threads 1 --seeds 0 1
    .venv/bin/python bench/bolt.py --report runs/bench/bolt_cpu
    .venv/bin/python bench/bolt.py --quick
    .venv/bin/python bench/bolt.py --scale cpu --out runs/bench/bolt_prev --warm-start runs/bench/bolt_cpu/warm_start \
        --set mstep.init=previous --iterations 1 --no-baselines
    .venv/bin/python bench/bolt.py --scale cpu --warm-start-only --warm-start-seed 1 --out runs/bench/ws1
    python bench/bolt.py --scale full --parallel 5 --set estep.batch_chunks=256   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from latent_thoughts.em.config import em_config_from, load_em_config
from latent_thoughts.em.loop import RunPaths, run_em
from latent_thoughts.em.manifest import Manifest
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.recipes.testbed_em import TestbedEMConfig, problems_file
from latent_thoughts.report.bolt import report
from latent_thoughts.report.tables import fixed as cell

CPU_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "em" / "testbed-bolt-cpu.yaml"
"""The design every scale starts from: the paper's budget ratios at a size a 2-core CPU runs."""

FULL = [
    "testbed.world.warm_start_documents=1000",
    "testbed.world.bootstrap_documents=4000",
    "testbed.tokens=4M",
    "mstep.tokens=16M",
]
"""The paper's ratios at the recipe's size: a bootstrap split 4x the warm start's, M-steps at 4x its
tokens (the paper: 16x the tokens over a 4x larger split). Hours on a CPU, minutes on a GPU."""

QUICK = [
    "testbed.world.warm_start_documents=4",
    "testbed.world.bootstrap_documents=4",
    "testbed.world.eval_problems=10",
    "testbed.tokens=8k",
    "mstep.tokens=12k",
    "testbed.width=32",
    "testbed.layers=2",
    "testbed.heads=2",
    "testbed.vocab_size=300",
    "estep.max_thought_tokens=24",
    "evaluation.max_thought_tokens=24",
]

SCALES = {"cpu": [], "full": FULL, "quick": QUICK}

FORWARD_PER_TRAINING_TOKEN = 3
"""A training step costs about 6N FLOPs per token (forward and backward), a forward pass 2N: an
E-step token is worth a third of a training token (the FLOP-match's exchange rate)."""


# --- small helpers -----------------------------------------------------------------------------------


def em_config(overrides: list[str]) -> TestbedEMConfig:
    """The bench's ``em`` configuration: the CPU design with ``overrides`` (scale, then ``--set``)."""
    return load_em_config(CPU_CONFIG, overrides)


def run_one(
    common: list[str], out: str, name: str, overrides: tuple[str, ...], threads: int | None = None
) -> dict[str, Any]:
    """One ``em`` run named ``name`` under ``out`` (in this process or a worker, on ``threads`` CPU
    threads when given); returns its summary."""
    logging.basicConfig(level=logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    config = em_config([*common, f"out={Path(out) / name}", *overrides])
    clock = time.perf_counter()
    summary = run_em(config, say=lambda line: print(f"[{name}] {line}", flush=True))
    summary["seconds"] = round(time.perf_counter() - clock, 1)
    return summary


def finished_warm_start(folder: Path) -> dict[str, Any]:
    """The summary of another bench's finished warm start, with its own configuration (so that the
    options of this bench's M-steps may differ from those it was trained with)."""
    manifest = Manifest.open(folder)
    config = em_config_from(manifest.data.get("config", {}))
    return run_em(config.model_copy(update={"out": str(folder), "progress": False}), say=lambda line: None)


# --- baselines -----------------------------------------------------------------------------------------


def estep_training_tokens(config: TestbedEMConfig, paths: RunPaths) -> int:
    """One E-step's inference compute on the bootstrap split, in training-token equivalents.

    Per chunk and sample: the sampler reads the posterior prompt and writes the thought, log q reads
    both again, log p reads ``c SOL PRIOR z EOL x``. The thought's length is taken from the teacher's
    thought of that chunk (what the warm start learned to write), capped at the budget; forward
    tokens count a third of a training token (:data:`FORWARD_PER_TRAINING_TOKEN`).
    """
    from latent_thoughts.corpus import iter_chunks
    from latent_thoughts.em.stage import chunk_layouts, context_limit
    from latent_thoughts.tokenizer import load_tokenizer
    from latent_thoughts.train.data import read_thoughts

    tokenizer = load_tokenizer(paths.tokenizer)
    chunks = list(iter_chunks(paths.chunks("bootstrap")))
    thoughts = read_thoughts(paths.teacher_thoughts("bootstrap"))
    context = context_limit(paths.model(0), config.estep.context_tokens)
    budget = config.estep.max_thought_tokens
    forward = 0
    for chunk, layout in chunk_layouts(chunks, tokenizer, context, budget):
        thought = thoughts.get((chunk.doc_id, chunk.chunk_index)) or ""
        length = min(len(tokenizer.encode(thought, add_special_tokens=False)) + 1, budget)
        prompt = len(layout.posterior_prompt)
        joint = len(layout.joint_context) + 2 + length + len(layout.chunk_ids)
        forward += config.estep.k * (2 * (prompt + length) + joint)
    return forward // FORWARD_PER_TRAINING_TOKEN


def run_baseline(
    common: list[str],
    out: str,
    warm_dir: str,
    name: str,
    arm: str,
    tokens: int,
    seed: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the recipe's ``arm`` (``raw`` or ``thoughts``: the teacher's) on the bootstrap split of
    the warm start's data for ``tokens`` tokens from the base weights of ``seed``, and evaluate it
    (raw mode for raw, latent for thoughts); reused when its ``eval.json`` is there."""
    from latent_thoughts.atomic import write_json
    from latent_thoughts.em.loop import run_training
    from latent_thoughts.recipes.testbed import EVAL_MODE, RecipeData, evaluate_arm, train_config
    from latent_thoughts.testbed.task import read_problems
    from latent_thoughts.train import TrainConfig

    logging.basicConfig(level=logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    folder = Path(out) / "baselines" / name
    result_file = folder / "eval.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("train_tokens_budget") == tokens and done.get("seed") == seed:
            return dict(done)
    config = em_config(common)
    paths = RunPaths(Path(warm_dir))
    data = RecipeData(paths.chunks("bootstrap"), paths.teacher_thoughts("bootstrap"), paths.tokenizer)
    recipe = config.testbed.model_copy(update={"tokens": tokens})
    values = train_config(
        recipe,
        arm,
        seed,
        data,
        folder / "train",
        progress_bar=False,
        logging_steps=100,  # type: ignore[arg-type]
    ).model_dump(mode="json")
    values["model"]["init_seed"] = seed  # the base weights the BoLT runs of this seed start from
    clock = time.perf_counter()
    print(f"[{name}] training {arm} on the bootstrap split, {tokens:,} tokens", flush=True)
    _, metrics = run_training(TrainConfig.model_validate(values))
    evaluation = evaluate_arm(
        folder / "train" / "model",
        read_problems(problems_file(paths)),
        EVAL_MODE[arm],  # type: ignore[index]
        device=config.device,
        max_thought_tokens=config.evaluation.max_thought_tokens,
        batch_size=config.evaluation.batch_size,
    )
    payload = {
        "name": name,
        "arm": arm,
        "seed": seed,
        "train_tokens_budget": tokens,
        "train_tokens": metrics["tokens"],
        "accuracy": evaluation.accuracy,
        "true_claims": evaluation.true_claim_share if arm == "thoughts" else None,
        "seconds": round(time.perf_counter() - clock, 1),
    }
    print(f"[{name}] accuracy {evaluation.accuracy:.3f}", flush=True)
    write_json(result_file, payload)
    return payload


# --- the bench ------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/bolt")
    parser.add_argument(
        "--report", metavar="OUT", help="print the tables of a finished bench folder and stop"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ks", type=int, nargs="*", default=[], help="a sweep of K at iteration 1, seed 0")
    parser.add_argument("--iterations", type=int, default=3, help="EM iterations of the seed runs")
    parser.add_argument("--no-control", action="store_true", help="skip the K = 1 control of each seed")
    parser.add_argument("--no-baselines", action="store_true", help="skip the oracle and raw baselines")
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="cpu",
        help="cpu: a 2-core CPU; full: a GPU; quick: plumbing",
    )
    parser.add_argument("--quick", action="store_true", help="the same as --scale quick")
    parser.add_argument("--set", nargs="*", default=[], help="em overrides, e.g. mstep.tokens=8M")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time after the warm start")
    parser.add_argument(
        "--warm-start",
        default=None,
        help="a finished warm-start run folder (default: OUT/warm_start, trained here)",
    )
    parser.add_argument("--warm-start-seed", type=int, default=0, help="training seed of the warm start")
    parser.add_argument(
        "--warm-start-only", action="store_true", help="train and evaluate the warm start, then stop"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each parallel run")
    return parser.parse_args()


def main() -> None:
    """Train the warm start, run BoLT, its controls and baselines, print the tables, write results.json."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.report:
        folder = Path(args.report)
        results_file = folder / "results.json" if folder.is_dir() else folder
        if not results_file.is_file():
            raise LatentThoughtsError(f"--report {args.report}: no results.json there")
        print("\n".join(report(json.loads(results_file.read_text()))))
        return
    out = Path(args.out)
    scale = SCALES["quick" if args.quick else args.scale]
    common = [*scale, "progress=false", *args.set]
    config = em_config(common)  # a bad --set fails here, before any work
    started = time.perf_counter()

    warm_dir = Path(args.warm_start) if args.warm_start else out / "warm_start"
    if args.warm_start:
        if not (warm_dir / "manifest.json").is_file():
            raise LatentThoughtsError(f"--warm-start {warm_dir}: not an em run folder (no manifest.json)")
        warm_run = finished_warm_start(warm_dir)
    else:
        warm_run = run_one(
            common, str(warm_dir.parent), warm_dir.name, ("iterations=0", f"seed={args.warm_start_seed}")
        )
    warm = warm_run["iterations"][0]
    print(
        f"warm start: accuracy {cell(warm['accuracy'])}, held-out true claims {cell(warm['eval_true_claims'])}"
    )
    if args.warm_start_only:
        return

    base = f"warm_start_from={warm_dir}"
    jobs: dict[str, tuple[Callable[..., dict[str, Any]], tuple[Any, ...], str]] = {}
    for seed in args.seeds:
        for k in [4] if args.no_control else [4, 1]:
            overrides = (
                base,
                f"seed={seed}",
                f"estep.seed={1000 * seed}",
                f"estep.k={k}",
                f"iterations={args.iterations}",
            )
            jobs[f"seed{seed}_k{k}"] = (run_one, (common, str(out), f"seed{seed}_k{k}", overrides), "seed")
    for k in args.ks:
        if f"seed0_k{k}" not in jobs:
            overrides = (base, "seed=0", "estep.seed=0", f"estep.k={k}", "iterations=1")
            jobs[f"sweep_k{k}"] = (run_one, (common, str(out), f"sweep_k{k}", overrides), "sweep")
    flop_match: dict[str, Any] = {}
    if not args.no_baselines:
        mstep_tokens = config.mstep.tokens or config.testbed.tokens
        estep_tokens = estep_training_tokens(config, RunPaths(warm_dir))
        flop_match = {
            "mstep_tokens": mstep_tokens,
            "estep_forward_training_tokens": estep_tokens,
            "k": config.estep.k,
        }
        for name, arm, tokens in (
            ("raw_flop_match", "raw", mstep_tokens + estep_tokens),
            ("oracle", "thoughts", mstep_tokens),
            ("raw_token_match", "raw", mstep_tokens),
        ):
            jobs[name] = (run_baseline, (common, str(out), str(warm_dir), name, arm, tokens, 0), "baseline")

    def submit(pool: ProcessPoolExecutor | None, name: str) -> Any:
        function, job_args, _ = jobs[name]
        if pool is None:
            return function(*job_args)
        return pool.submit(function, *job_args, args.threads)

    # The longest first (BoLT at K = 4, then the controls, then the baselines), so none starts last alone.
    order = sorted(
        jobs,
        key=lambda name: (jobs[name][2] == "baseline", -int(name.rsplit("_k", 1)[1]) if "_k" in name else 0),
    )
    done: dict[str, dict[str, Any]] = {}
    if args.parallel > 1:
        with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
            futures = {name: submit(pool, name) for name in order}
            done = {name: future.result() for name, future in futures.items()}
    else:
        done = {name: submit(None, name) for name in order}

    results = {
        "overrides": [*scale, *args.set],
        "warm_start_folder": str(warm_dir),
        "warm_start": warm,
        "runs": {name: {**done[name], "role": jobs[name][2]} for name in jobs if jobs[name][2] != "baseline"},
        "baselines": {name: done[name] for name in jobs if jobs[name][2] == "baseline"},
        "flop_match": flop_match,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print()
    print("\n".join(report(results)))


if __name__ == "__main__":
    try:
        main()
    except LatentThoughtsError as exc:  # a bad option or a changed finished stage: one line, no traceback
        sys.exit(f"bolt.py: error: {exc}")
