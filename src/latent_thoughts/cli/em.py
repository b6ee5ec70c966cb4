"""``latent-thoughts em --config EM.yaml``: warm start, then T iterations of E-step, M-step, evaluation.

The loop of METHOD section 6 (:mod:`latent_thoughts.em.loop`) over the testbed (``experiment: testbed``)
or a real corpus, teacher and model (``experiment: corpus``), resumable stage by stage, with ``RUN/manifest.json`` recording what produced every artifact and ``RUN/summary.json`` the
per-iteration table. Without ``--config`` the built-in defaults run the small CPU setting
(``configs/em/testbed-small.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latent_thoughts.cli.flags import add_progress_option
from latent_thoughts.outputs import RunPaths


def register(subparsers: Any) -> None:
    """Add the ``em`` verb."""
    parser = subparsers.add_parser(
        "em",
        help="the EM loop (BoLT): warm start, then E-step / M-step / evaluation per iteration",
        description=(
            "Warm start on the warm-start split with teacher thoughts (the testbed's oracle, or a teacher "
            "model over a real corpus: experiment: corpus), then for t = 1..T: the model "
            "of t-1 writes K thoughts per bootstrap chunk and importance weights select one (E-step), a model is "
            "trained on them (M-step) and evaluated. Killed and rerun, it resumes at the unfinished stage; a "
            "finished stage whose configuration changed is an error unless --force-from names it."
        ),
    )
    parser.add_argument("--config", type=Path, help="EM.yaml (default: the small CPU testbed run)")
    parser.add_argument("--out", help="run folder (overrides the config's `out`)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. iterations=3 estep.k=16"
    )
    parser.add_argument(
        "--force-from",
        metavar="STAGE",
        help="redo STAGE and every later one (data, warm_start, eval_0, estep_1, mstep_1, eval_1, ...)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print every stage with its inputs, budgets, samples, teacher cost and compute; run nothing",
    )
    parser.add_argument(
        "--plan-device",
        action="append",
        default=[],
        metavar="NAME[=FLOPS]",
        help="with --plan: a device to time the stages on, as model FLOP/s (a100=5.5e13), or cpu, h100, "
        "h200 (their measured rates); repeatable (default: those three)",
    )
    add_progress_option(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def _config(args: argparse.Namespace) -> Any:
    from latent_thoughts.em.config import load_em_config

    overrides = list(args.set)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.no_progress:
        overrides.append("progress=false")
    return load_em_config(args.config, overrides)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The configuration and a warm start's run folder read; the run folder written."""
    config = _config(args)
    flag = "--out" if args.out else "out"
    inputs = [args.config, config.warm_start_from, *corpus_inputs(config)]
    if args.plan:  # the plan writes nothing
        return RunPaths(inputs=inputs)
    # A run's own data folder is cleared when its data stage starts over: no input may lie in it.
    data = None if config.warm_start_from else Path(config.out) / "data"
    return RunPaths(inputs=inputs, folders=[config.out], replaced=[data], flag=flag)


def corpus_inputs(config: Any) -> list[str | None]:
    """The files a corpus run reads (documents, chunk files, teacher file); none for the testbed."""
    data, teacher = getattr(config, "data", None), getattr(config, "teacher", None)
    if data is None or teacher is None:
        return []
    return [*data.documents, data.chunks, data.warm_start_chunks, data.bootstrap_chunks, teacher.file]


def run(args: argparse.Namespace) -> int:
    """Run or resume the EM loop; print the per-iteration table."""
    from latent_thoughts.em.loop import run_em
    from latent_thoughts.report.em_run import summary_table

    config = _config(args)
    if args.plan:
        from latent_thoughts.em.plan import parse_devices, plan_lines

        for line in plan_lines(config, parse_devices(args.plan_device)):
            print(line)
        return 0
    summary = run_em(config, args.force_from, say=lambda line: print(line, flush=True))
    print()
    for line in summary_table(config, summary):
        print(line)
    print(f"summary -> {Path(config.out) / 'summary.json'}; lineage -> {Path(config.out) / 'manifest.json'}")
    return 0


__all__ = ["register"]
