"""The testbed world: procedurally generated "compressed math" documents with ground-truth thoughts.

A document is one paragraph of sentences about arithmetic whose derivations are left out. Three
kinds of sentence occur:

- a **posing** sentence: ``Consider 37 x 24 + 129.`` (a product of two ``digits``-digit factors
  followed by ``steps - 1`` additions or subtractions of ``addend_digits``-digit numbers), opened
  by a phrase such as "Consider", "Take" or "Look at"; it states no result;
- a **resolving** sentence right after it: ``It equals 1017.`` (or "That gives", "The result is",
  ...), which states the value of the expression posed just before;
- a **continuation**: ``Adding 129 gives 1146.`` (or ``Subtracting 56 gives 961.``), which builds on
  the result of the sentence before it.

Why a statement is posed and resolved in two sentences: in the training format a chunk's thought
comes before the chunk's text (``SOL PRIOR z EOL x``), and evaluation asks for a thought after a
question (``question SOL PRIOR``). When the question (the posing sentence) ends one chunk and the
result (the resolving sentence) opens the next, training shows exactly that situation: a thought
conditioned on an expression in the text before it. A self-contained ``So 37 x 24 + 129 = 1017.``
in one chunk would only ever show a thought that precedes its own operands. The testbed therefore
recommends one sentence per chunk (:func:`testbed_chunk_config`).

The ground-truth thought of a resolving sentence is its left-out derivation, written as plain
claims ``a op b = c.`` that :mod:`latent_thoughts.testbed.checker` can verify: the partial products
of the first factor with each nonzero place of the second, their running sum, then each further
step. A posing sentence's thought is a short plan with no arithmetic claims; a continuation's is
its one step::

    Consider 37 x 24 + 129.  ->  Multiply 37 by 24 place by place, then add 129.
    It equals 1017.          ->  37 x 4 = 148. 37 x 20 = 740. 148 + 740 = 888. 888 + 129 = 1017.
    Adding 129 gives 1146.   ->  1017 + 129 = 1146.

Splits (warm start, bootstrap, validation documents and evaluation problems) are deterministic in
the seed and disjoint: every statement is assigned to exactly one split by a hash of the seed and
its operands (factors sorted, so ``24 x 37 + 129`` falls with ``37 x 24 + 129``), and each split
draws only statements of its own bucket. Growing one split therefore never changes another.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from latent_thoughts.atomic import atomic_write
from latent_thoughts.config import StageConfig
from latent_thoughts.errors import LatentThoughtsError

if TYPE_CHECKING:
    from latent_thoughts.corpus import ChunkConfig

Operation = Literal["+", "-"]
DocumentSplit = Literal["warm_start", "bootstrap", "validation"]
DOCUMENT_SPLITS: tuple[DocumentSplit, ...] = ("warm_start", "bootstrap", "validation")
ALL_SPLITS: tuple[str, ...] = (*DOCUMENT_SPLITS, "eval")
"""Every split, in the order of the hash buckets that assign statements to them."""

SentenceKind = Literal["pose", "resolve", "continuation"]

POSE_OPENERS: tuple[str, ...] = (
    "Consider",
    "Take",
    "Look at",
    "Now consider",
    "Next comes",
    "We now evaluate",
)
"""Phrases that open a posing sentence; each starts with a capital letter (so a sentence splitter
sees one after every period) and holds no digit or period."""

RESOLVE_PHRASES: tuple[str, ...] = (
    "It equals",
    "That gives",
    "The result is",
    "This comes to",
    "Its value is",
)
"""Phrases that open a resolving sentence, followed by the result; same rules as the openers."""

CONTINUATION_VERBS: dict[str, str] = {"+": "Adding", "-": "Subtracting"}
PLAN_VERBS: dict[str, str] = {"+": "add", "-": "subtract"}


def _default_operations() -> list[Operation]:
    return ["+"]


class TestbedConfig(StageConfig):
    """Options of the testbed world and its oracle teacher.

    The defaults follow the calibration point of the issue: statements of a two-digit by two-digit
    product plus a three-digit number, about 2,000 of them in the bootstrap split.
    """

    __test__ = False  # not a pytest test class despite its name

    seed: int = Field(0, description="seed of the whole world: splits, documents and problems")
    warm_start_documents: int = Field(50, ge=0, description="documents in the warm-start split")
    bootstrap_documents: int = Field(250, ge=0, description="documents in the bootstrap (EM) split")
    validation_documents: int = Field(25, ge=0, description="held-out documents for NLL and ELBO")
    eval_problems: int = Field(200, ge=0, description="held-out problems of the evaluation task")
    results_per_document: int = Field(
        8,
        ge=1,
        description=(
            "results stated in every document: each a posed-and-resolved statement (two sentences) "
            "or a continuation (one sentence)"
        ),
    )
    digits: int = Field(2, ge=1, le=9, description="digits of each factor of a statement's product")
    steps: int = Field(2, ge=1, le=8, description="operations in a statement: the product, then steps-1 more")
    addend_digits: int = Field(3, ge=1, le=12, description="digits of each number added or subtracted")
    operations: list[Operation] = Field(
        default_factory=_default_operations, min_length=1, description="operations after the product"
    )
    continuation_rate: float = Field(
        0.2, ge=0.0, le=1.0, description="chance a sentence (not the first) builds on the previous result"
    )
    oracle_noise: float = Field(
        0.0, ge=0.0, le=1.0, description="chance the oracle's thought for a chunk is wrong"
    )
    oracle_plan_numbers: bool = Field(
        True,
        description=(
            "whether the oracle's plan for a posing sentence restates its numbers; training then always "
            "shows them twice, evaluation once (see docs/testbed.md)"
        ),
    )
    oracle_irrelevant_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of the oracle's noisy thoughts that are irrelevant (else a wrong step)",
    )
    # The recommended chunking of testbed documents (see testbed_chunk_config); generation does
    # not use it. One sentence per chunk puts every resolving sentence in a chunk of its own, right
    # after the chunk that poses its expression, as a question is followed by a thought in evaluation.
    chunk_mean_sentences: float = Field(
        1.0, gt=0, description="recommended chunking: mean sentences per chunk (chunking.mean_sentences)"
    )
    chunk_min_sentences: int = Field(
        1, ge=1, description="recommended chunking: fewest sentences per chunk (chunking.min_sentences)"
    )
    chunk_max_sentences: int = Field(
        1, ge=1, description="recommended chunking: most sentences per chunk (chunking.max_sentences)"
    )

    @model_validator(mode="after")
    def _check_space(self) -> TestbedConfig:
        if not self.chunk_min_sentences <= self.chunk_mean_sentences <= self.chunk_max_sentences:
            raise ValueError("need chunk_min_sentences <= chunk_mean_sentences <= chunk_max_sentences")
        for split in ALL_SPLITS:
            wanted = self.statements_needed(split)
            # A split's bucket holds about a quarter of all statements; rejection sampling needs slack.
            if wanted > self.statement_space() / len(ALL_SPLITS) / 2:
                raise ValueError(
                    f"{split} needs {wanted} distinct statements but digits={self.digits}, steps={self.steps}, "
                    f"addend_digits={self.addend_digits} allow too few; raise digits or steps or lower the split size"
                )
        return self

    def statement_space(self) -> int:
        """How many distinct statements the difficulty settings allow (factors unordered)."""
        factors = 9 * 10 ** (self.digits - 1)
        pairs = factors * (factors + 1) // 2
        addends = 9 * 10 ** (self.addend_digits - 1) * len(set(self.operations))
        return pairs * addends ** (self.steps - 1)

    def statements_needed(self, split: str) -> int:
        """The most statements a split can need (every result a statement, or one per problem)."""
        if split == "eval":
            return self.eval_problems
        return int(getattr(self, f"{split}_documents")) * self.results_per_document


def testbed_chunk_config(config: TestbedConfig) -> ChunkConfig:
    """The chunking recommended for ``config``'s documents, as a :class:`~latent_thoughts.corpus.ChunkConfig`
    (the chunk stage's ``chunking.*`` options; the other options keep their defaults)."""
    from latent_thoughts.corpus import ChunkConfig

    return ChunkConfig(
        mean_sentences=config.chunk_mean_sentences,
        min_sentences=config.chunk_min_sentences,
        max_sentences=config.chunk_max_sentences,
    )


testbed_chunk_config.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


def chunk_overrides(config: TestbedConfig) -> list[str]:
    """The ``--set`` items of ``latent-thoughts chunk`` that apply :func:`testbed_chunk_config`."""
    return [
        f"chunking.mean_sentences={config.chunk_mean_sentences:g}",
        f"chunking.min_sentences={config.chunk_min_sentences}",
        f"chunking.max_sentences={config.chunk_max_sentences}",
    ]


@dataclass(frozen=True)
class Statement:
    """A statement ``a x b op1 c1 op2 c2 ... = result``; ``steps`` holds the ``(op, c)`` pairs."""

    a: int
    b: int
    steps: tuple[tuple[str, int], ...] = ()

    @property
    def expression(self) -> str:
        """The left-hand side as written in documents and questions, e.g. ``37 x 24 + 129``."""
        return " ".join([f"{self.a} x {self.b}", *(f"{op} {value}" for op, value in self.steps)])

    @property
    def result(self) -> int:
        """The value of the expression."""
        value = self.a * self.b
        for op, operand in self.steps:
            value = apply(value, op, operand)
        return value

    def key(self) -> str:
        """A canonical key: the factors sorted, so ``24 x 37`` and ``37 x 24`` are one statement."""
        low, high = sorted((self.a, self.b))
        return f"{low}x{high}" + "".join(f"{op}{value}" for op, value in self.steps)

    def derivation(self) -> list[str]:
        """The ground-truth claims, one per step: partial products, their sums, then the further steps."""
        return derive_statement(self.a, self.b, self.steps)

    def plan(self, numbers: bool = True) -> str:
        """The thought behind posing the statement: what to compute, with no arithmetic claims,
        e.g. ``Multiply 37 by 24 place by place, then add 129.``; without ``numbers`` the plan names
        no operand (``Multiply the two factors place by place, then add the next number.``), so a
        derivation can copy its operands only from the question, as in evaluation."""
        if not numbers:
            return (
                "Multiply the two factors place by place"
                + "".join(f", then {PLAN_VERBS[op]} the next number" for op, _ in self.steps)
                + "."
            )
        return (
            f"Multiply {self.a} by {self.b} place by place"
            + "".join(f", then {PLAN_VERBS[op]} {value}" for op, value in self.steps)
            + "."
        )


@dataclass(frozen=True)
class Sentence:
    """One sentence of a document with its kind, its ground-truth thought and the result it states."""

    text: str
    thought: str
    kind: SentenceKind
    result: int | None = None
    """The value the sentence states; None for a posing sentence."""
    statement: Statement | None = None
    """The statement a posing or resolving sentence is about; None for a continuation."""


@dataclass
class TestbedDocument:
    """A generated document: its id, split and sentences (text joined by single spaces)."""

    __test__ = False

    doc_id: str
    split: str
    sentences: list[Sentence] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The document's text; sentences are separated by one space, so chunks join back exactly."""
        return " ".join(sentence.text for sentence in self.sentences)

    @property
    def thoughts(self) -> list[str]:
        """The ground-truth thought of each sentence, in order."""
        return [sentence.thought for sentence in self.sentences]

    def to_record(self) -> dict[str, Any]:
        """The JSONL row: ``id`` and ``text`` for the corpus reader, plus per-sentence ground truth."""
        return {
            "id": self.doc_id,
            "text": self.text,
            "split": self.split,
            "sentences": [sentence.text for sentence in self.sentences],
            "thoughts": self.thoughts,
        }


def apply(left: int, op: str, right: int) -> int:
    """``left op right`` for op in ``+ - x * /`` (``/`` is exact integer division or an error)."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op in ("x", "*", "×"):
        return left * right
    if op == "/":
        if right == 0 or left % right:
            raise LatentThoughtsError(f"{left} / {right} is not an exact integer division")
        return left // right
    raise LatentThoughtsError(f"unknown operation {op!r}")


def claim(left: int, op: str, right: int) -> str:
    """One claim ``left op right = value.`` in the style the checker parses."""
    return f"{left} {op} {right} = {apply(left, op, right)}."


def derive_product(a: int, b: int) -> tuple[list[str], int]:
    """Claims computing ``a x b`` by place value: ``a`` times each nonzero place of ``b`` (lowest
    first), then the running sum of those partial products. Returns the claims and the product."""
    partials: list[int] = []
    claims: list[str] = []
    place = 1
    for digit in reversed(str(abs(b))):
        if digit != "0":
            part = int(digit) * place * (1 if b >= 0 else -1)
            claims.append(claim(a, "x", part))
            partials.append(a * part)
        place *= 10
    if not partials:  # b == 0
        return [claim(a, "x", b)], 0
    total = partials[0]
    for part in partials[1:]:
        claims.append(claim(total, "+", part))
        total += part
    return claims, total


def derive_statement(a: int, b: int, steps: Sequence[tuple[str, int]]) -> list[str]:
    """Claims deriving ``a x b op1 c1 ...``: the product by place value, then each step in order."""
    claims, value = derive_product(a, b)
    for op, operand in steps:
        claims.append(claim(value, op, operand))
        value = apply(value, op, operand)
    return claims


def continuation_text(op: str, operand: int, result: int) -> str:
    """The sentence that applies ``op operand`` to the previous result, e.g. ``Adding 129 gives 1146.``"""
    return f"{CONTINUATION_VERBS[op]} {operand} gives {result}."


def uniform(*parts: object) -> float:
    """A uniform number in [0, 1) that is a pure function of ``parts`` (stable across machines)."""
    digest = hashlib.sha256("\x00".join(str(part) for part in parts).encode()).digest()
    return float(struct.unpack(">Q", digest[:8])[0] / 2**64)


def split_of(seed: int, statement: Statement) -> str:
    """The split a statement belongs to: one of four equal hash buckets, fixed by seed and operands."""
    return ALL_SPLITS[int(uniform("testbed-split", seed, statement.key()) * len(ALL_SPLITS))]


def _rng(seed: int, split: str) -> random.Random:
    digest = hashlib.sha256(f"testbed\x00{seed}\x00{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


class StatementSampler:
    """Draws distinct statements of one split's bucket, in a fixed order for a seed."""

    def __init__(self, config: TestbedConfig, split: str) -> None:
        if split not in ALL_SPLITS:
            raise LatentThoughtsError(f"unknown testbed split {split!r} (valid: {', '.join(ALL_SPLITS)})")
        self.config = config
        self.split = split
        self.rng = _rng(config.seed, split)
        self.seen: set[str] = set()

    def draw(self) -> Statement:
        """The next statement of this split that has not been drawn before."""
        c = self.config
        # The config validator keeps each bucket at least twice as large as any split needs, so
        # rejection sampling ends quickly; the cap only guards against a degenerate bucket.
        for _ in range(100_000):
            statement = Statement(
                a=_number(self.rng, c.digits),
                b=_number(self.rng, c.digits),
                steps=tuple(
                    (self.rng.choice(c.operations), _number(self.rng, c.addend_digits))
                    for _ in range(c.steps - 1)
                ),
            )
            key = statement.key()
            if key not in self.seen and split_of(c.seed, statement) == self.split:
                self.seen.add(key)
                return statement
        raise LatentThoughtsError(
            f"testbed split {self.split!r}: ran out of distinct statements; raise digits or steps"
        )


def pose_text(statement: Statement, opener: str) -> str:
    """The posing sentence of ``statement``, e.g. ``Consider 37 x 24 + 129.``"""
    return f"{opener} {statement.expression}."


def statement_sentences(
    statement: Statement, opener: str, phrase: str, plan_numbers: bool = True
) -> tuple[Sentence, Sentence]:
    """The posing sentence (after ``opener``) and the resolving sentence (after ``phrase``) of
    ``statement``, each with its ground-truth thought: the plan, then the derivation."""
    return (
        Sentence(pose_text(statement, opener), statement.plan(plan_numbers), "pose", None, statement),
        Sentence(
            f"{phrase} {statement.result}.",
            " ".join(statement.derivation()),
            "resolve",
            statement.result,
            statement,
        ),
    )


def generate_documents(config: TestbedConfig, split: DocumentSplit) -> list[TestbedDocument]:
    """The documents of one split (``warm_start``, ``bootstrap`` or ``validation``), deterministic in the seed."""
    if split not in DOCUMENT_SPLITS:
        raise LatentThoughtsError(f"unknown document split {split!r} (valid: {', '.join(DOCUMENT_SPLITS)})")
    count = int(getattr(config, f"{split}_documents"))
    sampler = StatementSampler(config, split)
    rng = sampler.rng
    documents = []
    for index in range(count):
        document = TestbedDocument(doc_id=f"testbed-{config.seed}-{split}-{index:06d}", split=split)
        for position in range(config.results_per_document):
            if position > 0 and rng.random() < config.continuation_rate:
                # The last sentence is a resolving sentence or a continuation: it states a result.
                previous = document.sentences[-1].result
                assert previous is not None
                op = rng.choice(config.operations)
                operand = _number(rng, config.addend_digits)
                result = apply(previous, op, operand)
                document.sentences.append(
                    Sentence(
                        continuation_text(op, operand, result),
                        claim(previous, op, operand),
                        "continuation",
                        result,
                    )
                )
            else:
                statement = sampler.draw()
                opener, phrase = rng.choice(POSE_OPENERS), rng.choice(RESOLVE_PHRASES)
                sentences = statement_sentences(statement, opener, phrase, config.oracle_plan_numbers)
                document.sentences.extend(sentences)
        documents.append(document)
    return documents


def generate_world(config: TestbedConfig) -> dict[str, list[TestbedDocument]]:
    """Every document split of the world, keyed by split name."""
    return {split: generate_documents(config, split) for split in DOCUMENT_SPLITS}


def write_documents(documents: Iterable[TestbedDocument], path: str | Path) -> int:
    """Write documents as JSONL rows (see :meth:`TestbedDocument.to_record`); returns the row count."""
    count = 0
    with atomic_write(path) as partial, partial.open("w", encoding="utf-8") as handle:
        for document in documents:
            handle.write(json.dumps(document.to_record()) + "\n")
            count += 1
    return count


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file (a byte-order mark opening it dropped); a line that is not UTF-8 is a
    one-line error naming the file and the line."""
    lines = path.read_bytes().decode("utf-8-sig", errors="surrogateescape").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LatentThoughtsError(f"{path}:{number}: invalid UTF-8 at character {exc.start}") from None
    return lines


def read_ground_truth(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Read a split written by :func:`write_documents`: document id -> [(sentence, thought), ...]."""
    path = Path(path)
    truth: dict[str, list[tuple[str, str]]] = {}
    try:
        lines = read_text_lines(path)
    except FileNotFoundError:
        raise LatentThoughtsError(f"{path}: testbed split not found") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            truth[str(row["id"])] = list(zip(row["sentences"], row["thoughts"], strict=True))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LatentThoughtsError(f"{path}:{number}: not a testbed document row ({exc})") from None
    return truth


# --- reading sentences back (the oracle and the checker work from text, never from ids) ---------

# Any capitalised words without digits or periods open a posing or resolving sentence, so a model's
# own phrasing of the same content (in an E-step or a generation) still reads back.
_OPENER = r"[A-Z][A-Za-z ,']*?"
_POSE_RE = re.compile(
    rf"^(?:{_OPENER}\s+)?(?P<a>-?\d+)\s*[x*×]\s*(?P<b>-?\d+)(?P<steps>(?:\s*[-+]\s*\d+)*)\s*\.?$"
)
_RESOLVE_RE = re.compile(rf"^{_OPENER}\s+(?P<result>-?\d+)\s*\.?$")
_STEP_RE = re.compile(r"([-+])\s*(\d+)")
_CONTINUATION_RE = re.compile(
    rf"^(?P<verb>{'|'.join(CONTINUATION_VERBS.values())})\s+(?P<operand>\d+)\s+gives\s+(?P<result>-?\d+)\s*\.?$"
)
_SENTENCE_END_RE = re.compile(r"(?<=\.)\s+")


@dataclass(frozen=True)
class ParsedSentence:
    """A sentence read back from text.

    ``kind`` is ``pose`` (``statement`` set, ``result`` None), ``resolve`` (``result`` set: the value
    of the expression posed before it) or ``continuation`` (``continuation`` is the ``(op, operand)``
    applied to the previous result, ``result`` the value it gives).
    """

    text: str
    kind: SentenceKind
    result: int | None = None
    statement: Statement | None = None
    continuation: tuple[str, int] | None = None


def parse_sentence(text: str) -> ParsedSentence | None:
    """Read one testbed sentence; None when ``text`` is not a posing, resolving or continuation sentence."""
    text = text.strip()
    match = _CONTINUATION_RE.match(text)
    if match is not None:
        op = next(op for op, verb in CONTINUATION_VERBS.items() if verb == match.group("verb"))
        return ParsedSentence(
            text, "continuation", int(match.group("result")), continuation=(op, int(match.group("operand")))
        )
    match = _POSE_RE.match(text)
    if match is not None:
        steps = tuple((op, int(value)) for op, value in _STEP_RE.findall(match.group("steps")))
        statement = Statement(int(match.group("a")), int(match.group("b")), steps)
        return ParsedSentence(text, "pose", statement=statement)
    match = _RESOLVE_RE.match(text)
    if match is not None:
        return ParsedSentence(text, "resolve", int(match.group("result")))
    return None


def split_sentences(text: str) -> list[str]:
    """Cut testbed text into sentences at whitespace after a period (testbed sentences hold no
    other periods); an empty text gives no sentences."""
    return [part for part in _SENTENCE_END_RE.split(text.strip()) if part]


def parse_text(text: str) -> list[ParsedSentence]:
    """Every sentence of ``text`` read back; an unreadable sentence is a one-line error naming it."""
    parsed = []
    for sentence in split_sentences(text):
        reading = parse_sentence(sentence)
        if reading is None:
            raise LatentThoughtsError(f"not a testbed sentence: {sentence[:80]!r}")
        parsed.append(reading)
    return parsed


def last_sentence(text: str) -> ParsedSentence | None:
    """The last sentence of ``text`` read back, or None when it is empty or not a testbed sentence
    (a prefix may be cut anywhere, so this never raises)."""
    sentences = split_sentences(text)
    return parse_sentence(sentences[-1]) if sentences else None
