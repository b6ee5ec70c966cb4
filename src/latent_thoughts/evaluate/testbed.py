"""Greedy evaluation of a model on the testbed's held-out problems (METHOD section 7, testbed scale).

Two modes:

- ``raw``: the prompt is the question, a posing sentence (``Consider 37 x 24 + 129.``); the model
  continues it with the four latent tokens banned, as a raw-trained model is evaluated, and its
  first sentence (the resolving sentence, `` It equals 1017.``) answers;
- ``latent``: the prompt is the question as a chunk followed by ``SOL PRIOR``
  (:func:`latent_thoughts.testbed.prompt_ids`, :func:`latent_thoughts.format.thinking_prompt`); the
  model writes its thought until EOL with SOL, PRIOR and POST banned (phase 1: a thought opens no
  latent span of its own), then, after EOL, the resolving sentence, with all four latent tokens
  banned (phase 2).

Generation goes through the :class:`~latent_thoughts.engines.base.Engine` protocol (greedy,
``temperature`` 0, banned ids, stop ids and strings), so a local model, a model behind
``latent-thoughts serve`` or vLLM, or any OpenAI-compatible completions API is evaluated by the same
code; where the model runs follows the engine's ``device`` option. The answer is graded by
:func:`latent_thoughts.testbed.grade` on ``thought + EOL + answer`` (or the raw continuation).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from latent_thoughts.engines.base import Engine, Sample
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import LATENT_TOKENS, SpecialIds
from latent_thoughts.testbed.task import Problem, extract_answer, grade, prompt_ids

EvalMode = Literal["raw", "latent"]


@dataclass
class TestbedEvalResult:
    """Accuracy of one model in one mode, with every generation (``generations[i]`` answers problem i)."""

    __test__ = False  # not a pytest test class despite its name

    mode: EvalMode
    correct: int
    total: int
    generations: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Exact-match accuracy in [0, 1]."""
        return self.correct / self.total if self.total else 0.0


def evaluate_testbed(
    engine: Engine,
    tokenizer: Any,
    problems: Sequence[Problem],
    mode: EvalMode,
    *,
    max_thought_tokens: int = 96,
    max_answer_tokens: int = 32,
    answer_stop: Sequence[str] = (".",),
    reasoning_tokens: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> TestbedEvalResult:
    """Greedy accuracy of the model behind ``engine`` on ``problems`` in ``mode`` (see module notes).

    ``tokenizer`` is the model's (it lays the prompts out as token ids). The answer phase stops at
    EOS, at the end of its first sentence (``answer_stop``: testbed answers are integers, so a period
    ends them) or after ``max_answer_tokens``; the thought phase at EOL (never at EOS) or after
    ``max_thought_tokens`` (EOL is then appended, so the answer always follows a closed thought).
    ``batch_size`` problems go to the engine per call (the progress bar's step).

    ``reasoning_tokens`` (raw mode only) lets a model trained on text that spells its reasoning out
    (WRAP-CoT rephrasings) reason in plain text first: it writes up to that many tokens more, latent
    tokens banned, and the first sentence shaped as an answer is graded. The sentences before it
    stand where a latent-mode thought stands (``reasoning EOL answer``), so the grader and the
    arithmetic checker read both modes alike. A generation with no answer-shaped sentence is wrong.
    """
    if mode not in ("raw", "latent"):
        raise LatentThoughtsError(f"evaluation mode must be 'raw' or 'latent', got {mode!r}")
    if reasoning_tokens and mode != "raw":
        raise LatentThoughtsError(
            "reasoning_tokens applies to raw mode only (latent mode thinks in a thought)"
        )
    if not problems:
        raise LatentThoughtsError("no problems to evaluate")
    special = SpecialIds.from_tokenizer(tokenizer)
    latent_ids = [special.sol, special.eol, special.prior, special.post]

    def generate(
        prompts: list[list[int]], what: str, max_new_tokens: int, stop: Sequence[str | int], **rule: Any
    ) -> list[list[int]]:
        """Greedy continuations in calls of ``batch_size`` prompts, as token ids."""
        out: list[list[int]] = []
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc=what, unit="batch", disable=not progress, dynamic_ncols=True):
            samples = engine.sample(
                prompts[start : start + batch_size],
                1,
                temperature=0.0,
                max_new_tokens=max_new_tokens,
                stop=stop,
                **rule,
            )
            out.extend(_token_ids(tokenizer, group[0]) for group in samples)
        return out

    def answer(contexts: list[list[int]]) -> list[list[int]]:
        """The answer phase, the same in both modes: latent tokens banned, stop at the first sentence."""
        return generate(
            contexts, "answering", max_answer_tokens, answer_stop, banned_ids=latent_ids, stop_on_eos=True
        )

    prompts = [prompt_ids(problem, tokenizer, thinking=mode == "latent") for problem in problems]
    if mode == "raw" and reasoning_tokens:
        written = generate(
            prompts,
            "reasoning",
            reasoning_tokens + max_answer_tokens,
            [],
            banned_ids=latent_ids,
            stop_on_eos=True,
        )
        texts = [split_reasoning(_decode(tokenizer, ids, latent_ids)) for ids in written]
    elif mode == "raw":
        texts = [_decode(tokenizer, ids, latent_ids) for ids in answer(prompts)]
    else:
        # A thought is text that ends at EOL: it must not open a latent span of its own (the benchmark
        # path bans the same three ids).
        thoughts = generate(
            prompts,
            "thinking",
            max_thought_tokens,
            [special.eol],
            stop_on_eos=False,
            banned_ids=thought_banned_ids(special),
        )
        thoughts = [
            thought if thought[-1:] == [special.eol] else [*thought, special.eol] for thought in thoughts
        ]
        answers = answer([[*prompt, *thought] for prompt, thought in zip(prompts, thoughts, strict=True)])
        texts = [
            _decode(tokenizer, thought[:-1], latent_ids)
            + LATENT_TOKENS.eol
            + _decode(tokenizer, ids, latent_ids)
            for thought, ids in zip(thoughts, answers, strict=True)
        ]
    correct = sum(grade(problem, text) for problem, text in zip(problems, texts, strict=True))
    return TestbedEvalResult(mode, correct, len(problems), texts)


