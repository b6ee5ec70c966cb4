"""Reading corpora and cutting documents into chunks (METHOD section 3).

Reading is streamed, so a corpus larger than memory works: JSONL (configurable text and id fields),
Parquet, plain text files and folders of ``.txt``/``.md``/``.tex`` files. Bad input (an unparsable
line, a missing text field, an empty document, undecodable bytes, a repeated id) is skipped and
counted in a :class:`SkipReport`; with ``strict`` the first one is an error naming file and line.

Chunking cuts a document into sentence units that concatenate back to it byte for byte, then groups
units into chunks whose lengths are drawn from an RNG seeded by a hash of the text, so the same
document gives the same chunks on any machine, in any shard and in every EM iteration. The prefix
of a chunk is the raw text of the chunks before it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from latent_thoughts.atomic import atomic_write
from latent_thoughts.config import StageConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.tables import damaged_parquet, open_parquet, require_types

TEXT_SUFFIXES = (".txt", ".md", ".tex")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


class CorpusConfig(StageConfig):
    """How to read documents."""

    text_field: str = "text"
    id_field: str = "id"
    strict: bool = Field(False, description="stop at the first bad record instead of skipping it")


class ChunkConfig(StageConfig):
    """How to cut documents into chunks (reference values from METHOD section 3)."""

    mean_sentences: float = Field(8.0, gt=0)
    min_sentences: int = Field(1, ge=1)
    max_sentences: int = Field(20, ge=1)
    seed: int = Field(0, description="fixed seed mixed into every document's text hash")
    prefix_chunks: int = Field(1, ge=0, description="previous chunks of raw text kept as the prefix")

    @model_validator(mode="after")
    def _check_bounds(self) -> ChunkConfig:
        if not self.min_sentences <= self.mean_sentences <= self.max_sentences:
            raise ValueError("need min_sentences <= mean_sentences <= max_sentences")
        return self


class ChunkStageConfig(StageConfig):
    """Options of the ``chunk`` stage: how to read the corpus and how to cut it."""

    corpus: CorpusConfig = CorpusConfig()
    chunking: ChunkConfig = ChunkConfig()


@dataclass(frozen=True)
class Document:
    """A document's id, text and where it came from (``path:line`` for JSONL)."""

    doc_id: str
    text: str
    source: str


@dataclass(frozen=True)
class Chunk:
    """A chunk of a document: ``text == document[start:end]``; ``prefix`` is raw text before it."""

    doc_id: str
    chunk_index: int
    prefix: str
    text: str
    start: int
    end: int


@dataclass
class SkipReport:
    """Counts of skipped records by reason, with the first few locations."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def add(self, location: str, reason: str) -> None:
        """Count one skipped record at ``location`` (``file:line``) for ``reason``."""
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{location}: {reason}")

    @property
    def total(self) -> int:
        """All skipped records."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """A short human-readable summary, empty when nothing was skipped."""
        if not self.total:
            return ""
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.counts.most_common())
        return f"skipped {self.total} records ({reasons}); first: " + "; ".join(self.examples)


# --- reading -----------------------------------------------------------------------------------


def corpus_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand inputs (files or folders) into the files to read, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise LatentThoughtsError(f"{path}: folder holds no {'/'.join(TEXT_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LatentThoughtsError(f"{path}: no such file or folder")
    for path in files:
        if path.suffix.lower() not in (*TEXT_SUFFIXES, *JSONL_SUFFIXES, *PARQUET_SUFFIXES):
            raise LatentThoughtsError(
                f"{path}: unknown corpus format {path.suffix!r} (use .jsonl, .parquet, .txt, .md, .tex or a folder)"
            )
    return files


def count_documents(files: Sequence[Path]) -> int:
    """Upper bound on the documents in ``files`` (lines, rows, files), for a progress bar's total."""
    total = 0
    for path in files:
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            with path.open("rb") as handle:
                total += sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
        elif suffix in PARQUET_SUFFIXES:
            total += open_parquet(path, "corpus").metadata.num_rows
        else:
            total += 1
    return total


