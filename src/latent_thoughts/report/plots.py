"""Plots of results people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

from latent_thoughts.atomic import atomic_write


def plot_accuracy(results: dict[str, float], path: str | Path, title: str) -> None:
    """A bar chart of accuracy (values in [0, 1]) per label, written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
