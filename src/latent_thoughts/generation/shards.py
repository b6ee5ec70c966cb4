"""Shards: ``--shard i/N``, the split of a chunk file into N shards, and the names of shard files.

A shard is whole documents, contiguous in file order and balanced by characters, so that the shards'
outputs concatenated in shard order are the unsharded output and a stage that needs whole documents
(rephrasing, the E-step's prefixes) sees them. The split is a pure function of the chunk file: any
job runner (a Slurm array, Kubernetes jobs, Ray) can run shard i of N anywhere, and rerun it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from latent_thoughts.corpus import Chunk
from latent_thoughts.errors import LatentThoughtsError

_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)\.parquet$")


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


def shard_writer(shard: tuple[int, int] | None) -> str:
    """The name a shard writes under (``shard-i-of-N``; ``all`` for an unsharded run or N = 1)."""
    return "all" if shard is None or shard[1] == 1 else f"shard-{shard[0]}-of-{shard[1]}"


def shard_files(out: Path) -> list[Path]:
    """The shard result files written for ``out`` (``NAME.shard-i-of-N.parquet``), by shard index."""
    stem = out.with_suffix("")
    found = [p for p in stem.parent.glob(f"{stem.name}.shard-*-of-*.parquet") if _SHARD_NAME.search(p.name)]
    return sorted(found, key=lambda p: int(_SHARD_NAME.search(p.name).group(1)))  # type: ignore[union-attr]
