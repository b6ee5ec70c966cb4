"""One self-contained HTML report of a run (``latent-thoughts report``): nothing is fetched when it is
viewed (the style inline, the plots embedded as PNG data), so the file can be mailed or archived.

Sections: the lineage (from the run's manifest, or its em runs' manifests), every results table
(:func:`latent_thoughts.report.runs.run_blocks`, the same blocks ``--markdown`` prints), the plots, the
thoughts (the viewer of :mod:`latent_thoughts.report.viewer`, where that module exists and the run
has thoughts) and the files read.
"""

from __future__ import annotations

import base64
import html
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from latent_thoughts import __version__
from latent_thoughts.report.runs import Run, lineage_tables, run_blocks, title, train_logs
from latent_thoughts.report.tables import to_html

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em 4em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 13px; }
th, td { border: 1px solid #d5d5d5; padding: 3px 7px; vertical-align: top; }
th { background: #f3f4f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafafa; }
.table, .text { margin: 1.2em 0; }
.title p { font-weight: 600; margin: 0.2em 0; }
.note p { color: #444; margin: 0.2em 0; }
p.name { color: #999; font-size: 11px; margin: 0; font-family: ui-monospace, monospace; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12px; }
details { margin: 0.5em 0; }
summary { cursor: pointer; font-weight: 600; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; max-height: 30em; }
"""

ITERATION_PANELS = (
    ("accuracy", (("accuracy", "accuracy"),)),
    ("bound (mean log mean w)", (("mean_bound", "bound"),)),
    ("mean ESS", (("mean_ess", "ESS"),)),
    (
        "true claims: selected against sampled",
        (("selected_true_claims", "selected"), ("sampled_true_claims", "sampled")),
    ),
    ("validity: selected against sampled", (("selected_valid", "selected"), ("sampled_valid", "sampled"))),
    (
        "result-chunk validity: selected against sampled",
        (("selected_result_valid", "selected"), ("sampled_result_valid", "sampled")),
    ),
    ("held-out thoughts' true claims", (("eval_true_claims", "held-out"),)),
    ("growth g·f", (("growth", "g·f"), ("fidelity", "f"))),
)
"""The per-iteration plots of an EM run: (title, (key, label) of each line)."""


# --- plots ----------------------------------------------------------------------------------------


def loss_curves(run: Run) -> dict[str, list[tuple[float, float]]]:
    """Training loss by step of every trainer's log in the run folder, by the training folder's path."""
    curves = {}
    for path in train_logs(run.folder):
        try:
            history = json.loads(path.read_text(encoding="utf-8")).get("log_history") or []
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        points = [
            (float(entry["step"]), float(entry["loss"]))
            for entry in history
            if isinstance(entry, dict) and isinstance(entry.get("loss"), int | float) and "step" in entry
        ]
        if points and run.folder is not None:
            curves[str(path.parent.relative_to(run.folder)) or "."] = points
    return curves


def _corpus_panels(summary: dict[str, Any]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """One panel per evaluation figure of a corpus run (benchmark accuracies, NLL, ELBO(K))."""
    from latent_thoughts.report.em_run import CORPUS_COLUMNS

    known = {key for _, key, _ in CORPUS_COLUMNS} | {"iteration", "k"}
    figures = sorted(
        {
            key
            for row in summary.get("iterations", [])
            for key, value in row.items()
            if key not in known and isinstance(value, float)
        }
    )
    return [(key.replace("_", " "), ((key, key.replace("_", " ")),)) for key in figures]


def run_plots(run: Run) -> list[tuple[str, bytes]]:
    """The run's plots as (caption, PNG bytes)."""
    from latent_thoughts.report import plots

    found: list[tuple[str, bytes | None]] = []
    results = run.results
    if run.kind == "arms":
        from latent_thoughts.report.arms import arm_label, arms, modes, per_seed

        groups = {
            f"{arm_label(results, arm)} ({mode})": [value for _, value in per_seed(results, arm, mode)]
            for arm in arms(results)
            for mode in modes(results, arm)
        }
        found.append(
            (
                "Accuracy per arm and evaluation mode: the bar at the mean over seeds, a point per seed.",
                plots.plot_points(groups, "held-out accuracy per arm"),
            )
        )
    elif run.kind == "demo":
        groups = {label: [value] for label, value in results["accuracies"].items()}
        found.append(
            ("Accuracy per model and prompting (one seed).", plots.plot_points(groups, "held-out accuracy"))
        )
    elif run.kind == "evaluate":
        groups = {
            f"{name.removesuffix('.json')}": [record["accuracy"]]
            for name, record in results["records"].items()
        }
        found.append(("Accuracy per evaluation file.", plots.plot_points(groups, "accuracy")))
    elif run.kind == "bolt":
        from latent_thoughts.report.bolt import iteration_groups, k_points, run_ks

        references = {
            name: base["accuracy"]
            for name, base in (results.get("baselines") or {}).items()
            if isinstance(base.get("accuracy"), int | float)
        }
        found.append(
            (
                "Per EM iteration, by K: a thin line per seed, the mean over seeds and a band of ± one standard "
                "deviation (iteration 0 is the shared warm start; horizontal lines: the baselines' accuracy).",
                plots.plot_iterations(iteration_groups(results), ITERATION_PANELS, references),
            )
        )
        if len(run_ks(results)) > 1:
            series = {
                "accuracy": k_points(results, "accuracy"),
                "true claims selected": k_points(results, "selected_true_claims"),
                "result-chunk valid selected": k_points(results, "selected_result_valid"),
                "valid selected": k_points(results, "selected_valid"),
            }
            found.append(
                (
                    "Iteration 1 against K, every run (seed runs and the sweep): a point per run, the mean per K.",
                    plots.plot_against_k(
                        {name: points for name, points in series.items() if points}, "iteration 1 against K"
                    ),
                )
            )
    elif run.kind == "em" and results.get("summary"):
        from latent_thoughts.report.runs import experiment

        summary = results["summary"]
        name = run.path.name if run.path.is_dir() else "run"
        panels = list(ITERATION_PANELS)
        if experiment(run) != "testbed":
            panels = [panel for panel in panels if panel[0].startswith(("bound", "mean ESS"))]
            panels += _corpus_panels(summary)
        references = {
            name: row["accuracy"]
            for name, row in (summary.get("baselines") or {}).items()
            if isinstance(row.get("accuracy"), int | float)
        }
        found.append(
            (
                "Per EM iteration (iteration 0: the warm start).",
                plots.plot_iterations({name: [(name, summary["iterations"])]}, panels, references),
            )
        )
    curves = loss_curves(run)
    if curves:
        found.append(
            (
                "Training loss of every training run in the folder (the trainers' logs, metrics.json).",
                plots.plot_losses(curves, "training loss"),
            )
        )
    return [(caption, image) for caption, image in found if image is not None]


# --- the page -------------------------------------------------------------------------------------


def thought_viewer(run: Run) -> str | None:
    """The thought viewer's HTML fragment for a run folder (:mod:`latent_thoughts.report.viewer`,
    when that module exists), None when there is no viewer or the run has no thoughts."""
    if run.folder is None or importlib.util.find_spec("latent_thoughts.report.viewer") is None:
        return None
    module = importlib.import_module("latent_thoughts.report.viewer")
    fragment = module.viewer_section(run.folder)
    return None if fragment is None else str(fragment)


def _section(heading: str, body: str) -> str:
    anchor = heading.lower().replace(" ", "-")
    return f'<section id="{anchor}">\n<h2>{html.escape(heading)}</h2>\n{body}\n</section>'


def _relative(path: Path, run: Run) -> str:
    base = run.folder if run.folder is not None else run.path.parent
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def build_html(run: Run) -> str:
    """The report of ``run`` as one HTML page."""
    sections = []
    lineage = lineage_tables(run)
    if lineage:
        if run.kind == "em":
            body = to_html(lineage[0])
        else:
            body = "\n".join(
                f"<details><summary>{html.escape(table.name.removeprefix('lineage-'))}</summary>{to_html(table)}</details>"
                for table in lineage
            )
        manifest = run.results.get("manifest") if run.kind == "em" else None
        if manifest and manifest.get("config"):
            config = html.escape(json.dumps(manifest["config"], indent=2, default=str))
            body += f"\n<details><summary>configuration</summary><pre>{config}</pre></details>"
        sections.append(_section("Lineage", body))
    blocks = run_blocks(run)
    if blocks:
        sections.append(_section("Results", "\n".join(to_html(block) for block in blocks)))
    figures = [
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{base64.b64encode(image).decode("ascii")}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, image in run_plots(run)
    ]
    if figures:
        sections.append(_section("Plots", "\n".join(figures)))
    viewer = thought_viewer(run)
    if viewer:
        sections.append(_section("Thoughts", viewer))
    files = "".join(f"<li><code>{html.escape(_relative(path, run))}</code></li>" for path in run.files)
    sections.append(_section("Files read", f"<ul>{files}</ul>"))
    heading = title(run)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(heading)}: {html.escape(run.path.name)}</title>\n"
        f"<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(heading)}</h1>\n"
        f'<p class="meta"><code>{html.escape(str(run.path))}</code> ({run.kind}); '
        f"made by latent-thoughts {html.escape(__version__)} "
        f"(<code>latent-thoughts report {html.escape(str(run.path))}</code>)</p>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