def read_documents(
    inputs: Sequence[str | Path], config: CorpusConfig | None = None, report: SkipReport | None = None
) -> Iterator[Document]:
    """Stream the documents of every input file or folder, skipping (and counting) bad records.

    Documents are yielded in file order. Ids missing from a record become ``<file stem>:<line>``;
    a text file's id is its path relative to the input folder it was found in, or its name when it
    was named itself (:func:`text_file_ids`: files whose ids would repeat get their paths relative
    to the folder they share). A repeated id is skipped, since chunk keys rely on unique ids.
    """
    config = config or CorpusConfig()
    report = report if report is not None else SkipReport()
    seen: set[str] = set()
    files = corpus_files(inputs)
    text_ids = text_file_ids(
        [path for path in files if path.suffix.lower() not in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES)], inputs
    )
    for path in files:
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            records = _read_jsonl(path, config, report)
        elif suffix in PARQUET_SUFFIXES:
            records = _read_parquet(path, config, report)
        else:
            records = _read_text_file(path, text_ids[path], report, config.strict)
        for document in records:
            if document.doc_id in seen:
                _skip(report, document.source, f"repeated id {document.doc_id!r}", config.strict)
                continue
            seen.add(document.doc_id)
            yield document


def _skip(report: SkipReport, location: str, reason: str, strict: bool) -> None:
    if strict:
        raise LatentThoughtsError(f"{location}: {reason}")
    report.add(location, reason)


def _make_document(
    record: object, location: str, default_id: str, config: CorpusConfig, report: SkipReport
) -> Document | None:
    """Turn a parsed record into a Document, or count why it cannot be one."""
    if not isinstance(record, dict):
        _skip(report, location, "record is not a JSON object", config.strict)
        return None
    if config.text_field not in record:
        _skip(report, location, f"missing text field {config.text_field!r}", config.strict)
        return None
    text = record[config.text_field]
    if not isinstance(text, str):
        _skip(report, location, f"text field {config.text_field!r} is not a string", config.strict)
        return None
    if not text.strip():
        _skip(report, location, "empty document", config.strict)
        return None
    raw_id = record.get(config.id_field)
    if isinstance(raw_id, (dict, list)):
        _skip(report, location, f"id field {config.id_field!r} is not a string or number", config.strict)
        return None
    doc_id = default_id if raw_id is None or raw_id == "" else str(raw_id)
    for name, value in ((config.text_field, text), (config.id_field, doc_id)):
        bad = _lone_surrogate(value)
        if bad is not None:
            _skip(
                report, location, f"field {name!r} holds a lone surrogate at character {bad}", config.strict
            )
            return None
    return Document(doc_id, text, location)


def _lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate (``"\\ud800"`` in JSON), which UTF-8 cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _read_jsonl(path: Path, config: CorpusConfig, report: SkipReport) -> Iterator[Document]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            location = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig")  # a byte-order mark (first line) is no JSON
            except UnicodeDecodeError as exc:
                _skip(report, location, f"invalid UTF-8 at byte {exc.start}", config.strict)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                _skip(report, location, f"unparsable JSON ({exc.msg})", config.strict)
                continue
            document = _make_document(record, location, f"{path.stem}:{number}", config, report)
            if document is not None:
                yield document


def _read_parquet(path: Path, config: CorpusConfig, report: SkipReport) -> Iterator[Document]:
    parquet = open_parquet(path, "corpus", [config.text_field])
    names = parquet.schema_arrow.names
    columns = [config.text_field] + ([config.id_field] if config.id_field in names else [])
    row = 0
    for batch in parquet.iter_batches(columns=columns, batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            document = _make_document(record, f"{path}:row {row}", f"{path.stem}:{row}", config, report)
            if document is not None:
                yield document


def _read_text_file(path: Path, doc_id: str, report: SkipReport, strict: bool) -> Iterator[Document]:
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is no text
    except UnicodeDecodeError as exc:
        _skip(report, f"{path}", f"invalid UTF-8 at byte {exc.start}", strict)
        return
    if not text.strip():
        _skip(report, f"{path}", "empty document", strict)
        return
    yield Document(doc_id, text, str(path))


def _relative_id(path: Path, inputs: Sequence[str | Path]) -> str:
    """A text file's id: its path relative to the folder it was found in, else its name."""
    for item in inputs:
        root = Path(item)
        if root.is_dir() and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


def text_file_ids(paths: Sequence[Path], inputs: Sequence[str | Path]) -> dict[Path, str]:
    """The id of each text file: its path relative to the input folder it was found in, or its name
    when it was an input itself; files whose ids would repeat (``A/intro.tex`` and ``B/intro.tex``
    given as files, both ``intro.tex``) get their paths relative to the folder they all lie in
    (``A/intro.tex``, ``B/intro.tex``), so no document is lost as a repeated id."""
    ids = {path: _relative_id(path, inputs) for path in paths}
    groups: dict[str, list[Path]] = {}
    for path, doc_id in ids.items():
        groups.setdefault(doc_id, []).append(path)
    for group in groups.values():
        if len(group) > 1:
            absolute = [path.resolve() for path in group]
            common = Path(os.path.commonpath(absolute))
            for path, full in zip(group, absolute, strict=True):
                ids[path] = full.relative_to(common).as_posix()
    return ids


# --- sentence units and chunks -----------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t]*\n)+")
_SIMPLE_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")

MAX_PARAGRAPH_CHARS = 50_000
"""Longer paragraphs are cut (at a line break, else a space) into pieces split one by one: Punkt's
regular expressions run under a wall-clock limit (5 s in NLTK) that one huge paragraph can exceed."""


@dataclass
class SplitNotes:
    """Counts of the sentence splitter's exceptions: paragraphs cut for length, fallback splits."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, what: str) -> None:
        """Count one ``what``."""
        self.counts[what] += 1

    @property
    def total(self) -> int:
        """All counted exceptions."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, empty when there is nothing to say."""
        if not self.total:
            return ""
        return "sentence splitting: " + ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))


