"""Training data: sources -> training documents -> a seeded mixture -> packed windows.

The path from files to tensors, in order:

1. :func:`read_source` reads one source (raw chunks, chunks with thoughts, rephrased documents)
   into :class:`SourceDocument` s: a document id, its chunk texts and (for thoughts) one thought or
   ``None`` per chunk. An E-step output also gives each selected thought as the token ids that were
   sampled and weighted (its ``thought_ids`` column) with the fingerprint of their tokenizer.
2. :func:`build_documents` turns them into token ids with :class:`~latent_thoughts.format.DocumentBuilder`
   (prior/posterior layouts for thoughts, plain text otherwise; BOS/EOS around each document;
   :func:`build_document`). A thought given as ids is written as those ids when they are of the
   builder's tokenizer (the fingerprints match), never re-tokenized from its text; ids of another
   tokenizer are left aside for the text, with a warning.
   With ``redraw_layouts`` (:func:`build_source`), a thoughts document drawn in a later pass over
   its source is given that pass's layouts (:class:`LayoutRedraw`), cut from its pass-0 ids.
3. :func:`mix_documents` draws documents from each source until the source's share of the token
   budget is reached, cycling through fresh seeded permutations when a source is smaller than its
   share (repetition), and shuffles the draw into one training order: a :class:`Mixture` of
   (source, document) indices, not copies of the documents.
4. :func:`build_training_data` streams that order into a window file
   (:func:`~latent_thoughts.train.windows.write_windows`: packed with numpy, back to back, exactly
   the number of windows the budget needs); :class:`PackedDataset` reads the windows lazily from
   the file's map.

Everything is a pure function of the files, the tokenizer and the seed, so every process of a
distributed run and every resumed run sees the same windows in the same order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from latent_thoughts.corpus import group_by_document, iter_chunks
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import TOKENIZER_KEY, BuiltDocument, DocumentBuilder, FormatConfig, Layout
from latent_thoughts.generation.outputs import read_metadata
from latent_thoughts.tables import damaged_parquet, open_parquet, read_parquet
from latent_thoughts.train.config import SourceConfig
from latent_thoughts.train.windows import PackedWindows, write_windows

logger = logging.getLogger(__name__)


@dataclass
class SourceDocument:
    """One document of a source: its chunk texts and, for a thoughts source, a thought (or None) per chunk.

    A plain document (raw or rephrased) has ``plain=True`` and its whole text as the single chunk.
    A document of an E-step output also has ``thought_ids``: per chunk, the selected thought's token
    ids as they were weighted (None: none recorded), made by the tokenizer whose
    :func:`~latent_thoughts.format.tokenizer_fingerprint` is ``ids_tokenizer`` (None: unnamed), read
    from ``ids_file``; :func:`build_document` uses them in place of the text when the fingerprint is
    the builder's.
    """

    doc_id: str
    chunks: list[str]
    thoughts: list[str | None] | None = None
    plain: bool = False
    thought_ids: list[list[int] | None] | None = None
    ids_tokenizer: str | None = None
    ids_file: str | None = None

    def texts(self) -> Iterator[str]:
        """Every text of the document (chunks, then thoughts), for tokenizer training."""
        yield from self.chunks
        if self.thoughts is not None:
            yield from (thought for thought in self.thoughts if thought)


@dataclass
class SourceStats:
    """What one source contributed: documents and tokens available, tokens drawn, passes made; for a
    thoughts source, its chunks and how many of them have a thought (:class:`ThoughtCoverage`)."""

    name: str
    documents: int
    tokens: int
    weight: float = 0.0
    drawn_tokens: int = 0
    drawn_documents: int = 0
    chunks: int | None = None
    chunks_with_thought: int | None = None

    @property
    def epochs(self) -> float:
        """Passes over the source's data (drawn tokens / available tokens)."""
        return self.drawn_tokens / self.tokens if self.tokens else 0.0


THOUGHT_COVERAGE_WARNING = 0.9
"""A thoughts source whose share of chunks with a thought is below this is warned about: its other
chunks train as raw text, so the run is mostly a raw-text run (a teacher whose answers were cut or
refused, a thoughts file of another chunk file, an E-step whose policy kept few thoughts)."""


