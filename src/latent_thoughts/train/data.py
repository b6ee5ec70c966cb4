"""Training data: sources -> training documents -> a seeded mixture -> packed windows.

The path from files to tensors, in order:

1. :func:`read_source` reads one source (raw chunks, chunks with thoughts, rephrased documents)
   into :class:`SourceDocument` s: a document id, its chunk texts and (for thoughts) one thought or
   ``None`` per chunk.
2. :func:`build_documents` turns them into token ids with :class:`~latent_thoughts.format.DocumentBuilder`
   (prior/posterior layouts for thoughts, plain text otherwise; BOS/EOS around each document).
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from latent_thoughts.corpus import group_by_document, iter_chunks
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import DocumentBuilder, FormatConfig
from latent_thoughts.tables import read_parquet
from latent_thoughts.train.config import SourceConfig
from latent_thoughts.train.windows import PackedWindows, write_windows

logger = logging.getLogger(__name__)


@dataclass
class SourceDocument:
    """One document of a source: its chunk texts and, for a thoughts source, a thought (or None) per chunk.

    A plain document (raw or rephrased) has ``plain=True`` and its whole text as the single chunk.
    """

    doc_id: str
    chunks: list[str]
    thoughts: list[str | None] | None = None
    plain: bool = False

    def texts(self) -> Iterator[str]:
        """Every text of the document (chunks, then thoughts), for tokenizer training."""
        yield from self.chunks
        if self.thoughts is not None:
            yield from (thought for thought in self.thoughts if thought)


@dataclass
class SourceStats:
    """What one source contributed: documents and tokens available, tokens drawn, passes made."""

    name: str
    documents: int
    tokens: int
    weight: float = 0.0
    drawn_tokens: int = 0
    drawn_documents: int = 0

    @property
    def epochs(self) -> float:
        """Passes over the source's data (drawn tokens / available tokens)."""
        return self.drawn_tokens / self.tokens if self.tokens else 0.0


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


def read_thoughts(path: str | Path) -> dict[tuple[str, int], str | None]:
    """Map (doc_id, chunk_index) -> thought from a thoughts parquet; a repeated chunk is an error."""
    path = Path(path)
    table = _read_table(path, ["doc_id", "chunk_index", "thought"], "thoughts")
    thoughts: dict[tuple[str, int], str | None] = {}
    for doc_id, index, thought in zip(
        table.column("doc_id").to_pylist(),
        table.column("chunk_index").to_pylist(),
        table.column("thought").to_pylist(),
        strict=True,
    ):
        key = (str(doc_id), int(index))
        if key in thoughts:
            raise LatentThoughtsError(
                f"{path}: more than one thought for chunk {index} of document {doc_id!r}"
            )
        thoughts[key] = thought if thought else None
    return thoughts


def read_source(source: SourceConfig) -> list[SourceDocument]:
    """Read one source of the mixture into documents (see :class:`SourceConfig` for the kinds)."""
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
    thoughts = read_thoughts(source.thoughts)
    out = []
    matched = 0
    for doc_id, chunks in documents.items():
        doc_thoughts = [thoughts.get((doc_id, index)) for index in range(len(chunks))]
        matched += sum(thought is not None for thought in doc_thoughts)
        out.append(SourceDocument(doc_id, chunks, doc_thoughts))
    if thoughts and matched == 0:
        raise LatentThoughtsError(
            f"{source.thoughts}: none of its thoughts belongs to a chunk of {source.chunks} (wrong pairing?)"
        )
    unmatched = sum(thought is not None for thought in thoughts.values()) - matched
    if unmatched:
        logger.warning("%s: %d thoughts have no chunk in %s", source.thoughts, unmatched, source.chunks)
    return out


# --- building and mixing ---------------------------------------------------------------------------


