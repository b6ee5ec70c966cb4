"""Verifying the arithmetic in a thought, for any source of thoughts (teacher, E-step, selected).

A **claim** is any ``a op b [op c ...] = r`` in the text, with integers and op in ``+ - x * × /``
(usual precedence; ``/`` must divide exactly). The rule for a thought:

- every claim it makes must be true;
- when the chunk it explains is given, it must **cover** the chunk: every result the chunk states
  (resolving and continuation sentences) is the right-hand side of one of the thought's true
  claims. A chunk that states no result (posing sentences only: "Consider 37 x 24 + 129.") asks
  for nothing, so there any thought without a false claim is valid, a plan or a bare remark alike;
- without the chunk, it must make at least one claim (a thought that claims nothing cannot be told
  apart from an irrelevant one).

So a thought with a wrong step (one false claim) is invalid, and so is an irrelevant thought for a
chunk that states a result: it has no claims, or its true claims are about other numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.testbed.world import parse_text

# Operands are integers; the first one and the result may be negative. The look-arounds keep a
# claim from starting or ending inside a word or a decimal number ("1.5 + 2 = 3.5" is no claim).
_CLAIM_RE = re.compile(r"(?<![\w.])(?P<lhs>-?\d+(?:\s*[-+x*×/]\s*\d+)+)\s*=\s*(?P<rhs>-?\d+)(?!\.?\d)")
_TOKEN_RE = re.compile(r"\s*([-+x*×/])\s*(\d+)")


@dataclass(frozen=True)
class Claim:
    """One arithmetic claim found in a thought: its text, the stated value and the true value
    (None when the expression has no integer value, e.g. an inexact division), and where the text
    lies in the thought (``thought[start:end] == text``; the HTML viewer marks it there)."""

    text: str
    stated: int
    actual: int | None
    start: int = 0
    end: int = 0

    @property
    def true(self) -> bool:
        """Whether the stated value is the value of the expression."""
        return self.actual == self.stated


@dataclass(frozen=True)
class CheckResult:
    """What the checker found in one thought.

    ``claims`` and ``valid_claims`` count all and true claims; ``covered`` says whether the
    thought derives every result of its chunk (None when no chunk was given; True for a chunk that
    states no result); ``results`` is how many results the chunk states (None without a chunk).
    """

    claims: int
    valid_claims: int
    covered: bool | None = None
    false_claims: tuple[str, ...] = ()
    results: int | None = None

    @property
    def valid(self) -> bool:
        """All claims true and, with a chunk, every stated result covered; without one, at least one claim."""
        if self.valid_claims != self.claims:
            return False
        return self.claims > 0 if self.covered is None else self.covered


def evaluate(expression: str) -> int | None:
    """The integer value of ``a op b op c ...`` with x, * and / before + and -; None for an inexact
    or by-zero division. ``expression`` must be what the claim pattern matched."""
    first = re.match(r"\s*(-?\d+)", expression)
    if first is None:
        raise LatentThoughtsError(f"not an arithmetic expression: {expression!r}")
    terms: list[int] = []
    current = int(first.group(1))
    for op, raw in _TOKEN_RE.findall(expression[first.end() :]):
        value = int(raw)
        if op in "x*×":
            current *= value
        elif op == "/":
            if value == 0 or current % value:
                return None
            current //= value
        else:
            terms.append(current)
            current = value if op == "+" else -value
    terms.append(current)
    return sum(terms)


MAX_CLAIM_DIGITS = 4000
"""Longest number a claim may hold and still be checked (Python reads at most 4,300 digits as an
int); a claim holding a longer one is counted as false, as unverifiable (testbed numbers are short)."""

_LONG_NUMBER_RE = re.compile(rf"\d{{{MAX_CLAIM_DIGITS + 1}}}")


def find_claims(text: str) -> list[Claim]:
    """Every arithmetic claim in ``text``, in order (one with a number too long to read is false)."""
    claims = []
    for match in _CLAIM_RE.finditer(text):
        if _LONG_NUMBER_RE.search(match.group(0)):
            claims.append(Claim(match.group(0), 0, None, match.start(), match.end()))
        else:
            stated, actual = int(match.group("rhs")), evaluate(match.group("lhs"))
            claims.append(Claim(match.group(0), stated, actual, match.start(), match.end()))
    return claims


def chunk_results(chunk: str) -> list[int]:
    """The results a testbed chunk states, one per resolving or continuation sentence (posing
    sentences state none; an unreadable sentence is an error)."""
    return [sentence.result for sentence in parse_text(chunk) if sentence.result is not None]


def check_thought(text: str, chunk: str | None = None) -> CheckResult:
    """Check every claim in the thought ``text`` and, when ``chunk`` is given, that the thought
    derives each result the chunk states. See the module docstring for the validity rule."""
    claims = find_claims(text)
    true_values = {claim.stated for claim in claims if claim.true}
    results = None if chunk is None else chunk_results(chunk)
    return CheckResult(
        claims=len(claims),
        valid_claims=sum(claim.true for claim in claims),
        covered=None if results is None else all(result in true_values for result in results),
        false_claims=tuple(claim.text for claim in claims if not claim.true),
        results=None if results is None else len(results),
    )


def validity_rate(thoughts: Iterable[str], chunks: Sequence[str] | None = None) -> float:
    """The share of valid thoughts; with ``chunks`` (one per thought) coverage counts too.

    Raises LatentThoughtsError for no thoughts or a count that does not match ``chunks``.
    """
    thoughts = list(thoughts)
    if not thoughts:
        raise LatentThoughtsError("no thoughts to check")
    if chunks is not None and len(chunks) != len(thoughts):
        raise LatentThoughtsError(f"{len(thoughts)} thoughts but {len(chunks)} chunks")
    results = [check_thought(t, None if chunks is None else chunks[i]) for i, t in enumerate(thoughts)]
    return sum(result.valid for result in results) / len(results)
