"""Results tables as data, rendered to Markdown and to HTML by this one module.

A report is a list of blocks: a :class:`Table` (a title, columns, rows of cells already formatted as
text, a note under it) or a :class:`Text` (lines of prose, ``- `` items as a list). Every table a
bench, ``em`` or ``report`` prints is built as blocks by a function of :mod:`latent_thoughts.report`
and rendered here, so the Markdown a bench prints, the tables of ``docs/`` and the HTML report are
the same figures from the same code. Each block has a ``name``, what ``latent-thoughts report
--table NAME`` selects.

Not to be confused with :mod:`latent_thoughts.tables`, which opens the Parquet files stages hand to
each other.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_thoughts.errors import LatentThoughtsError


@dataclass(frozen=True)
class Table:
    """A table: ``columns`` and ``rows`` of text cells; ``title`` lines above it, ``note`` lines under it."""

    name: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""
    note: str = ""


@dataclass(frozen=True)
class Text:
    """Lines of prose that belong with the tables (a verdict, a projection); ``- `` lines are items."""

    name: str
    lines: list[str]


Block = Table | Text


# --- cells ----------------------------------------------------------------------------------------


def fixed(value: Any, digits: int = 3) -> str:
    """A figure with ``digits`` decimals, ``-`` where it does not exist."""
    return "-" if value is None else f"{value:.{digits}f}"


def number(value: Any, digits: int = 3) -> str:
    """A table cell: ``-`` where a figure does not exist, thousands separators for counts, else
    ``digits`` decimals."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` (sample standard deviation; 0 for one value), ``-`` for no values."""
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


# --- Markdown -------------------------------------------------------------------------------------


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(block: Block) -> str:
    """One block as Markdown: a table's title, a blank line, the table, a blank line and its note;
    a text's lines as they are."""
    if isinstance(block, Text):
        return "\n".join(block.lines)
    lines = [block.title, ""] if block.title else []
    lines += [_row(block.columns), "|" + " --- |" * len(block.columns)]
    lines += [_row(row) for row in block.rows]
    if block.note:
        lines += ["", block.note]
    return "\n".join(lines)


def markdown_document(blocks: Sequence[Block]) -> str:
    """Blocks as one Markdown text, a blank line between two blocks."""
    return "\n\n".join(markdown(block) for block in blocks)


def markdown_lines(blocks: Sequence[Block]) -> list[str]:
    """:func:`markdown_document` as lines (what a verb prints line by line)."""
    return markdown_document(blocks).split("\n") if blocks else []


# --- HTML -----------------------------------------------------------------------------------------


def _paragraphs(text: str) -> str:
    """Lines as HTML: runs of ``- `` lines as a list, other lines as paragraphs."""
    parts: list[str] = []
    items: list[str] = []
    for line in [*text.split("\n"), ""]:
        if line.startswith("- "):
            items.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(parts)


def _numeric(cell: str) -> bool:
    head = cell.split(" ", 1)[0].replace(",", "").replace("%", "")
    try:
        float(head)
    except ValueError:
        return cell == "-"
    return True


def to_html(block: Block) -> str:
    """One block as an HTML fragment (escaped; numeric cells right-aligned by the ``num`` class)."""
    if isinstance(block, Text):
        lines = _paragraphs("\n".join(block.lines))
        return f'<div class="text" id="block-{html.escape(block.name)}">{lines}</div>'
    head = "".join(f"<th>{html.escape(column)}</th>" for column in block.columns)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(cell)}</td>' if _numeric(cell) else f"<td>{html.escape(cell)}</td>"
            for cell in row
        )
        + "</tr>"
        for row in block.rows
    )
    title = f'<div class="title">{_paragraphs(block.title)}</div>' if block.title else ""
    note = f'<div class="note">{_paragraphs(block.note)}</div>' if block.note else ""
    return (
        f'<div class="table" id="block-{html.escape(block.name)}">{title}'
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'
        f'{note}<p class="name">--table {html.escape(block.name)}</p></div>'
    )


# --- selection ------------------------------------------------------------------------------------


def select(blocks: Sequence[Block], name: str, where: str = "") -> Block:
    """The block called ``name``; an unknown name is a one-line error listing the names there are."""
    for block in blocks:
        if block.name == name:
            return block
    names = ", ".join(block.name for block in blocks) or "none"
    raise LatentThoughtsError(f"{where + ': ' if where else ''}no table {name!r} (the tables: {names})")


def results_tables(path: str | Path) -> list[Block]:
    """Every results block of a run folder or results file (:func:`latent_thoughts.report.runs.find_run`)."""
    from latent_thoughts.report.runs import find_run, run_blocks

    return run_blocks(find_run(path))
