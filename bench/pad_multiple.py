"""Accuracy of one testbed model with the sampler's old padding (``pad_multiple=0``: every prompt of a
batch left-padded to the longest) and the new one (each prompt to its own width rounded up to 64,
only equal widths batched together). In bf16 the padding width changes the attention's rounding, so
greedy answers near a tie can flip; this measures by how much on a real model:

    .venv/bin/python bench/pad_multiple.py RUN/iter_0/train/model RUN/data/eval.jsonl
"""

from __future__ import annotations

import argparse

from latent_thoughts.evaluate.testbed import evaluate_model_dir
from latent_thoughts.testbed.task import read_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a testbed model folder")
    parser.add_argument("problems", help="its held-out problems (eval.jsonl)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--multiples", type=int, nargs="+", default=[0, 64])
    args = parser.parse_args()
    problems = read_problems(args.problems)
    for multiple in args.multiples:
        result = evaluate_model_dir(
            args.model,
            problems,
            "latent",
            engine_options={"device": args.device, "pad_multiple": multiple},
            progress=False,
            max_thought_tokens=96,
            batch_size=64,
        )
        print(f"pad_multiple={multiple}: accuracy {result.accuracy:.3f} on {result.total} problems")


if __name__ == "__main__":
    main()