@dataclass(frozen=True)
class ThoughtCoverage:
    """How many chunks of a thoughts source have a thought (a text, or token ids) to train on."""

    chunks: int
    with_thought: int

    @property
    def share(self) -> float:
        """The share of chunks with a thought (1.0 for a source without chunks)."""
        return self.with_thought / self.chunks if self.chunks else 1.0

    def describe(self, label: str) -> str:
        """E.g. ``thoughts source X: 3 of 90 chunks (3.3%) have a thought; the other 87 train as raw text``."""
        return (
            f"thoughts source {label}: {self.with_thought:,} of {self.chunks:,} chunks "
            f"({100 * self.share:.1f}%) have a thought; the other {self.chunks - self.with_thought:,} "
            "train as raw text"
        )


def warn_coverage(label: str, coverage: ThoughtCoverage) -> None:
    """Log the coverage of a thoughts source as a warning when below :data:`THOUGHT_COVERAGE_WARNING`
    (as information otherwise)."""
    below = coverage.share < THOUGHT_COVERAGE_WARNING
    logger.log(
        logging.WARNING if below else logging.INFO,
        "%s%s",
        coverage.describe(label),
        f" (below {THOUGHT_COVERAGE_WARNING:.0%}: check the thoughts file's failures)" if below else "",
    )


# --- reading ------------------------------------------------------------------------------------


def _read_table(path: Path, columns: Sequence[str], what: str) -> pa.Table:
    """Read ``columns`` of a Parquet file; a missing file or column is a one-line error."""
    return read_parquet(path, what, columns)


def read_chunked_documents(path: str | Path) -> dict[str, list[str]]:
    """The chunk texts of every document of a chunks.parquet, documents in file order, chunks by index."""
    grouped = group_by_document(iter_chunks(path))
    return {
        doc_id: [chunk.text for chunk in sorted(chunks, key=lambda c: c.chunk_index)]
        for doc_id, chunks in grouped.items()
    }


THOUGHT_IDS_COLUMN = "thought_ids"
"""The column of an E-step output holding each selected thought's token ids (its closing EOL left out)."""


@dataclass
class ThoughtIds:
    """The thoughts of a thoughts file as token ids: (doc_id, chunk_index) -> ids for every row whose
    ``thought_ids`` is not null, and the tokenizer fingerprint the file's metadata names (None: none)."""

    ids: dict[tuple[str, int], list[int]]
    tokenizer: str | None


def read_thoughts(path: str | Path) -> dict[tuple[str, int], str | None]:
    """Map (doc_id, chunk_index) -> thought from a thoughts parquet; a repeated chunk is an error."""
    return _read_thoughts(Path(path))[0]


def thought_ids_tokenizer(path: str | Path) -> str | None:
    """The tokenizer fingerprint of a thoughts file that holds thoughts as token ids (its metadata's
    ``tokenizer`` entry), None for a file of text only (a teacher's) or one that names no tokenizer."""
    path = Path(path)
    if THOUGHT_IDS_COLUMN not in open_parquet(path, "thoughts").schema_arrow.names:
        return None
    tokenizer = read_metadata(path).get(TOKENIZER_KEY)
    return str(tokenizer) if tokenizer else None


def _present(thoughts: dict[tuple[str, int], str | None], ids: ThoughtIds | None) -> set[tuple[str, int]]:
    """The chunks a thoughts file gives a thought: a text, or token ids (an empty sampled thought)."""
    given = ids.ids if ids is not None else {}
    return {key for key, thought in thoughts.items() if thought is not None or key in given}


def thought_coverage(source: SourceConfig) -> ThoughtCoverage | None:
    """How many chunks of a thoughts source have a thought to train on (None for another kind),
    counted as :func:`read_source` joins them, from the files."""
    if source.kind != "thoughts":
        return None
    assert source.chunks is not None and source.thoughts is not None
    table = _read_table(Path(source.chunks), ["doc_id"], "chunks")  # the keys only, not the texts
    per_document: dict[str, int] = {}
    for doc_id in table.column("doc_id").to_pylist():
        per_document[doc_id] = per_document.get(doc_id, 0) + 1
    present = _present(*_read_thoughts(Path(source.thoughts)))
    keys = [(doc_id, index) for doc_id, count in per_document.items() for index in range(count)]
    return ThoughtCoverage(len(keys), sum(key in present for key in keys))


