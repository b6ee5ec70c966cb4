"""An OpenAI-compatible HTTP server over a :class:`TransformersEngine` (``latent-thoughts serve``).

Endpoints (under ``/v1``): ``models``; ``completions`` (prompt as text, token ids or lists of either;
``n``, ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``, ``logprobs``, ``echo``,
``logit_bias`` bans (-100), and vLLM's ``prompt_logprobs``, ``stop_token_ids``, ``ignore_eos``);
``chat/completions``; and the Files and Batches endpoints that the synthesis stage's batch mode uses with the official ``openai``
client (``files``, ``files/{id}``, ``files/{id}/content``, ``batches``, ``batches/{id}``,
``batches/{id}/cancel``).

Two deliberate extensions over the OpenAI wire format: ``logprobs`` objects carry ``token_ids``
(exact ids, which text tokens cannot give back), and sampled tokens' log-probabilities are under the
sampling distribution (after banned ids, temperature and top-p), as the engine protocol promises.
``top_logprobs`` lists only the chosen token (the engine computes no top-k).

Files and batches live in ``state_dir`` (``files/`` and ``batches/``), written atomically, so they
survive a restart: unfinished batches are resumed from their partial output when the server starts.
A batch runs in one background thread over the same engine (whose lock serialises model use), its
chat requests grouped by sampling parameters so that the engine batches them.

One module per concern: :mod:`~latent_thoughts.server.wire` (the OpenAI wire format: errors, ids,
request fields, batch output lines, uploads), :mod:`~latent_thoughts.server.api` (completions and
chat over the engine), :mod:`~latent_thoughts.server.store` (the file store),
:mod:`~latent_thoughts.server.batches` (the batch runner) and :mod:`~latent_thoughts.server.app`
(the routes and :func:`serve`).
"""

from latent_thoughts.server.api import ModelAPI
from latent_thoughts.server.app import create_app, serve
from latent_thoughts.server.batches import BatchRunner
from latent_thoughts.server.store import Store
from latent_thoughts.server.wire import APIError

__all__ = ["APIError", "BatchRunner", "ModelAPI", "Store", "create_app", "serve"]
