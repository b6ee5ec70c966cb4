"""Regenerate the tables of ``docs/*.md`` from the results files they come from.

A generated block in a page is the command that prints it, between two HTML comments (invisible in
the rendered page):

    <!-- generated: latent-thoughts report docs/results/bolt_cpu.json --markdown --table means -->
    ...what the command prints...
    <!-- end generated -->

Its results file is a small JSON file committed under ``docs/results/`` (a bench's ``results.json``
with the machine's absolute paths made relative). Every block is rendered by running its command in
this process from the repository root, so a page's table is exactly what ``latent-thoughts report``
prints; ``tests/test_report_docs.py`` holds every page to it.

    .venv/bin/python bench/docs_tables.py            # rewrite every block that differs
    .venv/bin/python bench/docs_tables.py --check    # exit 1, naming each block that differs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

BLOCK = re.compile(
    r"(?P<start><!-- generated: (?P<command>[^\n]+?) -->\n)(?P<body>.*?)(?P<end><!-- end generated -->)",
    re.DOTALL,
)
"""A generated block: the command in the opening comment, what it printed, the closing comment."""


@dataclass(frozen=True)
class Generated:
    """One generated block of a page: its command and what the page holds now."""

    page: Path
    line: int
    command: str
    body: str


def blocks(page: Path) -> Iterator[Generated]:
    """The generated blocks of a Markdown page, in order."""
    text = page.read_text(encoding="utf-8")
    for match in BLOCK.finditer(text):
        yield Generated(page, text.count("\n", 0, match.start()) + 1, match["command"], match["body"])


@contextlib.contextmanager
def _in(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def render(command: str, root: Path = REPO) -> str:
    """The block body a command makes: the command itself, visible in the rendered page (the comment
    that opens the block is not), then what ``latent-thoughts report ... --markdown`` prints (run in
    this process from ``root``), between blank lines. Only ``report --markdown`` commands."""
    from latent_thoughts.cli import main

    words = shlex.split(command)
    if words[:2] != ["latent-thoughts", "report"] or not {"--markdown", "--table"} & set(words):
        raise ValueError(f"not a `latent-thoughts report ... --markdown` command: {command}")
    printed = io.StringIO()
    with _in(root), contextlib.redirect_stdout(printed):
        status = main(words[1:])
    if status != 0:
        raise ValueError(f"`{command}` failed with exit status {status}")
    return f"\nPrinted by `{command}`:\n\n" + printed.getvalue() + "\n"


def regenerate(text: str, root: Path = REPO) -> str:
    """A page's text with every generated block rendered anew."""
    return BLOCK.sub(lambda match: match["start"] + render(match["command"], root) + match["end"], text)


def pages(folder: Path = DOCS) -> list[Path]:
    """The Markdown pages with generated blocks."""
    return sorted(page for page in folder.glob("*.md") if BLOCK.search(page.read_text(encoding="utf-8")))


def main() -> int:
    """Rewrite (or, with --check, compare) every generated block of docs/*.md."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    args = parser.parse_args()
    differing = 0
    for page in pages():
        for block in blocks(page):
            if render(block.command) != block.body:
                differing += 1
                print(f"{page.relative_to(REPO)}:{block.line}: differs from `{block.command}`")
        if not args.check:
            text = page.read_text(encoding="utf-8")
            fresh = regenerate(text)
            if fresh != text:
                page.write_text(fresh, encoding="utf-8")
                print(f"rewrote {page.relative_to(REPO)}")
    if args.check and differing:
        print(f"{differing} generated block(s) differ; run .venv/bin/python bench/docs_tables.py")
        return 1
    print(f"{sum(1 for page in pages() for _ in blocks(page))} generated block(s) checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
