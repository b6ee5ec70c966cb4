"""The tables of ``bench/bolt.py`` (BoLT on the testbed), from its ``results.json``.

The results hold the shared warm start (``warm_start``: iteration 0's row), the EM runs by name
(``runs``: ``seedS_kK`` with ``role`` ``seed``, or ``sweep_kK`` with ``role`` ``sweep``, each with its
``iterations`` rows as ``em``'s ``summary.json`` has them), the ``baselines`` (``accuracy``,
``train_tokens_budget``, ``seed``), the Raw FLOP-Match's exchange (``flop_match``) and the bench's
``seconds``. :func:`bolt_blocks` builds every table; ``bench/bolt.py`` prints them as Markdown
(:func:`report`), ``latent-thoughts report`` as Markdown or HTML.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from latent_thoughts.report.tables import Block, Table, Text, fixed, markdown_lines, mean_std

ITERATION_MEASURES = (
    ("accuracy", "accuracy"),
    ("sampled_true_claims", "true claims sampled"),
    ("selected_true_claims", "true claims selected"),
    ("sampled_result_valid", "result-chunk valid sampled"),
    ("selected_result_valid", "result-chunk valid selected"),
    ("eval_true_claims", "held-out true claims"),
    ("closed_by_eol", "closed by EOL"),
    ("fidelity", "f"),
    ("selection_gain", "g"),
    ("growth", "g·f"),
)
"""The per-iteration figures of the tables: (key of an iteration row, column label)."""


def run_k(name: str) -> int:
    """K of a run named ``..._kK``."""
    return int(name.rsplit("_k", 1)[1])


def bolt_runs(results: dict[str, Any], k: int) -> dict[int, dict[str, Any]]:
    """The seed runs of ``k`` samples per chunk, by seed."""
    return {
        int(name.split("_")[0][4:]): run
        for name, run in results["runs"].items()
        if name.endswith(f"_k{k}") and run.get("role") == "seed"
    }


def run_ks(results: dict[str, Any]) -> list[int]:
    """Every K of the results' runs, largest first."""
    return sorted({run_k(name) for name in results["runs"]}, reverse=True)


def mean_at(runs: dict[int, dict[str, Any]], t: int, key: str) -> float | None:
    """The mean over seeds of ``key`` at iteration ``t`` (None where no seed has it)."""
    values = [
        run["iterations"][t][key]
        for run in runs.values()
        if len(run["iterations"]) > t and run["iterations"][t].get(key) is not None
    ]
    return statistics.fmean(values) if values else None


def goals(results: dict[str, Any]) -> list[str]:
    """The issue's goals, each answered yes or no with its figures (means over seeds), after a blank
    line; none without K = 4 runs."""
    bolt, control = bolt_runs(results, 4), bolt_runs(results, 1)
    if not bolt:
        return []
    last = min(len(run["iterations"]) for run in bolt.values()) - 1
    warm = results["warm_start"]["accuracy"]
    baselines = results.get("baselines", {})
    lines = ["", f"Goals (K = 4, mean over {len(bolt)} seeds):"]

    def verdict(ok: bool) -> str:
        return "yes" if ok else "no"

    for key, label in (("selected_true_claims", "selected true claims"), ("accuracy", "held-out accuracy")):
        first, final = mean_at(bolt, 1, key), mean_at(bolt, last, key)
        if first is not None and final is not None:
            lines.append(
                f"- {label} rise from iteration 1 to {last}: {verdict(final > first)} ({first:.3f} -> {final:.3f})"
            )
    ours, theirs = mean_at(bolt, last, "accuracy"), mean_at(control, last, "accuracy")
    if ours is not None and theirs is not None:
        lines.append(
            f"- K = 4 ends above the K = 1 control: {verdict(ours > theirs)} ({ours:.3f} against {theirs:.3f})"
        )
    flop = baselines.get("raw_flop_match", {}).get("accuracy")
    if flop is not None:
        accuracies = [mean_at(bolt, t, "accuracy") for t in range(1, last + 1)]
        beaten = all(value is not None and value > flop for value in accuracies)
        shown = ", ".join(f"{value:.3f}" for value in accuracies if value is not None)
        lines.append(
            f"- every iteration beats Raw FLOP-Match: {verdict(beaten)} ({shown} against {flop:.3f})"
        )
    oracle = baselines.get("oracle", {}).get("accuracy")
    if oracle is not None and ours is not None and oracle > warm:
        share = (ours - warm) / (oracle - warm)
        lines.append(
            f"- iteration {last} recovers half the gap from the warm start ({warm:.3f}) to the oracle ceiling "
            f"({oracle:.3f}): {verdict(share >= 0.5)} ({share:.0%})"
        )
    return lines


