"""Decontamination: long n-gram overlap between training data and the evaluation sets.

Text is normalised (:func:`normalize`: lower case, every run of characters that are not letters or
digits becomes one space) and cut into word n-grams (13 by default). The n-grams of every evaluation
problem's question form an index (:class:`BenchmarkIndex`; a problem shorter than n words has
none and cannot be matched). A training row is contaminated when one of its text columns
(``text`` of chunk and rephrasing files, ``thought`` of thought files) shares an n-gram with the
index; :func:`scan_table` reports those rows (:class:`Contamination`, naming the problems they
overlap) and :func:`filter_table` drops them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from latent_thoughts.evaluate.tasks import EvalProblem

DEFAULT_NGRAM = 13
TEXT_COLUMNS = ("text", "thought")
"""The columns checked by default, those of them a file has (prefixes repeat earlier chunks' text)."""

_NOT_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> list[str]:
    """The words of ``text``: lower case, split at every run of non-alphanumeric characters."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def ngrams(words: Sequence[str], n: int) -> Iterator[str]:
    """The word n-grams of ``words``, each joined by single spaces (none when fewer than n words)."""
    for start in range(len(words) - n + 1):
        yield " ".join(words[start : start + n])


class BenchmarkIndex:
    """The n-grams of evaluation problems, each mapped to the first problem that has it."""

    def __init__(self, problems: Iterable[EvalProblem], n: int = DEFAULT_NGRAM) -> None:
        if n < 1:
            from latent_thoughts.errors import LatentThoughtsError

            raise LatentThoughtsError(f"--ngram must be positive, got {n}")
        self.n = n
        self.owner: dict[str, str] = {}
        self.problems = 0
        for problem in problems:
            self.problems += 1
            for gram in ngrams(normalize(problem.question), n):
                self.owner.setdefault(gram, f"{problem.task}:{problem.problem_id}")

    def matches(self, text: str) -> list[str]:
        """The problems (``task:id``) whose n-grams ``text`` contains, in order of first overlap."""
        found: list[str] = []
        for gram in ngrams(normalize(text), self.n):
            owner = self.owner.get(gram)
            if owner is not None and owner not in found:
                found.append(owner)
        return found


@dataclass(frozen=True)
class Contamination:
    """One contaminated training row: its index in the file, its ids, the column and the problems."""

    row: int
    doc_id: str
    chunk_index: int | None
    column: str
    problems: list[str]


def text_columns(table: pa.Table, columns: Sequence[str] | None = None) -> list[str]:
    """The columns to check: ``columns`` when given, else those of :data:`TEXT_COLUMNS` present."""
    if columns:
        return list(columns)
    return [name for name in TEXT_COLUMNS if name in table.column_names]


def scan_table(table: pa.Table, index: BenchmarkIndex, columns: Sequence[str]) -> list[Contamination]:
    """The contaminated rows of ``table`` (one entry per row and column that overlaps)."""
    doc_ids = table.column("doc_id").to_pylist() if "doc_id" in table.column_names else [""] * table.num_rows
    chunks = (
        table.column("chunk_index").to_pylist()
        if "chunk_index" in table.column_names
        else [None] * table.num_rows
    )
    found = []
    for column in columns:
        for row, text in enumerate(table.column(column).to_pylist()):
            problems = index.matches(text or "")
            if problems:
                found.append(Contamination(row, str(doc_ids[row]), chunks[row], column, problems))
    return found


def filter_table(table: pa.Table, contaminated: Iterable[Contamination]) -> pa.Table:
    """``table`` without the contaminated rows (the others in their order)."""
    drop = {hit.row for hit in contaminated}
    keep = [row for row in range(table.num_rows) if row not in drop]
    return table.take(pa.array(keep, type=pa.int64()))
