"""Language-model engines behind one small protocol (see :mod:`latent_thoughts.engines.base`)."""

from latent_thoughts.engines.base import (
    ChatMessage,
    ChatReply,
    Engine,
    Prompt,
    Sample,
    Score,
    Usage,
)

__all__ = ["ChatMessage", "ChatReply", "Engine", "Prompt", "Sample", "Score", "Usage"]
