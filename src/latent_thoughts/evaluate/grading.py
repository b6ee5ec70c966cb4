"""Answer extraction and grading for GSM8K and MATH (METHOD section 7).

Both graders first cut a generation at EOL (:func:`answer_text`): what a latent model writes before
its last EOL is its thought, and numbers in a thought are no answer. What follows is cut at the
next few-shot header (``Question:``, ``Problem:``) in case the engine did not stop there.

- GSM8K (:func:`grade_gsm8k`): *strict* takes the number after the last ``answer is`` or ``####``;
  *flexible* takes the last number of the text. Numbers are compared as decimals after dropping
  ``$``, thousands commas and a trailing period (``$1,234.`` equals ``1234``).
- MATH (:class:`MathGrader`): symbolic equivalence with ``math-verify``, the gold answer parsed
  first and passed first to ``verify``. A final answer written without math delimiters
  (``The final answer is 3\\sqrt{7}.``) is read as LaTeX math, as if it were between ``$`` signs
  (:func:`delimit_math_answer`): math-verify alone would read plain text as a calculator expression,
  taking ``3`` out of ``3\\sqrt{7}`` and the float ``9/7.0`` out of ``9/7.``. math-verify's own
  timeouts use ``signal.alarm``, which works only on a process's main thread, so the grader runs math-verify in a child process of its own
  (a plain subprocess) and waits for each verdict at most ``timeout_s`` seconds; a comparison that takes longer (a tower
  of exponents) kills the child, counts as wrong with ``timed_out`` set, and the next call starts a
  fresh child. The grader therefore works from any thread and inside worker processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import LATENT_TOKENS

FEW_SHOT_HEADERS = ("Question:", "Problem:")
"""Headers of the next few-shot block; a generation is cut before the first one."""

_NUMBER = r"-?\$?\s?-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\$?\s?-?\.[0-9]+"
STRICT_RE = re.compile(r"(?:answer is|####)\s*:?\s*\$?\s*(" + _NUMBER + ")", re.IGNORECASE)
"""GSM8K strict: the number after ``answer is`` or ``####`` (the last match answers)."""
NUMBER_RE = re.compile(_NUMBER)
"""GSM8K flexible: any number (the last one answers); also the lm-eval export's filters."""


def answer_text(generation: str) -> str:
    """The part of ``generation`` that answers: after its last EOL, before the next few-shot header."""
    text = generation.rsplit(LATENT_TOKENS.eol, 1)[-1]
    for header in FEW_SHOT_HEADERS:
        text = text.split(header, 1)[0]
    return text.strip()


def parse_number(text: str) -> Decimal | None:
    """``text`` as a decimal after dropping ``$``, spaces, thousands commas and a trailing period."""
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def extract_gsm8k(generation: str, *, strict: bool) -> str | None:
    """The answer number of a GSM8K generation as written, or None (see module notes)."""
    text = answer_text(generation)
    if strict:
        matches = STRICT_RE.findall(text)
        return matches[-1].strip() if matches else None
    numbers = NUMBER_RE.findall(text)
    return numbers[-1].strip() if numbers else None


def gsm8k_gold(solution: str) -> str:
    """The gold answer of a GSM8K solution: the text after ``#### ``."""
    return solution.rsplit("####", 1)[-1].strip()


def grade_gsm8k(gold: str, generation: str, *, strict: bool = True) -> tuple[str | None, bool]:
    """``(extracted answer, correct)`` for a GSM8K generation against the gold number."""
    extracted = extract_gsm8k(generation, strict=strict)
    if extracted is None:
        return None, False
    value, target = parse_number(extracted), parse_number(gold)
    return extracted, value is not None and target is not None and value == target


@dataclass(frozen=True)
class MathVerdict:
    """One MATH grading: the extracted answer (as math-verify read it), the verdict, a timeout flag."""

    extracted: str | None
    correct: bool
    timed_out: bool = False


