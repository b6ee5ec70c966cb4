"""Packing throughput and peak memory of the training-window writer, on synthetic corpora.

For each corpus size (default 10 M and 100 M tokens) a fresh Python process generates random int32
documents of realistic lengths (log-normal, median 700 tokens, cut to 16..32,768) a block of 256
documents at a time, packs them with :func:`latent_thoughts.train.windows.write_windows` into a
window file of ``--seq-len`` tokens, and reports:

- packing throughput: tokens per second of packing and writing (the generator's own time excluded);
- peak resident memory (``VmHWM`` of ``/proc/self/status``) after start-up (the imports: torch and
  transformers come with ``latent_thoughts.train``) and after packing; the packer's part ("packing")
  is the difference. It must not grow with the corpus size.

The old path (before issue 9: :func:`latent_thoughts.format.pack_documents`, one Python step per
token, every window stacked into one in-memory array and saved as one ``.npz``) is measured the same
way at ``--old-tokens`` for comparison.

    nice -n 10 .venv/bin/python bench/data.py                 # 10 M and 100 M tokens, old path at 10 M
    nice -n 10 .venv/bin/python bench/data.py --sizes 1M 5M --old-tokens 1M --reset-position-ids
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from latent_thoughts.format import pack_documents
from latent_thoughts.train.windows import write_windows

VOCAB = 32_000
BLOCK_DOCUMENTS = 256


def parse_count(text: str) -> int:
    """``10M`` -> 10,000,000; ``500K`` -> 500,000; plain integers as they are."""
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def synthetic_documents(tokens: int, seed: int, clock: list[float]) -> Iterator[np.ndarray]:
    """Random documents of ``tokens`` tokens in all, generated a block at a time (memory bounded by
    one block); the seconds spent generating are added to ``clock[0]``."""
    rng = np.random.default_rng(seed)
    left = tokens
    while left > 0:
        started = time.perf_counter()
        lengths = np.clip(rng.lognormal(math.log(700), 1.0, BLOCK_DOCUMENTS), 16, 32_768).astype(np.int64)
        ids = rng.integers(0, VOCAB, int(lengths.sum()), dtype=np.int32)
        block = np.split(ids, np.cumsum(lengths)[:-1])
        clock[0] += time.perf_counter() - started
        for document in block:
            if left <= 0:
                return
            document = document[:left]
            left -= len(document)
            yield document


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def old_pack(documents: Iterator[np.ndarray], seq_len: int, reset: bool, path: Path) -> int:
    """The path before issue 9: ``pack_documents`` window by window, stacked, saved as one .npz."""
    ids, lengths, positions = [], [], []
    for window in pack_documents(documents, seq_len, 0, reset):
        ids.append(np.asarray(window.input_ids, dtype=np.int32))
        lengths.append(window.num_real_tokens)
        if reset:
            positions.append(np.asarray(window.position_ids, dtype=np.int32))
    arrays = {"input_ids": np.stack(ids), "lengths": np.asarray(lengths, dtype=np.int64)}
    if reset:
        arrays["position_ids"] = np.stack(positions)
    np.savez(path, **arrays)
    return len(ids)


def worker(packer: str, tokens: int, seq_len: int, reset: bool, out: Path) -> dict[str, float]:
    """Pack ``tokens`` synthetic tokens with ``packer`` (``new`` or ``old``) here; what it measured."""
    before = peak_rss_mib()
    clock = [0.0]
    documents = synthetic_documents(tokens, seed=0, clock=clock)
    started = time.perf_counter()
    if packer == "new":
        windows = len(write_windows(out / "windows.bin", documents, seq_len, 0, None, reset))
        size = (out / "windows.bin").stat().st_size
    else:
        windows = old_pack(documents, seq_len, reset, out / "windows.npz")
        size = (out / "windows.npz").stat().st_size
    elapsed = time.perf_counter() - started
    return {
        "tokens": tokens,
        "windows": windows,
        "pack_s": elapsed - clock[0],
        "generate_s": clock[0],
        "rss_before_mib": before,
        "rss_after_mib": peak_rss_mib(),
        "file_mib": size / 2**20,
    }


def measure(packer: str, tokens: int, seq_len: int, reset: bool, folder: Path) -> dict[str, float]:
    """Run :func:`worker` in a fresh process, so that each peak is its own."""
    out = folder / f"{packer}-{tokens}"
    out.mkdir()
    command = [sys.executable, __file__, "--worker", packer, "--sizes", str(tokens)]
    command += ["--seq-len", str(seq_len), "--out", str(out)]
    if reset:
        command.append("--reset-position-ids")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    for file in out.iterdir():
        file.unlink()
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def print_row(packer: str, row: dict[str, float]) -> None:
    """One line of the table."""
    tokens = int(row["tokens"])
    print(
        f"{packer:<6} {tokens:>13,} {int(row['windows']):>9,} {row['pack_s']:>8.2f} "
        f"{tokens / row['pack_s']:>13,.0f} {row['generate_s']:>7.2f} {row['rss_before_mib']:>11.0f} MiB "
        f"{row['rss_after_mib']:>10.0f} MiB {row['rss_after_mib'] - row['rss_before_mib']:>+8.0f} MiB "
        f"{row['file_mib']:>6.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["10M", "100M"], help="corpus sizes in tokens")
    parser.add_argument("--old-tokens", default="10M", help="corpus size for the old path (0: skip it)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--reset-position-ids", action="store_true")
    parser.add_argument("--worker", choices=["new", "old"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    reset = args.reset_position_ids
    if args.worker:
        print(json.dumps(worker(args.worker, parse_count(args.sizes[0]), args.seq_len, reset, args.out)))
        return

    runs = [("new", parse_count(size)) for size in args.sizes]
    if parse_count(args.old_tokens):
        runs.append(("old", parse_count(args.old_tokens)))
    print(
        f"packing synthetic corpora into {args.seq_len}-token windows "
        f"(position resets: {'yes' if reset else 'no'}), each in a fresh process"
    )
    print(
        f"{'packer':<6} {'tokens':>13} {'windows':>9} {'pack s':>8} {'tokens/s':>13} {'gen s':>7} "
        f"{'peak at start':>15} {'peak RSS':>14} {'packing':>12} {'file':>10}"
    )
    rates: dict[str, list[float]] = {"new": [], "old": []}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
        for packer, tokens in runs:
            row = measure(packer, tokens, args.seq_len, reset, Path(folder))
            print_row(packer, row)
            rates[packer].append(tokens / row["pack_s"])
    if rates["old"]:
        print(f"new / old packer, tokens per second: {min(rates['new']) / rates['old'][0]:,.0f}x or more")


if __name__ == "__main__":
    main()
