"""Greedy testbed evaluation through the engine protocol: raw mode bans the latent tokens, latent mode
thinks until EOL then answers; a local model and the same model behind a server give the same results."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from latent_thoughts.engines import Engine, HTTPEngine, HTTPEngineConfig, Sample, Score, Usage
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.testbed import evaluate_model_dir, evaluate_testbed
from latent_thoughts.format import LATENT_TOKENS, SpecialIds
from latent_thoughts.modeling import load_causal_lm
from latent_thoughts.testbed import TestbedConfig, make_eval_problems, prompt_ids
from latent_thoughts.tokenizer import load_tokenizer
from tests.test_server import serve_subprocess


@pytest.fixture(scope="module")
def problems():  # type: ignore[no-untyped-def]
    return make_eval_problems(TestbedConfig(eval_problems=6))


class ScriptedEngine:
    """An :class:`Engine` whose greedy continuation of each prompt is scripted, recording each call.

    After ``... SOL PRIOR`` it writes the problem's thought and EOL; after EOL or after a plain question
    the resolving sentence `` It equals <answer>.`` (the space before "It" travels with the next
    chunk's first word, as training cuts documents); answers are keyed by the question's ids.
    """

    def __init__(self, tokenizer: Any, answers: dict[tuple[int, ...], tuple[str, str]]) -> None:
        self.tokenizer = tokenizer
        self.special = SpecialIds.from_tokenizer(tokenizer)
        self.answers = answers
        self.identity, self.usage, self.device = "scripted", Usage(), "cpu"
        self.calls: list[dict[str, Any]] = []

    def sample(self, prompts: Sequence[Any], n: int = 1, **options: Any) -> list[list[Sample]]:
        self.calls.append(options)
        out = []
        for prompt in prompts:
            latent = (self.special.sol, self.special.prior, self.special.eol)
            question = tuple(t for t in prompt if t not in latent)
            thought, answer = next(v for k, v in self.answers.items() if question[: len(k)] == k)
            if prompt[-1] == self.special.prior:
                new = [*self.tokenizer.encode(thought, add_special_tokens=False), self.special.eol]
            else:
                new = self.tokenizer.encode(f" It equals {answer}.", add_special_tokens=False)
            out.append([Sample(new, self.tokenizer.decode(new), [0.0] * len(new), "stop")] * n)
        return out

    def score(self, contexts: Sequence[Any], continuations: Sequence[Any]) -> list[Score]:
        raise NotImplementedError

    def score_many(self, context: Any, continuations: Sequence[Any]) -> list[Score]:
        raise NotImplementedError

    def chat(self, conversations: Sequence[Any], n: int = 1, **options: Any) -> list[list[Any]]:
        raise NotImplementedError


def scripted(tokenizer: Any, problems: list, wrong: int = -1) -> ScriptedEngine:  # type: ignore[type-arg]
    answers = {}
    for index, problem in enumerate(problems):
        key = tuple(prompt_ids(problem, tokenizer, thinking=False))
        answer = str(int(problem.answer) + 1) if index == wrong else problem.answer
        answers[key] = (problem.thought, answer)
    return ScriptedEngine(tokenizer, answers)


def test_raw_mode_grades_the_continuation_and_bans_latent_tokens(tiny_tokenizer, problems) -> None:  # type: ignore[no-untyped-def]
    engine = scripted(tiny_tokenizer, problems, wrong=2)
    assert isinstance(engine, Engine)
    result = evaluate_testbed(engine, tiny_tokenizer, problems, "raw", batch_size=4)
    assert result.correct == len(problems) - 1 and result.accuracy == pytest.approx(5 / 6)
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    assert set(engine.calls[0]["banned_ids"]) == {special.sol, special.eol, special.prior, special.post}
    assert engine.calls[0]["temperature"] == 0.0 and engine.calls[0]["stop"] == (".",)


def test_raw_mode_with_reasoning_grades_the_first_answer_after_plain_text_reasoning(
    tiny_tokenizer, problems
) -> None:  # type: ignore[no-untyped-def]
    class Reasoning(ScriptedEngine):
        def sample(self, prompts: Sequence[Any], n: int = 1, **options: Any) -> list[list[Sample]]:
            self.calls.append(options)
            out = []
            for prompt in prompts:
                thought, answer = self.answers[tuple(prompt)]
                new = self.tokenizer.encode(
                    f" {thought} It equals {answer}. Consider 1 x 2.", add_special_tokens=False
                )
                out.append([Sample(new, self.tokenizer.decode(new), [0.0] * len(new), "length")])
            return out

    engine = Reasoning(tiny_tokenizer, scripted(tiny_tokenizer, problems).answers)
    result = evaluate_testbed(engine, tiny_tokenizer, problems, "raw", reasoning_tokens=64, batch_size=4)
    assert result.accuracy == 1.0
    reasoning, _, answer = result.generations[0].partition(LATENT_TOKENS.eol)
    assert reasoning == problems[0].thought and answer == f" It equals {problems[0].answer}."
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    assert set(engine.calls[0]["banned_ids"]) == {special.sol, special.eol, special.prior, special.post}
    assert engine.calls[0]["max_new_tokens"] == 64 + 32 and engine.calls[0]["stop"] == []


def test_reasoning_without_an_answer_sentence_is_wrong_and_latent_mode_takes_none() -> None:
    from latent_thoughts.evaluate.testbed import split_reasoning

    assert split_reasoning("12 x 3 = 36. 36 + 5 = 41.") == f"12 x 3 = 36. 36 + 5 = 41.{LATENT_TOKENS.eol}"
    assert split_reasoning("It equals 41. It equals 7.") == f"{LATENT_TOKENS.eol} It equals 41."
    with pytest.raises(LatentThoughtsError, match="raw mode only"):
        evaluate_testbed(None, None, [], "latent", reasoning_tokens=8)  # type: ignore[arg-type]


def test_latent_mode_thinks_until_eol_then_answers(tiny_tokenizer, problems) -> None:  # type: ignore[no-untyped-def]
    engine = scripted(tiny_tokenizer, problems)
    result = evaluate_testbed(engine, tiny_tokenizer, problems, "latent", batch_size=4)
    assert result.accuracy == 1.0
    thought, _, answer = result.generations[0].partition(LATENT_TOKENS.eol)
    assert thought == problems[0].thought and answer == f" It equals {problems[0].answer}."
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    thinking = engine.calls[0]
    assert thinking["stop"] == [special.eol] and thinking["stop_on_eos"] is False  # phase 1: EOL, not EOS
    # a thought may not open a latent span of its own: SOL, PRIOR and POST are banned until EOL
    assert set(thinking["banned_ids"]) == {special.sol, special.prior, special.post}
    assert engine.calls[-1]["banned_ids"]  # phase 2 bans the latent tokens


# ---------------------------------------------------------------------- real models


def hf_greedy(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    banned: Sequence[int] = (),
    stop_strings: Sequence[str] = (),
) -> list[list[int]]:
    """The reference: ``model.generate`` greedy, one prompt at a time (what evaluation did before engines)."""
    out = []
    for prompt in prompts:
        generated = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=tokenizer.pad_token_id,
            bad_words_ids=[[t] for t in banned] or None,
            stop_strings=list(stop_strings) or None,
            tokenizer=tokenizer if stop_strings else None,
        )[0, len(prompt) :].tolist()
        kept: list[int] = []
        for token in generated:
            kept.append(token)
            if token in stop_ids:
                break
        out.append(kept)
    return out


def test_a_model_folder_gives_what_model_generate_gives(tiny_model_dir: Path, problems) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = load_causal_lm(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)
    special = SpecialIds.from_tokenizer(tokenizer)
    latent = [special.sol, special.eol, special.prior, special.post]
    raw = evaluate_model_dir(tiny_model_dir, problems, "raw", max_answer_tokens=6, progress=False)
    prompts = [prompt_ids(p, tokenizer, thinking=False) for p in problems]
    expected = hf_greedy(model, tokenizer, prompts, 6, [tokenizer.eos_token_id], latent, ["."])
    assert raw.generations == [tokenizer.decode([t for t in ids if t not in latent]) for ids in expected]
    assert not any(token in text for text in raw.generations for token in LATENT_TOKENS.all())

    options = {"max_thought_tokens": 5, "max_answer_tokens": 4, "progress": False}
    latent_result = evaluate_model_dir(tiny_model_dir, problems, "latent", **options)
    prompts = [prompt_ids(p, tokenizer, thinking=True) for p in problems]
    thoughts = hf_greedy(
        model, tokenizer, prompts, 5, [special.eol], [special.sol, special.prior, special.post]
    )
    assert [g.partition(LATENT_TOKENS.eol)[0] for g in latent_result.generations] == [
        tokenizer.decode([t for t in ids if t not in latent]) for ids in thoughts
    ]
    assert latent_result.total == len(problems)
    with pytest.raises(LatentThoughtsError, match="mode must be 'raw' or 'latent'"):
        evaluate_model_dir(tiny_model_dir, problems, "cot")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPEngine]:
    with (
        serve_subprocess(tiny_model_dir, tmp_path_factory.mktemp("serve-eval")) as base_url,
        HTTPEngine(HTTPEngineConfig(base_url=base_url, timeout_s=60)) as engine,
    ):
        yield engine


@pytest.mark.parametrize("mode", ["raw", "latent"])
def test_a_served_model_is_evaluated_by_the_same_code(
    served: HTTPEngine, tiny_model_dir: Path, problems, mode
) -> None:  # type: ignore[no-untyped-def]
    tokenizer = load_tokenizer(tiny_model_dir)
    local = TransformersEngine(
        TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu")
    )
    options = {"max_thought_tokens": 6, "max_answer_tokens": 5, "progress": False}
    remote = evaluate_testbed(served, tokenizer, problems, mode, **options)  # type: ignore[arg-type]
    here = evaluate_testbed(local, tokenizer, problems, mode, **options)  # type: ignore[arg-type]
    assert remote.generations == here.generations and remote.correct == here.correct
