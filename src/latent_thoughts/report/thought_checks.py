"""The testbed checker over a whole file of thoughts, summarised (``latent-thoughts testbed check``).

A thoughts file (synthesis output, E-step samples, any Parquet or JSONL table) holds one thought, or
a list of K thoughts, per row. Each thought goes through
:func:`latent_thoughts.testbed.checker.check_thought`; the summary counts valid thoughts, true
claims and, when the chunk each thought explains is known (a chunk column, or a chunk file joined on
``(doc_id, chunk_index)``), the thoughts that cover their chunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_thoughts.errors import LatentThoughtsError

THOUGHT_COLUMNS = ("thought", "thoughts", "completion")
"""Columns tried, in order, for the thoughts when none is named."""
CHUNK_COLUMNS = ("text", "chunk", "suffix")
"""Columns tried, in order, for the chunk text each thought explains (for the coverage check)."""
JOINED_CHUNK_COLUMN = "chunk text (from --chunks)"
"""The column that holds chunk texts joined from a chunk file."""


@dataclass
class ThoughtCheckSummary:
    """Counts over the thoughts of one file; ``chunk_column`` is None when coverage was not checked."""

    thought_column: str
    chunk_column: str | None
    thoughts: int = 0
    valid: int = 0
    claims: int = 0
    true_claims: int = 0
    covered: int = 0

    @property
    def validity_rate(self) -> float:
        """Share of thoughts whose every claim is true."""
        return self.valid / self.thoughts if self.thoughts else 0.0

    @property
    def claim_accuracy(self) -> float:
        """Share of claims that are true."""
        return self.true_claims / self.claims if self.claims else 0.0

    @property
    def coverage_rate(self) -> float | None:
        """Share of thoughts that derive every result their chunk states (None: not checked)."""
        if self.chunk_column is None:
            return None
        return self.covered / self.thoughts if self.thoughts else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The summary as one JSON-friendly object."""
        return {
            "thoughts": self.thoughts,
            "valid": self.valid,
            "validity_rate": self.validity_rate,
            "claims": self.claims,
            "true_claims": self.true_claims,
            "claim_accuracy": self.claim_accuracy,
            "coverage_rate": self.coverage_rate,
        }

    def lines(self) -> list[str]:
        """The summary as lines of text for a person."""
        out = [
            f"thoughts: {self.thoughts:,} (column {self.thought_column!r})",
            f"valid: {self.valid:,} ({100 * self.validity_rate:.1f}%)",
            f"claims: {self.claims:,}, true: {self.true_claims:,} ({100 * self.claim_accuracy:.1f}%)",
        ]
        if self.chunk_column is not None:
            out.append(
                f"cover their chunk (column {self.chunk_column!r}): {self.covered:,} "
                f"({100 * (self.coverage_rate or 0.0):.1f}%)"
            )
        else:
            out.append("coverage not checked (no chunk column)")
        return out


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a Parquet or JSONL file as dicts; a missing or unreadable file is a one-line error."""
    if not path.exists():
        raise LatentThoughtsError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_table(path).to_pylist())
        except (OSError, pa.ArrowInvalid) as exc:
            raise LatentThoughtsError(f"{path}: not a readable Parquet file ({exc})") from None
    if path.is_dir():
        raise LatentThoughtsError(f"{path}: is a folder, expected a Parquet or JSONL file")
    rows = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if raw.strip():
            try:
                row = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError as exc:
                raise LatentThoughtsError(f"{path}:{number}: invalid UTF-8 at byte {exc.start}") from None
            except (ValueError, RecursionError) as exc:  # a JSON error, or an int over Python's limit
                what = "a number too long to read" if "digits" in str(exc) else "not a JSON line"
                raise LatentThoughtsError(f"{path}:{number}: {what}") from None
            if not isinstance(row, dict):
                raise LatentThoughtsError(f"{path}:{number}: not a JSON object")
            rows.append(row)
    return rows


def pick_column(
    path: Path, rows: list[dict[str, Any]], wanted: str | None, options: tuple[str, ...]
) -> str | None:
    """``wanted`` if the rows have it (else an error), or the first of ``options`` they have, or None."""
    columns = list(rows[0]) if rows else []
    if wanted is not None:
        if wanted not in columns:
            raise LatentThoughtsError(f"{path}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    return next((name for name in options if name in columns), None)


def join_chunk_texts(path: Path, rows: list[dict[str, Any]], chunks_path: Path) -> None:
    """Add each row's chunk text from ``chunks_path`` as :data:`JOINED_CHUNK_COLUMN`, matched on
    (doc_id, chunk_index); a row whose chunk is not there is an error."""
    from latent_thoughts.corpus import iter_chunks

    texts = {(chunk.doc_id, chunk.chunk_index): chunk.text for chunk in iter_chunks(chunks_path)}
    for number, row in enumerate(rows, start=1):
        key = (row.get("doc_id"), row.get("chunk_index"))
        if key not in texts:
            raise LatentThoughtsError(f"{path}: row {number}: chunk {key} is not in {chunks_path}")
        row[JOINED_CHUNK_COLUMN] = texts[key]


def check_thoughts_file(
    path: str | Path,
    *,
    thought_column: str | None = None,
    chunk_column: str | None = None,
    chunks: str | Path | None = None,
    coverage: bool = True,
) -> ThoughtCheckSummary:
    """Check every thought of the file at ``path`` and summarise.

    Columns are found by name (``thought_column``, ``chunk_column``) or among the usual ones;
    ``chunks`` joins chunk texts from a chunk file; ``coverage=False`` checks the claims only.
    """
    from latent_thoughts.testbed.checker import check_thought

    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise LatentThoughtsError(f"{path}: no rows")
    thoughts_in = pick_column(path, rows, thought_column, THOUGHT_COLUMNS)
    if thoughts_in is None:
        raise LatentThoughtsError(
            f"{path}: no thought column (tried {', '.join(THOUGHT_COLUMNS)}; columns: {', '.join(rows[0])})"
        )
    if chunks is not None and coverage:
        join_chunk_texts(path, rows, Path(chunks))
        chunk_column = JOINED_CHUNK_COLUMN
    chunks_in = pick_column(path, rows, chunk_column, CHUNK_COLUMNS) if coverage else None
    if chunks_in == thoughts_in:
        chunks_in = None
    summary = ThoughtCheckSummary(thoughts_in, chunks_in)
    for number, row in enumerate(rows, start=1):
        value = row[thoughts_in]
        # E-step sample files may hold K thoughts per chunk as a list.
        for thought in value if isinstance(value, list) else [value]:
            if thought is None:
                continue
            chunk = row.get(chunks_in) if chunks_in else None
            try:
                result = check_thought(str(thought), chunk)
            except LatentThoughtsError as exc:
                raise LatentThoughtsError(f"{path}: row {number}: {exc}") from None
            summary.thoughts += 1
            summary.valid += result.valid
            summary.claims += result.claims
            summary.true_claims += result.valid_claims
            summary.covered += bool(result.covered)
    if summary.thoughts == 0:
        raise LatentThoughtsError(f"{path}: no thoughts in column {thoughts_in!r}")
    return summary


@dataclass
class SampleQuality:
    """The checker's reading of one set of thoughts of an E-step samples file (all K samples, or the
    selected ones), split by the kind of chunk they explain.

    A chunk that states a result ("It equals 5704.") is valid only when its thought derives that
    result with true claims; a chunk that only poses a question ("Consider 73 x 68 + 740.") is valid
    for any thought without a false claim, a bare plan included. So validity over all chunks has a
    floor set by the share of posing chunks; ``result_valid`` is the part that measures derivations.
    """

    thoughts: int = 0
    claims: int = 0
    true_claims: int = 0
    valid: int = 0
    result_thoughts: int = 0
    result_valid: int = 0
    question_thoughts: int = 0
    question_valid: int = 0

    def add(self, thought: str, chunk: str) -> None:
        """Check one thought against the chunk it explains."""
        from latent_thoughts.testbed.checker import check_thought

        result = check_thought(thought, chunk)
        self.thoughts += 1
        self.claims += result.claims
        self.true_claims += result.valid_claims
        self.valid += result.valid
        if result.results:
            self.result_thoughts += 1
            self.result_valid += result.valid
        else:
            self.question_thoughts += 1
            self.question_valid += result.valid

    def as_dict(self, name: str) -> dict[str, Any]:
        """Shares (None where nothing was counted), keyed ``{name}_...``."""

        def share(part: int, whole: int) -> float | None:
            return part / whole if whole else None

        return {
            f"{name}_thoughts": self.thoughts,
            f"{name}_true_claims": share(self.true_claims, self.claims),
            f"{name}_valid": share(self.valid, self.thoughts),
            f"{name}_result_valid": share(self.result_valid, self.result_thoughts),
            f"{name}_question_valid": share(self.question_valid, self.question_thoughts),
        }


def sample_quality(path: str | Path) -> dict[str, Any]:
    """The checker over an E-step samples file (``latent-thoughts estep`` output): for the K sampled
    thoughts (``sampled_*``) and the selected ones (``selected_*``), the share of true claims, of
    valid thoughts, of valid thoughts on chunks that state a result and on chunks that only pose a
    question (:class:`SampleQuality`); the share of chunks that kept a thought; and the share of
    samples the sampler closed with EOL (the rest were cut at the thought budget)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["text", "samples", "thought", "finish_reasons"])
    sampled, selected = SampleQuality(), SampleQuality()
    closed = total = kept = 0
    rows = table.to_pylist()
    for row in rows:
        for thought in row["samples"]:
            sampled.add(thought, row["text"])
        if row["thought"] is not None:
            selected.add(row["thought"], row["text"])
            kept += 1
        closed += sum(reason == "stop" for reason in row["finish_reasons"])
        total += len(row["finish_reasons"])
    return {
        **sampled.as_dict("sampled"),
        **selected.as_dict("selected"),
        "kept_share": kept / len(rows) if rows else None,
        "closed_by_eol": closed / total if total else None,
    }
