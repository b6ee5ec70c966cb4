"""The testbed recipe: both arms share everything but their data; the thought model's thoughts are checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latent_thoughts.evaluate.testbed import evaluate_model_dir
from latent_thoughts.format import LATENT_TOKENS
from latent_thoughts.recipes.testbed import (
    TestbedRecipe,
    evaluate_arm,
    prepare_data,
    thought_arithmetic,
    thought_steps,
    train_config,
)
from latent_thoughts.testbed import TestbedConfig, TestbedOracle, make_eval_problems
from latent_thoughts.tokenizer import load_tokenizer
from latent_thoughts.train import train

SMALL_WORLD = TestbedConfig(bootstrap_documents=20, eval_problems=8)


def test_arms_differ_only_in_their_data_source(tmp_path: Path) -> None:
    recipe = TestbedRecipe(world=SMALL_WORLD, tokens="50k")  # type: ignore[arg-type]
    data = prepare_data(recipe, tmp_path / "data")
    raw = train_config(recipe, "raw", 0, data, tmp_path / "raw").model_dump()
    thoughts = train_config(recipe, "thoughts", 0, data, tmp_path / "thoughts").model_dump()
    assert raw["budget"]["tokens"] == thoughts["budget"]["tokens"] == 50_000
    optim = thoughts["optim"]
    assert (optim["optimizer"], optim["schedule"]) == (recipe.optimizer, recipe.schedule)
    raw_source, thought_source = raw["data"].pop("sources"), thoughts["data"].pop("sources")
    assert raw_source[0]["kind"] == "raw" and thought_source[0]["kind"] == "thoughts"
    assert raw_source[0]["chunks"] == thought_source[0]["chunks"]
    for config in (raw, thoughts):
        config.pop("output_dir")
    assert raw == thoughts


def test_shared_tokenizer_splits_digits(tmp_path: Path) -> None:
    data = prepare_data(TestbedRecipe(world=SMALL_WORLD), tmp_path / "data")
    tokenizer = load_tokenizer(data.tokenizer)
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("It equals 1017.", add_special_tokens=False)]
    assert pieces[-5:] == ["1", "0", "1", "7", "."]


def test_thought_arithmetic_reads_claims_and_copying() -> None:
    problems = make_eval_problems(TestbedConfig(eval_problems=2))
    first = problems[0]
    right = f"{first.thought}<|END_OF_LATENT|>It equals {first.answer}."
    factor = first.expression.split()[0]
    wrong = "57 x 5 = 364.<|END_OF_LATENT|>It equals 364."
    claims, true_claims, copied = thought_arithmetic(problems, [right, wrong])
    assert claims == first.thought.count("=") + 1
    assert true_claims == first.thought.count("=")
    assert copied == 1 and factor != "57"


@pytest.mark.slow
def test_a_short_run_writes_thoughts_the_checker_reads(tmp_path: Path) -> None:
    """The thought model of a short run writes arithmetic claims; the share that is true is printed."""
    # The demo's budget: at 600 k tokens the recipe's model still writes plans, not derivations.
    world = TestbedRecipe().world.model_copy(update={"eval_problems": 50})
    recipe = TestbedRecipe(world=world, tokens="2M")  # type: ignore[arg-type]
    data = prepare_data(recipe, tmp_path / "data")
    config = train_config(recipe, "thoughts", 0, data, tmp_path / "thoughts", progress_bar=False)
    result = train(config)
    assert result.model_dir is not None
    evaluation = evaluate_arm(result.model_dir, make_eval_problems(recipe.world), "latent")
    print(
        f"short run ({recipe.tokens:,} tokens): {evaluation.true_claims}/{evaluation.claims} arithmetic claims "
        f"true ({evaluation.true_claim_share:.1%}), {evaluation.copied_operand_share:.0%} of thoughts start "
        f"from the question's first factor, accuracy {evaluation.accuracy:.3f}"
    )
    assert evaluation.claims >= evaluation.problems  # it writes derivations, at least one claim a thought
    # The checker's counts, against Python's arithmetic on the same (greedy, so identical) thoughts.
    generations = evaluate_model_dir(result.model_dir, make_eval_problems(recipe.world), "latent").generations
    assert generations[0] == evaluation.example
    assert (evaluation.claims, evaluation.true_claims) == _python_claims(generations)


def _python_claims(generations: list[str]) -> tuple[int, int]:
    """(claims, true claims) in the thoughts (text before EOL) of ``generations``, each claim's
    left side evaluated by Python rather than by the testbed checker."""
    claims = true_claims = 0
    for text in generations:
        thought = text.partition(LATENT_TOKENS.eol)[0]
        for lhs, rhs in _CLAIM.findall(thought):
            claims += 1
            try:
                value = eval(re.sub("[x×]", "*", lhs), {"__builtins__": {}})  # digits and operators only
            except ZeroDivisionError:
                continue
            true_claims += value == int(rhs)
    return claims, true_claims


_CLAIM = re.compile(r"(?<![\w.])(-?\d+(?:\s*[-+x*×/]\s*\d+)+)\s*=\s*(-?\d+)(?!\.?\d)")


def test_thought_arithmetic_agrees_with_python_on_noisy_oracle_thoughts() -> None:
    """Oracle thoughts with wrong steps (noise) and a claim after EOL that is no thought."""
    problems = make_eval_problems(TestbedConfig(eval_problems=40))
    oracle = TestbedOracle(noise=0.6, irrelevant_share=0.0, seed=3)
    generations = [
        f"{oracle.thought('', f'{problem.question} It equals {problem.answer}.')}{LATENT_TOKENS.eol}2 x 2 = 5."
        for problem in problems
    ]
    claims, true_claims, _ = thought_arithmetic(problems, generations)
    assert (claims, true_claims) == _python_claims(generations)
    assert 0 < true_claims < claims  # the table is not trivial: true and false claims both


def test_thought_steps_locate_a_product_without_the_addend() -> None:
    problems = make_eval_problems(TestbedConfig(eval_problems=2))
    first = problems[0]
    factor_a, _, factor_b, op, _ = first.expression.split()
    product = int(factor_a) * int(factor_b)
    computes_but_miscopies = f"{factor_a} x {factor_b} = {product}. {product} {op} 240 = {product + 240}."
    assert thought_steps([first], [first.thought + "<|END_OF_LATENT|>"]) == (1, 1)
    assert thought_steps([first], [computes_but_miscopies + "<|END_OF_LATENT|>"]) == (1, 0)
    assert thought_steps([first], ["12 x 3 = 36.<|END_OF_LATENT|>"]) == (0, 0)


def test_the_demo_generates_the_recipes_world() -> None:
    from latent_thoughts.cli.demo import RECIPE_WORLD

    world = TestbedRecipe().world
    assert [f"bootstrap_documents={world.bootstrap_documents}"] == RECIPE_WORLD
    assert (
        world.model_copy(update={"bootstrap_documents": TestbedConfig().bootstrap_documents})
        == TestbedConfig()
    )
