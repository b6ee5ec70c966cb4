"""Packed training windows in one memory-mapped file: packed once, read lazily by every process.

:func:`write_windows` packs documents back to back into windows of ``seq_len`` tokens with numpy
(the semantics of :func:`latent_thoughts.format.pack_documents`: no token lost, a document longer
than a window continues in the next, only the last window padded, optional position ids that
restart at each document) and streams them to a file in bounded pieces, so its memory does not grow
with the corpus. :func:`open_windows` maps the file read-only: processes share the operating
system's page cache and nothing is copied per process.

The file (written under a temporary name and renamed, :func:`latent_thoughts.atomic.atomic_write`)::

    bytes 0 .. 4095   a JSON header padded with spaces: {"format": "latent-thoughts-windows",
                      "version": 1, "seq_len": L, "windows": N, "rows": R, "last_length": K}
    bytes 4096 ..     N records of R x L little-endian int32: a window's token ids, then (R = 2,
                      when positions restart per document) its position ids

Every window but the last is full; the last holds ``K`` real tokens followed by padding, so the
lengths need no column of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latent_thoughts.atomic import atomic_write
from latent_thoughts.errors import LatentThoughtsError

HEADER_BYTES = 4096
FORMAT = "latent-thoughts-windows"
VERSION = 1
DTYPE = np.dtype("<i4")
# Tokens gathered per packing step: bounds the packer's memory (a few arrays of this many tokens);
# pieces that stay in the CPU cache pack several times faster than pieces of a million tokens.
PIECE_TOKENS = 1 << 17


@dataclass(frozen=True, eq=False)
class PackedWindows:
    """The windows of one file, mapped read-only.

    ``records`` is [windows, rows, seq_len] int32 (a ``np.memmap``); indexing it reads only the pages
    touched. Pickling reopens the file by path, so data-loader workers never copy the windows.
    """

    path: Path
    records: np.ndarray
    last_length: int

    def __len__(self) -> int:
        return int(self.records.shape[0])

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        """Pickled as its path: the copy maps the file again."""
        return open_windows, (self.path,)

    @property
    def seq_len(self) -> int:
        """Tokens per window."""
        return int(self.records.shape[2])

    @property
    def input_ids(self) -> np.ndarray:
        """Token ids, [windows, seq_len] int32 (a view of the map)."""
        return self.records[:, 0]

    @property
    def position_ids(self) -> np.ndarray | None:
        """Position ids [windows, seq_len] int32 when they restart per document, else None."""
        return self.records[:, 1] if self.records.shape[1] == 2 else None

    def length(self, index: int) -> int:
        """Real (non-padding) tokens of window ``index``: ``seq_len`` except for the last window."""
        return self.last_length if index % len(self) == len(self) - 1 else self.seq_len

    @property
    def lengths(self) -> np.ndarray:
        """Real tokens of every window, int64 [windows]."""
        lengths = np.full(len(self), self.seq_len, dtype=np.int64)
        if len(self):
            lengths[-1] = self.last_length
        return lengths

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in all windows."""
        return (len(self) - 1) * self.seq_len + self.last_length if len(self) else 0


def write_windows(
    path: str | Path,
    documents: Iterable[Sequence[int] | np.ndarray],
    seq_len: int,
    pad_id: int,
    limit: int | None = None,
    reset_position_ids: bool = False,
    piece_tokens: int = PIECE_TOKENS,
) -> PackedWindows:
    """Pack ``documents`` (token id sequences, read once, in order) into a window file at ``path``.

    Keeps the first ``limit`` windows (all when None) and stops reading documents once it has them.
    Memory is bounded by ``piece_tokens`` (and the longest document), not by the corpus. Returns
    the file opened with :func:`open_windows`.
    """
    if seq_len <= 0:
        raise LatentThoughtsError(f"seq_len must be positive, got {seq_len}")
    rows = 2 if reset_position_ids else 1
    windows = last_length = 0
    with atomic_write(path) as partial, partial.open("wb") as out:
        out.write(b"\0" * HEADER_BYTES)  # the header is written last, once the counts are known
        for block, block_last in pack_blocks(
            documents, seq_len, pad_id, limit, reset_position_ids, piece_tokens
        ):
            out.write(np.ascontiguousarray(block, dtype=DTYPE).data)
            windows += len(block)
            last_length = block_last
        header = {
            "format": FORMAT,
            "version": VERSION,
            "seq_len": seq_len,
            "windows": windows,
            "rows": rows,
            "last_length": last_length,
        }
        out.seek(0)
        out.write(json.dumps(header).encode().ljust(HEADER_BYTES))
    return open_windows(path)


