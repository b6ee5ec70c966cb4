"""``latent-thoughts chunk INPUT... --out RUN/chunks.parquet``: documents to chunks with prefixes."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from latent_thoughts.cli.flags import add_progress_option
from latent_thoughts.config import load_config
from latent_thoughts.corpus import ChunkStageConfig
from latent_thoughts.outputs import RunPaths


def register(subparsers: Any) -> None:
    """Add the ``chunk`` verb."""
    parser = subparsers.add_parser(
        "chunk",
        help="cut documents into sentence chunks with prefixes",
        description="Read a corpus (JSONL, Parquet, text files or folders) and write one row per chunk.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or folders")
    parser.add_argument("--out", required=True, help="output Parquet file, e.g. runs/NAME/chunks.parquet")
    parser.add_argument("--config", help="YAML file of options (keys: corpus.*, chunking.*)")
    parser.add_argument("--text-field", help="JSONL/Parquet field holding the text (default: text)")
    parser.add_argument("--id-field", help="JSONL/Parquet field holding the document id (default: id)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record")
    parser.add_argument("--tokenizer", help="tokenizer folder; adds token counts to the statistics")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="option overrides")
    add_progress_option(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """What a run reads (the inputs, a file of an input folder included) and writes."""
    return RunPaths(inputs=[*args.inputs, args.config, args.tokenizer], files=[args.out])


@dataclass
class CorpusStatistics:
    """Counts gathered while chunking."""

    documents: int = 0
    chunks: int = 0
    characters: int = 0
    tokens: int = 0
    sentences_per_chunk: list[int] = field(default_factory=list)

    def lines(self, with_tokens: bool) -> list[str]:
        """Human-readable statistics, one per line."""
        sentences = self.sentences_per_chunk or [0]
        mean = sum(sentences) / len(sentences)
        out = [
            f"documents: {self.documents:,}",
            f"chunks: {self.chunks:,} ({self.chunks / max(self.documents, 1):.1f} per document)",
            f"sentences per chunk: mean {mean:.2f}, min {min(sentences)}, max {max(sentences)}",
            f"characters: {self.characters:,} ({self.characters / max(self.chunks, 1):,.0f} per chunk)",
        ]
        if with_tokens:
            out.append(f"tokens: {self.tokens:,} ({self.tokens / max(self.chunks, 1):,.0f} per chunk)")
        return out


def run(args: argparse.Namespace) -> int:
    """Chunk the inputs, write the chunk file and print corpus statistics."""
    from tqdm import tqdm

    from latent_thoughts.corpus import (
        Chunk,
        NoChunksError,
        SkipReport,
        SplitNotes,
        corpus_files,
        count_documents,
        read_documents,
        split_document,
        write_chunks,
    )

    overrides = list(args.set)
    if args.text_field:
        overrides.append(f"corpus.text_field={args.text_field}")
    if args.id_field:
        overrides.append(f"corpus.id_field={args.id_field}")
    if args.strict:
        overrides.append("corpus.strict=true")
    config = load_config(ChunkStageConfig, args.config, overrides)
    tokenizer = None
    if args.tokenizer:
        from latent_thoughts.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)

    started = time.perf_counter()
    files = corpus_files(args.inputs)
    report = SkipReport()
    notes = SplitNotes()
    stats = CorpusStatistics()
    progress = tqdm(
        total=count_documents(files),
        unit="doc",
        desc="chunking",
        dynamic_ncols=True,
        disable=args.no_progress,
    )

    def chunks() -> Iterator[Chunk]:
        for document in read_documents(files, config.corpus, report):
            stats.documents += 1
            stats.characters += len(document.text)
            document_chunks, sentences = split_document(
                document.doc_id, document.text, config.chunking, notes
            )
            stats.chunks += len(document_chunks)
            stats.sentences_per_chunk.extend(sentences)
            for chunk in document_chunks:
                if tokenizer is not None:
                    stats.tokens += len(tokenizer.encode(chunk.text, add_special_tokens=False))
                yield chunk
            progress.update(1)

    try:
        written = write_chunks(chunks(), args.out, require_chunks=True)
    except NoChunksError as exc:
        # Say why nothing was written: every record was skipped, or the input holds none.
        raise NoChunksError(f"{exc}; {report.summary() or 'the inputs hold no documents'}") from None
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    print(f"wrote {written:,} chunks -> {args.out}")
    for line in stats.lines(with_tokens=tokenizer is not None):
        print(line)
    if report.total:
        print(report.summary())
    if notes.total:
        print(notes.summary())
    print(f"time: {elapsed:.1f} s")
    return 0
