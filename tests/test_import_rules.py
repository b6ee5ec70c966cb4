"""The package's layering, read from the import statements of every module (function-level imports too).

- ``latent_thoughts.em`` knows no world: it imports nothing from ``testbed`` or ``recipes``;
- the library imports no experiment recipe and no command line: only ``cli`` (and ``__main__``) import
  ``recipes`` and ``cli``; experiments reach ``em`` as plug-ins (:mod:`latent_thoughts.em.experiment`);
- the packages form no cycle (``evaluate`` and ``testbed`` no longer import each other).

docs/architecture.md draws the graph this test reads (:func:`package_graph`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import latent_thoughts

PACKAGE = Path(latent_thoughts.__file__).parent
ABOVE_THE_LIBRARY = {"cli", "__main__", "recipes"}


def package_of(path: Path) -> str:
    """The top-level package (or module) of a source file: ``em`` for ``em/loop.py``."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of ``latent_thoughts`` that the file at ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "latent_thoughts":
                names = [f"latent_thoughts.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if (
                parts[0] == "latent_thoughts"
                and len(parts) > 1
                and (PACKAGE / parts[1]).exists() | (PACKAGE / f"{parts[1]}.py").exists()
            ):
                found.add(parts[1])
    return found


def package_graph() -> dict[str, set[str]]:
    """Which packages each package imports (itself left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        package = package_of(path)
        graph.setdefault(package, set()).update(imported_packages(path) - {package})
    return graph


def importers_of(target: str) -> dict[str, list[str]]:
    """Files (relative paths) importing ``target``, by package."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if target in imported_packages(path) and package_of(path) != target:
            found.setdefault(package_of(path), []).append(str(path.relative_to(PACKAGE)))
    return found


def test_em_imports_no_world_and_no_recipe() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(imported_packages(path) & {"testbed", "recipes", "cli"})
        for path in (PACKAGE / "em").rglob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_the_command_line_imports_recipes_and_the_command_line() -> None:
    for target in ("recipes", "cli"):
        importers = importers_of(target)
        below = {package: files for package, files in importers.items() if package not in ABOVE_THE_LIBRARY}
        assert below == {}, f"library modules import {target}"


def test_the_packages_form_no_cycle() -> None:
    graph = package_graph()
    state: dict[str, str] = {}

    def visit(package: str, path: list[str]) -> None:
        state[package] = "open"
        for target in sorted(graph.get(package, ())):
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*path, package, target])}"
            if target not in state:
                visit(target, [*path, package])
        state[package] = "done"

    for package in sorted(graph):
        if package not in state:
            visit(package, [])


def test_the_graph_is_read_from_real_imports() -> None:
    """The reader sees what is there: the command line imports em, em imports train."""
    graph = package_graph()
    assert {"em", "recipes"} <= graph["cli"]
    assert "train" in graph["em"]
    assert "em" in graph["recipes"]