def projection(results: dict[str, Any], target: float = 0.9) -> list[str]:
    """Where the training thoughts' quality is heading: per K, sigma (the selected thoughts' true
    claims) of the last iteration and its growth g·f, mean over seeds, and how many more iterations
    that growth, held constant, would take to reach ``target``: a rough reading of the measured
    rate (the selection gain fell as quality rose here), not a prediction. After a blank line."""
    lines = []
    for k in run_ks(results):
        finals = [run["iterations"][-1] for run in bolt_runs(results, k).values()]
        sigmas = [
            row["selected_true_claims"] for row in finals if row.get("selected_true_claims") is not None
        ]
        growths = [row["growth"] for row in finals if row.get("growth") is not None]
        if not sigmas or not growths:
            continue
        sigma, growth = statistics.fmean(sigmas), statistics.fmean(growths)
        if sigma >= target:
            more = "reached already"
        elif growth <= 1:
            more = "never at that growth"
        else:
            more = f"{math.ceil(math.log(target / sigma) / math.log(growth))} more iterations at that growth"
        lines.append(
            f"K = {k}: training thoughts' true claims {sigma:.3f} after iteration {finals[0]['iteration']}, "
            f"growth g·f {growth:.3f}; to {target}: {more}"
        )
    return ["", *lines] if lines else []


def iterations_table(results: dict[str, Any]) -> Table:
    """Every seed run's iterations (``iterations``), under the bench's heading and the warm start."""
    warm = results["warm_start"]
    rows = []
    for k in run_ks(results):
        for seed, run in sorted(bolt_runs(results, k).items()):
            for row in run["iterations"][1:]:
                values = [fixed(row.get(key)) for key, _ in ITERATION_MEASURES]
                rows.append([str(k), str(seed), str(row["iteration"]), *values, fixed(row.get("mean_ess"))])
    heading = ", ".join(results["overrides"]) or "configs/em/testbed-bolt-cpu.yaml"
    return Table(
        "iterations",
        ["K", "seed", "iter", *(label for _, label in ITERATION_MEASURES), "mean ESS"],
        rows,
        title=(
            f"BoLT on the testbed ({heading})\n"
            f"warm start: accuracy {fixed(warm['accuracy'])}, held-out true claims {fixed(warm['eval_true_claims'])}"
        ),
    )


def means_table(results: dict[str, Any]) -> Table:
    """Mean ± std over seeds per K and iteration (``means``), the warm start first."""
    warm = results["warm_start"]
    rows = [["-", "0 (warm start)", fixed(warm["accuracy"]), *["-"] * (len(ITERATION_MEASURES) - 1)]]
    for k in run_ks(results):
        runs = bolt_runs(results, k)
        if not runs:
            continue
        iterations = max(len(run["iterations"]) for run in runs.values())
        for t in range(1, iterations):
            at_t = [run["iterations"][t] for run in runs.values() if len(run["iterations"]) > t]
            values = [
                mean_std([row[key] for row in at_t if row.get(key) is not None])
                for key, _ in ITERATION_MEASURES
            ]
            rows.append([str(k), str(t), *values])
    return Table(
        "means",
        ["K", "iter", *(label for _, label in ITERATION_MEASURES)],
        rows,
        title="Mean ± std over seeds:",
    )


