"""Grading (METHOD section 7): a table of tricky MATH and GSM8K pairs, EOL cuts, timeouts anywhere."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from latent_thoughts.evaluate.grading import (
    MathGrader,
    MathVerdict,
    answer_text,
    grade_gsm8k,
    gsm8k_gold,
)

TOWER = "The final answer is $9^{9^{9^{9^{9}}}}$."
"""An answer whose comparison with a number would run for ever (sympy evaluates the tower)."""

MATH_CASES = [
    # (gold, generation, expected)
    ("\\frac{1}{2}", "The final answer is $\\dfrac{1}{2}$.", True),
    ("\\frac{1}{2}", "The final answer is $0.5$.", True),
    ("\\frac{1}{2}", "The final answer is $\\frac12$.", True),
    ("\\frac{1}{2}", "The final answer is $\\frac{2}{4}$.", True),
    ("\\frac{1}{2}", "The final answer is $\\frac{1}{3}$.", False),
    ("\\dfrac{3}{4}", "The final answer is $3/4$.", True),
    ("-\\frac{2}{3}", "The final answer is $\\frac{-2}{3}$.", True),
    ("2\\sqrt{2}", "The final answer is $\\sqrt{8}$.", True),
    ("\\frac{\\sqrt{3}}{3}", "The final answer is $\\frac{1}{\\sqrt{3}}$.", True),
    ("\\sqrt{2}", "The final answer is $\\sqrt{3}$.", False),
    ("3\\sqrt{5}", "The final answer is $\\sqrt{45}$.", True),
    ("(-\\infty, 3]", "The final answer is $(-\\infty, 3]$.", True),
    ("(-\\infty, 3]", "The final answer is $(-\\infty, 3)$.", False),
    ("[2, 5)", "The final answer is $[2,5)$.", True),
    ("(1, 4)", "The final answer is $(1,4)$.", True),
    ("\\{1, 2, 3\\}", "The final answer is $\\{3, 2, 1\\}$.", True),
    ("\\{1, 2, 3\\}", "The final answer is $\\{1, 2\\}$.", False),
    ("1, 2, 3", "The final answer is $3, 1, 2$.", True),
    ("25\\%", "The final answer is $25\\%$.", True),
    ("25\\%", "The final answer is $25$.", True),
    ("25\\%", "The final answer is $30\\%$.", False),
    ("12\\text{ cm}", "The final answer is $12$ cm.", True),
    ("12\\text{ cm}", "The final answer is $12\\text{ centimeters}$.", True),
    ("12\\text{ cm}", "The final answer is $13$ cm.", False),
    ("90^\\circ", "The final answer is $90^\\circ$.", True),
    ("90^\\circ", "The final answer is $90$.", True),
    ("45^\\circ", "The final answer is $60^\\circ$.", False),
    ("\\text{(C)}", "The final answer is $\\text{(C)}$.", True),
    ("\\text{(C)}", "The final answer is $\\text{(D)}$.", False),
    ("\\text{Sunday}", "The final answer is $\\text{Sunday}$.", True),
    ("\\text{Sunday}", "The final answer is $\\text{Monday}$.", False),
    (
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "The final answer is $\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}$.",
        True,
    ),
    (
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        "The final answer is $\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}$.",
        False,
    ),
    (
        "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
        "The final answer is $\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}$.",
        True,
    ),
    ("x^2+2x+1", "The final answer is $(x+1)^2$.", True),
    ("x^2+2x+1", "The final answer is $x^2+2x+2$.", False),
    ("\\pi", "The final answer is $\\pi$.", True),
    ("2\\pi", "The final answer is $6.28$.", False),
    ("10", "The final answer is $\\boxed{10}$.", True),
    ("10", "So the answer is \\boxed{10}.", True),
    ("10", "The final answer is $11$.", False),
    ("-3", "The final answer is $-3$.", True),
    ("5", "Nothing to see here.", False),
    ("6", "x = 6<|END_OF_LATENT|>The final answer is $7$.", False),
    ("7", "x = 6<|END_OF_LATENT|>The final answer is $7$.", True),
    ("\\frac{9}{7}", "The final answer is $1\\frac{2}{7}$.", True),
    ("1,000", "The final answer is $1000$.", True),
    # A final answer without `$` is still LaTeX math, not a calculator expression cut short.
    ("3", "The final answer is 3\\sqrt{7}.", False),
    ("3\\sqrt{7}", "The final answer is 3\\sqrt{7}.", True),
    ("\\frac{9}{7}", "The final answer is 9/7.", True),
    ("\\frac{9}{7}", "The final answer is 9/7. I hope it is correct.", True),
    ("x^2+2x+1", "The final answer is (x+1)^2.", True),
    ("0.5", "The final answer is 0.5.", True),
]

GSM8K_CASES = [
    # (gold, generation, strict verdict, flexible verdict)
    ("18", "She sells 16 - 3 - 4 = 9 eggs for $2 each. The final answer is 18.", True, True),
    ("18", "... so she makes $18 every day. The answer is $18.", True, True),
    ("1234", "The final answer is 1,234.", True, True),
    ("1234", "The final answer is $1,234.00.", True, True),
    ("70000", "The profit is 70,000 dollars.\n#### 70,000", True, True),
    ("-5", "The temperature drops to -5 degrees. The answer is -5.", True, True),
    ("0.5", "The final answer is .5", True, True),
    ("3", "3 apples and 4 pears make 7 fruits.", False, False),
    ("7", "3 apples and 4 pears make 7 fruits.", False, True),
    ("7", "The answer is 6. Checking again, 3 + 4 = 7.", False, True),
    ("12", "First 5 + 7 = 12<|END_OF_LATENT|>Answer: 5 + 7 = 13. The final answer is 13.", False, False),
    (
        "13",
        "First 5 + 7 = 12<|END_OF_LATENT|>Answer: The final answer is 13.\n\nQuestion: 8 + 8?",
        True,
        True,
    ),
    ("5", "no number here", False, False),
]


def test_the_table_is_large() -> None:
    assert len(MATH_CASES) + len(GSM8K_CASES) >= 40


@pytest.fixture(scope="module")
def grader():
    with MathGrader(timeout_s=10.0) as math_grader:
        yield math_grader


@pytest.mark.parametrize(("gold", "generation", "expected"), MATH_CASES)
def test_math_pairs(grader: MathGrader, gold: str, generation: str, expected: bool) -> None:
    verdict = grader.grade(gold, generation)
    assert verdict.correct is expected, verdict
    assert not verdict.timed_out


@pytest.mark.parametrize(("gold", "generation", "strict", "flexible"), GSM8K_CASES)
def test_gsm8k_pairs(gold: str, generation: str, strict: bool, flexible: bool) -> None:
    assert grade_gsm8k(gold, generation, strict=True)[1] is strict
    assert grade_gsm8k(gold, generation, strict=False)[1] is flexible


def test_gsm8k_gold_is_after_the_hashes() -> None:
    assert gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"


def test_answer_text_drops_the_thought_and_the_next_exemplar() -> None:
    text = "think 41<|END_OF_LATENT|>Answer: it is 42.\n\nQuestion: next"
    assert answer_text(text) == "Answer: it is 42."


def test_a_tower_of_exponents_times_out_and_the_grader_goes_on() -> None:
    with MathGrader(timeout_s=1.0) as math_grader:
        start = time.monotonic()
        verdict = math_grader.grade("5", TOWER)
        assert verdict == MathVerdict(None, False, timed_out=True)
        assert time.monotonic() - start < 10
        assert math_grader.grade("5", "The final answer is $5$.").correct


def test_grading_off_the_main_thread() -> None:
    verdicts: list[MathVerdict] = []

    def work() -> None:
        with MathGrader(timeout_s=1.0) as math_grader:
            verdicts.append(math_grader.grade("5", TOWER))
            verdicts.append(math_grader.grade("\\frac{1}{2}", "The final answer is $0.5$."))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert [verdict.correct for verdict in verdicts] == [False, True]
    assert verdicts[0].timed_out


def _grade_in_worker(generation: str) -> tuple[bool, bool]:
    with MathGrader(timeout_s=1.0) as math_grader:
        verdict = math_grader.grade("5", generation)
    return verdict.correct, verdict.timed_out


def test_grading_in_a_worker_process() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert list(pool.map(_grade_in_worker, [TOWER, "The final answer is $5$."])) == [
            (False, True),
            (True, False),
        ]


def test_a_grader_that_cannot_start_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from latent_thoughts.errors import LatentThoughtsError

    monkeypatch.setattr(sys, "executable", "/bin/false")  # a child that exits at once
    with pytest.raises(LatentThoughtsError, match="math-verify"):
        MathGrader().grade("1", "The final answer is $1$.")