def _read_thoughts(path: Path) -> tuple[dict[tuple[str, int], str | None], ThoughtIds | None]:
    """:func:`read_thoughts`, and the thoughts as token ids when the file has them (None when it has
    no ``thought_ids`` column or the column is all null: an older E-step output)."""
    with_ids = THOUGHT_IDS_COLUMN in open_parquet(path, "thoughts").schema_arrow.names
    columns = ["doc_id", "chunk_index", "thought", *([THOUGHT_IDS_COLUMN] if with_ids else [])]
    table = _read_table(path, columns, "thoughts")
    with damaged_parquet(path):  # text that is not UTF-8 is a damaged file, named
        doc_ids = table.column("doc_id").to_pylist()
        indices = table.column("chunk_index").to_pylist()
        texts = table.column("thought").to_pylist()
        id_lists = table.column(THOUGHT_IDS_COLUMN).to_pylist() if with_ids else [None] * len(doc_ids)
    thoughts: dict[tuple[str, int], str | None] = {}
    ids: dict[tuple[str, int], list[int]] = {}
    for row, (doc_id, index, thought, thought_ids) in enumerate(
        zip(doc_ids, indices, texts, id_lists, strict=True)
    ):
        if not (
            isinstance(doc_id, str)
            and isinstance(index, int)
            and (thought is None or isinstance(thought, str))
            and (
                thought_ids is None
                or (isinstance(thought_ids, list) and all(isinstance(token, int) for token in thought_ids))
            )
        ):
            raise LatentThoughtsError(
                f"{path}: not a thoughts file (row {row}: doc_id, chunk_index, thought or thought_ids "
                "of the wrong type or missing)"
            )
        key = (doc_id, index)
        if key in thoughts:
            raise LatentThoughtsError(
                f"{path}: more than one thought for chunk {index} of document {doc_id!r}"
            )
        thoughts[key] = thought if thought else None
        if thought_ids is not None:
            ids[key] = [int(token) for token in thought_ids]
    if not ids:
        return thoughts, None
    tokenizer = read_metadata(path).get(TOKENIZER_KEY)
    return thoughts, ThoughtIds(ids, str(tokenizer) if tokenizer else None)


def read_source(source: SourceConfig) -> list[SourceDocument]:
    """Read one source of the mixture into documents (see :class:`SourceConfig` for the kinds).

    A thoughts source's chunks without a thought are written raw; the share of chunks with one is
    logged, as a warning below :data:`THOUGHT_COVERAGE_WARNING` (:func:`warn_coverage`).
    """
    if source.kind == "rephrased":
        assert source.rephrased is not None
        table = _read_table(Path(source.rephrased), ["doc_id", "text"], "rephrased")
        return [
            SourceDocument(str(doc_id), [str(text)], plain=True)
            for doc_id, text in zip(
                table.column("doc_id").to_pylist(), table.column("text").to_pylist(), strict=True
            )
            if text
        ]
    assert source.chunks is not None
    documents = read_chunked_documents(source.chunks)
    if source.kind == "raw":
        return [SourceDocument(doc_id, ["".join(chunks)], plain=True) for doc_id, chunks in documents.items()]
    assert source.thoughts is not None
    thoughts, as_ids = _read_thoughts(Path(source.thoughts))
    ids = as_ids.ids if as_ids is not None else {}
    present = _present(thoughts, as_ids)
    out = []
    matched = chunks_in_all = 0
    for doc_id, chunks in documents.items():
        keys = [(doc_id, index) for index in range(len(chunks))]
        document = SourceDocument(doc_id, chunks, [thoughts.get(key) for key in keys])
        if as_ids is not None:
            document.thought_ids = [ids.get(key) for key in keys]
            document.ids_tokenizer = as_ids.tokenizer
            document.ids_file = str(source.thoughts)
        matched += sum(key in present for key in keys)
        chunks_in_all += len(keys)
        out.append(document)
    if thoughts and not present:
        raise LatentThoughtsError(
            f"{source.thoughts}: none of its {len(thoughts)} rows has a thought (answers cut or failed: see "
            "its summary, or the teacher's on_cut); nothing to train on as thoughts"
        )
    if thoughts and matched == 0:
        raise LatentThoughtsError(
            f"{source.thoughts}: none of its thoughts belongs to a chunk of {source.chunks} (wrong pairing?)"
        )
    unmatched = len(present) - matched
    if unmatched:
        logger.warning("%s: %d thoughts have no chunk in %s", source.thoughts, unmatched, source.chunks)
    warn_coverage(source.label, ThoughtCoverage(chunks_in_all, matched))
    return out


