"""Few-shot prompts for GSM8K and MATH in raw and latent mode (METHOD section 7).

A prompt is a list of pieces: text, or one of the four latent tokens' strings standing alone
(:data:`latent_thoughts.format.LATENT_TOKENS`). :func:`prompt_text` joins them for reading (and for
the golden file in the tests); :func:`prompt_token_ids` encodes each text run on its own and puts the
special tokens' ids between, so a question that happens to spell a special token stays text.

Raw mode (GSM8K; MATH uses ``Problem:`` and ``Solution:`` and ``$...$`` around the answer)::

    Question: <exemplar question>
    Answer: <solution> The final answer is 6.

    ... (8 exemplars) ...
    Question: <question>
    Answer:

Latent mode: each exemplar's question is followed by ``SOL PRIOR``, its thought and ``EOL``, then the
answer; the prompt ends with the question and ``SOL PRIOR``, so the model thinks until EOL, after which
the answer header (``Answer:``, :func:`answer_header`) is appended and the model answers::

    Question: <exemplar question>
    <|START_OF_LATENT|><|PRIOR_PREFIX|><thought><|END_OF_LATENT|>Answer: <solution> The final answer is 6.

    ...
    Question: <question>
    <|START_OF_LATENT|><|PRIOR_PREFIX|>
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.exemplars import GSM8K_EXEMPLARS, MATH_EXEMPLARS, Exemplar
from latent_thoughts.format import LATENT_TOKENS, SpecialIds, encode_text

PromptMode = Literal["raw", "latent"]


@dataclass(frozen=True)
class PromptStyle:
    """How a task writes its blocks: headers, the final-answer wrapper and its exemplars."""

    question_header: str
    answer_header: str
    answer_wrapper: str
    exemplars: tuple[Exemplar, ...]

    def final(self, answer: str) -> str:
        """The closing sentence, ``The final answer is 6.`` (or ``$-\\frac{2}{3}$.`` for MATH)."""
        return "The final answer is " + self.answer_wrapper.format(answer) + "."


STYLES = {
    "gsm8k": PromptStyle("Question: ", "Answer:", "{}", GSM8K_EXEMPLARS),
    "math": PromptStyle("Problem: ", "Solution:", "${}$", MATH_EXEMPLARS),
}
STYLES["math500"] = STYLES["math"]


def style_of(task: str) -> PromptStyle:
    """The prompt style of ``task`` (``gsm8k``, ``math`` or ``math500``)."""
    if task not in STYLES:
        raise LatentThoughtsError(f"no few-shot prompt for task {task!r}")
    return STYLES[task]


def few_shot_prompt(task: str, question: str, mode: PromptMode, shots: int | None = None) -> list[str]:
    """The prompt pieces for ``question`` (see module notes); ``shots`` exemplars (default: all)."""
    style = style_of(task)
    exemplars = style.exemplars[: len(style.exemplars) if shots is None else shots]
    pieces: list[str] = []
    for exemplar in exemplars:
        pieces += _question(style, exemplar.question, mode)
        if mode == "latent":
            pieces += [exemplar.thought, LATENT_TOKENS.eol]
        pieces.append(f"{style.answer_header} {exemplar.solution} {style.final(exemplar.answer)}\n\n")
    pieces += _question(style, question, mode)
    if mode == "raw":
        pieces.append(style.answer_header)
    return _merge(pieces)


def answer_header(task: str) -> str:
    """What follows the model's EOL in latent mode before it answers (``Answer:``)."""
    return style_of(task).answer_header


def _question(style: PromptStyle, question: str, mode: PromptMode) -> list[str]:
    block = [f"{style.question_header}{question}\n"]
    return [*block, LATENT_TOKENS.sol, LATENT_TOKENS.prior] if mode == "latent" else block


def _merge(pieces: Sequence[str]) -> list[str]:
    """Join neighbouring text pieces (special tokens stay alone)."""
    specials = set(LATENT_TOKENS.all())
    merged: list[str] = []
    for piece in pieces:
        if merged and piece not in specials and merged[-1] not in specials:
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


def prompt_text(pieces: Sequence[str]) -> str:
    """The prompt as one string, special tokens written as their strings."""
    return "".join(pieces)


def prompt_token_ids(pieces: Sequence[str], tokenizer: Any, add_bos: bool = True) -> list[int]:
    """Token ids of a prompt: BOS (when the tokenizer has one), text runs encoded, special ids between."""
    special = SpecialIds.from_tokenizer(tokenizer)
    ids_of = dict(
        zip(LATENT_TOKENS.all(), [special.sol, special.eol, special.prior, special.post], strict=True)
    )
    ids = [special.bos] if add_bos and special.bos is not None else []
    for piece in pieces:
        if piece in ids_of:
            ids.append(ids_of[piece])
        else:
            ids.extend(encode_text(tokenizer, piece))
    return ids
