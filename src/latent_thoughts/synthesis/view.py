"""The ``thoughts`` view: a document printed with each chunk followed by its thought."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from latent_thoughts.corpus import Chunk, iter_chunks
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.outputs import read_metadata
from latent_thoughts.generation.shards import chunks_fingerprint
from latent_thoughts.synthesis.stage import read_output_tables

LEFT_RAW = "left raw, its answer was cut at the token limit (the teacher's on_cut)"


@dataclass(frozen=True)
class ChunkThought:
    """What a thoughts file says of one chunk: its thought, or why it has none.

    ``thought`` is None when the chunk has none: ``note`` then says why (:data:`LEFT_RAW`, or the
    failure reason when ``failed``). ``tokens`` is the answer's length where the file records it, and
    ``cut`` whether the answer was cut at the token limit and kept.
    """

    thought: str | None
    note: str | None = None
    failed: bool = False
    tokens: int | None = None
    cut: bool = False


def chunk_thoughts(
    results: Any, failures: Any, doc_id: str | None = None
) -> dict[tuple[str, int], ChunkThought]:
    """The thought of every chunk a thoughts file answers (of document ``doc_id`` only, when given),
    keyed by ``(doc_id, chunk_index)``, from the tables :func:`read_output_tables` gives. A chunk with a
    row in the results is described by it (a null thought was left raw); one with a failure row only
    by its reason. Files written by hand (``doc_id, chunk_index, thought``) read the same."""
    rows = _rows(results, doc_id)
    failed = _rows(failures, doc_id)
    found = {
        (row["doc_id"], row["chunk_index"]): ChunkThought(None, str(row["reason"]), failed=True)
        for row in failed
    }
    for row in rows:
        key = (row["doc_id"], row["chunk_index"])
        if row["thought"] is None:
            found[key] = ChunkThought(None, LEFT_RAW)
        else:
            found[key] = ChunkThought(
                row["thought"], tokens=row.get("completion_tokens"), cut=row.get("finish_reason") == "length"
            )
    return found


def document_chunks(chunks_path: Path, doc_id: str | None) -> tuple[str, list[Chunk]]:
    """The id and chunks of document ``doc_id`` (default: the first document of the file)."""
    found: list[Chunk] = []
    for chunk in iter_chunks(chunks_path):
        if doc_id is None:
            doc_id = chunk.doc_id
        if chunk.doc_id == doc_id:
            found.append(chunk)
        elif found:
            break  # a document's chunks are contiguous in a chunk file
    if not found or doc_id is None:
        raise LatentThoughtsError(f"{chunks_path}: no document with id {doc_id!r}")
    return doc_id, found


def check_same_chunks(chunks_path: Path, thoughts_path: Path) -> None:
    """Refuse a thoughts file that was made from another chunk file (its recorded fingerprint differs)."""
    expected = read_metadata(thoughts_path).get("chunks_fingerprint")
    if not expected:
        return  # written by hand or by an old version: nothing to compare
    actual = chunks_fingerprint(list(iter_chunks(chunks_path)))
    if actual != expected:
        raise LatentThoughtsError(
            f"{thoughts_path}: made from another chunk file than {chunks_path} (chunk fingerprint "
            f"{expected}, this file's {actual}); pass the --chunks it was made from"
        )


def _rows(table: Any, doc_id: str | None) -> list[dict[str, Any]]:
    if table is None:
        return []
    return (table if doc_id is None else table.filter(pc.equal(table["doc_id"], doc_id))).to_pylist()


def _box(title: str, body: str, width: int) -> list[str]:
    lines = [f"  ╭─ {title}"]
    for paragraph in body.splitlines() or [""]:
        wrapped = textwrap.wrap(paragraph, width - 4) if width > 0 and paragraph else [paragraph]
        lines.extend(f"  │ {line}" for line in wrapped or [""])
    lines.append("  ╰─")
    return lines


def render_document(
    chunks_path: Path, thoughts_path: Path, doc_id: str | None = None, width: int = 100
) -> str:
    """The document's chunks in order, each followed by its thought in a marked box.

    A chunk without a thought shows the recorded failure reason, that it was left raw (its answer was
    cut at the token limit), or that it has not been answered. A rephrasing output (``--mode
    rephrase``) shows the document followed by its rephrasing.
    """
    doc_id, chunks = document_chunks(chunks_path, doc_id)
    results, failures = read_output_tables(thoughts_path)
    check_same_chunks(chunks_path, thoughts_path)
    rows, failed = _rows(results, doc_id), _rows(failures, doc_id)
    teacher = next((row["teacher"] for row in [*rows, *failed]), "?")
    version = next((row["prompt_version"] for row in [*rows, *failed]), "?")
    header = f"document {doc_id}: {len(chunks)} chunks · teacher {teacher} · prompt {version}"
    out = [header, "═" * min(max(len(header), 20), 120)]
    if "thought" not in results.column_names:
        out.append("".join(chunk.text for chunk in chunks))
        for row in rows:
            if row["text"] is None:
                out.append(f"  · no rephrasing: {LEFT_RAW}")
                continue
            out.extend(
                _box(f"rephrased ({row['style']}) · {row['completion_tokens']} tokens", row["text"], width)
            )
        for row in failed:
            out.append(f"  ✗ no rephrasing: {row['reason']}")
        return "\n".join(out)
    entries = chunk_thoughts(results, failures, doc_id)
    for chunk in chunks:
        out.append(f"── chunk {chunk.chunk_index} · characters {chunk.start}-{chunk.end} ──")
        out.append(chunk.text.strip("\n"))
        entry = entries.get((doc_id, chunk.chunk_index))
        if entry is None:
            out.append("  · no thought yet")
        elif entry.thought is None:
            out.append(f"  {'✗' if entry.failed else '·'} no thought: {entry.note}")
        else:
            cut = " (cut at the token limit)" if entry.cut else ""
            title = f"thought · {entry.tokens} tokens{cut}"
            out.extend(_box(title, entry.thought, width))
    return "\n".join(out)
