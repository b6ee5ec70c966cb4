"""Plots of results people would rather look at than read (matplotlib, the Agg backend).

:func:`plot_accuracy` writes the demo's bar chart to a file; the others return PNG bytes that the
HTML report embeds: accuracy per arm with a point per seed (:func:`plot_points`), figures per EM
iteration with a line per seed and the mean ± standard deviation over seeds (:func:`plot_iterations`),
figures against K (:func:`plot_against_k`) and training loss curves (:func:`plot_losses`).
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import atomic_write

COLORS = ["#3b7dd8", "#d8703b", "#5a9e6f", "#9b59b6", "#c0392b", "#888888", "#17becf", "#bcbd22"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure: Any) -> bytes:
    """A figure as PNG bytes (no software tag, so the bytes depend on the figure only); closes it."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def plot_accuracy(results: dict[str, float], path: str | Path, title: str) -> None:
    """A bar chart of accuracy (values in [0, 1]) per label, written as a PNG to ``path``."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    labels = [name.replace(", ", "\n") for name in results]
    colors = ["#888888", "#3b7dd8", "#9cbce8", "#5a9e6f"][: len(results)]
    bars = axis.bar(labels, [value * 100 for value in results.values()], color=colors)
    axis.bar_label(bars, fmt="%.1f%%")
    axis.set_ylabel("exact-match accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(figure)


def plot_points(groups: Mapping[str, Sequence[float]], title: str, ylabel: str = "accuracy") -> bytes:
    """A bar per group at its mean (values in [0, 1]), its standard deviation as an error bar and a
    point per value (a seed)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 1.5), 3.8))
    for index, values in enumerate(groups.values()):
        mean = statistics.fmean(values) if values else 0.0
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        color = COLORS[index % len(COLORS)]
        axis.bar(index, mean, color=color, alpha=0.45, yerr=spread or None, capsize=4)
        top = max([mean + spread, *values])
        axis.text(index, top + 0.02, f"{mean:.3f}", ha="center", va="bottom", fontsize=8)
        offsets = [0.18 * (i - (len(values) - 1) / 2) / max(1, len(values) - 1) for i in range(len(values))]
        axis.scatter(
            [index + offset for offset in offsets], values, color=color, edgecolor="black", zorder=3, s=22
        )
    axis.set_xticks(range(len(groups)), [label.replace(" (", "\n(") for label in groups], fontsize=8)
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 1.1)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return png(figure)


Panel = tuple[str, Sequence[tuple[str, str]]]
"""A subplot: its title and the (key of an iteration row, label) it draws."""

LINESTYLES = ["-", "--", ":", "-."]


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (int(row.get("iteration", index)), float(row[key]))
        for index, row in enumerate(rows)
        if isinstance(row.get(key), int | float)
    ]


def plot_iterations(
    groups: Mapping[str, Sequence[tuple[str, Sequence[dict[str, Any]]]]],
    panels: Sequence[Panel],
    references: dict[str, float] | None = None,
) -> bytes | None:
    """Figures per EM iteration: one subplot per panel with a figure in any row; per group (a K, a
    run) a thin line per seed and, with several seeds, their mean and a band of ± one standard
    deviation; a panel's second key is dashed (sampled against selected). ``references`` are
    horizontal lines on the first panel (baselines' accuracy). None when no panel has a figure."""
    shown = [
        panel
        for panel in panels
        if any(_series(rows, key) for runs in groups.values() for _, rows in runs for key, _ in panel[1])
    ]
    if not shown:
        return None
    plt = _pyplot()
    columns = min(3, len(shown))
    lines = (len(shown) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.3 * lines), squeeze=False)
    for axis in axes.flat[len(shown) :]:
        axis.set_visible(False)
    for axis, (panel_title, keys) in zip(axes.flat, shown, strict=False):
        for index, (group, runs) in enumerate(groups.items()):
            color = COLORS[index % len(COLORS)]
            for position, (key, label) in enumerate(keys):
                style = LINESTYLES[position % len(LINESTYLES)]
                series = [_series(rows, key) for _, rows in runs]
                name = f"{group}, {label}" if len(keys) > 1 else group
                for points in series:
                    if points:
                        x, y = zip(*points, strict=True)
                        axis.plot(
                            x, y, style, color=color, alpha=0.35 if len(runs) > 1 else 1.0, marker="o", ms=3
                        )
                if len(runs) > 1:
                    by_t: dict[int, list[float]] = {}
                    for points in series:
                        for t, value in points:
                            by_t.setdefault(t, []).append(value)
                    ts = sorted(by_t)
                    means = [statistics.fmean(by_t[t]) for t in ts]
                    spreads = [statistics.stdev(by_t[t]) if len(by_t[t]) > 1 else 0.0 for t in ts]
                    axis.plot(
                        ts, means, style, color=color, linewidth=2.2, label=f"{name} (mean of {len(runs)})"
                    )
                    axis.fill_between(
                        ts,
                        [m - s for m, s in zip(means, spreads, strict=True)],
                        [m + s for m, s in zip(means, spreads, strict=True)],
                        color=color,
                        alpha=0.12,
                    )
                else:
                    axis.plot([], [], style, color=color, label=name)
        if references and panel_title == shown[0][0]:
            for index, (label, value) in enumerate(references.items()):
                style = LINESTYLES[(index + 1) % len(LINESTYLES)]
                axis.axhline(
                    value, color="black", linestyle=style, linewidth=0.8, label=f"{label} {value:.3f}"
                )
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("iteration")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return png(figure)


def plot_against_k(series: Mapping[str, Sequence[tuple[int, float]]], title: str) -> bytes:
    """Figures against K (a point per run, the mean per K joined by a line), K on a log2 axis."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    ks: set[int] = set()
    for index, (label, points) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        by_k: dict[int, list[float]] = {}
        for k, value in points:
            by_k.setdefault(k, []).append(value)
        ks |= set(by_k)
        axis.scatter([k for k, _ in points], [value for _, value in points], color=color, alpha=0.5, s=18)
        order = sorted(by_k)
        axis.plot(order, [statistics.fmean(by_k[k]) for k in order], "-o", color=color, label=label)
    axis.set_xscale("log", base=2)
    axis.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
    axis.set_xlabel("K (samples per chunk)")
    axis.set_ylim(0, 1.05)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return png(figure)


def plot_losses(curves: Mapping[str, Sequence[tuple[float, float]]], title: str) -> bytes:
    """Training loss against the optimiser step, a line per training run."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.0))
    for index, (label, points) in enumerate(curves.items()):
        x, y = zip(*points, strict=True)
        axis.plot(
            x,
            y,
            LINESTYLES[(index // len(COLORS)) % len(LINESTYLES)],
            color=COLORS[index % len(COLORS)],
            label=label,
        )
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_yscale("log")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6 if len(curves) > 8 else 8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return png(figure)