def split_reasoning(text: str) -> str:
    """Plain-text reasoning and its answer as ``reasoning EOL answer``: the answer is the first
    sentence :func:`~latent_thoughts.testbed.task.extract_answer` reads a number from; with none,
    the whole text stands as reasoning and the answer is empty (graded wrong)."""
    sentences = [sentence for sentence in re.split(r"(?<=\.)\s+", text.strip()) if sentence]
    for index, sentence in enumerate(sentences):
        if extract_answer(sentence) is not None:
            return " ".join(sentences[:index]) + LATENT_TOKENS.eol + " " + sentence
    return text.strip() + LATENT_TOKENS.eol


def thought_banned_ids(special: SpecialIds) -> list[int]:
    """The ids a thought may not contain: SOL, PRIOR and POST (it ends at EOL and opens no new span)."""
    return [special.sol, special.prior, special.post]


def _token_ids(tokenizer: Any, sample: Sample) -> list[int]:
    """A sample's token ids; from its text when the server sent none (the OpenAI API sends none)."""
    if sample.token_ids or not sample.text:
        return list(sample.token_ids)
    return list(tokenizer.encode(sample.text, add_special_tokens=False))


def _decode(tokenizer: Any, ids: Sequence[int], drop: Sequence[int]) -> str:
    """Text of ``ids`` without EOS/padding and without the latent tokens in ``drop``."""
    skip = set(drop) | {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return str(tokenizer.decode([token for token in ids if token not in skip]))


def evaluate_model_dir(
    path: str | Path,
    problems: Sequence[Problem],
    mode: EvalMode,
    *,
    engine_options: dict[str, Any] | None = None,
    **options: Any,
) -> TestbedEvalResult:
    """:func:`evaluate_testbed` for a saved model folder (model and tokenizer, as ``train`` writes).

    The model runs in a :class:`~latent_thoughts.engines.transformers_engine.TransformersEngine`;
    ``engine_options`` set its options (``device``: ``auto`` puts it on a GPU when there is one,
    ``dtype``, ``batch_tokens``, ...); ``options`` go to :func:`evaluate_testbed`.
    """
    from latent_thoughts.config import validate_config
    from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

    config = validate_config(
        TransformersEngineConfig, {**(engine_options or {}), "model": str(path)}, "evaluation engine options"
    )
    engine = TransformersEngine(config)
    return evaluate_testbed(engine, engine.tokenizer, problems, mode, **options)
