"""What a run folder (or a results file) is, from the files in it, and its tables.

The kinds a report knows, each told by its files:

- ``bolt``: ``bench/bolt.py``'s ``results.json`` (``warm_start`` and ``runs`` by name), beside the
  ``em`` run folders of its seeds (each with ``manifest.json``);
- ``arms``: ``bench/thoughts_vs_raw.py``'s or ``bench/experiment_a.py``'s ``results.json`` (``runs``:
  a list of rows with ``arm``, ``seed`` and ``evaluations``);
- ``demo``: ``latent-thoughts demo``'s folder (``results.json``: accuracy by label; ``eval-*.json``;
  the ``raw/`` and ``thoughts/`` training folders; ``thoughts/oracle.parquet``; the miniature
  E-step's ``estep/quality.json``);
- ``em``: an ``em`` run folder (``manifest.json``, ``summary.json``, ``iter_t/``);
- ``evaluate``: ``latent-thoughts evaluate``'s output, a folder of ``TASK_MODE.json`` files or one
  result file.

A results JSON file may be named directly (``docs/results/bolt_cpu.json``); ``results.json``,
``summary.json`` or ``manifest.json`` stand for the folder they are in. Anything else is a one-line
error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.report.evaluations import is_benchmark_record, is_testbed_record
from latent_thoughts.report.tables import Block, Table

RUN_FILES = ("results.json", "summary.json", "manifest.json")
"""Files that stand for the folder they are in."""

TRAIN_LOG = "metrics.json"
"""What the trainer writes at the end of a run, with its ``log_history``."""


@dataclass
class Run:
    """A run the report knows: its ``kind``, the path named, its folder (None for a lone results
    file), its results (by kind) and the files the report reads."""

    kind: str
    path: Path
    folder: Path | None
    results: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def read_json(path: Path) -> Any:
    """A JSON file's content; an unreadable one is a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LatentThoughtsError(f"{path}: not a readable JSON results file ({exc})") from None


def classify(data: Any) -> str | None:
    """The kind of a results file's content, or None."""
    if not isinstance(data, dict):
        return None
    runs = data.get("runs")
    if isinstance(runs, dict) and isinstance(data.get("warm_start"), dict):
        return "bolt"
    if (
        isinstance(runs, list)
        and runs
        and all(isinstance(row, dict) and "arm" in row and "evaluations" in row for row in runs)
    ):
        return "arms"
    if isinstance(data.get("stages"), dict):
        return "manifest"
    if isinstance(data.get("iterations"), list):
        return "summary"
    if is_testbed_record(data) or is_benchmark_record(data):
        return "evaluate"
    if data and all(
        isinstance(value, int | float) and not isinstance(value, bool) for value in data.values()
    ):
        return "demo"
    return None


def train_logs(folder: Path | None) -> list[Path]:
    """Every trainer's ``metrics.json`` (with a ``log_history``) under ``folder``."""
    if folder is None:
        return []
    found = []
    for path in sorted(folder.rglob(TRAIN_LOG)):
        try:
            if "log_history" in json.loads(path.read_text(encoding="utf-8")):
                found.append(path)
        except (OSError, UnicodeDecodeError, ValueError):
            continue
    return found


def find_run(path: str | Path) -> Run:
    """The run at ``path`` (a run folder or a results file; see the module's docstring)."""
    named = Path(path)
    if named.is_file() and named.name in RUN_FILES:
        named = named.parent
    if named.is_dir():
        return _folder_run(named)
    if not named.exists():
        raise LatentThoughtsError(f"{path}: no such run folder or results file")
    data = read_json(named)
    kind = classify(data)
    if kind == "manifest":
        return Run("em", named, None, {"manifest": data, "summary": None}, [named])
    if kind == "summary":
        return Run("em", named, None, {"manifest": None, "summary": data}, [named])
    if kind == "evaluate":
        return Run("evaluate", named, None, {"records": {named.name: data}}, [named])
    if kind == "demo":
        return Run("demo", named, None, {"accuracies": data, "evaluations": {}}, [named])
    if kind is None:
        raise LatentThoughtsError(
            f"{path}: not a results file the report knows (bench/bolt.py, bench/thoughts_vs_raw.py, "
            "bench/experiment_a.py, em's summary.json or manifest.json, evaluate's or the demo's results)"
        )
    return Run(kind, named, None, data, [named])


