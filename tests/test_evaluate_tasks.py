"""Benchmark task readers over the shared data files, and subsets by size, subject, level and seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.tasks import read_task, select_problems, task_path
from tests.conftest import SHARED

DATA = SHARED / "data"


def test_gsm8k_problems_carry_the_number_after_the_hashes() -> None:
    problems = read_task("gsm8k", task_path("gsm8k", DATA))
    assert len(problems) == 1319
    assert problems[0].answer == "18" and problems[0].question.startswith("Janet")


def test_math_problems_carry_subject_and_level() -> None:
    problems = read_task("math", task_path("math", DATA))
    assert len(problems) == 5000
    assert problems[0].subject == "Algebra" and problems[0].level == "3" and problems[0].answer == "2"
    assert len(read_task("math500", task_path("math500", DATA))) == 500


def test_an_explicit_path_wins_over_the_data_folder(tmp_path: Path) -> None:
    assert task_path("gsm8k", DATA, tmp_path / "mine.jsonl") == tmp_path / "mine.jsonl"


def test_subsets_by_subject_level_size_and_seed() -> None:
    problems = read_task("math", task_path("math", DATA))
    chosen = select_problems(problems, subjects=["geometry"], levels=["5"], limit=10)
    assert len(chosen) == 10 and {(p.subject, p.level) for p in chosen} == {("Geometry", "5")}
    first = select_problems(problems, limit=5, seed=1)
    assert first == select_problems(problems, limit=5, seed=1)
    assert first != select_problems(problems, limit=5, seed=2)
    assert select_problems(problems, limit=3) == problems[:3]


@pytest.mark.parametrize("limit", [0, -2])
def test_a_limit_must_be_positive(limit: int) -> None:
    problems = read_task("math500", task_path("math500", DATA))
    with pytest.raises(LatentThoughtsError, match="--limit"):
        select_problems(problems, limit=limit)


def test_a_missing_file_and_a_bad_row_are_named(tmp_path: Path) -> None:
    with pytest.raises(LatentThoughtsError, match="gsm8k file not found"):
        read_task("gsm8k", tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q"}\n')
    with pytest.raises(LatentThoughtsError, match=r"bad\.jsonl:1"):
        read_task("gsm8k", bad)


def test_a_level_matches_written_as_a_number_or_as_in_the_original_math_files(tmp_path: Path) -> None:
    path = tmp_path / "math.jsonl"
    rows = [
        {"problem": "P1", "answer": "1", "subject": "Algebra", "level": "Level 2"},
        {"problem": "P2", "answer": "2", "subject": "Algebra", "level": "3"},
        {"problem": "P3", "answer": "3", "subject": "Algebra", "level": "Level 3"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = read_task("math", path)
    assert [p.question for p in select_problems(problems, levels=["2"])] == ["P1"]
    assert [p.question for p in select_problems(problems, levels=["3"])] == ["P2", "P3"]
    assert [p.question for p in select_problems(problems, levels=["Level 3"])] == ["P2", "P3"]


def test_a_byte_order_mark_keeps_the_first_problem(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "Q1", "answer": "#### 1"}, {"question": "Q2", "answer": "#### 2"}]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\n" for row in rows).encode())
    assert [p.answer for p in read_task("gsm8k", path)] == ["1", "2"]