# --- building and mixing ---------------------------------------------------------------------------


_WARNED: set[tuple[str, str | None, str]] = set()
"""(file, its tokenizer, the builder's) of thought ids already warned about as another tokenizer's."""


def usable_thought_ids(document: SourceDocument, builder: DocumentBuilder) -> list[list[int] | None] | None:
    """``document``'s thoughts as token ids when they are of ``builder``'s tokenizer (the fingerprint
    its file names is the builder's), else None: the thoughts' text is encoded instead, with one
    warning per file and tokenizer."""
    if document.thought_ids is None:
        return None
    if document.ids_tokenizer == builder.fingerprint:
        return document.thought_ids
    key = (str(document.ids_file), document.ids_tokenizer, builder.fingerprint)
    if key not in _WARNED:
        _WARNED.add(key)
        named = (
            f"were made by another tokenizer ({document.ids_tokenizer}, not the trainer's {builder.fingerprint})"
            if document.ids_tokenizer
            else "name no tokenizer"
        )
        logger.warning(
            "%s: its thoughts' token ids (thought_ids) %s; training on the thoughts' text, re-tokenized",
            document.ids_file,
            named,
        )
    return None


def build_document(document: SourceDocument, builder: DocumentBuilder, pass_index: int = 0) -> BuiltDocument:
    """One training document: a plain one's whole text, or a thoughts document's chunks and thoughts
    with the layouts of pass ``pass_index``; thoughts given as token ids of the builder's tokenizer
    are written as those ids (:func:`usable_thought_ids`), the others encoded from their text."""
    if document.plain:
        return builder.build_plain(document.chunks[0])
    return builder.build(
        document.doc_id,
        document.chunks,
        document.thoughts,
        pass_index,
        thought_ids=usable_thought_ids(document, builder),
    )


def build_documents(documents: Iterable[SourceDocument], builder: DocumentBuilder) -> list[np.ndarray]:
    """Token ids of each training document (int32 arrays), in the order given (pass 0's layouts)."""
    return _build(documents, builder, None)


def _build(
    documents: Iterable[SourceDocument],
    builder: DocumentBuilder,
    pieces: list[tuple[str, np.ndarray, np.ndarray]] | None,
) -> list[np.ndarray]:
    """:func:`build_documents`, appending each thoughts document's id, text and thought token counts
    per chunk (thought -1: a chunk without one) to ``pieces`` when given."""
    built = []
    for document in documents:
        doc = build_document(document, builder)
        if pieces is not None and not document.plain:
            # the thought counts are of the ids written (a thought's own ids, or its text's encoding)
            text = np.zeros(len(doc.layouts), dtype=np.int32)
            thought = np.asarray([-1 if layout is Layout.RAW else 0 for layout in doc.layouts], np.int32)
            for span in doc.spans:
                if span.kind == "text":
                    text[span.chunk] += span.end - span.start
                elif span.kind == "thought":
                    thought[span.chunk] += span.end - span.start
            pieces.append((document.doc_id, text, thought))
        built.append(np.asarray(doc.input_ids, dtype=np.int32))
    return built


