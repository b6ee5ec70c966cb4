"""Shards: the chunk file, ``--shard i/N``, its split into N shards, and the names of shard files.

A shard is whole documents, contiguous in file order and balanced by characters, so that the shards'
outputs concatenated in shard order are the unsharded output and a stage that needs whole documents
(rephrasing, the E-step's prefixes) sees them. The split is a pure function of the chunk file: any
job runner (a Slurm array, Kubernetes jobs, Ray) can run shard i of N anywhere, and rerun it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_thoughts.corpus import Chunk, read_chunks
from latent_thoughts.errors import LatentThoughtsError

_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.parquet$")


def load_chunks(path: str | Path) -> list[Chunk]:
    """All chunks of a chunk file (``latent-thoughts chunk`` output), in file order."""
    chunks = read_chunks(path)
    if not chunks:
        raise LatentThoughtsError(f"{path}: the chunk file holds no chunks")
    return chunks


def chunks_fingerprint(chunks: Sequence[Chunk]) -> str:
    """A short hash of the chunks' content, stored in outputs so that merge can refuse foreign shards."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(json.dumps([chunk.doc_id, chunk.chunk_index, chunk.prefix, chunk.text]).encode("utf-8"))
    return digest.hexdigest()[:16]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` (0-based ``i``) as ``(i, N)``; anything else is a one-line error naming the option."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if match is None:
        raise LatentThoughtsError(f"--shard {spec!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise LatentThoughtsError(
            f"--shard {spec!r}: need 0 <= i < N and N >= 1 (shards are numbered from 0)"
        )
    return index, count


def select_shard(chunks: Sequence[Chunk], index: int, count: int) -> list[Chunk]:
    """The chunks of shard ``index`` of ``count``: whole documents, contiguous in file order.

    Shards are balanced by characters (the teacher's work grows with the text) and cut only between
    documents, so the shards' outputs concatenated in shard order are the unsharded output, and a
    rephrasing run sees whole documents. The split is a pure function of the chunk file.
    """
    if count == 1:
        return list(chunks)
    documents: list[list[Chunk]] = []
    for chunk in chunks:
        if not documents or documents[-1][0].doc_id != chunk.doc_id:
            documents.append([])
        documents[-1].append(chunk)
    sizes = [sum(len(c.text) for c in doc) for doc in documents]
    total = sum(sizes) or 1
    selected: list[Chunk] = []
    done = 0
    for doc, size in zip(documents, sizes, strict=True):
        # A document belongs to the shard in which its midpoint falls.
        if min(count - 1, int((done + size / 2) * count / total)) == index:
            selected.extend(doc)
        done += size
    return selected


@dataclass(frozen=True)
class LoadedShard:
    """A shard's chunks already selected, with the fingerprint of the whole chunk file they came from.

    What a worker that receives a shard's chunks rather than the file (a Ray actor) runs a stage on:
    the stage then neither reads nor splits the chunk file again.
    """

    index: int
    count: int
    chunks: list[Chunk]
    fingerprint: str


def shard_or_whole(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """``shard``, or None when it is the whole file (no shard, or N = 1)."""
    return shard if shard is not None and shard[1] > 1 else None


def shard_writer(shard: tuple[int, int] | None) -> str:
    """The name a shard writes under (``shard-i-of-N``; ``all`` for an unsharded run or N = 1)."""
    return "all" if shard is None or shard[1] == 1 else f"shard-{shard[0]}-of-{shard[1]}"


def shard_files(out: Path) -> list[Path]:
    """The shard result files written for ``out`` (``NAME.shard-i-of-N.parquet``), by shard index."""
    stem = out.with_suffix("")
    found = [p for p in stem.parent.glob(f"{stem.name}.shard-*-of-*.parquet") if _SHARD_NAME.search(p.name)]
    return sorted(found, key=lambda p: int(_SHARD_NAME.search(p.name).group(1)))  # type: ignore[union-attr]


def order_shard_outputs(
    out: Path,
    outputs: Sequence[tuple[Path, dict[str, Any]]],
    producer: str,
    agreeing: Sequence[str],
    accept: Callable[[dict[str, Any]], bool] = lambda meta: True,
) -> tuple[list[Path], dict[str, Any]]:
    """Check shard outputs to merge into ``out`` and put them in shard order.

    ``outputs`` are (path, Parquet metadata) pairs written by ``latent-thoughts producer --shard``.
    Each must be a shard (``accept``-ed, with a ``shard`` entry ``i/N``), every shard 0..N-1 of one N
    must be there exactly once, and the ``agreeing`` metadata entries must equal shard 0's.
    Returns the paths by shard index and shard 0's metadata; raises LatentThoughtsError naming the
    first file (or ``out``) that breaks a rule.
    """
    shards: dict[int, tuple[Path, dict[str, Any]]] = {}
    counts: set[int] = set()
    for path, meta in outputs:
        if not accept(meta) or not meta.get("shard"):
            raise LatentThoughtsError(f"{path}: not a shard output of latent-thoughts {producer}")
        index, count = (int(part) for part in str(meta["shard"]).split("/"))
        if index in shards:
            raise LatentThoughtsError(f"{path}: shard {index} is given twice ({shards[index][0]})")
        shards[index] = (Path(path), meta)
        counts.add(count)
    if len(counts) != 1:
        raise LatentThoughtsError(f"{out}: shards of different splits given (N = {sorted(counts)})")
    total = counts.pop()
    missing = sorted(set(range(total)) - set(shards))
    if missing:
        raise LatentThoughtsError(
            f"{out}: shard(s) {', '.join(map(str, missing))} of {total} missing; run them first"
        )
    first = shards[0][1]
    for _index, (path, meta) in sorted(shards.items()):
        for name in agreeing:
            if meta.get(name) != first.get(name):
                raise LatentThoughtsError(
                    f"{path}: {name} {meta.get(name)!r} differs from shard 0's {first.get(name)!r}"
                )
    return [shards[i][0] for i in range(total)], first
