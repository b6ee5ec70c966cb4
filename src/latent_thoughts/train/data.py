"""Training data: sources -> training documents -> a seeded mixture -> packed windows.

The path from files to tensors, in order:

1. :func:`read_source` reads one source (raw chunks, chunks with thoughts, rephrased documents)
   into :class:`SourceDocument` s: a document id, its chunk texts and (for thoughts) one thought or
   ``None`` per chunk.
2. :func:`build_documents` turns them into token ids with :class:`~latent_thoughts.format.DocumentBuilder`
   (prior/posterior layouts for thoughts, plain text otherwise; BOS/EOS around each document).
3. :func:`mix_documents` draws documents from each source until the source's share of the token
   budget is reached, cycling through fresh seeded permutations when a source is smaller than its
   share (repetition), and shuffles the draw into one training order.
4. :func:`pack_windows` packs that order back to back into fixed windows
   (:func:`~latent_thoughts.format.pack_documents`) and keeps exactly the number the budget needs.

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
from latent_thoughts.format import DocumentBuilder, FormatConfig, pack_documents
from latent_thoughts.tables import read_parquet
from latent_thoughts.train.config import SourceConfig

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


def mix_documents(
    sources: Sequence[Sequence[np.ndarray]],
    shares: Sequence[float],
    total_tokens: int,
    seed: int,
) -> tuple[list[np.ndarray], list[int], list[int]]:
    """Draw whole documents from each source until it reaches its share of ``total_tokens``.

    Each source is read in seeded random order; when it runs out, a new pass starts with a fresh
    permutation (so a small source is repeated, a pass at a time). The draws of all sources are
    then shuffled together. Returns the documents in training order, and per source the tokens
    and documents drawn.
    """
    drawn: list[np.ndarray] = []
    drawn_tokens, drawn_docs = [], []
    for index, (documents, share) in enumerate(zip(sources, shares, strict=True)):
        target = math.ceil(total_tokens * share)
        tokens = count = 0
        passes = 0
        while tokens < target and documents:
            order = np.random.default_rng([seed, index, passes]).permutation(len(documents))
            for position in order:
                document = documents[position]
                drawn.append(document)
                tokens += len(document)
                count += 1
                if tokens >= target:
                    break
            passes += 1
        drawn_tokens.append(tokens)
        drawn_docs.append(count)
    order = np.random.default_rng([seed, len(sources), 0xD0C]).permutation(len(drawn))
    return [drawn[i] for i in order], drawn_tokens, drawn_docs


@dataclass
class PackedArrays:
    """Packed windows: ``input_ids`` [windows, seq_len] int32, ``lengths`` of real tokens per window
    (padding only ever ends the last one), and ``position_ids`` when positions reset per document."""

    input_ids: np.ndarray
    lengths: np.ndarray
    position_ids: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in all windows."""
        return int(self.lengths.sum())


def pack_windows(
    documents: Iterable[Any],
    seq_len: int,
    pad_id: int,
    limit: int | None = None,
    reset_position_ids: bool = False,
) -> PackedArrays:
    """Pack ``documents`` (token id sequences or arrays) back to back into windows of ``seq_len``
    and keep the first ``limit`` windows (all when ``limit`` is None)."""
    ids: list[np.ndarray] = []
    lengths: list[int] = []
    positions: list[np.ndarray] = []
    for window in pack_documents(documents, seq_len, pad_id, reset_position_ids):
        if limit is not None and len(ids) >= limit:
            break
        ids.append(np.asarray(window.input_ids, dtype=np.int32))
        lengths.append(window.num_real_tokens)
        if reset_position_ids:
            positions.append(np.asarray(window.position_ids, dtype=np.int32))
    return PackedArrays(
        np.stack(ids) if ids else np.zeros((0, seq_len), dtype=np.int32),
        np.asarray(lengths, dtype=np.int64),
        np.stack(positions) if positions else None,
    )


