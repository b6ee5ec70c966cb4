"""``latent-thoughts demo``: the whole pipeline on the built-in testbed world, on a CPU, in minutes.

The demo runs the real command-line verbs one after the other and prints each command first, so a
reader can repeat any step by hand:

1. ``testbed generate``: a procedural world of compressed math documents with ground-truth thoughts;
2. ``chunk``: the bootstrap split cut into chunks with the testbed's chunking (``chunk.yaml``: one
   sentence a chunk, so a question and the sentence that resolves it fall in separate chunks);
3. ``synthesize``: the oracle teacher writes a thought for every chunk (cached, resumable);
4. ``testbed check`` and ``thoughts``: the thoughts' validity, and one document with its thoughts;
5. ``train`` twice, side by side (one process each, on half the cores, as ``bench/thoughts_vs_raw.py``
   trains them): a small Llama from scratch on raw documents and on the same documents with
   thoughts, at the same number of training tokens, with the testbed recipe
   (:mod:`latent_thoughts.recipes.testbed`; ``docs/testbed.md`` says how it was chosen);
6. ``evaluate``: held-out problems, raw mode for the raw model, latent mode (and raw mode) for the
   thought model; a table (with the share of true arithmetic claims in the thought model's
   thoughts), ``results.json`` and a bar chart ``accuracy.png``;
7. the E-step of a miniature EM iteration (``estep``): the thought model proposes K thoughts for
   each chunk of the held-out documents and importance resampling keeps one; the checker compares
   the sampled thoughts with the selected ones (the M-step, another training run, does not fit the
   demo's minutes: ``latent-thoughts em`` runs whole iterations);
8. ``report``: ``report.html``, one page with the results, the plots and every document with its
   thoughts and the E-step's samples.

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

from latent_thoughts.atomic import write_json, write_text
from latent_thoughts.cli.flags import add_options_file, add_progress_option
from latent_thoughts.cli.numbers import non_negative_int
from latent_thoughts.outputs import RunPaths

RECIPE_WORLD = ["bootstrap_documents=2000"]
"""The testbed recipe's world (``TestbedRecipe().world``): the default world with more documents."""

DEFAULT_TOKENS = "2.5M"
"""Training tokens per model: side by side, the two models train in 4.6 minutes on 2 cores with
native bf16 (9 k tokens/s each) and in about 7 on 2 cores that train in fp32 (5.8 k tokens/s each,
``docs/testbed.md``), so the whole demo stays within 10 minutes on either; 3 M would not on the second."""

ESTEP_K = 4
"""Thoughts the miniature E-step samples per chunk (the paper's K)."""

ESTEP_MAX_THOUGHT_TOKENS = 64
"""The miniature E-step's thought budget (the testbed EM runs' own)."""

