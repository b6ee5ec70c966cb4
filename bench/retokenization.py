"""How often the M-step of an E-step made before samples files carried ``thought_ids`` trained on
other ids than the ones the E-step weighted: the selected thought's text, encoded as the trainer
encodes a thought, against the sampled ids in the E-step's cache.

    .venv/bin/python bench/retokenization.py runs/bench/bolt_cpu/seed0_k4/iter_1/samples.parquet \\
        --tokenizer runs/bench/bolt_cpu/warm_start/data/tokenizer
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq

from latent_thoughts.em.stage import ChunkSamples
from latent_thoughts.format import DocumentBuilder, FormatConfig, SpecialIds
from latent_thoughts.generation.cache import CacheRecord
from latent_thoughts.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("samples", type=Path, help="an E-step samples.parquet with its NAME.cache/ beside it")
    parser.add_argument("--tokenizer", type=Path, required=True)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    builder = DocumentBuilder(tokenizer, FormatConfig())
    eol = SpecialIds.from_tokenizer(tokenizer).eol
    weighted: dict[str, list[list[int]]] = {}
    for path in args.samples.with_suffix(".cache").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = CacheRecord.from_json(line)
            if record.status == "ok":
                weighted[record.key] = ChunkSamples.from_record(record).thought_ids
    rows = pq.read_table(args.samples, columns=["key", "chosen", "thought"]).to_pylist()
    selected = differ = extra_tokens = 0
    for row in rows:
        if row["thought"] is None or row["key"] not in weighted:
            continue
        ids = list(weighted[row["key"]][row["chosen"]])
        ids = ids[:-1] if ids[-1:] == [eol] else ids
        trained = builder.encode_thought(row["thought"])
        selected += 1
        differ += trained != ids
        extra_tokens += len(trained) - len(ids)
    print(
        f"{args.samples}: {differ:,} of {selected:,} selected thoughts ({differ / max(selected, 1):.1%}) "
        f"re-tokenize to other ids than the weighted ones; {extra_tokens:+,} tokens in all"
    )


if __name__ == "__main__":
    main()