def baselines_table(results: dict[str, Any]) -> Table | None:
    """The baselines on the bootstrap split (``baselines``) and the FLOP-match's exchange; None without."""
    baselines = results.get("baselines", {})
    if not baselines:
        return None
    rows = [
        [name, f"{base['train_tokens_budget']:,}", fixed(base["accuracy"]), str(base["seed"])]
        for name, base in baselines.items()
    ]
    flop = results.get("flop_match")
    note = (
        f"Raw FLOP-Match: {flop['mstep_tokens']:,} M-step tokens + one E-step's "
        f"{flop['estep_forward_training_tokens']:,} training-token equivalents (K = {flop['k']})"
        if flop
        else ""
    )
    return Table(
        "baselines", ["baseline (bootstrap split)", "training tokens", "accuracy", "seed"], rows, note=note
    )


def sweep_table(results: dict[str, Any]) -> Table | None:
    """The sweep of K at iteration 1, seed 0 (``sweep``); None without sweep runs."""
    sweep = {name: run for name, run in results["runs"].items() if run.get("role") == "sweep"}
    if not sweep:
        return None
    rows = []
    for name, run in sorted(sweep.items(), key=lambda item: run_k(item[0])):
        row = run["iterations"][1]
        rows.append(
            [
                str(run_k(name)),
                fixed(row["accuracy"]),
                f"{fixed(row['sampled_true_claims'])} / {fixed(row['selected_true_claims'])}",
                fixed(row.get("selected_result_valid")),
                fixed(row["mean_ess"]),
            ]
        )
    return Table(
        "sweep",
        [
            "K (iter 1, seed 0)",
            "accuracy",
            "true claims sampled / selected",
            "result-chunk valid selected",
            "mean ESS",
        ],
        rows,
    )


def bolt_blocks(results: dict[str, Any]) -> list[Block]:
    """Every table of the bench, in the order it prints them: ``iterations``, ``means``,
    ``baselines``, ``goals``, ``projection``, ``sweep``, ``time``."""
    blocks: list[Block | None] = [
        iterations_table(results),
        means_table(results),
        baselines_table(results),
    ]
    verdicts = goals(results)
    if verdicts:
        blocks.append(Text("goals", verdicts[1:]))
    heading = projection(results)
    if heading:
        blocks.append(Text("projection", heading[1:]))
    blocks.append(sweep_table(results))
    if "seconds" in results:
        blocks.append(Text("time", [f"total time {results['seconds']:.0f}s"]))
    return [block for block in blocks if block is not None]


def report(results: dict[str, Any]) -> list[str]:
    """Every table of the bench as Markdown lines, from its ``results.json``."""
    return markdown_lines(bolt_blocks(results))


def iteration_groups(results: dict[str, Any]) -> dict[str, list[tuple[str, list[dict[str, Any]]]]]:
    """The seed runs' iteration rows by K, for the plots: ``{"K = 4": [("seed 0", rows), ...]}``
    (the shared warm start as every run's iteration 0)."""
    groups: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    for k in run_ks(results):
        for seed, run in sorted(bolt_runs(results, k).items()):
            groups.setdefault(f"K = {k}", []).append((f"seed {seed}", run["iterations"]))
    return groups


def k_points(results: dict[str, Any], key: str) -> list[tuple[int, float]]:
    """``(K, value of key at iteration 1)`` of every run (seed runs and the sweep), for the plot
    against K."""
    points = []
    for name, run in results["runs"].items():
        rows = run.get("iterations", [])
        if len(rows) > 1 and rows[1].get(key) is not None:
            points.append((run_k(name), float(rows[1][key])))
    return sorted(points)