ESTEP_DOCUMENTS = 8
"""Held-out documents the miniature E-step writes thoughts for (about 120 chunks: a minute here)."""


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
    parser.add_argument(
        "--tokens", default=DEFAULT_TOKENS, help=f"training tokens per model (default: {DEFAULT_TOKENS})"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the world and of training")
    add_options_file(parser, "demo options")
    add_progress_option(parser)
    parser.set_defaults(handler=run, run_paths=run_paths)


def run_paths(args: argparse.Namespace) -> RunPaths:
    """The options file read; the run folder written (each step, a verb of its own, is checked again
    when it runs)."""
    return RunPaths(inputs=[args.config], folders=[args.out])


def _step(title: str, argv: list[str]) -> None:
    """Print and run one ``latent-thoughts`` command; a failing step stops the demo."""
    from latent_thoughts.cli import main
    from latent_thoughts.errors import LatentThoughtsError

    print(f"\n== {title}\n$ latent-thoughts {shlex.join(argv)}", flush=True)
    status = main(argv)
    if status != 0:
        raise LatentThoughtsError(f"demo step failed ({title}): latent-thoughts {shlex.join(argv)}")


def write_train_config(out: Path, arm: str, tokens: str, seed: int) -> Path:
    """The recipe's training run of one arm as a YAML file for ``latent-thoughts train``."""
    from latent_thoughts.config import dump_config
    from latent_thoughts.recipes.testbed import RecipeData, TestbedRecipe, train_config

    recipe = TestbedRecipe.model_validate({"tokens": tokens})
    data = RecipeData(out / "chunks.parquet", out / "thoughts" / "oracle.parquet", out / "tokenizer")
    config = train_config(recipe, arm, seed, data, out / arm, logging_steps=100)  # type: ignore[arg-type]
    path = out / f"train-{arm}.yaml"
    write_text(path, dump_config(config))
    return path


def shared_tokenizer(out: Path) -> Path:
    """The recipe's BPE for both arms, trained on the raw text and the thoughts (token budgets match)."""
    import pyarrow.parquet as pq

    from latent_thoughts.corpus import read_chunks
    from latent_thoughts.recipes.testbed import TestbedRecipe, train_shared_tokenizer

    folder = out / "tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        texts = [chunk.text for chunk in read_chunks(out / "chunks.parquet")]
        texts += pq.read_table(out / "thoughts" / "oracle.parquet", columns=["thought"]).column(0).to_pylist()
        train_shared_tokenizer(TestbedRecipe(), texts, folder)
    return folder


def run(args: argparse.Namespace) -> int:
    """Run every step of the demo and print a results table."""
    from latent_thoughts.report.evaluations import demo_table
    from latent_thoughts.report.plots import plot_accuracy
    from latent_thoughts.report.tables import markdown
    from latent_thoughts.synthesis.teachers import write_oracle_teacher

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed = [f"seed={args.seed}"]
    quiet = ["--no-progress"] if args.no_progress else []
    _step(
        "1. generate the testbed world",
        ["testbed", "generate", "--out", str(out / "testbed"), "--set", *RECIPE_WORLD, *seed],
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
            *quiet,
        ],
    )
    teacher = write_oracle_teacher(out / "teacher.yaml", noise=0.0, seed=args.seed)
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
            *quiet,
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
    configs = {arm: write_train_config(out, arm, args.tokens, args.seed) for arm in ("raw", "thoughts")}
    train_side_by_side(
        "5. train two models from scratch, side by side: on raw data and on data with thoughts",
        out,
        configs,
        progress=not args.no_progress,
    )

    problems = str(out / "testbed" / "eval.jsonl")
    runs = {"raw model, raw mode": ("raw", "raw"), "thought model, latent mode": ("thoughts", "latent")}
    runs["thought model, raw mode"] = ("thoughts", "raw")
    accuracies: dict[str, float] = {}
    true_claims = ""
    for label, (arm, mode) in runs.items():
        result_file = out / f"eval-{arm}-{mode}.json"
        model_dir = str(out / arm / "model")
        _step(
            f"6. evaluate: {label}",
            [
                "evaluate",
                model_dir,
                "--problems",
                problems,
                "--mode",
                mode,
                "--out",
                str(result_file),
                *quiet,
            ],
        )
        record = json.loads(result_file.read_text())
        accuracies[label] = record["accuracy"]
        if mode == "latent":
            true_claims = f"{record['true_claim_share']:.1%} of its thoughts' arithmetic claims are true"
        problem_count = record["total"]

    write_json(out / "results.json", accuracies)
    title = f"Testbed: {problem_count} held-out problems, {args.tokens} training tokens per model, seed {args.seed}"
    plot_accuracy(accuracies, out / "accuracy.png", title)
    print(f"\n== results: {title} (one seed; bench/thoughts_vs_raw.py runs three)")
    print(markdown(demo_table(accuracies)))
    print(f"thought model: {true_claims} (testbed checker)")
    print(
        "Three seeds at this budget, with every arm of the paper's comparison (Raw-Repeat, Raw-Fresh, WRAP-Orig, "
        "WRAP-CoT): bench/experiment_a.py; at 4 M tokens: bench/thoughts_vs_raw.py (docs/testbed.md has both)."
    )
    miniature_estep(out, args.seed, quiet)
    report = out / "report.html"
    _step(
        "8. the report: results, plots, documents with their thoughts",
        ["report", str(out), "--out", str(report)],
    )
    print(f"\nwrote {out / 'results.json'}, {out / 'accuracy.png'} and {report}")
    print(f"open the report: {report.resolve().as_uri()} (or: latent-thoughts view {out})")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


