"""The paper's first experiment on the testbed: raw documents vs the same documents with thoughts.

Two arms train the same scratch Llama from the same seeds for the same number of training tokens:

- ``raw``: the bootstrap split's documents as plain text (repeated as often as the budget needs);
- ``thoughts``: the same documents, chunked the testbed's recommended way (one sentence per chunk,
  :func:`latent_thoughts.testbed.testbed_chunk_config`, so a posing sentence "Consider 73 x 68 + 740."
  and its resolving sentence "It equals 5704." fall in separate chunks), with the oracle teacher's
  thought for every chunk, in the prior/posterior layouts of METHOD section 2.

Each model is evaluated greedily on the held-out problems: the raw arm in raw mode (latent tokens
banned), the thoughts arm in latent mode (``question SOL PRIOR`` -> thought -> answer); the thoughts
arm's raw-mode accuracy is printed too. Over several seeds the script prints mean and standard
deviation per arm and the ratio of the means.

    .venv/bin/python bench/thoughts_vs_raw.py            # default size, about 25 minutes on 2 idle cores
    .venv/bin/python bench/thoughts_vs_raw.py --quick    # a smoke run, about 2 minutes

The default size follows the issue's calibration point (a Llama of about 1.8 M parameters besides
its embeddings, trained a few minutes on about 2,000 statements): width 192, 4 layers, and 1.5 M
training tokens per run, about 3.5 minutes at about 7,000 tokens a second on 2 idle cores (about
13 passes over the thoughts arm's data, about 50 over the raw arm's). ``--quick`` trains 24 k
tokens: it checks that everything runs, not what the arms learn.

Thoughts come straight from the oracle engine (``TestbedOracle.thought(prefix, chunk)``), which is
what the synthesis stage would write with the oracle as teacher. Both arms share one BPE tokenizer
trained on the raw texts and thoughts, so their token budgets count the same units.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from latent_thoughts.corpus import ChunkConfig, chunk_document, write_chunks
from latent_thoughts.evaluate.testbed import evaluate_model_dir
from latent_thoughts.testbed import (
    TestbedConfig,
    TestbedOracle,
    generate_documents,
    make_eval_problems,
    testbed_chunk_config,
)
from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer
from latent_thoughts.train import TrainConfig, steps_for_tokens, train


def prepare(out: Path, world: TestbedConfig, chunking: ChunkConfig, vocab_size: int) -> dict[str, Path]:
    """Write the bootstrap split's chunks, the oracle's thoughts and a shared tokenizer under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    oracle = TestbedOracle.from_config(world)
    documents = generate_documents(world, "bootstrap")
    chunks = [c for d in documents for c in chunk_document(d.doc_id, d.text, chunking)]
    write_chunks(chunks, out / "chunks.parquet")
    thoughts = [oracle.thought(c.prefix, c.text) for c in chunks]
    rows = {
        "doc_id": [c.doc_id for c in chunks],
        "chunk_index": [c.chunk_index for c in chunks],
        "thought": thoughts,
        "teacher": [oracle.identity] * len(chunks),
    }
    pq.write_table(pa.table(rows), out / "thoughts.parquet")
    tokenizer = train_bpe_tokenizer([*(c.text for c in chunks), *thoughts], vocab_size)
    add_latent_tokens(tokenizer)
    tokenizer.save_pretrained(out / "tokenizer")
    raw_chars = sum(len(c.text) for c in chunks)
    thought_chars = sum(len(t) for t in thoughts)
    print(
        f"bootstrap split: {len(documents)} documents, {len(chunks)} chunks, thoughts "
        f"{thought_chars / raw_chars:.2f}x the raw text in characters"
    )
    return {
        "chunks": out / "chunks.parquet",
        "thoughts": out / "thoughts.parquet",
        "tokenizer": out / "tokenizer",
    }


