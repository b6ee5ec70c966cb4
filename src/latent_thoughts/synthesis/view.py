"""The ``thoughts`` view: a document printed with each chunk followed by its thought."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from latent_thoughts.corpus import Chunk, iter_chunks
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.outputs import read_metadata
from latent_thoughts.generation.shards import chunks_fingerprint
from latent_thoughts.synthesis.stage import read_output_tables

LEFT_RAW = "left raw, its answer was cut at the token limit (the teacher's on_cut)"


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


def _rows(table: Any, doc_id: str) -> list[dict[str, Any]]:
    return table.filter(pc.equal(table["doc_id"], doc_id)).to_pylist() if table is not None else []


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
    thoughts = {row["chunk_index"]: row for row in rows}
    reasons = {row["chunk_index"]: row["reason"] for row in failed}
    for chunk in chunks:
        out.append(f"── chunk {chunk.chunk_index} · characters {chunk.start}-{chunk.end} ──")
        out.append(chunk.text.strip("\n"))
        thought = thoughts.get(chunk.chunk_index)
        if thought is not None and thought["thought"] is None:
            out.append(f"  · no thought: {LEFT_RAW}")
        elif thought is not None:
            cut = " (cut at the token limit)" if thought["finish_reason"] == "length" else ""
            title = f"thought · {thought['completion_tokens']} tokens{cut}"
            out.extend(_box(title, thought["thought"], width))
        elif chunk.chunk_index in reasons:
            out.append(f"  ✗ no thought: {reasons[chunk.chunk_index]}")
        else:
            out.append("  · no thought yet")
    return "\n".join(out)
