"""Language-model engines behind one small protocol (see :mod:`latent_thoughts.engines.base`).

Implementations (imported on first use, so that importing this package stays light):

- :class:`~latent_thoughts.engines.transformers_engine.TransformersEngine` with
  :class:`~latent_thoughts.engines.transformers_engine.TransformersEngineConfig`: any Hugging Face
  causal LM on CPU or CUDA;
- :class:`~latent_thoughts.engines.http_engine.HTTPEngine` with
  :class:`~latent_thoughts.engines.http_engine.HTTPEngineConfig`: an OpenAI-compatible server
  (OpenAI, vLLM, ``latent-thoughts serve``).

The transformers engine's parts: :mod:`~latent_thoughts.engines.sampling` (seeded draws, batch
planning, the decode loop with a shared prefill), :mod:`~latent_thoughts.engines.cache` (the
preallocated KV-cache layer) and :mod:`~latent_thoughts.engines.padding` (left padding).
"""

from __future__ import annotations

import importlib
from typing import Any

from latent_thoughts.engines.base import (
    ChatMessage,
    ChatReply,
    Engine,
    Prompt,
    Sample,
    Score,
    Usage,
)

_LAZY = {
    "TransformersEngine": "latent_thoughts.engines.transformers_engine",
    "TransformersEngineConfig": "latent_thoughts.engines.transformers_engine",
    "HTTPEngine": "latent_thoughts.engines.http_engine",
    "HTTPEngineConfig": "latent_thoughts.engines.http_engine",
}

__all__ = [
    "ChatMessage",
    "ChatReply",
    "Engine",
    "HTTPEngine",
    "HTTPEngineConfig",
    "Prompt",
    "Sample",
    "Score",
    "TransformersEngine",
    "TransformersEngineConfig",
    "Usage",
]


def __getattr__(name: str) -> Any:
    """Import an engine implementation the first time it is asked for (torch and openai are heavy)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
