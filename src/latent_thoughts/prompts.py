"""Teacher prompts, versioned: latent thoughts (METHOD section 4) and the rephrasing baselines.

A prompt is a small object that turns (prefix, chunk) or a whole document into chat messages.
Its ``version`` goes into every cache key and output row, so changing the wording is a new
version and never silently mixes with results of the old one. :func:`split_latent_prompt`
recovers (prefix, chunk) from a rendered prompt; the testbed's oracle teacher uses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from latent_thoughts.engines.base import ChatMessage
from latent_thoughts.errors import LatentThoughtsError

OPEN, CLOSE = "<<<", ">>>"


@dataclass(frozen=True)
class LatentThoughtPrompt:
    """Asks a teacher for the thinking a writer left out of a chunk, given the text before it."""

    version: str = "latent-v1"
    system: str = (
        "You reconstruct the thinking behind expert writing. Given a passage and the text that came "
        "before it, you write the reasoning its author had in mind but did not write down: the "
        "background facts it relies on and the derivation behind each claim, step by step."
    )
    instructions: str = (
        "Write the hidden thinking behind the PASSAGE. Supply the knowledge it takes for granted and "
        "derive every result it states, one step at a time, showing intermediate values. Concentrate "
        "on what the passage leaves implicit; do not restate the earlier text or summarise the "
        "passage. Write concise, declarative plain text without markdown, headings or lists, and "
        "never refer to 'the passage', 'the context', a prefix or a suffix."
    )

    def messages(self, prefix: str, chunk: str) -> list[ChatMessage]:
        """The chat messages asking for the thought behind ``chunk`` after ``prefix``."""
        earlier = prefix if prefix.strip() else "(none: the passage opens the document)"
        user = (
            f"EARLIER TEXT:\n{OPEN}\n{earlier}\n{CLOSE}\n\n"
            f"PASSAGE:\n{OPEN}\n{chunk}\n{CLOSE}\n\n"
            f"{self.instructions}"
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


_LATENT_PATTERN = re.compile(
    rf"EARLIER TEXT:\n{OPEN}\n(?P<prefix>.*)\n{CLOSE}\n\nPASSAGE:\n{OPEN}\n(?P<chunk>.*)\n{CLOSE}\n\n",
    re.DOTALL,
)


def split_latent_prompt(messages: list[ChatMessage]) -> tuple[str, str]:
    """Recover ``(prefix, chunk)`` from messages made by :meth:`LatentThoughtPrompt.messages`."""
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    match = _LATENT_PATTERN.search(user)
    if match is None:
        raise LatentThoughtsError("not a latent-thought prompt: no EARLIER TEXT / PASSAGE blocks found")
    prefix = match.group("prefix")
    return ("" if prefix.startswith("(none:") else prefix), match.group("chunk")


WRAP_STYLES: dict[str, str] = {
    "easy": "Rewrite the following text in very simple language that a young child could understand.",
    "hard": "Rewrite the following text in terse, erudite language, as a specialist would write it.",
    "wiki": "Rewrite the following text as high-quality prose in the style of an encyclopedia.",
    "qa": "Rewrite the following text as a conversation of questions and answers between two people.",
}
WRAP_COT_INSTRUCTION = (
    "Rewrite the following text, keeping its content, and insert the step-by-step reasoning behind "
    "each claim where the original leaves it out."
)


@dataclass(frozen=True)
class RephrasePrompt:
    """Asks a teacher to paraphrase a whole document in one style (WRAP) or with reasoning (WRAP-CoT)."""

    style: str
    version: str = "wrap-v1"

    def __post_init__(self) -> None:
        if self.style != "cot" and self.style not in WRAP_STYLES:
            valid = ", ".join([*WRAP_STYLES, "cot"])
            raise LatentThoughtsError(f"unknown rephrasing style {self.style!r} (valid: {valid})")

    def messages(self, document: str) -> list[ChatMessage]:
        """The chat messages asking for a rephrasing of ``document``."""
        instruction = WRAP_COT_INSTRUCTION if self.style == "cot" else WRAP_STYLES[self.style]
        user = f"{instruction} Answer with the rewritten text only, without markdown.\n\n{OPEN}\n{document}\n{CLOSE}"
        return [{"role": "user", "content": user}]