def miniature_estep(out: Path, seed: int, quiet: list[str]) -> None:
    """The E-step of one EM iteration over the held-out documents' chunks: K thoughts sampled per
    chunk by the thought model, one kept by importance resampling; prints the checker's verdict on
    the sampled against the selected thoughts (``estep/quality.json``)."""
    from latent_thoughts.report.evaluations import sample_quality_table
    from latent_thoughts.report.tables import markdown
    from latent_thoughts.report.thought_checks import sample_quality

    folder = out / "estep"
    chunks, samples = folder / "chunks.parquet", folder / "samples.parquet"
    documents = folder / "documents.jsonl"
    held_out = (out / "testbed" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    write_text(documents, "".join(f"{line}\n" for line in held_out[:ESTEP_DOCUMENTS]))
    _step(
        f"7a. a miniature EM iteration's E-step: cut {ESTEP_DOCUMENTS} held-out documents into chunks",
        [
            "chunk",
            str(documents),
            "--out",
            str(chunks),
            "--config",
            str(out / "testbed" / "chunk.yaml"),
            *quiet,
        ],
    )
    _step(
        f"7b. the thought model proposes {ESTEP_K} thoughts per chunk; importance resampling keeps one",
        [
            "estep",
            str(out / "thoughts" / "model"),
            "--chunks",
            str(chunks),
            "--k",
            str(ESTEP_K),
            "--max-thought-tokens",
            str(ESTEP_MAX_THOUGHT_TOKENS),
            "--seed",
            str(seed),
            "--out",
            str(samples),
            *quiet,
        ],
    )
    quality = sample_quality(samples)
    write_json(folder / "quality.json", quality)
    print(markdown(sample_quality_table(quality)))
    print(
        "selection at work when the selected thoughts beat the sampled ones; an M-step would retrain on them"
    )


def train_side_by_side(title: str, out: Path, configs: dict[str, Path], progress: bool) -> None:
    """Train each config in a process of its own, all at once, each on an equal share of the cores
    (two small models train more tokens per second side by side than one after the other on both
    cores); one bar over all of them, from each run's ``progress.json``; each run's log in
    ``ARM/train.log``. A failed run stops the demo with the end of its log."""
    import os
    import subprocess
    import sys

    from tqdm import tqdm

    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.train.config import parse_token_count

    threads = max(1, (os.cpu_count() or 1) // len(configs))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print(f"\n== {title}", flush=True)
    runs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    budgets: dict[str, int] = {}
    try:
        for arm, config in configs.items():
            argv = ["train", "--config", str(config), "--resume", "--no-progress"]
            log = out / arm / "train.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"$ OMP_NUM_THREADS={threads} latent-thoughts {shlex.join(argv)} > {log} 2>&1", flush=True)
            budgets[arm] = parse_token_count(yaml.safe_load(config.read_text())["budget"]["tokens"])
            with log.open("wb") as handle:
                command = [sys.executable, "-m", "latent_thoughts", *argv]
                runs[arm] = (subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env), log)
        bar = tqdm(
            total=sum(budgets.values()), unit="tok", unit_scale=True, desc="training", disable=not progress
        )
        with bar:
            while any(process.poll() is None for process, _ in runs.values()):
                time.sleep(1.0)
                bar.update(sum(_trained_tokens(out / arm, budgets[arm]) for arm in runs) - bar.n)
            bar.update(sum(_trained_tokens(out / arm, budgets[arm]) for arm in runs) - bar.n)
    finally:
        for process, _ in runs.values():
            if process.poll() is None:
                process.terminate()
                process.wait()
    for arm, (process, log) in runs.items():
        if process.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            print("\n".join(tail))
            raise LatentThoughtsError(
                f"demo step failed (train {arm}, exit status {process.returncode}): see {log}"
            )
        print(f"{arm}: trained, log {log}")


def _trained_tokens(folder: Path, budget: int) -> int:
    """Tokens a training run in ``folder`` has trained so far (its budget once it finished)."""
    if (folder / "model" / "config.json").exists():
        return budget
    try:
        return min(budget, int(json.loads((folder / "progress.json").read_text())["tokens"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0
