"""Decontamination: planted GSM8K and MATH test problems in thoughts are caught; clean data is not."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import main
from latent_thoughts.evaluate.decontamination import BenchmarkIndex, filter_table, normalize, scan_table
from latent_thoughts.evaluate.tasks import EvalProblem, read_task, task_path
from tests.conftest import SHARED, TRAINING_TEXTS

DATA = SHARED / "data"


def _long_math_problem() -> EvalProblem:
    problems = read_task("math", task_path("math", DATA))
    return next(p for p in problems if len(normalize(p.question)) >= 30)


def _write_files(folder: Path, planted: list[str]) -> tuple[Path, Path]:
    texts = TRAINING_TEXTS[:4]
    chunks = pa.table({"doc_id": ["d0", "d1", "d2", "d3"], "chunk_index": [0, 0, 0, 0], "text": texts})
    thoughts = [f"Reasoning about chunk {i}: the numbers add up." for i in range(4)]
    for i, plant in enumerate(planted):
        thoughts[i + 1] = f"A teacher recalls a benchmark. {plant} It then moves on."
    thought_table = pa.table(
        {"doc_id": ["d0", "d1", "d2", "d3"], "chunk_index": [0, 0, 0, 0], "thought": thoughts}
    )
    pq.write_table(chunks, folder / "chunks.parquet")
    pq.write_table(thought_table, folder / "thoughts.parquet")
    return folder / "chunks.parquet", folder / "thoughts.parquet"


def test_normalisation_ignores_case_punctuation_and_latex_markup() -> None:
    assert normalize("Janet's ducks lay 16 eggs!") == ["janet", "s", "ducks", "lay", "16", "eggs"]
    assert normalize("$\\frac{1}{2}$") == ["frac", "1", "2"]


def test_planted_test_problems_are_caught_and_filtered(tmp_path: Path) -> None:
    gsm8k = read_task("gsm8k", task_path("gsm8k", DATA))
    math = _long_math_problem()
    # the teacher copies the problems with other case and spacing: normalisation still matches them
    planted = [gsm8k[7].question.upper(), math.question.replace(" ", "  ")]
    _, thoughts = _write_files(tmp_path, planted)
    index = BenchmarkIndex([*gsm8k, *read_task("math", task_path("math", DATA))])
    table = pq.read_table(thoughts)
    hits = scan_table(table, index, ["thought"])
    assert [(hit.row, hit.doc_id) for hit in hits] == [(1, "d1"), (2, "d2")]
    assert hits[0].problems == [f"gsm8k:{gsm8k[7].problem_id}"]
    assert hits[1].problems == [f"math:{math.problem_id}"]
    assert filter_table(table, hits).column("doc_id").to_pylist() == ["d0", "d3"]


def test_clean_data_has_no_overlap(tmp_path: Path) -> None:
    chunks, thoughts = _write_files(tmp_path, [])
    index = BenchmarkIndex(read_task("gsm8k", task_path("gsm8k", DATA)))
    assert scan_table(pq.read_table(chunks), index, ["text"]) == []
    assert scan_table(pq.read_table(thoughts), index, ["thought"]) == []


def test_the_decontaminate_verb_reports_and_writes_filtered_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gsm8k = read_task("gsm8k", task_path("gsm8k", DATA))
    chunks, thoughts = _write_files(tmp_path, [gsm8k[0].question, _long_math_problem().question])
    out = tmp_path / "clean"
    argv = ["decontaminate", str(chunks), str(thoughts), "--data-dir", str(DATA), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "chunks.parquet: 0 of 4 rows contaminated" in printed
    assert "thoughts.parquet: 2 of 4 rows contaminated (gsm8k:gsm8k-0, math:" in printed
    report = [json.loads(line) for line in (out / "contamination.jsonl").read_text().splitlines()]
    assert [row["doc_id"] for row in report] == ["d1", "d2"]
    assert pq.read_table(out / "thoughts.parquet").num_rows == 2
    assert pq.read_table(out / "chunks.parquet").num_rows == 4


def test_decontaminate_will_not_overwrite_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chunks, _ = _write_files(tmp_path, [])
    argv = ["decontaminate", str(chunks), "--tasks", "gsm8k", "--data-dir", str(DATA), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("columns", ["chunk_index", "text,chunk_index"])
def test_decontaminate_refuses_a_column_that_is_not_text(
    columns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chunks, _ = _write_files(tmp_path, [])
    out = tmp_path / "clean"
    argv = ["decontaminate", str(chunks), "--tasks", "gsm8k", "--columns", columns]
    assert main([*argv, "--data-dir", str(DATA), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-thoughts: error:") and "\n" not in err
    assert str(chunks) in err and "chunk_index" in err and "not text" in err


def test_decontaminate_finds_the_benchmarks_where_evaluate_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --data-dir: $LATENT_THOUGHTS_DATA, as evaluate reads it, from any working directory."""
    gsm8k = read_task("gsm8k", task_path("gsm8k", DATA))
    _, thoughts = _write_files(tmp_path, [gsm8k[0].question])
    monkeypatch.setenv("LATENT_THOUGHTS_DATA", str(DATA))
    monkeypatch.chdir(tmp_path)
    assert main(["decontaminate", str(thoughts), "--tasks", "gsm8k", "--out", str(tmp_path / "clean")]) == 0
    assert "thoughts.parquet: 1 of 4 rows contaminated (gsm8k:gsm8k-0" in capsys.readouterr().out
