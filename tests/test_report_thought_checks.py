"""The checker over a file of thoughts: counts, K thoughts per row, coverage from a column or a chunk file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_thoughts.corpus import Chunk, write_chunks
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.report.thought_checks import check_thoughts_file

CHUNK = "It equals 1017. Adding 129 gives 1146."
FULL = "37 x 4 = 148. 37 x 20 = 740. 148 + 740 = 888. 888 + 129 = 1017. 1017 + 129 = 1146."
PARTIAL = "37 x 4 = 148. 37 x 20 = 740. 148 + 740 = 888. 888 + 129 = 1017."
WRONG = "37 x 20 = 750."


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_file_of_thoughts_is_summarised(tmp_path: Path) -> None:
    rows = [
        {"doc_id": "d", "chunk_index": 0, "thought": FULL, "text": CHUNK},
        {"doc_id": "d", "chunk_index": 1, "thought": [PARTIAL, WRONG], "text": CHUNK},  # K = 2 samples
        {"doc_id": "d", "chunk_index": 2, "thought": None, "text": CHUNK},
    ]
    summary = check_thoughts_file(write_jsonl(tmp_path / "t.jsonl", rows))
    assert (summary.thought_column, summary.chunk_column) == ("thought", "text")
    assert (summary.thoughts, summary.valid, summary.covered) == (3, 1, 1)
    assert (summary.claims, summary.true_claims) == (5 + 4 + 1, 5 + 4)
    assert summary.as_dict()["validity_rate"] == pytest.approx(1 / 3)
    assert summary.lines()[-1].startswith("cover their chunk (column 'text'): 1 ")
    claims_only = check_thoughts_file(tmp_path / "t.jsonl", coverage=False)
    assert claims_only.coverage_rate is None and claims_only.valid == 2  # PARTIAL is valid without its chunk


def test_chunk_texts_come_from_a_chunk_file(tmp_path: Path) -> None:
    write_chunks([Chunk("d", 0, "", CHUNK, 0, len(CHUNK))], tmp_path / "chunks.parquet")
    path = write_jsonl(tmp_path / "t.jsonl", [{"doc_id": "d", "chunk_index": 0, "completion": PARTIAL}])
    summary = check_thoughts_file(path, chunks=tmp_path / "chunks.parquet")
    assert summary.chunk_column is not None and summary.covered == 0 and summary.valid == 0
    with pytest.raises(LatentThoughtsError, match="no column 'nope'"):
        check_thoughts_file(path, thought_column="nope")
    with pytest.raises(LatentThoughtsError, match="file not found"):
        check_thoughts_file(tmp_path / "missing.jsonl")