def arm_config(
    arm: str, seed: int, files: dict[str, Path], out: Path, args: argparse.Namespace
) -> TrainConfig:
    """The training run of one arm and seed: identical except for the data source."""
    source: dict[str, Any] = {"kind": "raw", "chunks": str(files["chunks"])}
    if arm == "thoughts":
        source = {"kind": "thoughts", "chunks": str(files["chunks"]), "thoughts": str(files["thoughts"])}
    steps = steps_for_tokens(args.tokens, args.seq_len, args.batch)
    return TrainConfig.model_validate(
        {
            "output_dir": str(out / f"seed{seed}" / arm),
            "seed": seed,
            "model": {
                "tokenizer": str(files["tokenizer"]),
                "scratch": {
                    "hidden_size": args.width,
                    "num_layers": args.layers,
                    "num_heads": 4,
                    "num_kv_heads": 4,
                    "intermediate_size": args.width * 8 // 3,
                    "max_position_embeddings": args.seq_len,
                },
            },
            "data": {"sources": [source], "format": {"seq_len": args.seq_len}},
            "budget": {"tokens": args.tokens},
            "optim": {
                "lr": args.lr,
                "warmup_steps": min(20, steps // 5),
                "global_batch": args.batch,
                "micro_batch": args.batch,
                "weight_decay": 0.01,
                "betas": [0.9, 0.95],
            },
            "precision": "auto",
            "logging_steps": 50,
            "save_steps": 10_000,
            "progress_bar": False,
        }
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    """Run both arms over the seeds, print the table and write results.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/thoughts_vs_raw")
    parser.add_argument("--quick", action="store_true", help="small budget and fewer problems (~2 minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tokens", type=int, help="training tokens per run (default 1.5M, quick 24k)")
    parser.add_argument("--problems", type=int, help="held-out problems (default 200, quick 40)")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="windows per optimizer step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary shared by both arms")
    parser.add_argument(
        "--mean-sentences",
        type=float,
        help="mean sentences per chunk (default: the testbed's recommended chunking, one sentence)",
    )
    args = parser.parse_args()
    args.tokens = args.tokens or (24_000 if args.quick else 1_500_000)
    problems_count = args.problems or (40 if args.quick else 200)
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    out = Path(args.out)
    world = TestbedConfig(eval_problems=problems_count)
    chunking = testbed_chunk_config(world)
    if args.mean_sentences is not None:
        chunking = ChunkConfig(
            mean_sentences=args.mean_sentences,
            min_sentences=1,
            max_sentences=max(20, int(args.mean_sentences)),
        )
    print(
        f"chunking: mean {chunking.mean_sentences:g}, min {chunking.min_sentences}, "
        f"max {chunking.max_sentences} sentences per chunk"
    )
    files = prepare(out / "data", world, chunking, args.vocab)
    problems = make_eval_problems(world)
    results: list[dict[str, Any]] = []
    for seed in args.seeds:
        for arm in ("raw", "thoughts"):
            config = arm_config(arm, seed, files, out, args)
            clock = time.perf_counter()
            result = train(config, resume=True)
            assert result.model_dir is not None
            train_s = time.perf_counter() - clock
            mode = "latent" if arm == "thoughts" else "raw"
            scored = evaluate_model_dir(result.model_dir, problems, mode)
            row = {
                "arm": arm,
                "seed": seed,
                "mode": mode,
                "accuracy": scored.accuracy,
                "tokens": result.tokens,
                "train_loss": result.metrics.get("train_loss"),
                "train_s": round(train_s, 1),
                "tokens_per_second": result.metrics.get("tokens_per_second"),
                "epochs": result.metrics.get("data", {}).get("sources", [{}])[0].get("epochs"),
                "example": scored.generations[0],
            }
            if arm == "thoughts":
                row["raw_mode_accuracy"] = evaluate_model_dir(result.model_dir, problems, "raw").accuracy
            results.append(row)
            print(
                f"seed {seed} {arm:8s} ({mode} mode): accuracy {scored.accuracy:.3f}, train loss "
                f"{row['train_loss']:.3f}, {row['epochs']:.1f} epochs of its data, {train_s:.0f}s",
                flush=True,
            )

    print()
    print(
        f"Testbed, {len(problems)} held-out problems, {args.tokens:,} training tokens per run "
        f"(scratch Llama width {args.width}, {args.layers} layers), seeds {args.seeds}"
    )
    print("| arm | eval mode | accuracy mean ± std | per seed |")
    print("| --- | --- | --- | --- |")
    means = {}
    for arm, mode, key in (
        ("raw", "raw", "accuracy"),
        ("thoughts", "latent", "accuracy"),
        ("thoughts", "raw", "raw_mode_accuracy"),
    ):
        values = [row[key] for row in results if row["arm"] == arm]
        mean, std = mean_std(values)
        means[(arm, mode)] = mean
        print(f"| {arm} | {mode} | {mean:.3f} ± {std:.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    raw_mean, thought_mean = means[("raw", "raw")], means[("thoughts", "latent")]
    ratio = f"{thought_mean / raw_mean:.2f}" if raw_mean > 0 else "undefined (raw mean is 0)"
    print(f"ratio thoughts (latent) / raw: {ratio}")
    print(f"total time {time.perf_counter() - started:.0f}s")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
