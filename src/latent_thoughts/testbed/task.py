"""The testbed's evaluation task: held-out posed statements, graded by exact match of the result.

A problem is a statement of the evaluation split posed the way documents pose it: question
``Consider 37 x 24 + 129.``, answer ``1017``. In documents the resolving sentence follows
(``It equals 1017.``), so the evaluation module generates greedily from

- raw mode: the question itself; the model continues it with the resolving sentence
  (`` It equals 1017.``);
- latent mode: the question, the whitespace that ends it as a chunk, then ``SOL PRIOR``
  (:func:`latent_thoughts.format.thinking_prompt`); the model writes a thought until EOL and then
  the resolving sentence, as in a training chunk of the prior layout (``... Consider 37 x 24 + 129.
  SOL PRIOR <derivation> EOL It equals 1017.``).

:func:`grade` handles both: it reads the first sentence after the last EOL (or of the raw
continuation) and takes its number when the sentence is words followed by one number
(``It equals 1017.``, ``The result is 1017.``) or a bare number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import atomic_write
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import LATENT_TOKENS, SpecialIds, thinking_prompt, tokenize_chunks
from latent_thoughts.testbed.world import (
    DOCUMENT_SPLITS,
    Statement,
    StatementSampler,
    TestbedConfig,
    generate_documents,
    pose_text,
    read_text_lines,
)

QUESTION_OPENER = "Consider"
"""The opener of every question; it is one of the openers documents pose statements with."""

CHUNK_END = " "
"""What ends a question as a chunk: chunks keep the whitespace after their last sentence. Training
documents are tokenized whole and cut at chunk boundaries (:func:`latent_thoughts.format.tokenize_chunks`),
so a question chunk's tokens are those the thinking prompt uses (for the usual tokenizers the space
travels with the next chunk's first word: ``... 129.`` then `` It equals``); both a raw
continuation and the answer after a thought start with that space (`` It equals``)."""

# The answer sentence: optional words (no digits, so "Adding 12 gives 30" and "37 x 4 = 148" are
# no answers) and then exactly one number, ending the sentence.
_ANSWER_RE = re.compile(r"\s*(?:[A-Za-z][A-Za-z ,']*?\s+)?(-?\d+)\s*(?:\.|$)")


@dataclass(frozen=True)
class Problem:
    """One held-out problem: question text, exact answer, the expression and its ground-truth thought."""

    problem_id: str
    question: str
    answer: str
    expression: str
    thought: str

    @classmethod
    def from_statement(cls, problem_id: str, statement: Statement) -> Problem:
        """The problem asking for ``statement``'s result."""
        return cls(
            problem_id=problem_id,
            question=pose_text(statement, QUESTION_OPENER),
            answer=str(statement.result),
            expression=statement.expression,
            thought=" ".join(statement.derivation()),
        )


def make_eval_problems(config: TestbedConfig, split: str = "eval") -> list[Problem]:
    """The problems of ``split``: ``eval`` gives ``config.eval_problems`` held-out statements (never
    in any document); a document split gives the statements of its documents (to measure fit)."""
    if split == "eval":
        sampler = StatementSampler(config, "eval")
        return [
            Problem.from_statement(f"testbed-{config.seed}-eval-{index:06d}", sampler.draw())
            for index in range(config.eval_problems)
        ]
    if split not in DOCUMENT_SPLITS:
        raise LatentThoughtsError(
            f"unknown testbed split {split!r} (valid: eval, {', '.join(DOCUMENT_SPLITS)})"
        )
    problems = []
    for document in generate_documents(config, split):
        for position, sentence in enumerate(document.sentences):
            if sentence.kind == "pose" and sentence.statement is not None:
                problems.append(Problem.from_statement(f"{document.doc_id}-{position}", sentence.statement))
    return problems


def _after_thought(text: str) -> str:
    """The text after the last EOL token: the part of a latent-mode generation that answers."""
    return text.rpartition(LATENT_TOKENS.eol)[2]


def extract_answer(generated_text: str) -> str | None:
    """The answer in a generation: the number of the first sentence after the last EOL (or of the
    whole text without EOL) when that sentence is words then one number, or a bare number
    (``It equals 1017.`` -> ``1017``); None otherwise (a new question, a claim, no number)."""
    match = _ANSWER_RE.match(_after_thought(generated_text))
    return str(int(match.group(1))) if match else None


def grade(problem: Problem, generated_text: str) -> bool:
    """Exact match of the generation's answer (:func:`extract_answer`) to ``problem.answer``."""
    return extract_answer(generated_text) == problem.answer


def accuracy(problems: Sequence[Problem], generations: Sequence[str]) -> float:
    """Exact-match accuracy of ``generations`` (one per problem, in order)."""
    if len(problems) != len(generations):
        raise LatentThoughtsError(f"{len(problems)} problems but {len(generations)} generations")
    if not problems:
        raise LatentThoughtsError("no problems to grade")
    return sum(grade(p, g) for p, g in zip(problems, generations, strict=True)) / len(problems)


def prompt_ids(problem: Problem, tokenizer: Any, thinking: bool, add_bos: bool = True) -> list[int]:
    """Token ids to generate from: BOS (if the tokenizer has one and ``add_bos``), the question, and
    with ``thinking`` the ``SOL PRIOR`` that asks a thought-trained model to think first, as the
    chunk after the question would in training. With ``thinking`` the question's tokens are cut
    from a document in which a chunk follows it (:data:`CHUNK_END`), exactly as training cuts them."""
    if thinking:
        ids = tokenize_chunks(tokenizer, [problem.question + CHUNK_END, "It"]).ids[0]
    else:
        ids = list(tokenizer.encode(problem.question, add_special_tokens=False))
    if add_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return thinking_prompt(SpecialIds.from_tokenizer(tokenizer), ids) if thinking else ids


def write_problems(problems: Sequence[Problem], path: str | Path) -> int:
    """Write problems as JSONL (``id``, ``question``, ``answer``, ``expression``, ``thought``)."""
    with atomic_write(path) as partial, partial.open("w", encoding="utf-8") as handle:
        for problem in problems:
            row = asdict(problem)
            row = {"id": row.pop("problem_id"), **row}
            handle.write(json.dumps(row) + "\n")
    return len(problems)


def read_problems(path: str | Path) -> list[Problem]:
    """Read problems written by :func:`write_problems`; a bad row is an error naming file and line."""
    path = Path(path)
    try:
        lines = read_text_lines(path)
    except FileNotFoundError:
        raise LatentThoughtsError(f"{path}: problems file not found") from None
    problems = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problems.append(
                Problem(
                    str(row["id"]), row["question"], str(row["answer"]), row["expression"], row["thought"]
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LatentThoughtsError(f"{path}:{number}: not a testbed problem row ({exc})") from None
    return problems
