"""Greedy evaluation of a model on the testbed's held-out problems (METHOD section 7, testbed scale).

Two modes:

- ``raw``: the prompt is the question, a posing sentence (``Consider 37 x 24 + 129.``); the model
  continues it with the four latent tokens banned, as a raw-trained model is evaluated, and its
  first sentence (the resolving sentence, `` It equals 1017.``) answers;
- ``latent``: the prompt is the question as a chunk followed by ``SOL PRIOR``
  (:func:`latent_thoughts.testbed.prompt_ids`, :func:`latent_thoughts.format.thinking_prompt`); the
  model writes its thought until EOL (phase 1), then, after EOL, the resolving sentence, with the
  latent tokens banned (phase 2).

Generation is greedy and batched with left padding; the answer is graded by
:func:`latent_thoughts.testbed.grade` on ``thought + EOL + answer`` (or the raw continuation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import LATENT_TOKENS, SpecialIds
from latent_thoughts.testbed.task import Problem, grade, prompt_ids

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


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``rows``, left-padded to the longest row."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def greedy_generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int] = (),
    banned_ids: Sequence[int] = (),
    batch_size: int = 32,
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
    progress: str | None = None,
) -> list[list[int]]:
    """Greedy continuations of token-id ``prompts`` (batched, left-padded); each stops after the first
    of ``stop_ids`` (kept), once its text ends with one of ``stop_strings`` (needs ``tokenizer``), or
    after ``max_new_tokens``. ``banned_ids`` are never generated. ``progress`` labels a progress bar
    over the batches (none when None)."""
    outputs: list[list[int]] = []
    stops = set(stop_ids)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, dynamic_ncols=True):
        batch = prompts[start : start + batch_size]
        ids, mask = _left_pad(batch, pad_id)
        generated = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(stop_ids) or None,
            pad_token_id=pad_id,
            bad_words_ids=[[token] for token in banned_ids] or None,
            stop_strings=list(stop_strings) or None,
            tokenizer=tokenizer if stop_strings else None,
            use_cache=True,
        )
        for row in generated[:, ids.shape[1] :].tolist():
            kept: list[int] = []
            for token in row:
                kept.append(int(token))
                if token in stops:
                    break
            outputs.append(kept)
    return outputs


def evaluate_testbed(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    mode: EvalMode,
    *,
    max_thought_tokens: int = 96,
    max_answer_tokens: int = 32,
    answer_stop: Sequence[str] = (".",),
    batch_size: int = 32,
    progress: bool = True,
) -> TestbedEvalResult:
    """Greedy accuracy of ``model`` on ``problems`` in ``mode`` (``raw`` or ``latent``, see module notes).

    The answer phase stops at EOS, at the end of its first sentence (``answer_stop``: testbed answers
    are integers, so a period ends them) or after ``max_answer_tokens``; the thought phase at EOL or
    after ``max_thought_tokens`` (EOL is then appended, so the answer always follows a closed thought).
    """
    if mode not in ("raw", "latent"):
        raise LatentThoughtsError(f"evaluation mode must be 'raw' or 'latent', got {mode!r}")
    if not problems:
        raise LatentThoughtsError("no problems to evaluate")
    special = SpecialIds.from_tokenizer(tokenizer)
    latent_ids = [special.sol, special.eol, special.prior, special.post]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (special.eos or 0)
    answer_stops = [special.eos] if special.eos is not None else []
    was_training = model.training
    model.eval()

    def answer(contexts: list[list[int]]) -> list[list[int]]:
        """The answer phase, the same in both modes: latent tokens banned, stop at the first sentence."""
        return greedy_generate(
            model,
            contexts,
            max_answer_tokens,
            pad_id,
            answer_stops,
            latent_ids,
            batch_size,
            answer_stop,
            tokenizer,
            progress="answering" if progress else None,
        )

    try:
        prompts = [prompt_ids(problem, tokenizer, thinking=mode == "latent") for problem in problems]
        if mode == "raw":
            texts = [_decode(tokenizer, ids, latent_ids) for ids in answer(prompts)]
        else:
            thoughts = greedy_generate(
                model,
                prompts,
                max_thought_tokens,
                pad_id,
                [special.eol],
                [],
                batch_size,
                progress="thinking" if progress else None,
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
    finally:
        model.train(was_training)
    correct = sum(grade(problem, text) for problem, text in zip(problems, texts, strict=True))
    return TestbedEvalResult(mode, correct, len(problems), texts)


def _decode(tokenizer: Any, ids: Sequence[int], drop: Sequence[int]) -> str:
    """Text of ``ids`` without EOS/padding and without the latent tokens in ``drop``."""
    skip = set(drop) | {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return str(tokenizer.decode([token for token in ids if token not in skip]))


def evaluate_model_dir(
    path: str | Path, problems: Sequence[Problem], mode: EvalMode, device: str | None = None, **options: Any
) -> TestbedEvalResult:
    """:func:`evaluate_testbed` for a saved model folder (model and tokenizer, as ``train`` writes),
    on ``device`` (default: CPU)."""
    from latent_thoughts.modeling import load_causal_lm
    from latent_thoughts.tokenizer import load_tokenizer

    model = load_causal_lm(path)
    if device is not None:
        model = model.to(device)
    tokenizer = load_tokenizer(path)
    return evaluate_testbed(model, tokenizer, problems, mode, **options)