def build_documents(documents: Iterable[SourceDocument], builder: DocumentBuilder) -> list[np.ndarray]:
    """Token ids of each training document (int32 arrays), in the order given."""
    built = []
    for document in documents:
        if document.plain:
            ids = builder.build_plain(document.chunks[0]).input_ids
        else:
            ids = builder.build(document.doc_id, document.chunks, document.thoughts).input_ids
        built.append(np.asarray(ids, dtype=np.int32))
    return built


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
    training order; a repeated document appears once per draw. ``drawn_tokens`` and
    ``drawn_documents`` are per source.
    """

    source: np.ndarray
    document: np.ndarray
    drawn_tokens: list[int]
    drawn_documents: list[int]

    def documents(self, built: Sequence[Sequence[np.ndarray]]) -> Iterator[np.ndarray]:
        """The drawn documents' token ids in training order, read from ``built`` (per source) as
        the stream goes: no drawn document is copied ahead of the packer."""
        step = 1 << 16  # indices turned into Python ints a block at a time
        for start in range(0, len(self.source), step):
            sources = self.source[start : start + step].tolist()
            documents = self.document[start : start + step].tolist()
            for source, document in zip(sources, documents, strict=True):
                yield built[source][document]


def mix_documents(
    lengths: Sequence[np.ndarray],
    shares: Sequence[float],
    total_tokens: int,
    seed: int,
) -> Mixture:
    """Draw whole documents from each source until it reaches its share of ``total_tokens``.

    ``lengths`` holds each source's document lengths in tokens. Each source is read in seeded random
    order; when it runs out, a new pass starts with a fresh permutation (so a small source is
    repeated, a pass at a time). The draws of all sources are then shuffled together.
    """
    sources, documents = [], []
    drawn_tokens, drawn_docs = [], []
    for index, (sizes, share) in enumerate(zip(lengths, shares, strict=True)):
        drawn, tokens = _draw_source(
            np.asarray(sizes, dtype=np.int64), math.ceil(total_tokens * share), seed, index
        )
        sources.append(np.full(len(drawn), index, dtype=np.int32))
        documents.append(drawn)
        drawn_tokens.append(tokens)
        drawn_docs.append(len(drawn))
    source = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int32)
    document = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int64)
    order = np.random.default_rng([seed, len(lengths), 0xD0C]).permutation(len(source))
    return Mixture(source[order], document[order], drawn_tokens, drawn_docs)


def _draw_source(lengths: np.ndarray, target: int, seed: int, index: int) -> tuple[np.ndarray, int]:
    """Document indices of source ``index`` in its seeded pass orders until ``target`` tokens are
    reached (the document that reaches it included), and the tokens drawn."""
    drawn: list[np.ndarray] = []
    tokens = passes = 0
    if not len(lengths) or not lengths.sum():
        return np.zeros(0, dtype=np.int64), 0
    while tokens < target:
        order = np.random.default_rng([seed, index, passes]).permutation(len(lengths))
        running = tokens + np.cumsum(lengths[order])
        taken = int(np.searchsorted(running, target)) + 1  # up to the first document reaching it
        drawn.append(order[:taken])
        tokens = int(running[min(taken, len(order)) - 1])
        passes += 1
    return (np.concatenate(drawn) if drawn else np.zeros(0, dtype=np.int64)), tokens


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
        """A JSON-friendly summary for logs and metrics.json."""
        return {
            "windows": len(self.windows),
            "tokens": self.windows.num_tokens,
            "sources": [{**asdict(stats), "epochs": round(stats.epochs, 4)} for stats in self.sources],
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
) -> TrainingData:
    """Mix and pack ``num_windows`` training windows into the window file ``path``.

    ``built`` holds each source's documents as token ids (:func:`build_documents`), in the order of
    ``sources``; ``builder`` gives the format (window length, position resets) and the pad id. The
    mixture is drawn as document indices and the packer reads the documents from ``built`` as it
    streams, so no drawn document is held twice.
    """
    fmt: FormatConfig = builder.config
    lengths = [document_lengths(documents) for documents in built]
    sizes = [int(source_lengths.sum()) for source_lengths in lengths]
    shares = source_shares(sizes, [source.weight for source in sources])
    mixture = mix_documents(lengths, shares, num_windows * fmt.seq_len, seed)
    windows = write_windows(
        path, mixture.documents(built), fmt.seq_len, _pad_id(builder), num_windows, fmt.reset_position_ids
    )
    stats = [
        SourceStats(source.label, len(documents), size, share, tokens, count)
        for source, documents, size, share, tokens, count in zip(
            sources, built, sizes, shares, mixture.drawn_tokens, mixture.drawn_documents, strict=True
        )
    ]
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
