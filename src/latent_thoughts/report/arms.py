"""The tables of an arms comparison: ``bench/thoughts_vs_raw.py`` and Experiment A (``bench/experiment_a.py``).

Both write one ``results.json``: ``runs``, one row per (arm, seed) with ``tokens``, ``train_s``,
``tokens_per_second``, ``epochs`` and ``evaluations`` by mode (``latent``, ``raw``, ``reasoning``,
...: ``accuracy``, ``true_claim_share``, ``copied_operand_share``, ``claims``, ...); Experiment A
adds ``experiment``, ``arm_labels`` (the paper's names of the arms, in its order) and ``seconds``.
Any arms and modes present are shown: arms in ``arm_labels``' order, then in the order they first
appear; modes in the order they first appear.
"""

from __future__ import annotations

import statistics
from typing import Any

from latent_thoughts.report.tables import Block, Table, Text, mean_std, number


def arms(results: dict[str, Any]) -> list[str]:
    """The arms of the results, in ``arm_labels``' order, then in the order they first appear."""
    present = [row["arm"] for row in results["runs"]]
    ordered = [arm for arm in results.get("arm_labels", {}) if arm in present]
    for arm in present:
        if arm not in ordered:
            ordered.append(arm)
    return ordered


def arm_label(results: dict[str, Any], arm: str) -> str:
    """The arm's label (``arm_labels``), else its name."""
    return str(results.get("arm_labels", {}).get(arm, arm))


def modes(results: dict[str, Any], arm: str) -> list[str]:
    """The evaluation modes of ``arm``'s runs, in the order they first appear."""
    found: list[str] = []
    for row in results["runs"]:
        if row["arm"] == arm:
            found += [mode for mode in row["evaluations"] if mode not in found]
    return found


def per_seed(results: dict[str, Any], arm: str, mode: str, key: str = "accuracy") -> list[tuple[int, float]]:
    """``(seed, figure)`` of ``arm`` evaluated in ``mode``, by seed."""
    return sorted(
        (row["seed"], row["evaluations"][mode][key])
        for row in results["runs"]
        if row["arm"] == arm and row["evaluations"].get(mode, {}).get(key) is not None
    )


def accuracy_table(results: dict[str, Any]) -> Table:
    """Accuracy mean ± std over seeds and per seed, per arm and mode (``arms``; the columns of
    ``docs/testbed.md``'s status table)."""
    rows = []
    for arm in arms(results):
        for mode in modes(results, arm):
            values = [value for _, value in per_seed(results, arm, mode)]
            rows.append(
                [arm_label(results, arm), mode, mean_std(values), ", ".join(f"{v:.3f}" for v in values)]
            )
    return Table("arms", ["arm", "eval mode", "accuracy mean ± std", "per seed"], rows)


def summary(results: dict[str, Any]) -> Text:
    """The ratio of the thought model's mean (latent mode) to the raw model's, and the thoughts'
    arithmetic per arm and mode that writes thoughts (``summary``)."""
    lines = []

    def mean(arm: str, mode: str) -> float | None:
        values = [value for _, value in per_seed(results, arm, mode)]
        return statistics.fmean(values) if values else None

    raw_mean, thought_mean = mean("raw", "raw"), mean("thoughts", "latent")
    if raw_mean is not None and thought_mean is not None:
        ratio = f"{thought_mean / raw_mean:.2f}" if raw_mean > 0 else "undefined (raw mean is 0)"
        lines.append(f"ratio thoughts (latent) / raw: {ratio}")
    for arm in arms(results):
        for mode in modes(results, arm):
            evaluations = [
                row["evaluations"][mode]
                for row in results["runs"]
                if row["arm"] == arm and mode in row["evaluations"]
            ]
            if (arm, mode) == ("thoughts", "latent"):
                who = "thought model's thoughts"
            elif mode == "raw" or not sum(evaluation.get("claims", 0) or 0 for evaluation in evaluations):
                continue
            else:
                who = f"{arm_label(results, arm)} ({mode} mode) thoughts"
            claims = mean_std(_figures(evaluations, "true_claim_share"), 2)
            copied = mean_std(_figures(evaluations, "copied_operand_share"), 2)
            lines.append(
                f"{who}: true arithmetic claims {claims}, start from the question's first factor {copied}"
            )
    return Text("summary", lines)


def _figures(evaluations: list[dict[str, Any]], key: str) -> list[float]:
    return [evaluation[key] for evaluation in evaluations if evaluation.get(key) is not None]


def runs_table(results: dict[str, Any]) -> Table:
    """Each training run: tokens, passes over its data, time and throughput (``runs``)."""
    rows = [
        [
            arm_label(results, row["arm"]),
            str(row["seed"]),
            number(row.get("tokens")),
            _epochs(row.get("epochs")),
            number(row.get("train_s"), 0),
            number(row.get("tokens_per_second"), 0),
        ]
        for arm in arms(results)
        for row in sorted(results["runs"], key=lambda row: row["seed"])
        if row["arm"] == arm
    ]
    note = f"total time {results['seconds']:.0f}s" if "seconds" in results else ""
    return Table("runs", ["arm", "seed", "training tokens", "epochs", "train s", "tokens/s"], rows, note=note)


def _epochs(value: Any) -> str:
    """Passes over the data: one figure, or one per source (Experiment A records a list)."""
    if isinstance(value, list):
        return " + ".join(number(part, 1) for part in value) or "-"
    return number(value, 1)


def arm_blocks(results: dict[str, Any]) -> list[Block]:
    """Every table of an arms comparison: ``arms``, ``summary``, ``runs``."""
    blocks: list[Block] = [accuracy_table(results)]
    text = summary(results)
    if text.lines:
        blocks.append(text)
    blocks.append(runs_table(results))
    return blocks