class LayoutRedraw:
    """A thoughts source's documents with the layouts of any pass over the source (``redraw_layouts``).

    A document is built (tokenized) once, with pass 0's layouts; another pass's version is cut from
    those ids, with no tokenizer: only the special tokens around each chunk's text and thought change
    (the prior layout ``SOL PRIOR z EOL x`` has two fewer than the posterior ``SOL EOL x SOL POST z
    EOL``), so it is exactly what :meth:`~latent_thoughts.format.DocumentBuilder.build` gives for
    that pass. Holds two int32 counts per chunk and, per pass asked for, one byte per chunk (which
    chunks are in the posterior layout).
    """

    def __init__(
        self,
        builder: DocumentBuilder,
        pieces: Sequence[tuple[str, np.ndarray, np.ndarray]],
        lengths: np.ndarray,
    ) -> None:
        self.builder = builder
        self.doc_ids = [doc_id for doc_id, _, _ in pieces]
        counts = np.fromiter((len(text) for _, text, _ in pieces), dtype=np.int64, count=len(pieces))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        empty = np.zeros(0, dtype=np.int32)
        self.text = np.concatenate([text for _, text, _ in pieces] or [empty])
        self.thought = np.concatenate([thought for _, _, thought in pieces] or [empty])
        self.base_lengths = np.asarray(lengths, dtype=np.int64)
        special = builder.special
        self.head = 1 if builder.config.add_bos and special.bos is not None else 0
        self._prior = np.asarray([special.sol, special.prior], dtype=np.int32)
        self._post = np.asarray([special.sol, special.post], dtype=np.int32)
        self._open = np.asarray([special.sol, special.eol], dtype=np.int32)
        self._eol = np.asarray([special.eol], dtype=np.int32)
        self._posterior: dict[int, np.ndarray] = {}

    def posterior(self, pass_index: int) -> np.ndarray:
        """Which chunks (all documents' chunks, flat) are in the posterior layout in pass ``pass_index``."""
        flags = self._posterior.get(pass_index)
        if flags is None:
            flags = np.zeros(len(self.text), dtype=bool)
            latent = self.thought >= 0
            layout = self.builder.layout
            for index, doc_id in enumerate(self.doc_ids):
                start, end = int(self.offsets[index]), int(self.offsets[index + 1])
                for chunk in np.flatnonzero(latent[start:end]).tolist():
                    flags[start + chunk] = layout(doc_id, chunk, pass_index) is Layout.POSTERIOR
            self._posterior[pass_index] = flags
        return flags

    def lengths(self, pass_index: int) -> np.ndarray:
        """Tokens of every document in pass ``pass_index`` (int64): two more per chunk that is in the
        posterior layout in that pass and was not in pass 0, two fewer for the reverse."""
        if pass_index == 0:
            return self.base_lengths
        change = self.posterior(pass_index).astype(np.int64) - self.posterior(0)
        running = np.concatenate([[0], np.cumsum(change)])
        return self.base_lengths + 2 * (running[self.offsets[1:]] - running[self.offsets[:-1]])

    def document(self, ids: np.ndarray, index: int, pass_index: int) -> np.ndarray:
        """Document ``index`` (whose pass-0 token ids are ``ids``) with the layouts of pass ``pass_index``."""
        if pass_index == 0:
            return ids
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        before = self.posterior(0)[start:end]
        after = self.posterior(pass_index)[start:end]
        if np.array_equal(before, after):
            return ids
        was, now = before.tolist(), after.tolist()
        parts = [ids[: self.head]]
        offset = self.head
        texts, thoughts = self.text[start:end].tolist(), self.thought[start:end].tolist()
        for chunk, (x, z) in enumerate(zip(texts, thoughts, strict=True)):
            if z < 0:  # raw: its text only
                size = x
            elif was[chunk]:  # SOL EOL x SOL POST z EOL
                size = 5 + x + z
                text, thought = ids[offset + 2 : offset + 2 + x], ids[offset + 4 + x : offset + 4 + x + z]
            else:  # SOL PRIOR z EOL x
                size = 3 + z + x
                thought, text = ids[offset + 2 : offset + 2 + z], ids[offset + 3 + z : offset + 3 + z + x]
            if z < 0 or was[chunk] == now[chunk]:
                parts.append(ids[offset : offset + size])
            elif now[chunk]:
                parts += [self._open, text, self._post, thought, self._eol]
            else:
                parts += [self._prior, thought, self._eol, text]
            offset += size
        parts.append(ids[offset:])
        return np.concatenate(parts)


@dataclass
class BuiltSource:
    """One source's training documents as token ids (pass 0's layouts), and, for a thoughts source
    built with ``redraw_layouts``, the :class:`LayoutRedraw` that gives them in later passes."""

    documents: list[np.ndarray]
    redraw: LayoutRedraw | None = None


