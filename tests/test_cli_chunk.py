"""``latent-thoughts chunk``: a real corpus file in, a chunk file and statistics out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import read_chunks


def test_chunk_writes_rows_and_prints_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.jsonl"
    docs = [{"id": f"d{i}", "text": " ".join(f"Fact {j} of doc {i}." for j in range(25))} for i in range(3)]
    corpus.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    out = tmp_path / "run" / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out), "--set", "chunking.mean_sentences=4"]) == 0
    printed = capsys.readouterr().out
    assert "documents: 3" in printed and "sentences per chunk" in printed
    chunks = read_chunks(out)
    for doc in docs:
        assert "".join(c.text for c in chunks if c.doc_id == doc["id"]) == doc["text"]


def test_bad_records_are_counted_and_strict_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(
        b'{"id": "a", "text": "Good."}\n{broken\n{"id": "e", "text": ""}\n{"id": "u", "text": "\xff"}\n'
    )
    out = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 records" in printed and f"{corpus}:2" in printed
    assert len(read_chunks(out)) == 1
    assert main(["chunk", str(corpus), "--out", str(tmp_path / "strict.parquet"), "--strict"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"latent-thoughts: error: {corpus}:2: unparsable JSON")
    assert not (tmp_path / "strict.parquet").exists()


def test_wrong_option_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "x."}\n')
    assert main(["chunk", str(corpus), "--out", str(tmp_path / "o.parquet"), "--set", "chunking.sed=1"]) == 2
    assert "did you mean 'chunking.seed'" in capsys.readouterr().err


def test_files_of_one_name_in_two_subfolders_are_two_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c"
    for part in ("A", "B"):
        (corpus / part).mkdir(parents=True)
        (corpus / part / "intro.tex").write_text(f"Introduction of {part}. It has two sentences.\n")
    (corpus / "A" / "only.md").write_text("A name used once keeps its id.\n")
    out = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out)]) == 0
    assert "repeated id" not in capsys.readouterr().out
    chunks = read_chunks(out)
    assert sorted({c.doc_id for c in chunks}) == ["A/intro.tex", "B/intro.tex", "only.md"]
    for part in ("A", "B"):
        text = "".join(c.text for c in chunks if c.doc_id == f"{part}/intro.tex")
        assert text == (corpus / part / "intro.tex").read_text()


def test_a_jsonl_file_opening_with_a_byte_order_mark_keeps_its_first_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'\xef\xbb\xbf{"id": "first", "text": "One."}\n{"id": "second", "text": "Two."}\n')
    out = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out), "--strict"]) == 0
    assert [c.doc_id for c in read_chunks(out)] == ["first", "second"]
