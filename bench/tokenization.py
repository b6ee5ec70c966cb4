"""Text tokens of thought documents versus the plain document, before and after whole-text tokenization.

For every document of the corpus (default: the 1,308 documents of ``../shared/corpus``), chunked with
the default chunking, and for each tokenizer (the shared Llama-2 SentencePiece tokenizer and a
byte-level BPE of 8,192 ids trained here on the corpus), this compares the text tokens that a thought
document puts in its text spans with the tokens of ``DocumentBuilder.build_plain`` on the same text:

- before: each chunk encoded on its own (what ``DocumentBuilder.build`` did before issue 9);
- after: the document tokenized once and cut at the chunks' character offsets
  (:func:`latent_thoughts.format.tokenize_chunks`, what ``build`` does now).

A differing token is one left unmatched by a per-chunk alignment (``difflib``, no junk heuristic)
between the chunk's text-span tokens and the plain document's tokens of that chunk, counted on both
sides (an extra token counts 1, a replaced one 2). Also printed: documents with any difference,
tokens that straddle a chunk boundary (each in one chunk, never doubled), and documents whose
decoded text spans are not the text byte for byte.

    .venv/bin/python bench/tokenization.py [--corpus FILE] [--limit N] [--bpe-vocab N]
"""

from __future__ import annotations

import argparse
import difflib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_thoughts.corpus import chunk_document, read_documents
from latent_thoughts.format import encode_text, tokenize_chunks
from latent_thoughts.tokenizer import add_latent_tokens, load_tokenizer, train_bpe_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@dataclass
class Counts:
    """Differences of one way of tokenizing against the plain document, summed over documents."""

    tokens: int = 0
    plain_tokens: int = 0
    differing: int = 0
    documents_differing: int = 0
    straddling: int = 0
    round_trip_failures: int = 0

    def line(self, name: str) -> str:
        straddling = f", {self.straddling:,} straddling tokens" if name == "after" else ""
        return (
            f"  {name:6s} {self.differing:>9,} differing tokens, {self.documents_differing:>5,} documents differ, "
            f"{self.tokens:>10,} text tokens vs {self.plain_tokens:,} plain, "
            f"{self.round_trip_failures} decode mismatches{straddling}"
        )


def differing(a: list[int], b: list[int]) -> int:
    """Tokens of ``a`` and ``b`` left unmatched by their alignment (0 when equal)."""
    if a == b:
        return 0
    matched = sum(
        block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    )
    return len(a) + len(b) - 2 * matched


def compare(tokenizer: Any, documents: list[list[str]]) -> tuple[Counts, Counts]:
    """Counts for per-chunk encoding (before) and whole-text tokenization cut at offsets (after)."""
    before, after = Counts(), Counts()
    for chunks in documents:
        text = "".join(chunks)
        plain = encode_text(tokenizer, text)
        cut = tokenize_chunks(tokenizer, chunks)
        old = [encode_text(tokenizer, chunk) for chunk in chunks]
        for counts, spans in ((before, old), (after, cut.ids)):
            flat = [token for span in spans for token in span]
            counts.tokens += len(flat)
            counts.plain_tokens += len(plain)
            if flat != plain:
                counts.documents_differing += 1
                counts.differing += sum(differing(a, b) for a, b in zip(spans, cut.ids, strict=True))
            if tokenizer.decode(flat, clean_up_tokenization_spaces=False) != text:
                counts.round_trip_failures += 1
        after.straddling += cut.straddling
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "math_textbooks.jsonl")
    parser.add_argument("--llama2", type=Path, default=SHARED / "tokenizers" / "llama2")
    parser.add_argument("--limit", type=int, help="only the first N documents")
    parser.add_argument("--bpe-vocab", type=int, default=8192, help="size of the byte-level BPE trained here")
    args = parser.parse_args()

    started = time.perf_counter()
    texts = [document for document in read_documents([args.corpus])][: args.limit]
    documents = [[chunk.text for chunk in chunk_document(doc.doc_id, doc.text)] for doc in texts]
    print(
        f"corpus: {args.corpus.name}, {len(documents):,} documents, {sum(map(len, documents)):,} chunks "
        f"({time.perf_counter() - started:.1f} s to read and chunk)"
    )
    llama2 = load_tokenizer(args.llama2)
    bpe = train_bpe_tokenizer((doc.text for doc in texts), vocab_size=args.bpe_vocab)
    for name, tokenizer in (("Llama-2 SentencePiece", llama2), (f"byte-level BPE {args.bpe_vocab}", bpe)):
        add_latent_tokens(tokenizer)
        started = time.perf_counter()
        before, after = compare(tokenizer, documents)
        print(f"{name} ({time.perf_counter() - started:.1f} s):")
        print(before.line("before"))
        print(after.line("after"))


if __name__ == "__main__":
    main()