class PackedDataset(Dataset):
    """A map-style dataset of packed windows, as the Trainer's model inputs.

    Item ``i`` is ``{"input_ids", "labels"[, "position_ids"]}`` (int64 tensors of ``seq_len``);
    labels are the input ids with padding set to -100 (the model shifts them itself).
    """

    def __init__(self, arrays: PackedArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return int(self.arrays.input_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.asarray(self.arrays.input_ids[index], dtype=np.int64))
        labels = ids.clone()
        labels[int(self.arrays.lengths[index]) :] = -100
        item = {"input_ids": ids, "labels": labels}
        if self.arrays.position_ids is not None:
            item["position_ids"] = torch.from_numpy(
                np.asarray(self.arrays.position_ids[index], dtype=np.int64)
            )
        return item


# --- the whole path --------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The built training windows and what each source contributed."""

    arrays: PackedArrays
    sources: list[SourceStats]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary for logs and metrics.json."""
        return {
            "windows": len(self.arrays.lengths),
            "tokens": self.arrays.num_tokens,
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


def build_training_data(
    sources: Sequence[SourceConfig],
    documents: Sequence[Sequence[SourceDocument]],
    builder: DocumentBuilder,
    num_windows: int | None,
    seed: int,
    epochs: float | None = None,
) -> TrainingData:
    """Build, mix and pack the training windows.

    Pass ``num_windows`` (the budget in windows) or, with ``num_windows=None``, ``epochs`` over the
    mixture (the window count then follows from the data). ``documents`` are the sources as read by
    :func:`read_sources`, in the order of ``sources``.
    """
    fmt: FormatConfig = builder.config
    built = [build_documents(docs, builder) for docs in documents]
    sizes = [int(sum(len(doc) for doc in docs)) for docs in built]
    shares = source_shares(sizes, [source.weight for source in sources])
    if num_windows is None:
        if epochs is None:
            raise LatentThoughtsError("build_training_data needs num_windows or epochs")
        num_windows = max(1, math.ceil(epochs * sum(sizes) / fmt.seq_len))
    mixed, drawn_tokens, drawn_docs = mix_documents(built, shares, num_windows * fmt.seq_len, seed)
    pad_id = builder.tokenizer.pad_token_id
    arrays = pack_windows(
        mixed, fmt.seq_len, int(pad_id if pad_id is not None else 0), num_windows, fmt.reset_position_ids
    )
    stats = [
        SourceStats(source.label, len(docs), size, share, tokens, count)
        for source, docs, size, share, tokens, count in zip(
            sources, built, sizes, shares, drawn_tokens, drawn_docs, strict=True
        )
    ]
    return TrainingData(arrays, stats)


def build_validation_data(sources: Sequence[SourceConfig], builder: DocumentBuilder) -> PackedArrays | None:
    """Held-out windows: every document of every validation source once, packed in file order."""
    if not sources:
        return None
    documents: list[np.ndarray] = []
    for docs in read_sources(sources):
        documents.extend(build_documents(docs, builder))
    pad_id = builder.tokenizer.pad_token_id
    return pack_windows(
        documents,
        builder.config.seq_len,
        int(pad_id if pad_id is not None else 0),
        None,
        builder.config.reset_position_ids,
    )


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


def save_arrays(arrays: PackedArrays, path: Path) -> None:
    """Save packed windows to ``path`` (an .npz), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    if arrays.position_ids is None:
        np.savez(partial, input_ids=arrays.input_ids, lengths=arrays.lengths)
    else:
        np.savez(
            partial, input_ids=arrays.input_ids, lengths=arrays.lengths, position_ids=arrays.position_ids
        )
    partial.replace(path)


def load_arrays(path: Path) -> PackedArrays:
    """Load packed windows saved by :func:`save_arrays`."""
    with np.load(path) as data:
        return PackedArrays(data["input_ids"], data["lengths"], data.get("position_ids"))
