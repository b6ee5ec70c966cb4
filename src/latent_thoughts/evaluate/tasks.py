"""Benchmark tasks over local files: GSM8K, MATH and MATH-500 readers, and subset selection.

Files are JSONL as in the shared data folder (``gsm8k_test.jsonl``: ``question``, ``answer`` with a
final ``#### N`` line; ``math_test.jsonl``: ``problem``, ``answer``, ``subject``, ``level``,
``unique_id``; ``math500_test.jsonl``: ``problem``, ``answer``). A task's file is found by
:func:`task_path`: an explicit path, else the task's default file name in a data folder.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.grading import gsm8k_gold

T = TypeVar("T")

BENCHMARKS = ("gsm8k", "math", "math500")
"""The benchmark tasks read from files (the testbed task has its own problems, ``--problems``)."""

DEFAULT_FILES = {"gsm8k": "gsm8k_test.jsonl", "math": "math_test.jsonl", "math500": "math500_test.jsonl"}
"""Each benchmark's file name in a data folder."""


@dataclass(frozen=True)
class EvalProblem:
    """One benchmark problem: its task, id, question text, short gold answer, MATH subject and level."""

    task: str
    problem_id: str
    question: str
    answer: str
    subject: str = ""
    level: str = ""


def task_path(task: str, data_dir: str | Path, path: str | Path | None = None) -> Path:
    """The file of ``task``: ``path`` when given, else its default file name inside ``data_dir``."""
    if task not in DEFAULT_FILES:
        raise LatentThoughtsError(f"unknown task {task!r}; choose from {', '.join(BENCHMARKS)}")
    return Path(path) if path else Path(data_dir) / DEFAULT_FILES[task]


def read_task(task: str, path: str | Path) -> list[EvalProblem]:
    """The problems of ``task`` from its JSONL file; a missing file or field is a one-line error."""
    return read_jsonl_rows(
        path,
        lambda row, number: _problem(task, row, number),
        missing=f"{task} file not found: {{path}} (set --data-dir or --{task}-file)",
        what=f"a {task} problem",
    )


def read_jsonl_rows(
    path: str | Path, parse: Callable[[dict[str, Any], int], T], *, missing: str, what: str
) -> list[T]:
    """``parse(row, line number)`` of every non-blank line of a JSONL file, in order.

    A missing file is ``missing`` (``{path}`` is filled in) as a one-line error; a line that is not
    UTF-8, not a JSON object, or that ``parse`` rejects with ``KeyError``/``TypeError``/``ValueError``,
    is ``PATH:LINE: not WHAT (reason)``. A byte-order mark opening the file is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise LatentThoughtsError(missing.format(path=path))
    parsed = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise LatentThoughtsError(
                    f"{path}:{number}: not {what} (invalid UTF-8 at byte {exc.start})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise TypeError(f"a JSON {type(row).__name__}, not an object")
                parsed.append(parse(row, number))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
                raise LatentThoughtsError(f"{path}:{number}: not {what} ({exc})") from None
    return parsed


def _problem(task: str, row: dict[str, Any], number: int) -> EvalProblem:
    """One row as a problem (``KeyError`` when a needed field is missing)."""
    if task == "gsm8k":
        return EvalProblem(task, f"gsm8k-{number - 1}", str(row["question"]), gsm8k_gold(str(row["answer"])))
    return EvalProblem(
        task,
        str(row.get("unique_id") or f"{task}-{number - 1}"),
        str(row["problem"]),
        str(row["answer"]),
        subject=str(row.get("subject", "")),
        level=str(row.get("level", "")),
    )


def select_problems(
    problems: Sequence[EvalProblem],
    *,
    limit: int | None = None,
    subjects: Sequence[str] = (),
    levels: Sequence[str] = (),
    seed: int | None = None,
) -> list[EvalProblem]:
    """A subset: problems of the given ``subjects`` and ``levels`` (all when empty), then ``limit`` of
    them, the first ones, or a random draw with ``seed`` when a seed is given. ``limit`` must be positive.
    A level is a number, written ``2`` or, as in the original MATH files, ``Level 2``: both match."""
    if limit is not None and limit <= 0:
        raise LatentThoughtsError(f"--limit must be a positive number of problems, got {limit}")
    wanted_subjects = {subject.lower() for subject in subjects}
    wanted_levels = {_level(str(level)) for level in levels}
    chosen = [
        problem
        for problem in problems
        if (not wanted_subjects or problem.subject.lower() in wanted_subjects)
        and (not wanted_levels or _level(problem.level) in wanted_levels)
    ]
    if not chosen:
        raise LatentThoughtsError("no problem matches the chosen subjects and levels")
    if seed is not None:
        chosen = random.Random(seed).sample(chosen, len(chosen))
    return chosen[:limit] if limit is not None else chosen


def _level(level: str) -> str:
    """A MATH level as its number: ``Level 2`` and ``2`` are both ``2``."""
    level = level.strip()
    if level.lower().startswith("level"):
        level = level[len("level") :].strip()
    return level
