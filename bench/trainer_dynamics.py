"""Does the trainer learn as fast as a plain PyTorch loop? Loss curves and results over seeds.

For each seed, the thought arm of the testbed recipe is trained twice from the same initial weights
on the same packed windows: once by ``latent_thoughts.train.train`` (transformers ``Trainer``) and
once by the plain loop of ``bench/plain_loop.py`` (same AdamW groups, schedule, clipping and
precision). Both models are then evaluated as the recipe evaluates the thought model (latent mode):
accuracy and the share of true arithmetic claims in their thoughts. Printed: per seed and as mean ±
std, the final loss (mean of the last 10% of steps), accuracy and true claims of each loop, and the
loss curves as ``OUT/loss_curves.png``.

    .venv/bin/python bench/trainer_dynamics.py --seeds 0 1 2 --set tokens=2M
    .venv/bin/python bench/trainer_dynamics.py --sequential --seeds 0 --set tokens=100k lr=2e-3
    python3 bench/trainer_dynamics.py --device cuda --parallel 3 --set tokens=6M batch=32   # on a GPU

``--sequential`` makes both loops read the windows in file order (the trainer through a sequential
sampler), so the only difference left is the loop itself: the losses then agree step by step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from latent_thoughts.config import load_config
from latent_thoughts.recipes.testbed import TestbedRecipe, evaluate_arm, prepare_data, train_config


def run_one(
    loop: str, seed: int, overrides: list[str], out: str, device: str, threads: int, sequential: bool = False
) -> dict[str, Any]:
    """Train one model with ``loop`` (``trainer`` or ``plain``) and evaluate it; returns its row."""
    import numpy as np
    import torch

    from latent_thoughts.testbed import make_eval_problems
    from latent_thoughts.tokenizer import load_tokenizer
    from latent_thoughts.train import train
    from latent_thoughts.train.trainer import prepare_model, resolve_precision
    from plain_loop import plain_train, training_windows

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    recipe = load_config(TestbedRecipe, None, overrides)
    data = prepare_data(recipe, Path(out) / "data")
    run_dir = Path(out) / f"seed{seed}"
    config = train_config(
        recipe, "thoughts", seed, data, run_dir / "trainer", progress_bar=False, logging_steps=1
    )
    started = time.perf_counter()
    if loop == "trainer":
        if sequential:
            from torch.utils.data import SequentialSampler

            from latent_thoughts.train.trainer import _LatentTrainer

            _LatentTrainer._get_train_sampler = lambda self, *a, **k: SequentialSampler(self.train_dataset)  # type: ignore[method-assign]
        result = train(config, resume=True)
        model_dir = result.model_dir
        losses = [log["loss"] for log in result.metrics["log_history"] if "loss" in log and "step" in log]
        rate = result.metrics["tokens_per_second"]
    else:
        # The trainer's own windows and tokenizer (the trainer run of this seed goes first).
        tokenizer = load_tokenizer(run_dir / "trainer" / "tokenizer")
        arrays = training_windows(config, tokenizer)
        model = prepare_model(config, tokenizer)
        steps = len(arrays.lengths) // recipe.batch
        bf16 = resolve_precision(config.precision) == "bf16"
        plain = plain_train(
            model, arrays, config.optim, steps, bf16, seed, device=device, sequential=sequential
        )
        model_dir = run_dir / "plain"
        model.config.use_cache = True
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        losses = plain.losses
        rate = plain.steady_tokens_per_second(recipe.batch * recipe.seq_len)
    train_s = time.perf_counter() - started
    assert model_dir is not None
    evaluation = evaluate_arm(model_dir, make_eval_problems(recipe.world), "latent", device=device)
    tail = max(1, len(losses) // 10)
    return {
        "loop": loop,
        "seed": seed,
        "final_loss": float(np.mean(losses[-tail:])),
        "losses": losses,
        "accuracy": evaluation.accuracy,
        "true_claim_share": evaluation.true_claim_share,
        "tokens_per_second": rate,
        "train_s": round(train_s, 1),
        "example": evaluation.example,
    }


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (std 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss curves of both loops, one line per seed, smoothed over 20 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(7, 4))
    for row in rows:
        losses = np.asarray(row["losses"])
        width = min(20, len(losses))
        smooth = np.convolve(losses, np.ones(width) / width, mode="valid")
        color = "#3b7dd8" if row["loop"] == "trainer" else "#d8823b"
        axis.plot(smooth, color=color, alpha=0.8, label=f"{row['loop']} seed {row['seed']}")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss (20-step mean)")
    axis.set_ylim(top=min(3.0, axis.get_ylim()[1]))
    axis.legend(fontsize=7, ncol=2)
    axis.set_title("Trainer vs plain PyTorch loop, same windows and initial weights")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    """Run both loops for every seed and print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench/trainer_dynamics")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides (tokens=2M batch=32 ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--sequential", action="store_true", help="both loops read windows in file order")
    args = parser.parse_args()
    # The plain loop is AdamW with a cosine schedule: the trainer must run the same optimisation.
    args.set = ["optimizer=adamw", "schedule=cosine", *args.set]
    out = Path(args.out)
    recipe = load_config(TestbedRecipe, None, args.set)
    prepare_data(recipe, out / "data")
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    # The trainer run of a seed builds the windows the plain run reuses, so it goes first.
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        for loop in ("trainer", "plain"):
            futures = [
                pool.submit(run_one, loop, seed, args.set, str(out), args.device, threads, args.sequential)
                for seed in args.seeds
            ]
            rows.extend(future.result() for future in futures)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "loss_curves.png")
    order = "file order (--sequential)" if args.sequential else "each loop's own shuffled order"
    print(f"recipe: {' '.join(args.set) or 'defaults'}; seeds {args.seeds}; windows in {order}")
    pairs = [
        (t, p)
        for t in rows
        for p in rows
        if t["loop"] == "trainer" and p["loop"] == "plain" and t["seed"] == p["seed"]
    ]
    gaps = [max(abs(a - b) for a, b in zip(t["losses"], p["losses"], strict=False)) for t, p in pairs]
    print(
        f"largest per-step loss difference trainer vs plain, per seed: {', '.join(f'{g:.2e}' for g in gaps)}"
    )
    print("| loop | seed | final loss | accuracy (latent) | true claims | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['loop']} | {row['seed']} | {row['final_loss']:.3f} | {row['accuracy']:.3f} | "
            f"{row['true_claim_share']:.3f} | {row['tokens_per_second']:,.0f} |"
        )
    for loop in ("trainer", "plain"):
        own = [row for row in rows if row["loop"] == loop]
        print(
            f"{loop}: final loss {mean_std([r['final_loss'] for r in own])}, accuracy "
            f"{mean_std([r['accuracy'] for r in own])}, true claims {mean_std([r['true_claim_share'] for r in own])}"
        )
    print(f"wrote {out / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
