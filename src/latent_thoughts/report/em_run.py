"""The tables of an ``em`` run: its per-iteration summary (``RUN/summary.json``) and its lineage
(``RUN/manifest.json``).

The experiments' summary tables live here, so that ``em`` prints (through each experiment's
``summary_table``) exactly what ``latent-thoughts report`` shows: :func:`testbed_summary_tables`,
:func:`corpus_summary_tables` (also what a plug-in experiment without its own gets), and the
baselines' table (:func:`baselines_table`). :func:`lineage_table` reads the manifest: every stage in
the order it ran, with its inputs, configuration fingerprint, seed, code, torch and transformers
versions, device and wall time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from latent_thoughts.report.tables import Block, Table, markdown_lines, number


def testbed_summary_tables(summary: dict[str, Any]) -> list[Block]:
    """The testbed experiment's per-iteration tables (``iterations``, ``dynamics``; ``-`` where a
    figure does not exist)."""
    rows = summary["iterations"]
    main = Table(
        "iterations",
        [
            "iter",
            "train tokens",
            "mean bound",
            "mean ESS",
            "thought tokens",
            "accuracy",
            "eval true claims",
            "true claims sampled / selected",
            "valid sampled / selected",
        ],
        [
            [
                str(row["iteration"]),
                number(row.get("train_tokens")),
                number(row.get("mean_bound"), 2),
                number(row.get("mean_ess"), 2),
                number(row.get("mean_thought_tokens"), 1),
                number(row.get("accuracy")),
                number(row.get("eval_true_claims")),
                f"{number(row.get('sampled_true_claims'))} / {number(row.get('selected_true_claims'))}",
                f"{number(row.get('sampled_valid'))} / {number(row.get('selected_valid'))}",
            ]
            for row in rows
        ],
    )
    dynamics = Table(
        "dynamics",
        [
            "iter",
            "result-chunk valid sampled / selected",
            "closed by EOL",
            "fidelity f",
            "selection gain g",
            "growth g·f",
        ],
        [
            [
                str(row["iteration"]),
                f"{number(row.get('sampled_result_valid'))} / {number(row.get('selected_result_valid'))}",
                number(row.get("closed_by_eol")),
                number(row.get("fidelity")),
                number(row.get("selection_gain")),
                number(row.get("growth")),
            ]
            for row in rows[1:]
        ],
    )
    return [main, dynamics]


CORPUS_COLUMNS = (
    ("train tokens", "train_tokens", 0),
    ("train loss", "train_loss", 3),
    ("mean bound", "mean_bound", 2),
    ("mean ESS", "mean_ess", 2),
    ("thought tokens", "mean_thought_tokens", 1),
    ("closed by EOL", "closed_by_eol", 3),
)
"""The corpus experiment's fixed columns: (label, key, decimals)."""


def corpus_summary_tables(summary: dict[str, Any]) -> list[Block]:
    """The corpus experiment's per-iteration table (``iterations``): the fixed columns, then one per
    evaluation figure found in the rows (benchmark accuracies, NLL, ELBO(K))."""
    rows = summary["iterations"]
    known = {key for _, key, _ in CORPUS_COLUMNS} | {"iteration", "k"}
    figures = sorted(
        {key for row in rows for key, value in row.items() if key not in known and isinstance(value, float)}
    )
    columns = ["iter", *(name for name, _, _ in CORPUS_COLUMNS), *(key.replace("_", " ") for key in figures)]
    table_rows = [
        [
            str(row["iteration"]),
            *(number(row.get(key), digits) for _, key, digits in CORPUS_COLUMNS),
            *(number(row.get(key), 4) for key in figures),
        ]
        for row in rows
    ]
    return [Table("iterations", columns, table_rows)]


def baselines_table(summary: dict[str, Any]) -> Table | None:
    """The raw-data baselines of a run (``baselines``: training tokens and every evaluation figure);
    None without."""
    baselines = summary.get("baselines") or {}
    if not baselines:
        return None
    figures = sorted(
        {key for row in baselines.values() for key, value in row.items() if isinstance(value, float)}
    )
    rows = [
        [
            name,
            f"{row['train_tokens']:,}" if row.get("train_tokens") else "-",
            *(f"{row[key]:.4f}" if isinstance(row.get(key), float) else "-" for key in figures),
        ]
        for name, row in baselines.items()
    ]
    return Table("baselines", ["baseline", "train tokens", *figures], rows)