@lru_cache(maxsize=1)
def _sentence_tokenizer() -> object:
    # Untrained Punkt: works offline with no downloaded model (METHOD section 3).
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()


def _pieces(paragraph: str, limit: int) -> list[int]:
    """Start offsets of pieces of at most ``limit`` characters, cut after a line break or a space."""
    starts, begin = [0], 0
    while len(paragraph) - begin > limit:
        window = paragraph[begin : begin + limit]
        cut = window.rfind("\n")
        if cut < limit // 2:
            cut = max(cut, window.rfind(" "))
        end = begin + (cut + 1 if cut > 0 else limit)
        starts.append(end)
        begin = end
    return starts


def _sentence_starts(piece: str, notes: SplitNotes | None) -> list[int]:
    """Sentence start offsets in ``piece`` by Punkt, or by a plain end-of-sentence rule if Punkt times out."""
    try:
        return [begin for begin, _ in _sentence_tokenizer().span_tokenize(piece)]  # type: ignore[attr-defined]
    except TimeoutError:
        if notes is not None:
            notes.add("paragraph pieces split by the fallback rule (Punkt timed out)")
        return [0, *(match.end() for match in _SIMPLE_SENTENCE_END.finditer(piece))]


def sentence_units(text: str, notes: SplitNotes | None = None) -> list[str]:
    """Split ``text`` into sentence units whose concatenation is ``text`` exactly.

    Paragraphs (blank-line breaks) are split first, then sentences within each paragraph; the
    whitespace after a sentence stays with it, and leading whitespace joins the first unit. A
    paragraph longer than :data:`MAX_PARAGRAPH_CHARS` is cut into pieces first, and a piece on which
    Punkt exceeds its time limit is split at ``. ! ?`` followed by space; ``notes`` counts both.
    """
    starts = {0}
    paragraph_start = 0
    for match in [*_PARAGRAPH_BREAK.finditer(text), None]:
        paragraph_end = match.start() if match else len(text)
        paragraph = text[paragraph_start:paragraph_end]
        pieces = _pieces(paragraph, MAX_PARAGRAPH_CHARS)
        if len(pieces) > 1 and notes is not None:
            notes.add(f"paragraphs over {MAX_PARAGRAPH_CHARS:,} characters cut into pieces")
        for piece_start, piece_end in zip(pieces, [*pieces[1:], len(paragraph)], strict=True):
            for begin in _sentence_starts(paragraph[piece_start:piece_end], notes):
                starts.add(paragraph_start + piece_start + begin)
        if match:
            paragraph_start = match.end()
    boundaries = sorted(s for s in starts if s < len(text))
    # The first unit always starts at 0 so that leading whitespace is kept.
    return [text[a:b] for a, b in zip(boundaries, [*boundaries[1:], len(text)], strict=True)] if text else []