def build_source(documents: Iterable[SourceDocument], builder: DocumentBuilder) -> BuiltSource:
    """:func:`build_documents`, with the :class:`LayoutRedraw` of a thoughts source when the format
    draws layouts anew per pass (``redraw_layouts``); raw and rephrased sources have none."""
    if not builder.config.redraw_layouts:
        return BuiltSource(build_documents(documents, builder))
    pieces: list[tuple[str, np.ndarray, np.ndarray]] = []
    built = _build(documents, builder, pieces)
    if len(pieces) != len(built):  # plain documents: nothing to redraw
        return BuiltSource(built)
    return BuiltSource(built, LayoutRedraw(builder, pieces, document_lengths(built)))


def source_shares(sizes: Sequence[int], weights: Sequence[float | None]) -> list[float]:
    """Normalised token shares: the given weights, or each source's size where no weight is given.

    Mixing set and unset weights is ambiguous, so it is an error.
    """
    if all(weight is None for weight in weights):
        raw = [float(size) for size in sizes]
    elif any(weight is None for weight in weights):
        raise LatentThoughtsError("data.sources: give every source a weight, or none (shares by size)")
    else:
        raw = [float(weight) for weight in weights if weight is not None]
    total = sum(raw)
    if total <= 0:
        raise LatentThoughtsError("data.sources: the sources hold no tokens")
    return [value / total for value in raw]


@dataclass
class Mixture:
    """The training order as (source, document) index pairs, and what each source contributed.

    ``source`` (int32) and ``document`` (int64) are parallel arrays, one entry per drawn document in
    training order; a repeated document appears once per draw. ``passes`` (int32, parallel, only
    when the layouts are redrawn per pass) is the pass over its source each draw belongs to.
    ``drawn_tokens`` and ``drawn_documents`` are per source.
    """

    source: np.ndarray
    document: np.ndarray
    drawn_tokens: list[int]
    drawn_documents: list[int]
    passes: np.ndarray | None = None

    def documents(
        self,
        built: Sequence[Sequence[np.ndarray]],
        redraws: Sequence[LayoutRedraw | None] | None = None,
    ) -> Iterator[np.ndarray]:
        """The drawn documents' token ids in training order, read from ``built`` (per source) as
        the stream goes: no drawn document is copied ahead of the packer. A source with a
        :class:`LayoutRedraw` in ``redraws`` gives each draw with the layouts of its pass."""
        step = 1 << 16  # indices turned into Python ints a block at a time
        redrawn = (
            self.passes is not None and redraws is not None and any(redraw is not None for redraw in redraws)
        )
        for start in range(0, len(self.source), step):
            sources = self.source[start : start + step].tolist()
            documents = self.document[start : start + step].tolist()
            if not redrawn:
                for source, document in zip(sources, documents, strict=True):
                    yield built[source][document]
                continue
            assert self.passes is not None and redraws is not None
            passes = self.passes[start : start + step].tolist()
            for source, document, pass_index in zip(sources, documents, passes, strict=True):
                redraw = redraws[source]
                ids = built[source][document]
                yield ids if redraw is None else redraw.document(ids, document, pass_index)


PassLengths = Callable[[int], np.ndarray]