def summary_table(config: Any, summary: dict[str, Any]) -> list[str]:
    """The table ``em`` prints at the end of a run, as Markdown lines: the experiment's own
    (``summary_table`` of the experiment plug-in ``config.experiment`` names), then the baselines'."""
    from latent_thoughts.em.experiment import get_experiment

    lines = list(get_experiment(config.experiment).summary_table(summary))
    table = baselines_table(summary)
    return [*lines, "", *markdown_lines([table])] if table is not None else lines


def experiment_of(summary: dict[str, Any], manifest: dict[str, Any] | None) -> str:
    """The run's experiment: the manifest's configuration says; else the summary's rows (the
    testbed's have the checker's figures)."""
    named = ((manifest or {}).get("config") or {}).get("experiment")
    if named:
        return str(named)
    rows = summary.get("iterations") or [{}]
    return "testbed" if "selected_true_claims" in rows[0] else "corpus"


def summary_blocks(summary: dict[str, Any], experiment: str) -> list[Block]:
    """The summary's tables as ``em`` prints them: the experiment's, then the baselines'."""
    blocks = testbed_summary_tables(summary) if experiment == "testbed" else corpus_summary_tables(summary)
    table = baselines_table(summary)
    return [*blocks, table] if table is not None else blocks


# --- lineage --------------------------------------------------------------------------------------


def config_digest(config: Any) -> str:
    """A short hash of a configuration (JSON, keys sorted)."""
    payload = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _short(value: Any, root: Path | None, limit: int = 160) -> str:
    """A value in a cell: paths under ``root`` relative to it, dicts as ``key: value``, cut at ``limit``."""
    if isinstance(value, dict):
        text = "; ".join(f"{key}: {_short(item, root, limit)}" for key, item in value.items())
    elif isinstance(value, list):
        text = ", ".join(_short(item, root, limit) for item in value)
    elif isinstance(value, str) and root is not None and value.startswith(str(root) + "/"):
        text = value[len(str(root)) + 1 :]
    else:
        text = "-" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _config_summary(config: Any) -> str:
    """A stage's configuration in a cell: a flat one's settings, else its size."""
    if not isinstance(config, dict):
        return "-" if config is None else str(config)
    if len(config) <= 8 and all(not isinstance(value, dict | list) for value in config.values()):
        return ", ".join(f"{key}={value}" for key, value in config.items())
    return f"{len(config)} settings"


def wall_time(seconds: float | None) -> str:
    """Seconds as ``1 h 02 min``, ``8 min 48 s`` or ``3.2 s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def stage_seconds(record: dict[str, Any]) -> float | None:
    """A stage's wall time from its start and end times (None while it runs)."""
    started, finished = record.get("started"), record.get("finished")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        return float(finished - started)
    return None


def lineage_table(manifest: dict[str, Any], run: Path | None = None, name: str = "lineage") -> Table:
    """What produced every artifact of a run (``lineage``): under a line on the run's configuration
    and invocations, each stage in the order it ran with its inputs (paths relative to the run's
    parent folder), configuration fingerprint (and settings, when few), seed, code version, torch and
    transformers versions, device and wall time."""
    root = run.resolve().parent if run is not None else None
    config = manifest.get("config") or {}
    invocations = manifest.get("invocations") or []
    versions = sorted({str(item.get("code_version")) for item in invocations if isinstance(item, dict)})
    stages = manifest.get("stages") or {}
    total = sum(seconds for record in stages.values() if (seconds := stage_seconds(record)) is not None)
    head = (
        f"experiment {config.get('experiment', '-')}, seed {config.get('seed', '-')}, "
        f"{config.get('iterations', '-')} iterations; configuration digest {config_digest(config)}; "
        f"{len(invocations)} invocation(s) of code {', '.join(versions) or '-'}; "
        f"stages' wall time {wall_time(total)}"
    )
    rows = []
    ordered = sorted(stages.items(), key=lambda item: item[1].get("started") or 0)
    for stage, record in ordered:
        inherited = record.get("inherited_from")
        rows.append(
            [
                stage,
                str(record.get("status", "-")) + (f" (from {_short(inherited, root)})" if inherited else ""),
                _short(record.get("inputs"), root),
                f"{record.get('fingerprint', '-')}: {_config_summary(record.get('config'))}",
                _short(record.get("seed"), root),
                _short(record.get("code_version"), root),
                _short(record.get("torch"), root),
                _short(record.get("transformers"), root),
                _short(record.get("device"), root),
                wall_time(stage_seconds(record)),
            ]
        )
    return Table(
        name,
        [
            "stage",
            "status",
            "inputs",
            "config",
            "seed",
            "code",
            "torch",
            "transformers",
            "device",
            "wall time",
        ],
        rows,
        title=head,
    )