_FINAL_ANSWER = "answer is"
_MATH_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def delimit_math_answer(answer: str) -> str:
    """``answer`` with a final answer written without math delimiters put between ``$`` signs.

    The final answer is what follows the last ``answer is`` on its line, up to the end of its sentence
    (a period followed by a space or the end). When it holds no ``$``, ``\\(``, ``\\[`` or ``\\boxed``,
    it becomes ``$...$``; otherwise, or without ``answer is``, ``answer`` is returned as it is.
    """
    start = answer.lower().rfind(_FINAL_ANSWER)
    if start < 0:
        return answer
    start += len(_FINAL_ANSWER)
    line = answer[start:].split("\n", 1)[0]
    final = _SENTENCE_END.split(line, 1)[0].strip().lstrip(":").strip()
    if not final or any(delimiter in final for delimiter in _MATH_DELIMITERS):
        return answer
    return f"{answer[:start]} ${final}$."


def verify_math(gold: str, answer: str) -> tuple[str | None, bool]:
    """math-verify's verdict, without timeouts: ``(extracted answer, equivalent)``.

    ``gold`` is a short answer (``\\frac{1}{2}``), parsed as LaTeX math first; ``answer`` is the answer
    text of a generation (``... The final answer is $\\frac12$.``). Call it only where something else
    bounds its time (:class:`MathGrader`).
    """
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    if not gold_parsed:
        gold_parsed = parse(gold, parsing_timeout=None)
    parsed = parse(delimit_math_answer(answer), parsing_timeout=None)
    if not parsed:  # a final answer that is no LaTeX math: math-verify's reading of the text
        parsed = parse(answer, parsing_timeout=None)
    extracted = str(parsed[-1]) if parsed else None
    if not gold_parsed or not parsed:
        return extracted, False
    return extracted, bool(verify(gold_parsed, parsed, timeout_seconds=None))


def _serve() -> None:
    """The grader child: read JSON ``[gold, answer]`` lines on stdin, write ``[extracted, correct]`` lines."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns that its own timeouts are off
    for line in sys.stdin:
        try:
            reply = list(verify_math(*json.loads(line)))
        except Exception:  # a parse error is a wrong answer, not a crash
            reply = [None, False]
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class MathGrader:
    """MATH grading by symbolic equivalence, each comparison bounded by ``timeout_s`` (module notes).

    The child is ``python -m latent_thoughts.evaluate.grading`` talking JSON lines over pipes (a plain
    subprocess rather than multiprocessing, so no main module is re-imported and a daemonic worker
    process can grade too). Use the grader as a context manager (or call :meth:`close`).
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self._process is None:
            package_root = str(Path(__file__).resolve().parents[2])
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
            }
            self._process = subprocess.Popen(
                [sys.executable, "-m", "latent_thoughts.evaluate.grading"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        return self._process

    def _ask(self, gold: str, answer: str, timeout_s: float | None) -> tuple[str | None, bool] | None:
        """Send one comparison; its reply, or None when none came within ``timeout_s`` or the child
        is gone (it is then killed; the next call starts a fresh one)."""
        process = self._start()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps([gold, answer]) + "\n")
            process.stdin.flush()
        except OSError:  # the child exited (BrokenPipeError)
            line = ""
        else:
            ready, _, _ = select.select([process.stdout], [], [], timeout_s)
            line = process.stdout.readline() if ready else ""
        if not line:
            self._kill()
            return None
        extracted, correct = json.loads(line)
        return extracted, bool(correct)

    def grade(self, gold: str, generation: str) -> MathVerdict:
        """The verdict on ``generation`` (cut at EOL first) against the gold answer ``gold``."""
        if self._process is None:
            self.warm_up()  # the import of math-verify is not charged to the first comparison
        reply = self._ask(gold, answer_text(generation), self.timeout_s)
        if reply is None:
            return MathVerdict(None, False, timed_out=True)
        return MathVerdict(*reply)

    def warm_up(self) -> None:
        """Start the child and let it import math-verify, so that no timeout pays for the import.

        A child that cannot start or answer (math-verify not installed) is a one-line error."""
        if self._ask("1", "1", 120.0) != ("1", True):
            raise LatentThoughtsError(
                "the MATH grader could not start: install math-verify (pip install 'math-verify[antlr4_13_2]')"
            )

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):  # a dead child's stdin cannot be flushed
                        pipe.close()
        self._process = None

    def close(self) -> None:
        """End the child process."""
        self._kill()

    def __enter__(self) -> MathGrader:
        self.warm_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _serve()