def mix_documents(
    lengths: Sequence[np.ndarray],
    shares: Sequence[float],
    total_tokens: int,
    seed: int,
    pass_lengths: Sequence[PassLengths | None] | None = None,
) -> Mixture:
    """Draw whole documents from each source until it reaches its share of ``total_tokens``.

    ``lengths`` holds each source's document lengths in tokens. Each source is read in seeded random
    order; when it runs out, a new pass starts with a fresh permutation (so a small source is
    repeated, a pass at a time). The draws of all sources are then shuffled together.

    ``pass_lengths`` (per source, when layouts are redrawn per pass) gives a source's document
    lengths in a later pass (:meth:`LayoutRedraw.lengths`), so that its draws count the tokens the
    documents of that pass hold; the mixture then records each draw's pass (``Mixture.passes``).
    The pass orders are the same either way.
    """
    sources, documents, passes = [], [], []
    drawn_tokens, drawn_docs = [], []
    for index, (sizes, share) in enumerate(zip(lengths, shares, strict=True)):
        drawn, tokens, drawn_passes = _draw_source(
            np.asarray(sizes, dtype=np.int64),
            math.ceil(total_tokens * share),
            seed,
            index,
            pass_lengths[index] if pass_lengths is not None else None,
            record_passes=pass_lengths is not None,
        )
        sources.append(np.full(len(drawn), index, dtype=np.int32))
        documents.append(drawn)
        passes.append(drawn_passes)
        drawn_tokens.append(tokens)
        drawn_docs.append(len(drawn))
    source = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int32)
    document = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int64)
    order = np.random.default_rng([seed, len(lengths), 0xD0C]).permutation(len(source))
    mixture = Mixture(source[order], document[order], drawn_tokens, drawn_docs)
    if pass_lengths is not None:
        mixture.passes = (np.concatenate(passes) if passes else np.zeros(0, dtype=np.int32))[order]
    return mixture