def _text_rng(text: str, seed: int) -> random.Random:
    """An RNG that is a pure function of the text and the seed, on every machine and Python."""
    digest = hashlib.sha256(f"{seed}\x00".encode() + text.encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's Poisson sampler: exact for the small means used here and stable across versions."""
    if lam <= 0:
        return 0
    limit, count, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def chunk_lengths(num_units: int, text: str, config: ChunkConfig) -> list[int]:
    """Sentences per chunk: Poisson(mean - min) + min, capped at max and at what remains."""
    rng = _text_rng(text, config.seed)
    lengths: list[int] = []
    remaining = num_units
    while remaining > 0:
        length = _poisson(rng, config.mean_sentences - config.min_sentences) + config.min_sentences
        length = min(length, config.max_sentences, remaining)
        lengths.append(length)
        remaining -= length
    return lengths


def chunk_document(doc_id: str, text: str, config: ChunkConfig | None = None) -> list[Chunk]:
    """Cut one document into chunks with prefixes; ``"".join(c.text for c in chunks) == text``."""
    return split_document(doc_id, text, config)[0]


def split_document(
    doc_id: str, text: str, config: ChunkConfig | None = None, notes: SplitNotes | None = None
) -> tuple[list[Chunk], list[int]]:
    """Like :func:`chunk_document`, also returning the number of sentence units in each chunk.

    ``notes`` counts the sentence splitter's exceptions (:func:`sentence_units`)."""
    config = config or ChunkConfig()
    units = sentence_units(text, notes)
    lengths = chunk_lengths(len(units), text, config)
    chunks: list[Chunk] = []
    offset = unit = 0
    for length in lengths:
        chunk_text = "".join(units[unit : unit + length])
        first = max(0, len(chunks) - config.prefix_chunks)
        prefix_start = chunks[first].start if chunks and config.prefix_chunks else offset
        chunks.append(
            Chunk(
                doc_id, len(chunks), text[prefix_start:offset], chunk_text, offset, offset + len(chunk_text)
            )
        )
        offset += len(chunk_text)
        unit += length
    return chunks, lengths


def prefix_of(document_chunks: Sequence[Chunk], index: int, num_chunks: int) -> str:
    """The raw text of the ``num_chunks`` chunks before chunk ``index`` of one document."""
    return "".join(chunk.text for chunk in document_chunks[max(0, index - num_chunks) : index])


# --- chunk files -------------------------------------------------------------------------------


class NoChunksError(LatentThoughtsError):
    """A corpus gave no chunk at all (every record skipped, or none there)."""


CHUNK_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("chunk_index", pa.int64()),
        ("prefix", pa.string()),
        ("text", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
    ]
)


def write_chunks(
    chunks: Iterable[Chunk], path: str | Path, rows_per_group: int = 10_000, require_chunks: bool = False
) -> int:
    """Stream chunks into a Parquet file (written to a temporary name, then renamed); returns the count.

    With ``require_chunks`` no chunks at all is an error and nothing is written."""
    count = 0
    buffer: list[Chunk] = []
    with atomic_write(path) as partial, pq.ParquetWriter(partial, CHUNK_SCHEMA) as writer:
        for chunk in chunks:
            buffer.append(chunk)
            if len(buffer) >= rows_per_group:
                writer.write_table(_chunk_table(buffer))
                count += len(buffer)
                buffer = []
        if buffer or count == 0:
            writer.write_table(_chunk_table(buffer))
            count += len(buffer)
        if require_chunks and count == 0:
            raise NoChunksError(f"{path}: no chunks to write, nothing written")
    return count


def _chunk_table(chunks: Sequence[Chunk]) -> pa.Table:
    columns = {name: [getattr(chunk, name) for chunk in chunks] for name in CHUNK_SCHEMA.names}
    return pa.table(columns, schema=CHUNK_SCHEMA)


def iter_chunks(path: str | Path) -> Iterator[Chunk]:
    """Stream the chunks of a chunk file in order (columns of the wrong type are a one-line error)."""
    parquet = open_parquet(path, "chunk", CHUNK_SCHEMA.names)
    require_types(parquet, path, "chunk", CHUNK_SCHEMA)
    batches = parquet.iter_batches(columns=CHUNK_SCHEMA.names, batch_size=4096)
    while True:
        with damaged_parquet(path):  # a page that does not decode is named, not a traceback
            batch = next(batches, None)
            rows = batch.to_pylist() if batch is not None else None
        if rows is None:
            return
        for row in rows:
            yield Chunk(**row)


def read_chunks(path: str | Path) -> list[Chunk]:
    """All chunks of a chunk file, in order."""
    return list(iter_chunks(path))


def group_by_document(chunks: Iterable[Chunk]) -> dict[str, list[Chunk]]:
    """Chunks grouped by document id, documents and chunks in file order."""
    documents: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        documents.setdefault(chunk.doc_id, []).append(chunk)
    return documents
