"""Few-shot prompts (METHOD section 7): the documented layout, golden files, special tokens as ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.exemplars import GSM8K_EXEMPLARS, MATH_EXEMPLARS
from latent_thoughts.evaluate.prompting import few_shot_prompt, prompt_text, prompt_token_ids
from latent_thoughts.format import LATENT_TOKENS, SpecialIds

GOLDEN = Path(__file__).parent / "golden"
SOL_PRIOR = LATENT_TOKENS.sol + LATENT_TOKENS.prior


def test_a_latent_gsm8k_prompt_matches_its_golden_file() -> None:
    question = "A baker makes 12 loaves a day and sells them for $3 each. How much does he earn in 5 days?"
    text = prompt_text(few_shot_prompt("gsm8k", question, "latent"))
    assert text == (GOLDEN / "gsm8k_latent_prompt.txt").read_text()


def test_a_raw_math_prompt_matches_its_golden_file() -> None:
    text = prompt_text(few_shot_prompt("math", "What is $\\frac{1}{2} + \\frac{1}{3}$?", "raw"))
    assert text == (GOLDEN / "math_raw_prompt.txt").read_text()


def test_there_are_eight_gsm8k_and_four_math_exemplars_ending_with_the_final_answer() -> None:
    assert len(GSM8K_EXEMPLARS) == 8 and len(MATH_EXEMPLARS) == 4
    text = prompt_text(few_shot_prompt("math", "Q?", "raw"))
    assert text.count("The final answer is $") == 4


def test_latent_mode_asks_for_a_thought_after_the_question() -> None:
    text = prompt_text(few_shot_prompt("gsm8k", "How many?", "latent"))
    assert text.endswith("Question: How many?\n" + SOL_PRIOR)
    # every exemplar shows a thought inside the latent span, then the answer
    assert text.count(SOL_PRIOR) == 9 and text.count(LATENT_TOKENS.eol + "Answer: ") == 8


def test_raw_mode_has_no_latent_tokens() -> None:
    text = prompt_text(few_shot_prompt("gsm8k", "How many?", "raw", shots=2))
    assert not any(token in text for token in LATENT_TOKENS.all())
    assert text.count("Question: ") == 3 and text.endswith("Question: How many?\nAnswer:")


def test_special_tokens_become_their_ids_and_a_question_spelling_one_stays_text(tiny_tokenizer) -> None:
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    ids = prompt_token_ids(
        few_shot_prompt("gsm8k", "Is " + LATENT_TOKENS.eol + " odd?", "latent", shots=1), tiny_tokenizer
    )
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids[-2:] == [special.sol, special.prior]
    assert ids.count(special.eol) == 1  # the exemplar's thought ends; the question's spelling is text


def test_an_unknown_task_has_no_prompt() -> None:
    with pytest.raises(LatentThoughtsError, match="nope"):
        few_shot_prompt("nope", "Q", "raw")