def _draw_source(
    lengths: np.ndarray,
    target: int,
    seed: int,
    index: int,
    pass_lengths: PassLengths | None = None,
    record_passes: bool = False,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Document indices of source ``index`` in its seeded pass orders until ``target`` tokens are
    reached (the document that reaches it included), the tokens drawn, and each draw's pass (int32;
    empty unless ``record_passes``).

    ``lengths`` are the documents' lengths in pass 0, ``pass_lengths(p)`` those in pass p (the same
    lengths in every pass without it)."""
    drawn: list[np.ndarray] = []
    drawn_passes: list[np.ndarray] = []
    tokens = passes = 0
    if not len(lengths) or not lengths.sum():
        return np.zeros(0, dtype=np.int64), 0, np.zeros(0, dtype=np.int32)
    while tokens < target:
        sizes = lengths if pass_lengths is None or passes == 0 else pass_lengths(passes)
        order = np.random.default_rng([seed, index, passes]).permutation(len(lengths))
        running = tokens + np.cumsum(sizes[order])
        taken = int(np.searchsorted(running, target)) + 1  # up to the first document reaching it
        drawn.append(order[:taken])
        if record_passes:
            drawn_passes.append(np.full(min(taken, len(order)), passes, dtype=np.int32))
        tokens = int(running[min(taken, len(order)) - 1])
        passes += 1
    return (
        np.concatenate(drawn) if drawn else np.zeros(0, dtype=np.int64),
        tokens,
        np.concatenate(drawn_passes) if drawn_passes else np.zeros(0, dtype=np.int32),
    )


class PackedDataset(Dataset):
    """A map-style dataset of packed windows, as the Trainer's model inputs.

    Item ``i`` is ``{"input_ids", "labels"[, "position_ids"]}`` (int64 tensors of ``seq_len``), read
    from the window file's map when asked for; labels are the input ids with padding set to -100
    (the model shifts them itself).
    """

    def __init__(self, windows: PackedWindows) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.array(self.windows.input_ids[index], dtype=np.int64))
        labels = ids.clone()
        labels[self.windows.length(index) :] = -100
        item = {"input_ids": ids, "labels": labels}
        positions = self.windows.position_ids
        if positions is not None:
            item["position_ids"] = torch.from_numpy(np.array(positions[index], dtype=np.int64))
        return item


# --- the whole path --------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The training windows (a mapped file) and what each source contributed."""

    windows: PackedWindows
    sources: list[SourceStats]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary for logs and metrics.json; a thoughts source has its ``chunks``,
        ``chunks_with_thought`` and ``thought_coverage`` (their share), other sources None there."""
        return {
            "windows": len(self.windows),
            "tokens": self.windows.num_tokens,
            "sources": [
                {
                    **asdict(stats),
                    "epochs": round(stats.epochs, 4),
                    "thought_coverage": round(stats.chunks_with_thought / stats.chunks, 4)
                    if stats.chunks and stats.chunks_with_thought is not None
                    else None,
                }
                for stats in self.sources
            ],
        }


def read_sources(sources: Sequence[SourceConfig]) -> list[list[SourceDocument]]:
    """Read every source; an empty one is an error naming it."""
    read = []
    for source in sources:
        documents = read_source(source)
        if not documents:
            raise LatentThoughtsError(f"data source {source.label}: no documents")
        read.append(documents)
    return read


def document_lengths(built: Sequence[np.ndarray]) -> np.ndarray:
    """Tokens of each built document, int64."""
    return np.fromiter((len(document) for document in built), dtype=np.int64, count=len(built))


def epoch_windows(built: Sequence[Sequence[np.ndarray]], epochs: float, seq_len: int) -> int:
    """Windows that ``epochs`` passes over all built sources fill (at least one)."""
    tokens = sum(int(document_lengths(documents).sum()) for documents in built)
    return max(1, math.ceil(epochs * tokens / seq_len))


def build_training_data(
    sources: Sequence[SourceConfig],
    built: Sequence[Sequence[np.ndarray]],
    builder: DocumentBuilder,
    num_windows: int,
    seed: int,
    path: str | Path,
    redraws: Sequence[LayoutRedraw | None] | None = None,
) -> TrainingData:
    """Mix and pack ``num_windows`` training windows into the window file ``path``.

    ``built`` holds each source's documents as token ids (:func:`build_documents`), in the order of
    ``sources``; ``builder`` gives the format (window length, position resets) and the pad id. The
    mixture is drawn as document indices and the packer reads the documents from ``built`` as it
    streams, so no drawn document is held twice. ``redraws`` (per source, from :func:`build_source`)
    redraws a thoughts source's layouts on every pass over it: each draw is cut from its pass-0 ids
    as the packer reads it, so no pass is held whole either. A thoughts source's coverage (chunks
    with a thought) is counted from its files (:func:`thought_coverage`) for the summary.
    """
    fmt: FormatConfig = builder.config
    lengths = [document_lengths(documents) for documents in built]
    sizes = [int(source_lengths.sum()) for source_lengths in lengths]
    shares = source_shares(sizes, [source.weight for source in sources])
    pass_lengths = None
    if redraws is not None and any(redraw is not None for redraw in redraws):
        pass_lengths = [None if redraw is None else redraw.lengths for redraw in redraws]
    mixture = mix_documents(lengths, shares, num_windows * fmt.seq_len, seed, pass_lengths)
    windows = write_windows(
        path,
        mixture.documents(built, redraws),
        fmt.seq_len,
        _pad_id(builder),
        num_windows,
        fmt.reset_position_ids,
    )
    stats = []
    for source, documents, size, share, tokens, count in zip(
        sources, built, sizes, shares, mixture.drawn_tokens, mixture.drawn_documents, strict=True
    ):
        coverage = thought_coverage(source)
        stats.append(
            SourceStats(
                source.label,
                len(documents),
                size,
                share,
                tokens,
                count,
                coverage.chunks if coverage is not None else None,
                coverage.with_thought if coverage is not None else None,
            )
        )
    return TrainingData(windows, stats)


def build_validation_data(
    sources: Sequence[SourceConfig], builder: DocumentBuilder, path: str | Path
) -> PackedWindows | None:
    """Held-out windows in the window file ``path``: every document of every validation source once,
    packed in file order; None without validation sources."""
    if not sources:
        return None
    documents = (document for docs in read_sources(sources) for document in build_documents(docs, builder))
    fmt = builder.config
    return write_windows(path, documents, fmt.seq_len, _pad_id(builder), None, fmt.reset_position_ids)


def _pad_id(builder: DocumentBuilder) -> int:
    """The tokenizer's pad id (0 when it has none): what the last window is padded with."""
    pad_id = builder.tokenizer.pad_token_id
    return int(pad_id if pad_id is not None else 0)


def data_fingerprint(sources: Sequence[SourceConfig], extra: dict[str, Any]) -> str:
    """A hash of the source options, their files' sizes and times, and ``extra``: a cache key."""
    items: list[Any] = [extra]
    for source in sources:
        files = [getattr(source, key) for key in ("chunks", "thoughts", "rephrased") if getattr(source, key)]
        stamps = []
        for name in files:
            stat = Path(name).stat()
            stamps.append([str(Path(name).resolve()), stat.st_size, stat.st_mtime_ns])
        items.append([source.model_dump(mode="json"), stamps])
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]
