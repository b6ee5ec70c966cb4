"""Every generated table of ``docs/*.md`` is what its command prints from its results file.

A generated block (``<!-- generated: latent-thoughts report FILE --markdown --table NAME -->`` ...
``<!-- end generated -->``) is rewritten by ``bench/docs_tables.py``; this test fails when a page's
block and the code's rendering part, so a table in the docs cannot drift from its results file or
from the code that renders it.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def docs_tables() -> ModuleType:
    """``bench/docs_tables.py`` as a module."""
    spec = importlib.util.spec_from_file_location("docs_tables", REPO / "bench" / "docs_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def generated_blocks() -> list[tuple[str, object]]:
    tool = docs_tables()
    return [(f"{page.name}:{block.line}", block) for page in tool.pages() for block in tool.blocks(page)]


def test_the_docs_have_generated_tables() -> None:
    commands = [block.command for _, block in generated_blocks()]  # type: ignore[attr-defined]
    assert any("docs/results/bolt_cpu.json" in command for command in commands), commands


@pytest.mark.parametrize(("where", "block"), generated_blocks())
def test_a_generated_block_is_what_its_command_prints(where: str, block: object) -> None:
    tool = docs_tables()
    command, body = block.command, block.body  # type: ignore[attr-defined]
    assert tool.render(command) == body, (
        f"{where}: differs from `{command}`; run .venv/bin/python bench/docs_tables.py"
    )


def test_regenerating_restores_an_edited_block(tmp_path: Path) -> None:
    tool = docs_tables()
    page = REPO / "docs" / "bolt.md"
    text = page.read_text(encoding="utf-8")
    edited = text.replace("| 4 | 0 | 1 | 0.375 |", "| 4 | 0 | 1 | 0.999 |", 1)
    assert edited != text
    assert tool.regenerate(edited) == text
