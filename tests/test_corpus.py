"""Reading corpora and chunking (METHOD section 3)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_thoughts.corpus import (
    MAX_PARAGRAPH_CHARS,
    ChunkConfig,
    CorpusConfig,
    NoChunksError,
    SkipReport,
    SplitNotes,
    chunk_document,
    chunk_lengths,
    prefix_of,
    read_chunks,
    read_documents,
    sentence_units,
    split_document,
    write_chunks,
)
from latent_thoughts.errors import LatentThoughtsError

SENTENCE_TEXT = st.text(
    alphabet=st.sampled_from(list("abc XYZ019.!?\n\t,;$\\{}é—")), min_size=0, max_size=400
)


@settings(max_examples=200, deadline=None)
@given(text=SENTENCE_TEXT, seed=st.integers(0, 3), mean=st.floats(1, 20))
def test_chunks_concatenate_back_to_the_document_exactly(text: str, seed: int, mean: float) -> None:
    config = ChunkConfig(mean_sentences=mean, seed=seed)
    chunks = chunk_document("doc", text, config)
    assert "".join(chunk.text for chunk in chunks) == text
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text
    assert [chunk.chunk_index for chunk in chunks] == list(range(len(chunks)))


@settings(max_examples=100, deadline=None)
@given(text=SENTENCE_TEXT)
def test_chunking_is_deterministic_and_independent_of_the_document_id(text: str) -> None:
    first = chunk_document("a", text)
    second = chunk_document("b", text)
    assert [(c.text, c.prefix, c.start) for c in first] == [(c.text, c.prefix, c.start) for c in second]


@settings(max_examples=100, deadline=None)
@given(text=SENTENCE_TEXT)
def test_sentence_units_round_trip(text: str) -> None:
    assert "".join(sentence_units(text)) == text


def test_sentence_units_split_paragraphs_then_sentences() -> None:
    text = "First sentence. Second one!\n\nNew paragraph? Yes.\n"
    assert sentence_units(text) == ["First sentence. ", "Second one!\n\n", "New paragraph? ", "Yes.\n"]


def test_chunk_lengths_follow_the_configured_bounds() -> None:
    config = ChunkConfig(mean_sentences=8, min_sentences=2, max_sentences=10)
    lengths = chunk_lengths(10_000, "some document text", config)
    assert sum(lengths) == 10_000
    assert all(length <= 10 for length in lengths)
    assert all(length >= 2 for length in lengths[:-1])
    mean = sum(lengths[:-1]) / len(lengths[:-1])
    assert 7.0 < mean < 8.5  # Poisson(6) + 2, slightly lowered by the cap at 10


def test_chunk_lengths_are_a_pure_function_of_text_and_seed() -> None:
    config = ChunkConfig()
    assert chunk_lengths(500, "text one", config) == chunk_lengths(500, "text one", config)
    assert chunk_lengths(500, "text one", config) != chunk_lengths(500, "text two", config)
    assert chunk_lengths(500, "text one", config) != chunk_lengths(500, "text one", ChunkConfig(seed=1))


def test_prefix_is_the_raw_text_of_the_previous_chunks() -> None:
    text = " ".join(f"Sentence number {i}." for i in range(60))
    chunks = chunk_document("d", text, ChunkConfig(mean_sentences=3, prefix_chunks=1))
    assert chunks[0].prefix == ""
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.prefix == previous.text
    three = chunk_document("d", text, ChunkConfig(mean_sentences=3, prefix_chunks=3))
    for index, chunk in enumerate(three):
        assert chunk.prefix == prefix_of(three, index, 3)
        assert chunk.prefix == text[three[max(0, index - 3)].start : chunk.start]


def test_chunk_file_round_trip(tmp_path: Path) -> None:
    chunks = chunk_document("d1", "One. Two. Three. Four.") + chunk_document("d2", "Five. Six.")
    path = tmp_path / "chunks.parquet"
    assert write_chunks(chunks, path) == len(chunks)
    assert read_chunks(path) == chunks
    assert pq.read_schema(path).names == ["doc_id", "chunk_index", "prefix", "text", "start", "end"]


def _write_bad_corpus(path: Path) -> None:
    lines = [
        json.dumps({"id": "good-1", "text": "A fine document. It has two sentences."}).encode(),
        b'{"id": "broken", "text": "no closing brace"',
        json.dumps({"id": "empty", "text": "   "}).encode(),
        b'{"id": "bad-bytes", "text": "caf\xff\xfe"}',
        json.dumps({"id": "no-text", "body": "wrong field"}).encode(),
        json.dumps({"id": "good-2", "text": "Another document."}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_records_are_skipped_counted_and_located(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    _write_bad_corpus(corpus)
    report = SkipReport()
    documents = list(read_documents([corpus], CorpusConfig(), report))
    assert [d.doc_id for d in documents] == ["good-1", "good-2"]
    assert report.total == 4
    assert report.examples[0].startswith(f"{corpus}:2: unparsable JSON")
    assert any(example.startswith(f"{corpus}:4: invalid UTF-8") for example in report.examples)
    assert report.counts["empty document"] == 1


def test_strict_mode_names_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    _write_bad_corpus(corpus)
    with pytest.raises(LatentThoughtsError, match=rf"^{corpus}:2: unparsable JSON"):
        list(read_documents([corpus], CorpusConfig(strict=True)))


def test_reads_parquet_text_files_and_folders(tmp_path: Path) -> None:
    table = pa.table({"uid": ["p1", "p2"], "content": ["Parquet one.", "Parquet two."]})
    pq.write_table(table, tmp_path / "docs.parquet")
    folder = tmp_path / "tex"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.tex").write_text("\\section{A} Text of a.")
    (folder / "sub" / "b.md").write_text("# B\n\nText of b.")
    (folder / "ignored.pdf").write_bytes(b"%PDF")
    config = CorpusConfig(text_field="content", id_field="uid")
    parquet_docs = list(read_documents([tmp_path / "docs.parquet"], config))
    assert [(d.doc_id, d.text) for d in parquet_docs] == [("p1", "Parquet one."), ("p2", "Parquet two.")]
    folder_docs = list(read_documents([folder]))
    assert [d.doc_id for d in folder_docs] == ["a.tex", "sub/b.md"]


def test_unknown_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LatentThoughtsError, match="no such file"):
        list(read_documents([tmp_path / "missing.jsonl"]))
    odd = tmp_path / "data.csv"
    odd.write_text("a,b")
    with pytest.raises(LatentThoughtsError, match="unknown corpus format"):
        list(read_documents([odd]))


def test_repeated_ids_are_skipped(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": 1, "text": "x."}\n{"id": 1, "text": "y."}\n{"text": "z."}\n')
    report = SkipReport()
    docs = list(read_documents([corpus], report=report))
    assert [d.doc_id for d in docs] == ["1", "c:3"]
    assert report.counts["repeated id '1'"] == 1


def test_a_huge_paragraph_is_cut_into_pieces_that_concatenate_back() -> None:
    paragraph = "Word " * 30_000 + "end. " + "More words follow here. " * 4_000  # 240,000 characters
    notes = SplitNotes()
    units = sentence_units(paragraph, notes)
    assert "".join(units) == paragraph
    assert max(len(unit) for unit in units) <= MAX_PARAGRAPH_CHARS
    assert "cut into pieces" in notes.summary()


def test_punkt_timing_out_falls_back_to_the_plain_rule_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NLTK runs Punkt's expressions under a wall-clock limit; a huge paragraph used to lose the run."""
    import nltk.redos

    monkeypatch.setattr(nltk.redos, "DEFAULT_TIMEOUT", 1e-6)  # what a 2.6 MB paragraph hits at 5 s
    text = "First sentence here. Second one follows! A third? " * 50
    notes = SplitNotes()
    chunks, _ = split_document("doc", text, ChunkConfig(mean_sentences=2), notes)
    assert "".join(chunk.text for chunk in chunks) == text
    assert len(sentence_units(text)) == 150
    assert "fallback" in notes.summary()


def test_records_with_a_lone_surrogate_or_an_object_id_are_skipped(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"id": "a", "text": "Bad \\udc80 text."}\n{"id": "\\ud800", "text": "Fine."}\n'
        '{"id": {"x": 1}, "text": "Fine."}\n{"id": "d", "text": "Fine."}\n'
    )
    report = SkipReport()
    assert [d.doc_id for d in read_documents([corpus], report=report)] == ["d"]
    assert report.total == 3 and "lone surrogate" in report.summary()


def test_a_chunk_file_of_wrong_types_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "chunks.parquet"
    pq.write_table(
        pa.table(
            {"doc_id": ["a"], "chunk_index": ["0"], "prefix": [""], "text": ["t"], "start": [0], "end": [1]}
        ),
        path,
    )
    with pytest.raises(LatentThoughtsError, match="chunk_index"):
        read_chunks(path)


def test_writing_no_chunks_when_some_are_required_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chunks.parquet"
    with pytest.raises(NoChunksError):
        write_chunks([], path, require_chunks=True)
    assert list(tmp_path.iterdir()) == []
