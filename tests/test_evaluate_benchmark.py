"""Few-shot evaluation through an engine: both modes, samples with maj@k and pass@k, the aggregate."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.evaluate.benchmark import BenchmarkSettings, ProblemRecord, aggregate, evaluate_benchmark
from latent_thoughts.evaluate.grading import MathGrader
from latent_thoughts.evaluate.tasks import EvalProblem, read_task, select_problems, task_path
from latent_thoughts.format import LATENT_TOKENS
from tests.conftest import SHARED

SHORT = BenchmarkSettings(max_thought_tokens=8, max_answer_tokens=12, shots=2)


@pytest.fixture(scope="module")
def engine(tiny_long_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(
        TransformersEngineConfig(model=str(tiny_long_model_dir), device="cpu", dtype="fp32")
    )


def _problems(task: str, n: int) -> list[EvalProblem]:
    return select_problems(read_task(task, task_path(task, SHARED / "data")), limit=n)


@pytest.mark.parametrize("mode", ["raw", "latent"])
def test_every_problem_is_logged_and_graded(engine: TransformersEngine, mode: str) -> None:
    problems = _problems("gsm8k", 3)
    logged: list[ProblemRecord] = []
    records = evaluate_benchmark(engine, engine.tokenizer, problems, mode, SHORT, on_record=logged.append)  # type: ignore[arg-type]
    assert logged == records and [r.problem_id for r in records] == [p.problem_id for p in problems]
    for record in records:
        assert len(record.generations) == 1 and record.flexible_correct is not None
        generation = record.generations[0]
        assert generation.count(LATENT_TOKENS.eol) == (mode == "latent")
        if mode == "latent":  # SOL, PRIOR and POST are banned in thoughts: the thought is text
            assert generation.split(LATENT_TOKENS.eol)[0].strip()
        assert record.prompt.endswith(LATENT_TOKENS.prior if mode == "latent" else "Answer:")


def test_math_records_and_per_subject_aggregate(engine: TransformersEngine) -> None:
    problems = _problems("math", 3)
    with MathGrader() as grader:
        records = evaluate_benchmark(
            engine, engine.tokenizer, problems, "latent", SHORT, grader=grader, progress=False
        )
    summary = aggregate(records, "latent")
    assert summary["n"] == 3 and set(summary["by_subject"]) == {p.subject for p in problems}
    assert sum(group["n"] for group in summary["by_level"].values()) == 3


def test_sampling_gives_k_generations_with_maj_and_pass(engine: TransformersEngine) -> None:
    settings = BenchmarkSettings(
        samples=3, temperature=1.0, max_thought_tokens=8, max_answer_tokens=8, shots=1
    )
    records = evaluate_benchmark(
        engine, engine.tokenizer, _problems("gsm8k", 2), "latent", settings, progress=False
    )
    assert all(len(r.generations) == 3 and len(r.verdicts) == 3 for r in records)
    summary = aggregate(records, "latent", samples=3)
    assert "pass@3" in summary and summary["pass@3"] >= summary["accuracy"]


def _record(correct: list[bool], extracted: list[str | None]) -> ProblemRecord:
    return ProblemRecord(
        "gsm8k", "p", "", "", "5", "", ["x"] * len(correct), extracted, correct, False, False
    )


def test_majority_vote_and_standard_error() -> None:
    from latent_thoughts.evaluate.benchmark import _majority

    assert _majority("gsm8k", ["7", "5", "5.0", None]) == 1  # 5 and 5.0 are one answer
    assert _majority("gsm8k", [None, None]) == 0
    records = [
        _record([True], ["5"]),
        _record([False], ["4"]),
        _record([True], ["5"]),
        _record([True], ["5"]),
    ]
    for record in records:
        record.correct = record.verdicts[0]
    summary = aggregate(records, "raw")
    assert summary["accuracy"] == 0.75
    # sample variance 0.75 / 3 = 0.25 (ddof 1), standard error sqrt(0.25 / 4)
    assert summary["stderr"] == pytest.approx(0.25)