def open_windows(path: str | Path) -> PackedWindows:
    """Map a file written by :func:`write_windows` read-only; a file of another kind is an error."""
    path = Path(path)
    with path.open("rb") as file:
        raw = file.read(HEADER_BYTES)
    try:
        header = json.loads(raw.decode().strip())
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = {}
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise LatentThoughtsError(f"{path}: not a packed-windows file (version {VERSION})")
    shape = (int(header["windows"]), int(header["rows"]), int(header["seq_len"]))
    if shape[0] == 0:  # an empty map cannot be made
        records: np.ndarray = np.zeros(shape, dtype=DTYPE)
    else:
        records = np.memmap(path, dtype=DTYPE, mode="r", offset=HEADER_BYTES, shape=shape)
    return PackedWindows(path, records, int(header["last_length"]))


# --- packing -------------------------------------------------------------------------------------


def pack_blocks(
    documents: Iterable[Sequence[int] | np.ndarray],
    seq_len: int,
    pad_id: int,
    limit: int | None = None,
    reset_position_ids: bool = False,
    piece_tokens: int = PIECE_TOKENS,
) -> Iterator[tuple[np.ndarray, int]]:
    """Pack documents into windows, a block at a time.

    Yields ``(records, last_length)``: ``records`` [n, rows, seq_len] int32 (token ids, then position
    ids when ``reset_position_ids``) and the real tokens of the block's last window. The documents'
    ids are joined into a flat stream a piece of about ``piece_tokens`` at a time and cut into
    windows by a reshape; the tokens left over carry into the next piece. At the end of the stream
    the left-over tokens make a last window padded with ``pad_id``. Exactly ``limit`` windows at most.
    """
    if limit is not None and limit <= 0:
        return
    emitted = 0
    carry = _Stream(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32) if reset_position_ids else None)
    for piece in _pieces(documents, piece_tokens, reset_position_ids):
        stream = carry.then(piece)
        full = len(stream.ids) // seq_len
        if limit is not None:
            full = min(full, limit - emitted)
        if full:
            yield _records(stream.head(full * seq_len), seq_len), seq_len
            emitted += full
        if limit is not None and emitted >= limit:
            return
        carry = stream.tail(full * seq_len)
    real = len(carry.ids)
    if real:
        # The last window: padded, its padding positions going on from the last real token's.
        padding = seq_len - real
        pad = _Stream(
            np.full(padding, pad_id, dtype=np.int32),
            None if carry.offsets is None else carry.offsets[-1] + 1 + np.arange(padding, dtype=np.int32),
        )
        yield _records(carry.then(pad), seq_len), real


@dataclass(frozen=True)
class _Stream:
    """A stretch of the token stream: ids (int32) and, when positions restart per document, each
    token's offset within its document (int32, like the position ids it becomes)."""

    ids: np.ndarray
    offsets: np.ndarray | None

    def then(self, other: _Stream) -> _Stream:
        """This stretch followed by ``other``."""
        offsets = None
        if self.offsets is not None and other.offsets is not None:
            offsets = np.concatenate([self.offsets, other.offsets])
        return _Stream(np.concatenate([self.ids, other.ids]), offsets)

    def head(self, count: int) -> _Stream:
        """The first ``count`` tokens."""
        return _Stream(self.ids[:count], None if self.offsets is None else self.offsets[:count])

    def tail(self, start: int) -> _Stream:
        """The tokens from ``start`` on."""
        return _Stream(self.ids[start:], None if self.offsets is None else self.offsets[start:])


def _pieces(
    documents: Iterable[Sequence[int] | np.ndarray], piece_tokens: int, with_offsets: bool
) -> Iterator[_Stream]:
    """Whole documents joined into pieces of at least ``piece_tokens`` tokens (the last may be
    shorter), with each token's offset within its document when ``with_offsets``."""
    batch: list[np.ndarray] = []
    count = 0
    for document in documents:
        ids = np.asarray(document, dtype=np.int32).reshape(-1)
        batch.append(ids)
        count += len(ids)
        if count >= piece_tokens:
            yield _join(batch, with_offsets)
            batch, count = [], 0
    if batch:
        yield _join(batch, with_offsets)


def _join(batch: list[np.ndarray], with_offsets: bool) -> _Stream:
    """Documents back to back (and each token's offset within its document)."""
    ids = np.concatenate(batch)
    if not with_offsets:
        return _Stream(ids, None)
    lengths = np.fromiter((len(document) for document in batch), dtype=np.int32, count=len(batch))
    starts = np.cumsum(lengths, dtype=np.int32) - lengths
    return _Stream(ids, np.arange(len(ids), dtype=np.int32) - np.repeat(starts, lengths))


def _records(stream: _Stream, seq_len: int) -> np.ndarray:
    """Windows [n, rows, seq_len] int32 from a stretch of whole windows.

    With offsets, a token's position is its offset in its document, except that a document
    continuing from the previous window counts from 0 again: min(offset in document, index in window).
    """
    windows = stream.ids.reshape(-1, 1, seq_len)
    if stream.offsets is None:
        return windows
    positions = np.minimum(stream.offsets.reshape(-1, seq_len), np.arange(seq_len, dtype=np.int32))
    return np.stack([windows[:, 0], positions], axis=1)
