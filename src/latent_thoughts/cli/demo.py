"""``latent-thoughts demo``: the pipeline on the built-in small setup, end to end on a CPU."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` verb."""
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on the built-in small setup",
        description="Chunk the built-in sample corpus and build thought-augmented training windows.",
    )
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.set_defaults(handler=run)


def sample_corpus_path() -> Path:
    """The small sample corpus shipped inside the package."""
    return Path(str(resources.files("latent_thoughts") / "data" / "sample_corpus.jsonl"))


def run(args: argparse.Namespace) -> int:
    """Chunk the sample corpus, build training documents and pack them; say what was done."""
    from latent_thoughts.corpus import (
        ChunkConfig,
        chunk_document,
        group_by_document,
        read_chunks,
        read_documents,
        write_chunks,
    )
    from latent_thoughts.format import DocumentBuilder, FormatConfig, pack_documents
    from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

    out = Path(args.out)
    corpus = sample_corpus_path()
    documents = list(read_documents([corpus]))
    config = ChunkConfig(mean_sentences=2)
    chunk_file = out / "chunks.parquet"
    count = write_chunks((c for d in documents for c in chunk_document(d.doc_id, d.text, config)), chunk_file)
    print(f"1. chunked {len(documents)} built-in documents into {count} chunks -> {chunk_file}")

    tokenizer = train_bpe_tokenizer((d.text for d in documents), vocab_size=512)
    add_latent_tokens(tokenizer)
    print(f"2. trained a byte-level BPE tokenizer: {len(tokenizer)} ids with the four latent tokens")

    builder = DocumentBuilder(tokenizer, FormatConfig(seq_len=256))
    built = []
    for doc_id, chunks in group_by_document(read_chunks(chunk_file)).items():
        placeholder = [f"(thought for chunk {c.chunk_index})" for c in chunks]
        built.append(builder.build(doc_id, [c.text for c in chunks], placeholder))
    windows = list(pack_documents((d.input_ids for d in built), 256, tokenizer.pad_token_id))
    layouts = [layout.value for d in built for layout in d.layouts]
    print(
        f"3. built {len(built)} training documents ({layouts.count('prior')} prior, "
        f"{layouts.count('posterior')} posterior chunks) and packed them into {len(windows)} windows of 256"
    )
    first = str(tokenizer.decode(built[0].input_ids))
    print("   first document:", first[:300].replace("\n", " "), "...")
    return 0
