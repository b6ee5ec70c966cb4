"""A thoughts source that covers only part of its chunks is warned about and its coverage recorded.

The chunks are real chunks of the shared textbook corpus and the tokenizer the shared Llama-2 one;
the thoughts file has the shape ``synthesize`` writes when most answers were cut and left raw: a row
per chunk, the thought null for all but three. Those chunks train as raw text, which the trainer
must say (a warning naming the source and its share) and record (``metrics.json``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latent_thoughts.corpus import chunk_document, read_documents, write_chunks
from latent_thoughts.train import SourceConfig, TrainConfig, train
from latent_thoughts.train.data import read_sources
from tests.conftest import SHARED

LLAMA2 = SHARED / "tokenizers" / "llama2"
CORPUS = SHARED / "corpus" / "math_textbooks.jsonl"
pytestmark = pytest.mark.skipif(
    not (LLAMA2 / "tokenizer.model").exists() or not CORPUS.exists(),
    reason="shared Llama-2 tokenizer or corpus not present",
)
WITH_THOUGHT = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, int]:
    """A chunk file of 20 textbook documents, a thoughts file with a thought for three of its chunks
    (null for the rest), one with a thought for every chunk, and the number of chunks."""
    folder = tmp_path_factory.mktemp("coverage")
    documents = [doc for doc in read_documents([CORPUS]) if len(doc.text) < 8000][:20]
    chunks = [chunk for doc in documents for chunk in chunk_document(doc.doc_id, doc.text)]
    write_chunks(chunks, folder / "chunks.parquet")
    for name, covered in (("partial", WITH_THOUGHT), ("full", len(chunks))):
        rows = [
            {
                "doc_id": chunk.doc_id,
                "chunk_index": chunk.chunk_index,
                "thought": f"The step behind chunk {chunk.chunk_index}." if i < covered else None,
                "finish_reason": "stop" if i < covered else "length",
            }
            for i, chunk in enumerate(chunks)
        ]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    return folder / "chunks.parquet", folder / "partial.parquet", folder / "full.parquet", len(chunks)


def source(chunks: Path, thoughts: Path, name: str) -> SourceConfig:
    return SourceConfig(kind="thoughts", chunks=str(chunks), thoughts=str(thoughts), name=name)


def test_a_partly_covered_thoughts_source_is_warned_about_by_name_and_share(
    files: tuple[Path, Path, Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    chunks, partial, full, total = files
    assert total > 20 * WITH_THOUGHT
    with caplog.at_level(logging.INFO, logger="latent_thoughts.train.data"):
        read_sources([source(chunks, partial, "teacher-3pct"), source(chunks, full, "teacher-all")])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    share = 100 * WITH_THOUGHT / total
    assert warnings == [
        f"thoughts source teacher-3pct: {WITH_THOUGHT} of {total} chunks ({share:.1f}%) have a thought; "
        f"the other {total - WITH_THOUGHT} train as raw text (below 90%: check the thoughts file's failures)"
    ]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert (
        f"thoughts source teacher-all: {total} of {total} chunks (100.0%) have a thought; the other 0 train as raw text"
        in infos
    )


def test_the_coverage_of_each_thoughts_source_is_in_metrics_json(
    files: tuple[Path, Path, Path, int], tmp_path: Path
) -> None:
    chunks, partial, _, total = files
    config = TrainConfig.model_validate(
        {
            "output_dir": str(tmp_path / "run"),
            "seed": 0,
            "model": {
                "scratch": {
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_heads": 2,
                    "num_kv_heads": 1,
                    "intermediate_size": 32,
                    "max_position_embeddings": 64,
                },
                "tokenizer": str(LLAMA2),
            },
            "data": {
                "sources": [
                    source(chunks, partial, "teacher-3pct").model_dump(),
                    {"kind": "raw", "chunks": str(chunks)},
                ],
                "format": {"seq_len": 64},
            },
            "budget": {"tokens": 2 * 2 * 64},
            "optim": {"lr": 1e-3, "warmup_steps": 0, "global_batch": 2, "micro_batch": 2},
            "precision": "fp32",
            "save_steps": 100,
            "progress_bar": False,
        }
    )
    train(config)
    sources = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["sources"]
    thoughts, raw = sources
    assert (thoughts["name"], thoughts["chunks"], thoughts["chunks_with_thought"]) == (
        "teacher-3pct",
        total,
        WITH_THOUGHT,
    )
    assert thoughts["thought_coverage"] == round(WITH_THOUGHT / total, 4)
    assert raw["chunks"] is None and raw["thought_coverage"] is None
