"""``latent-thoughts demo``: the whole pipeline on the built-in testbed world, on a CPU, in minutes.

The demo runs the real command-line verbs one after the other and prints each command first, so a
reader can repeat any step by hand:

1. ``testbed generate``: a procedural world of compressed math documents with ground-truth thoughts;
2. ``chunk``: the bootstrap split cut into chunks with the testbed's chunking (``chunk.yaml``: one
   sentence a chunk, so a question and the sentence that resolves it fall in separate chunks);
3. ``synthesize``: the oracle teacher writes a thought for every chunk (cached, resumable);
4. ``testbed check`` and ``thoughts``: the thoughts' validity, and one document with its thoughts;
5. ``train`` twice: a small Llama from scratch on raw documents and on the same documents with
   thoughts, at the same number of training tokens;
6. ``evaluate``: held-out problems, raw mode for the raw model, latent mode (and raw mode) for the
   thought model; a table, ``results.json`` and a bar chart ``accuracy.png``.

Every step writes into the run folder and is skipped or resumed when its output is already there,
so a second ``make demo`` is quick.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

import yaml

DEMO_WORLD = [
    "bootstrap_documents=200",
    "warm_start_documents=20",
    "validation_documents=10",
    "eval_problems=100",
]


def register(subparsers: Any) -> None:
    """Add the ``demo`` verb."""
    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline end to end on the built-in testbed world",
        description=(
            "Generate the testbed world, chunk it, have the oracle teacher write thoughts, train a raw "
            "and a thought-augmented model from scratch at matched tokens, and evaluate both."
        ),
    )
    parser.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument("--tokens", default="400k", help="training tokens per model (default: 400k)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and of training")
    parser.set_defaults(handler=run)


def _step(title: str, argv: list[str]) -> None:
    """Print and run one ``latent-thoughts`` command; a failing step stops the demo."""
    from latent_thoughts.cli import main
    from latent_thoughts.errors import LatentThoughtsError

    print(f"\n== {title}\n$ latent-thoughts {shlex.join(argv)}", flush=True)
    status = main(argv)
    if status != 0:
        raise LatentThoughtsError(f"demo step failed ({title}): latent-thoughts {shlex.join(argv)}")


def train_config(out: Path, arm: str, tokens: str, seed: int) -> dict[str, Any]:
    """The training run of one arm: identical for both arms except the data source."""
    chunks = str(out / "chunks.parquet")
    source: dict[str, Any] = {"kind": "raw", "chunks": chunks}
    if arm == "thoughts":
        source = {"kind": "thoughts", "chunks": chunks, "thoughts": str(out / "thoughts" / "oracle.parquet")}
    return {
        "output_dir": str(out / arm),
        "seed": seed,
        "model": {
            "tokenizer": str(out / "tokenizer"),
            "scratch": {
                "hidden_size": 128,
                "num_layers": 4,
                "num_heads": 4,
                "num_kv_heads": 4,
                "intermediate_size": 352,
                "max_position_embeddings": 512,
            },
        },
        "data": {"sources": [source], "format": {"seq_len": 256, "seed": seed}},
        "budget": {"tokens": tokens},
        "optim": {"lr": 2e-3, "warmup_steps": 20, "global_batch": 16, "micro_batch": 16},
        "logging_steps": 25,
        "save_steps": 100,
        "save_total_limit": 1,
    }


def shared_tokenizer(out: Path) -> Path:
    """One BPE for both arms, trained on the raw text and the thoughts, so token budgets match."""
    import pyarrow.parquet as pq

    from latent_thoughts.corpus import read_chunks
    from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

    folder = out / "tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        texts = [chunk.text for chunk in read_chunks(out / "chunks.parquet")]
        texts += pq.read_table(out / "thoughts" / "oracle.parquet", columns=["thought"]).column(0).to_pylist()
        tokenizer = train_bpe_tokenizer(texts, vocab_size=1024)
        add_latent_tokens(tokenizer)
        tokenizer.save_pretrained(folder)
    return folder


def plot_accuracy(results: dict[str, float], path: Path) -> None:
    """A bar chart of accuracy per (model, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    names = list(results)
    labels = [name.replace(", ", "\n") for name in names]
    bars = axis.bar(labels, [results[name] * 100 for name in names], color=["#888888", "#3b7dd8", "#9cbce8"])
    axis.bar_label(bars, fmt="%.1f%%")
    axis.set_ylabel("exact-match accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title("Testbed: held-out problems, same training tokens")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    """Run every step of the demo and print a results table."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed = [f"seed={args.seed}"]
    _step(
        "1. generate the testbed world",
        ["testbed", "generate", "--out", str(out / "testbed"), *DEMO_WORLD, *seed],
    )
    _step(
        "2. cut the bootstrap split into chunks",
        [
            "chunk",
            str(out / "testbed" / "bootstrap.jsonl"),
            "--out",
            str(out / "chunks.parquet"),
            "--config",
            str(out / "testbed" / "chunk.yaml"),
        ],
    )
    teacher = out / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"kind": "oracle", "oracle": {"noise": 0.0, "seed": args.seed}}))
    thoughts = out / "thoughts" / "oracle.parquet"
    _step(
        "3. the oracle teacher writes one thought per chunk",
        [
            "synthesize",
            "--chunks",
            str(out / "chunks.parquet"),
            "--teacher",
            str(teacher),
            "--out",
            str(thoughts),
        ],
    )
    _step(
        "4a. check the thoughts' arithmetic",
        ["testbed", "check", str(thoughts), "--chunks", str(out / "chunks.parquet")],
    )
    first_doc = json.loads((out / "testbed" / "bootstrap.jsonl").read_text().splitlines()[0])["id"]
    _step(
        "4b. one document with its thoughts",
        [
            "thoughts",
            "--chunks",
            str(out / "chunks.parquet"),
            "--thoughts",
            str(thoughts),
            "--doc",
            first_doc,
        ],
    )
    shared_tokenizer(out)
    for arm in ("raw", "thoughts"):
        config_path = out / f"train-{arm}.yaml"
        config_path.write_text(
            yaml.safe_dump(train_config(out, arm, args.tokens, args.seed), sort_keys=False)
        )
        _step(
            f"5. train a model from scratch on {arm} data",
            ["train", "--config", str(config_path), "--resume"],
        )

    problems = str(out / "testbed" / "eval.jsonl")
    runs = {"raw model, raw mode": ("raw", "raw"), "thought model, latent mode": ("thoughts", "latent")}
    runs["thought model, raw mode"] = ("thoughts", "raw")
    accuracies: dict[str, float] = {}
    for label, (arm, mode) in runs.items():
        result_file = out / f"eval-{arm}-{mode}.json"
        model_dir = str(out / arm / "model")
        _step(
            f"6. evaluate: {label}",
            ["evaluate", model_dir, "--problems", problems, "--mode", mode, "--out", str(result_file)],
        )
        accuracies[label] = json.loads(result_file.read_text())["accuracy"]

    (out / "results.json").write_text(json.dumps(accuracies, indent=2) + "\n")
    plot_accuracy(accuracies, out / "accuracy.png")
    print("\n== results (held-out testbed problems, exact match, same training tokens per model)")
    print("| model and prompting | accuracy |\n| --- | --- |")
    for label, value in accuracies.items():
        print(f"| {label} | {value:.3f} |")
    print(
        f"wrote {out / 'results.json'} and {out / 'accuracy.png'}; total time {time.perf_counter() - started:.0f} s"
    )
    return 0
