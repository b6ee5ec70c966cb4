"""Diagnose a testbed thought model: its accuracy when the question comes with the context training showed.

In training, the chunk that poses a statement ("Consider 64 x 40 + 606.") always has its own thought,
the plan "Multiply 64 by 40 place by place, then add 606.", either before it (prior layout) or right
after it (posterior layout), so the plan always sits in the context when the model writes the
derivation. The evaluation prompt (METHOD section 7) is the question alone, then ``SOL PRIOR``. This
script measures, for one saved model, greedy accuracy under the evaluation prompt and under prompts
that add the plan back, to tell a model that cannot compute from one that computes but was never
trained to start from the bare question. It is a diagnostic, not the benchmark's protocol.

    .venv/bin/python bench/testbed_prompts.py runs/bench/thoughts_vs_raw/seed0/thoughts/model --problems 100
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from latent_thoughts.format import LATENT_TOKENS
from latent_thoughts.recipes.testbed import TestbedRecipe
from latent_thoughts.testbed import make_eval_problems
from latent_thoughts.testbed.task import Problem, extract_answer

SOL, EOL, PRIOR, POST = LATENT_TOKENS.all()


def plan(problem: Problem) -> str:
    """The oracle's thought for the chunk that poses ``problem`` (a product, then one addition)."""
    match = re.fullmatch(r"Consider (\d+) x (\d+) \+ (\d+)\.", problem.question)
    if match is None:
        raise ValueError(f"not a product-plus-addend question: {problem.question!r}")
    return f"Multiply {match[1]} by {match[2]} place by place, then add {match[3]}."


def few_shot(exemplars: list[Problem]) -> Callable[[Problem], str]:
    """Worked exemplars (question, thought in the latent span, answer), then the question."""
    shots = "".join(f"{e.question} {SOL}{PRIOR}{e.thought}{EOL} It equals {e.answer}. " for e in exemplars)
    return lambda p: f"{shots}{p.question} {SOL}{PRIOR}"


PROMPTS: dict[str, Callable[[Problem], str]] = {
    "evaluation prompt: Q SOL PRIOR": lambda p: f"{p.question} {SOL}{PRIOR}",
    "plan before Q (prior layout)": lambda p: f"{SOL}{PRIOR}{plan(p)}{EOL}{p.question} {SOL}{PRIOR}",
    "plan after Q (posterior layout)": lambda p: (
        f"{SOL}{EOL}{p.question} {SOL}{POST}{plan(p)}{EOL}{SOL}{PRIOR}"
    ),
}


def accuracy(
    model: torch.nn.Module, tokenizer: object, problems: list[Problem], prompt: Callable[[Problem], str]
) -> float:
    """Greedy accuracy (left-padded batches of 25): the answer is read after the thought's EOL."""
    right = 0
    pad = tokenizer.pad_token_id or 0  # type: ignore[attr-defined]
    for start in range(0, len(problems), 25):
        batch = problems[start : start + 25]
        encoded = [
            [tokenizer.bos_token_id, *tokenizer.encode(prompt(p), add_special_tokens=False)]  # type: ignore[attr-defined]
            for p in batch
        ]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in encoded])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in encoded])
        with torch.no_grad():
            out = model.generate(  # type: ignore[operator]
                input_ids=ids, attention_mask=mask, max_new_tokens=110, do_sample=False, pad_token_id=pad
            )
        for problem, row in zip(batch, out[:, width:], strict=True):
            text = tokenizer.decode(row, skip_special_tokens=False)  # type: ignore[attr-defined]
            # The answer is the first sentence after the thought's EOL; a later latent span is not read.
            answer = text.split(EOL, 1)[1].split(SOL)[0] if EOL in text else ""
            right += extract_answer(answer) == problem.answer
    return right / len(problems)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a thought model folder (with its tokenizer)")
    parser.add_argument(
        "--problems", type=int, default=100, help="first N held-out problems of the recipe's world"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="recipe overrides naming the world, e.g. world.seed=1"
    )
    args = parser.parse_args()
    from latent_thoughts.config import load_config

    recipe = load_config(TestbedRecipe, None, args.set)
    problems = make_eval_problems(recipe.world)[: args.problems]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    print(f"{args.model}: {len(problems)} problems, greedy")
    # Exemplars: the validation split's first product-plus-addend statements (never in training).
    exemplars = [
        p for p in make_eval_problems(recipe.world, "validation") if re.search(r"x \d+ \+ \d+\.$", p.question)
    ]
    prompts = {**PROMPTS, **{f"{k}-shot (worked exemplars)": few_shot(exemplars[:k]) for k in (1, 2)}}
    for name, prompt in prompts.items():
        print(f"| {name} | {accuracy(model, tokenizer, problems, prompt):.3f} |", flush=True)


if __name__ == "__main__":
    main()
