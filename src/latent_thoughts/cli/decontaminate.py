"""``latent-thoughts decontaminate FILE.parquet ... --tasks gsm8k,math --out DIR``: n-gram overlap check.

Reads training files (chunks, thoughts, rephrasings), reports the rows sharing a long n-gram with an
evaluation set (:mod:`latent_thoughts.evaluate.decontamination`) in ``DIR/contamination.jsonl`` and
writes a filtered copy of each file, under its own name, in ``DIR`` (two files of one name, from
two folders, are refused: their copies would land on one path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from latent_thoughts.cli.evaluate import DATA_DIR_HELP
from latent_thoughts.cli.flags import add_options_file
from latent_thoughts.cli.numbers import positive_int
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.outputs import RunPaths

REPORT = "contamination.jsonl"


def register(subparsers: Any) -> None:
    """Add the ``decontaminate`` verb."""
    parser = subparsers.add_parser(
        "decontaminate",
        help="find training rows that share long n-grams with GSM8K/MATH; write filtered copies",
        description=(
            "Measure 13-gram overlap (on normalised text) between training Parquet files (chunks, "
            "thoughts, rephrasings) and the evaluation sets; report contaminated rows and write copies "
            "without them."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="training Parquet files")
    parser.add_argument("--tasks", default="gsm8k,math", help="evaluation sets (gsm8k, math, math500)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument("--ngram", type=positive_int, default=13, help="n-gram length in words (default 13)")
    parser.add_argument(
        "--columns", help="comma-separated text columns (default: text and thought, if present)"
    )
    parser.add_argument("--out", required=True, help="folder for contamination.jsonl and the filtered copies")
    add_options_file(parser, "decontamination options")
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The training files read; the report and one filtered copy per file written, in ``--out``.

    Each copy keeps its file's name, so two files of one name (``a/chunks.parquet`` and
    ``b/chunks.parquet``) are a one-line error naming both, as is a file named like the report."""
    out = Path(args.out)
    owners: dict[str, str] = {REPORT: "the contamination report"}
    for name in args.files:
        target = Path(name).name
        if target in owners:
            raise LatentThoughtsError(
                f"{owners[target]} and {name}: both would be written to {out / target}; "
                "give files of distinct names (or run them into separate --out folders)"
            )
        owners[target] = name
    return RunPaths(
        inputs=[*args.files, args.config], files=[out / target for target in owners], folders=[out]
    )


def run(args: argparse.Namespace) -> int:
    """Index the evaluation sets, scan every file, write the report and the filtered copies."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latent_thoughts.atomic import atomic_write
    from latent_thoughts.evaluate.benchmark_data import benchmark_file, locate_data
    from latent_thoughts.evaluate.decontamination import (
        BenchmarkIndex,
        filter_table,
        scan_table,
        text_columns,
    )
    from latent_thoughts.evaluate.tasks import DEFAULT_FILES, read_task, task_path
    from latent_thoughts.tables import read_parquet

    out = Path(args.out)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if not tasks:
        raise LatentThoughtsError(f"--tasks {args.tasks!r} names no task; choose from gsm8k, math, math500")
    location = locate_data(args.data_dir)
    for task in tasks:
        task_path(task, ".")  # an unknown task is a one-line error before anything is fetched
    problems = [
        problem
        for task in tasks
        for problem in read_task(task, benchmark_file(DEFAULT_FILES[task], location))
    ]
    index = BenchmarkIndex(problems, args.ngram)
    columns = [name.strip() for name in args.columns.split(",")] if args.columns else None
    with atomic_write(out / REPORT) as partial, partial.open("w", encoding="utf-8") as report:
        for name in args.files:
            path = Path(name)
            table = read_parquet(path, "training")
            checked = text_columns(table, columns)
            missing = [column for column in checked if column not in table.column_names]
            if not checked or missing:
                raise LatentThoughtsError(
                    f"{path}: no text column to check ({', '.join(missing) or 'text, thought'})"
                )
            for column in checked:
                kind = table.schema.field(column).type
                if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                    raise LatentThoughtsError(
                        f"{path}: --columns {column} holds {kind}, not text; name text columns "
                        "(such as text or thought)"
                    )
            hits = scan_table(table, index, checked)
            for hit in hits:
                report.write(json.dumps({"file": str(path), **dataclasses.asdict(hit)}) + "\n")
            kept = filter_table(table, hits)
            with atomic_write(out / path.name) as copy:
                pq.write_table(kept, copy)
            rows = len({hit.row for hit in hits})
            problems_hit = sorted({problem for hit in hits for problem in hit.problems})
            shown = ", ".join(problems_hit[:5]) + (" ..." if len(problems_hit) > 5 else "")
            print(
                f"{path}: {rows} of {table.num_rows} rows contaminated"
                + (f" ({shown})" if problems_hit else "")
                + f"; {kept.num_rows} rows kept in {out / path.name}"
            )
    print(f"{index.problems} evaluation problems, {len(index.owner)} distinct {args.ngram}-grams")
    return 0
