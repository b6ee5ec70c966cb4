"""Greedy testbed evaluation: raw mode bans the latent tokens, latent mode thinks then answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.testbed import evaluate_model_dir, evaluate_testbed, greedy_generate
from latent_thoughts.format import LATENT_TOKENS, SpecialIds
from latent_thoughts.modeling import load_causal_lm
from latent_thoughts.testbed import TestbedConfig, make_eval_problems


@pytest.fixture(scope="module")
def problems():  # type: ignore[no-untyped-def]
    return make_eval_problems(TestbedConfig(eval_problems=6))


class ScriptedModel:
    """A stand-in for a causal LM whose ``generate`` writes a scripted continuation per prompt.

    After ``... SOL PRIOR`` it writes the problem's thought and EOL; after EOL it writes the resolving
    sentence ``It equals <answer>.``, after a plain question `` It equals <answer>.`` (a raw
    continuation); the answer comes from ``answers`` keyed by the question ids (a prefix of the prompt).
    """

    def __init__(self, tokenizer: Any, answers: dict[tuple[int, ...], tuple[str, str]]) -> None:
        self.tokenizer = tokenizer
        self.special = SpecialIds.from_tokenizer(tokenizer)
        self.answers = answers
        self.device = torch.device("cpu")
        self.training = False
        self.calls: list[dict[str, Any]] = []

    def eval(self) -> ScriptedModel:
        return self

    def train(self, mode: bool = True) -> ScriptedModel:
        self.training = mode
        return self

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.calls.append(kwargs)
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = [token for token, keep in zip(ids, mask, strict=True) if keep]
            question = tuple(
                t for t in prompt if t not in (self.special.sol, self.special.prior, self.special.eol)
            )
            thought, answer = next(v for k, v in self.answers.items() if question[: len(k)] == k)
            if prompt[-1] == self.special.prior:
                new = [*self.tokenizer.encode(thought, add_special_tokens=False), self.special.eol]
            elif prompt[-1] == self.special.eol:
                new = self.tokenizer.encode(f"It equals {answer}.", add_special_tokens=False)
            else:
                new = self.tokenizer.encode(f" It equals {answer}.", add_special_tokens=False)
            rows.append(ids + new)
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        return torch.tensor([row + [pad] * (width - len(row)) for row in rows])


def scripted(tokenizer: Any, problems: list, wrong: int = -1) -> ScriptedModel:  # type: ignore[type-arg]
    from latent_thoughts.testbed import prompt_ids

    answers = {}
    for index, problem in enumerate(problems):
        key = tuple(prompt_ids(problem, tokenizer, thinking=False))
        answer = str(int(problem.answer) + 1) if index == wrong else problem.answer
        answers[key] = (problem.thought, answer)
    return ScriptedModel(tokenizer, answers)


def test_raw_mode_grades_the_continuation_and_bans_latent_tokens(tiny_tokenizer, problems) -> None:  # type: ignore[no-untyped-def]
    model = scripted(tiny_tokenizer, problems, wrong=2)
    result = evaluate_testbed(model, tiny_tokenizer, problems, "raw", batch_size=4)
    assert result.correct == len(problems) - 1 and result.accuracy == pytest.approx(5 / 6)
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    banned = {tuple(ids) for ids in model.calls[0]["bad_words_ids"]}
    assert banned == {(special.sol,), (special.eol,), (special.prior,), (special.post,)}


def test_latent_mode_thinks_until_eol_then_answers(tiny_tokenizer, problems) -> None:  # type: ignore[no-untyped-def]
    model = scripted(tiny_tokenizer, problems)
    result = evaluate_testbed(model, tiny_tokenizer, problems, "latent", batch_size=4)
    assert result.accuracy == 1.0
    thought, _, answer = result.generations[0].partition(LATENT_TOKENS.eol)
    assert thought == problems[0].thought and answer == f"It equals {problems[0].answer}."
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    assert model.calls[0]["eos_token_id"] == [special.eol]  # phase 1 stops at EOL
    assert model.calls[-1]["bad_words_ids"] is not None  # phase 2 bans the latent tokens


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(
    tiny_model_dir: Path, tiny_tokenizer
) -> None:  # type: ignore[no-untyped-def]
    model = load_causal_lm(tiny_model_dir).eval()
    prompts = [tiny_tokenizer.encode(text) for text in ["Take 12 x 3", "Consider 37 x 24 + 129.", "It"]]
    batched = greedy_generate(model, prompts, 6, tiny_tokenizer.pad_token_id, batch_size=3)
    single = [greedy_generate(model, [prompt], 6, tiny_tokenizer.pad_token_id)[0] for prompt in prompts]
    assert batched == single and all(len(row) == 6 for row in batched)


def test_a_real_model_folder_is_evaluated_in_both_modes(tiny_model_dir: Path, problems) -> None:  # type: ignore[no-untyped-def]
    raw = evaluate_model_dir(tiny_model_dir, problems, "raw", max_answer_tokens=4)
    latent = evaluate_model_dir(tiny_model_dir, problems, "latent", max_thought_tokens=4, max_answer_tokens=4)
    assert raw.total == latent.total == len(problems)
    assert not any(token in text for text in raw.generations for token in LATENT_TOKENS.all())
    assert all(LATENT_TOKENS.eol in text for text in latent.generations)
    with pytest.raises(LatentThoughtsError, match="mode must be 'raw' or 'latent'"):
        evaluate_model_dir(tiny_model_dir, problems, "cot")  # type: ignore[arg-type]