def _folder_run(folder: Path) -> Run:
    results_file = folder / "results.json"
    logs = train_logs(folder)
    if results_file.is_file():
        data = read_json(results_file)
        kind = classify(data)
        if kind == "demo":
            evaluations = {
                path.name: record
                for path in sorted(folder.glob("eval-*.json"))
                if is_testbed_record(record := read_json(path))
            }
            files = [results_file, *(folder / name for name in evaluations)]
            results = {"accuracies": data, "evaluations": evaluations, "estep": None}
            quality = folder / "estep" / "quality.json"
            if quality.is_file():
                results["estep"] = read_json(quality)
                files.append(quality)
            return Run("demo", folder, folder, results, files + logs)
        if kind in ("bolt", "arms"):
            manifests = sorted(folder.glob("*/manifest.json"))
            return Run(kind, folder, folder, data, [results_file, *manifests, *logs])
        raise LatentThoughtsError(
            f"{results_file}: not a results file the report knows (bench/bolt.py, bench/thoughts_vs_raw.py, "
            "bench/experiment_a.py or the demo's)"
        )
    manifest, summary = folder / "manifest.json", folder / "summary.json"
    if manifest.is_file() or summary.is_file():
        results = {
            "manifest": read_json(manifest) if manifest.is_file() else None,
            "summary": read_json(summary) if summary.is_file() else None,
        }
        if results["manifest"] is not None and classify(results["manifest"]) != "manifest":
            raise LatentThoughtsError(f"{manifest}: not a latent-thoughts EM manifest")
        if results["summary"] is not None and classify(results["summary"]) != "summary":
            raise LatentThoughtsError(f"{summary}: not an em summary (no iterations)")
        files = [path for path in (manifest, summary) if path.is_file()]
        return Run("em", folder, folder, results, files + logs)
    records = {}
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if is_benchmark_record(record) or is_testbed_record(record):
            records[path.name] = record
    if records:
        return Run("evaluate", folder, folder, {"records": records}, [folder / name for name in records])
    raise LatentThoughtsError(
        f"{folder}: not a run folder the report knows (no results.json, manifest.json, summary.json or "
        "evaluation results)"
    )


def experiment(run: Run) -> str:
    """An em run's experiment (``testbed``, ``corpus``, a plug-in's name)."""
    from latent_thoughts.report.em_run import experiment_of

    return experiment_of(run.results.get("summary") or {}, run.results.get("manifest"))


def run_blocks(run: Run) -> list[Block]:
    """The results tables of a run, as the bench or verb that made it prints them."""
    from latent_thoughts.report import arms, bolt, em_run, evaluations

    if run.kind == "bolt":
        return bolt.bolt_blocks(run.results)
    if run.kind == "arms":
        return arms.arm_blocks(run.results)
    if run.kind == "demo":
        blocks: list[Block] = [
            evaluations.demo_table(run.results["accuracies"]),
            *evaluations.evaluation_blocks(run.results["evaluations"]),
        ]
        if run.results.get("estep"):
            blocks.append(evaluations.sample_quality_table(run.results["estep"]))
        return blocks
    if run.kind == "em":
        summary = run.results.get("summary")
        return em_run.summary_blocks(summary, experiment(run)) if summary else []
    return evaluations.evaluation_blocks(run.results["records"])


def lineage_tables(run: Run) -> list[Table]:
    """What produced the run's artifacts, from its manifest (an em run) or its em runs' manifests
    (a bolt bench folder: one table each, ``lineage-NAME``)."""
    from latent_thoughts.report.em_run import lineage_table

    if run.kind == "em" and run.results.get("manifest"):
        return [lineage_table(run.results["manifest"], run.folder)]
    if run.kind == "bolt" and run.folder is not None:
        return [
            lineage_table(read_json(path), path.parent, name=f"lineage-{path.parent.name}")
            for path in sorted(run.folder.glob("*/manifest.json"))
        ]
    return []


def all_blocks(run: Run) -> list[Block]:
    """Every block ``--table`` may name: the results tables, then the lineage."""
    return [*run_blocks(run), *lineage_tables(run)]


def title(run: Run) -> str:
    """The report's heading."""
    if run.kind == "bolt":
        return "BoLT on the testbed (bench/bolt.py)"
    if run.kind == "arms":
        if run.results.get("experiment"):
            return f"Experiment {run.results['experiment']} (bench/experiment_a.py)"
        return "Thoughts against raw data (bench/thoughts_vs_raw.py)"
    if run.kind == "demo":
        return "latent-thoughts demo"
    if run.kind == "em":
        return f"EM run ({experiment(run)} experiment)"
    return "Evaluation (latent-thoughts evaluate)"
