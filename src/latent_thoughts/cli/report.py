"""``latent-thoughts report RUN [--out FILE] [--markdown] [--table NAME]`` and ``latent-thoughts view RUN``.

RUN is any run folder the product writes (``demo``, ``em``, ``bench/bolt.py``, ``bench/thoughts_vs_raw.py``,
``bench/experiment_a.py``, ``evaluate --out``) or a results JSON file (:mod:`latent_thoughts.report.runs`
tells the kind from the files). ``report`` writes one self-contained HTML page (:mod:`latent_thoughts.report.page`:
lineage, every results table, plots, the thoughts) to ``RUN/report.html`` (``NAME.report.html``
beside a results file), or prints the tables as Markdown (``--markdown``; ``--table NAME`` one of
them: the blocks ``docs/`` regenerates with ``bench/docs_tables.py``). ``view`` builds the report
when it is missing or older than a file it reads, and opens it in a browser.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latent_thoughts.cli.flags import add_options_file
from latent_thoughts.outputs import RunPaths

RUN_HELP = (
    "a run folder (demo, em, bench/bolt.py, bench/thoughts_vs_raw.py, bench/experiment_a.py, evaluate --out) "
    "or a results JSON file"
)


def register(subparsers: Any) -> None:
    """Add the ``report`` and ``view`` verbs."""
    parser = subparsers.add_parser(
        "report",
        help="one self-contained HTML report of a run: lineage, results tables, plots, thoughts",
        description=(
            "Write one HTML file (no network needed to view it: style inline, plots embedded) with a run's "
            "lineage from its manifest, every results table, plots per arm, per EM iteration, against K "
            "and of training loss, and its thoughts; or print the tables as Markdown."
        ),
    )
    parser.add_argument("run", metavar="RUN", help=RUN_HELP)
    parser.add_argument(
        "--out", help="the HTML file (default: RUN/report.html; NAME.report.html beside a results file)"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the results tables as Markdown instead of writing HTML"
    )
    parser.add_argument(
        "--table", metavar="NAME", help="print one table as Markdown (an unknown name lists the tables)"
    )
    add_options_file(parser, "report options")
    parser.set_defaults(handler=run_report, run_paths=report_paths)

    view = subparsers.add_parser(
        "view",
        help="open a run's HTML report in a browser (built first when missing or stale)",
        description=(
            "Build RUN's report (as `latent-thoughts report RUN`) when it is missing or older than a file it "
            "reads, then open it with the system's browser; print its path when no browser can be opened."
        ),
    )
    view.add_argument("run", metavar="RUN", help=RUN_HELP)
    view.set_defaults(handler=run_view, run_paths=view_paths)


def default_out(run: Any) -> Path:
    """Where a run's report goes: ``RUN/report.html`` for a folder, ``NAME.report.html`` beside a file."""
    if run.path.is_dir():
        return Path(run.path) / "report.html"
    return run.path.with_name(f"{run.path.stem}.report.html")


def _markdown_only(args: argparse.Namespace) -> bool:
    return bool(args.markdown or args.table)


def report_paths(args: argparse.Namespace) -> RunPaths:
    """The files the report reads; the HTML file written (nothing with --markdown or --table)."""
    from latent_thoughts.report.runs import find_run

    run = find_run(args.run)
    if _markdown_only(args):
        return RunPaths(inputs=run.files)
    return RunPaths(inputs=run.files, files=[args.out or default_out(run)])


def view_paths(args: argparse.Namespace) -> RunPaths:
    """The files the report reads; the report written."""
    from latent_thoughts.report.runs import find_run

    run = find_run(args.run)
    return RunPaths(inputs=run.files, files=[default_out(run)])


def markdown_text(path: str | Path, table: str | None = None) -> str:
    """The Markdown ``report --markdown [--table NAME]`` prints for a run folder or results file."""
    from latent_thoughts.report.runs import all_blocks, find_run, run_blocks
    from latent_thoughts.report.tables import markdown, markdown_document, select

    run = find_run(path)
    if table:
        return markdown(select(all_blocks(run), table, str(path)))
    return markdown_document(run_blocks(run))


def write_report(run: Any, out: Path) -> None:
    """Build the run's HTML report and write it atomically to ``out``."""
    from latent_thoughts.atomic import write_text
    from latent_thoughts.report.page import build_html

    write_text(out, build_html(run))


def run_report(args: argparse.Namespace) -> int:
    """Print the tables as Markdown, or write the HTML report and print its path."""
    from latent_thoughts.report.runs import find_run

    if _markdown_only(args):
        print(markdown_text(args.run, args.table))
        return 0
    run = find_run(args.run)
    out = Path(args.out) if args.out else default_out(run)
    write_report(run, out)
    print(out)
    return 0


def is_stale(report: Path, files: list[Path]) -> bool:
    """Whether ``report`` is missing or older than any of ``files``."""
    if not report.is_file():
        return True
    built = report.stat().st_mtime
    return any(path.stat().st_mtime > built for path in files if path.exists())


def run_view(args: argparse.Namespace) -> int:
    """Build the report when needed, then open it; print its path when no browser opens it."""
    import webbrowser

    from latent_thoughts.report.runs import find_run

    run = find_run(args.run)
    out = default_out(run)
    if is_stale(out, run.files):
        write_report(run, out)
        print(f"wrote {out}")
    try:
        opened = webbrowser.open(out.resolve().as_uri())
    except webbrowser.Error:
        opened = False
    print(f"opened {out}" if opened else f"no browser could be opened; the report is {out}")
    return 0


__all__ = ["register"]
