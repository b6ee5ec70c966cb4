"""Cost growth of the E-step: time and peak memory as K doubles and as the chunk length doubles.

Each point runs the real stage (``latent_thoughts.em.stage.run_estep``, what ``latent-thoughts
estep`` runs: layouts, batched sampling with shared prefill, scoring of both roles, the cache and the
output file) in a fresh process, on the testbed recipe's model shape (a randomly initialised Llama,
width 128, 4 layers, byte-level BPE of 512 ids; a random model rarely writes EOL, so nearly every
thought runs to the thought budget of 64 tokens and every point does the work its size says).
Chunks are cut from testbed documents at a fixed number of tokens, without prefix.

- K = 1, 2, 4, 8, 16 at chunks of 64 tokens;
- chunks of 32, 64, 128, 256 tokens at K = 4.

Each point runs twice (``--quick``: once), each time in a fresh process after a one-chunk warm-up
run; the smaller CPU time and the larger memory growth are kept. Time is the stage's CPU time (user
+ system of its one-thread process: on a shared, loaded machine wall time swings by half between
identical runs, CPU time much less; wall time is printed too). Memory is the growth of the
process's resident set during the run over its size just before (a thread samples
``/proc/self/statm`` every 5 ms; the weights are a few MB). The engine's token batch
(``batch_tokens``, ``--batch-tokens``, default 4,096 here) bounds every forward batch: rows x
(prompt + thought budget) cached positions when sampling, rows x (context + continuation) when
scoring.

Checks printed at the end: time grows no worse than linearly in K (time(2K) / time(K) <= 2 at every
doubling, with 15% allowance for noise) and memory stays bounded (peak at K = 16 at most 1.5x the
peak at K = 8, where sampling batches are already full: at least 8 x 8 rows against about 30 rows a
batch). Writes ``OUT/estep_scaling.png`` and ``OUT/estep_scaling.json``.

    .venv/bin/python bench/estep_scaling.py [--quick] [--out runs/bench/estep_scaling]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

KS = (1, 2, 4, 8, 16)
LENGTHS = (32, 64, 128, 256)
THOUGHT_TOKENS = 64
VOCAB = 512


def rss_bytes() -> int:
    """The resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set every ``interval`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def prepare(out: Path, chunks: int) -> Path:
    """The model folder (testbed-shaped Llama + BPE with latent tokens) and one chunk file per length."""
    from latent_thoughts.corpus import Chunk, write_chunks
    from latent_thoughts.modeling import ScratchModelConfig, create_llama
    from latent_thoughts.testbed import TestbedConfig, generate_documents
    from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

    documents = generate_documents(TestbedConfig(bootstrap_documents=200), "bootstrap")
    texts = [document.text for document in documents]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=VOCAB)
    add_latent_tokens(tokenizer)
    spec = ScratchModelConfig(
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=341,
        max_position_embeddings=1024,
    )
    model = create_llama(
        spec,
        vocab_size=len(tokenizer),
        seed=0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    ids = tokenizer.encode(" ".join(texts), add_special_tokens=False)
    for length in LENGTHS:
        pieces = [tokenizer.decode(ids[i * length : (i + 1) * length]) for i in range(chunks)]
        write_chunks(
            [Chunk(f"doc-{i}", 0, "", text, 0, len(text)) for i, text in enumerate(pieces)],
            out / f"chunks-{length}.parquet",
        )
    warm = tokenizer.decode(ids[:48])
    write_chunks([Chunk("warm-up", 0, "", warm, 0, len(warm))], out / "chunks-warm-up.parquet")
    return model_dir


def run_point(model_dir: Path, chunks: Path, out: Path, k: int, batch_tokens: int) -> dict[str, Any]:
    """One E-step run in this process; returns its time, peak memory growth and mean chunk tokens."""
    import torch

    from latent_thoughts.em.stage import EStepConfig, EStepRequest, run_estep

    torch.set_num_threads(1)
    config = EStepConfig(
        k=k, max_thought_tokens=THOUGHT_TOKENS, batch_chunks=1024, batch_tokens=batch_tokens, seed=0
    )
    request = EStepRequest(model_dir, chunks, out, config, device="cpu", dtype="fp32", progress=False)
    base = rss_bytes()
    started, cpu_started = time.perf_counter(), time.process_time()
    with PeakRSS() as peak:
        summary = run_estep(request)
    return {
        "k": k,
        "wall_seconds": time.perf_counter() - started,
        "seconds": time.process_time() - cpu_started,
        "peak_mib": (peak.peak - base) / 2**20,
        "chunks": summary["chunks"],
        "mean_sample_tokens": summary["mean_sample_tokens"],
    }


def child(args: argparse.Namespace) -> None:
    """Entry of the per-point process: run one point, print its JSON."""
    model, chunks = Path(args.model), Path(args.chunks)
    # a one-chunk run first: imports, the model's kernels and the allocator are warm before the
    # baseline of the measured run is taken
    run_point(
        model,
        chunks.with_name("chunks-warm-up.parquet"),
        Path(args.point_out + ".warm-up.parquet"),
        1,
        args.batch_tokens,
    )
    point = run_point(model, chunks, Path(args.point_out), args.k, args.batch_tokens)
    print(json.dumps(point))


def measure(
    model_dir: Path, chunks: Path, out: Path, k: int, batch_tokens: int, repeats: int
) -> dict[str, Any]:
    """Run one point ``repeats`` times, each in a fresh process (a clean resident set and allocator);
    the shortest CPU time (the least disturbed by other jobs) and the largest memory growth."""
    runs = []
    for repeat in range(repeats):
        command = [
            sys.executable,
            __file__,
            "--child",
            "--model", str(model_dir),
            "--chunks", str(chunks),
            "--point-out", str(out.with_name(f"{out.stem}-{repeat}.parquet")),
            "--k", str(k),
            "--batch-tokens", str(batch_tokens),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise SystemExit(f"point k={k} {chunks.name} failed:\n{done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = dict(min(runs, key=lambda run: run["seconds"]))
    best["peak_mib"] = max(run["peak_mib"] for run in runs)
    return best


def plot(by_k: list[dict[str, Any]], by_length: list[dict[str, Any]], path: Path, batch_tokens: int) -> None:
    """Time and peak memory against K and against chunk length, log-log, with a linear guide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, points, key, label in (
        (axes[0], by_k, "k", "K (thoughts per chunk), chunks of 64 tokens"),
        (axes[1], by_length, "chunk_tokens", "chunk length (tokens), K = 4"),
    ):
        xs = [p[key] for p in points]
        ax.plot(xs, [p["seconds"] for p in points], "o-", label="CPU time (s)")
        ax.plot(
            xs,
            [points[0]["seconds"] * x / xs[0] for x in xs],
            "--",
            color="grey",
            label="linear from the first",
        )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("CPU seconds")
        memory = ax.twinx()
        memory.plot(
            xs, [p["peak_mib"] for p in points], "s-", color="tab:red", label="peak memory growth (MiB)"
        )
        memory.set_ylabel("MiB", color="tab:red")
        memory.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
        memory.legend(loc="lower right", fontsize=8)
    figure.suptitle(f"E-step cost growth (batch_tokens {batch_tokens}, thought budget {THOUGHT_TOKENS})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 chunks a point instead of 16, one run a point instead of 2"
    )
    parser.add_argument("--chunks", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/bench/estep_scaling")
    parser.add_argument(
        "--batch-tokens", type=int, default=4096, help="the engine's token batch (default 4096)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--point-out", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    count = 8 if args.quick else 16
    repeats = 1 if args.quick else 2
    model_dir = prepare(out, count)
    print(
        f"E-step of {count} chunks, thought budget {THOUGHT_TOKENS}, batch_tokens {args.batch_tokens}, 1 thread"
    )

    def point(k: int, length: int) -> dict[str, Any]:
        result = measure(
            model_dir,
            out / f"chunks-{length}.parquet",
            out / f"k{k}-len{length}.parquet",
            k,
            args.batch_tokens,
            repeats,
        )
        result["chunk_tokens"] = length
        print(
            f"  K={k:2d} chunk {length:3d} tokens: {result['seconds']:6.2f} CPU s ({result['wall_seconds']:.2f} wall), "
            f"peak +{result['peak_mib']:6.1f} MiB, "
            f"mean thought {result['mean_sample_tokens']:.1f} tokens",
            flush=True,
        )
        return result

    by_k = [point(k, 64) for k in KS]
    # the point K = 4 at 64 tokens is in both sweeps: measured once
    by_length = [by_k[KS.index(4)] if length == 64 else point(4, length) for length in LENGTHS]

    print(f"\n{'K':>3s} {'CPU s':>8s} {'x prev':>7s} {'peak MiB':>9s}")
    for previous, current in zip([None, *by_k], by_k, strict=False):
        ratio = f"{current['seconds'] / previous['seconds']:7.2f}" if previous else f"{'':7s}"
        print(f"{current['k']:3d} {current['seconds']:8.2f} {ratio} {current['peak_mib']:9.1f}")
    print(f"\n{'chunk':>5s} {'CPU s':>8s} {'x prev':>7s} {'peak MiB':>9s}")
    for previous, current in zip([None, *by_length], by_length, strict=False):
        ratio = f"{current['seconds'] / previous['seconds']:7.2f}" if previous else f"{'':7s}"
        print(f"{current['chunk_tokens']:5d} {current['seconds']:8.2f} {ratio} {current['peak_mib']:9.1f}")

    doublings = [b["seconds"] / a["seconds"] for a, b in itertools.pairwise(by_k)]
    linear = all(ratio <= 2.0 * 1.15 for ratio in doublings)
    print(
        f"\ntime(K=16) / time(K=1) = {by_k[-1]['seconds'] / by_k[0]['seconds']:.2f} (linear: 16); "
        f"largest doubling ratio {max(doublings):.2f}: {'no worse than linear' if linear else 'WORSE than linear'}"
    )
    at = {p["k"]: p["peak_mib"] for p in by_k}
    bounded = at[16] <= 1.5 * max(at[8], 1.0)
    kv = args.batch_tokens * 4 * 2 * 128 * 4 / 2**20
    logits = args.batch_tokens * VOCAB * 4 / 2**20
    print(
        f"a full batch of {args.batch_tokens} positions: KV cache {kv:.1f} MiB, scoring logits {logits:.1f} MiB; "
        f"sampling rows a batch at 64-token chunks: about {args.batch_tokens // (64 + 8 + THOUGHT_TOKENS)}"
    )
    print(
        f"peak memory K=8 {at[8]:.1f} MiB, K=16 {at[16]:.1f} MiB (K=1 {at[1]:.1f}): "
        f"{'bounded by the token batch' if bounded else 'NOT bounded'}"
    )
    plot(by_k, by_length, out / "estep_scaling.png", args.batch_tokens)
    (out / "estep_scaling.json").write_text(json.dumps({"by_k": by_k, "by_length": by_length}, indent=1))
    print(f"plot: {out / 'estep_scaling.png'}")


if __name__ == "__main__":
    main()
