"""Held-out likelihood metrics (METHOD section 7): NLL per token, bits per byte, and ELBO(K).

- :func:`raw_nll`: each raw document is scored after BOS (the first token after a tokenizer without
  BOS goes unscored); the result is the NLL per token (nats) and bits per byte of the scored text.
- :func:`elbo`: a document is cut into chunks (:func:`uniform_chunks`: equal numbers of words); chunk
  i is laid out with the full prefix (chunks before it) as context (:func:`~latent_thoughts.format.e_step_layout`),
  K thoughts are drawn from the posterior and scored in both roles by the E-step's own function
  (:func:`latent_thoughts.em.estep.estep_chunks`), and the chunk's term is log (1/K) sum_k w_k with
  w = p(z, x | c) / q(z | c, x). A document's ELBO(K) is the sum of its chunks' terms, a lower bound
  on log p(x) that tightens as K grows (in expectation, Burda et al. 2016).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from latent_thoughts.em.estep import ThoughtScore, estep_chunks, log_mean_weight
from latent_thoughts.engines.base import Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import SpecialIds, e_step_layout, encode_text, tokenize_chunks


@dataclass(frozen=True)
class RawNLL:
    """Summed NLL (nats) of raw documents, with the scored token and byte counts."""

    nll: float
    tokens: int
    bytes: int

    @property
    def nll_per_token(self) -> float:
        """Mean NLL per scored token, in nats."""
        return self.nll / self.tokens

    @property
    def bits_per_byte(self) -> float:
        """Summed NLL in bits over the UTF-8 bytes of the scored text."""
        return self.nll / math.log(2) / self.bytes


def raw_nll(engine: Engine, tokenizer: Any, documents: Sequence[str]) -> RawNLL:
    """NLL of ``documents`` (plain text) under the model behind ``engine`` (see module notes)."""
    contexts: list[list[int]] = []
    continuations: list[list[int]] = []
    scored_bytes = 0
    for document in documents:
        ids = encode_text(tokenizer, document)
        if tokenizer.bos_token_id is not None:
            context, continuation = [tokenizer.bos_token_id], ids
        else:
            context, continuation = ids[:1], ids[1:]
        if not continuation:
            continue
        contexts.append(context)
        continuations.append(continuation)
        scored_bytes += len(tokenizer.decode(continuation).encode("utf-8"))
    if not continuations:
        raise LatentThoughtsError("no document has a token to score")
    scores = engine.score(contexts, continuations)
    nll = -sum(score.logprob for score in scores)
    return RawNLL(nll, sum(len(c) for c in continuations), scored_bytes)


_WORD = re.compile(r"\S+\s*")


def uniform_chunks(text: str, words_per_chunk: int) -> list[str]:
    """``text`` cut into chunks of ``words_per_chunk`` words (the last may be shorter); each chunk keeps
    the whitespace after its last word, so the chunks concatenate back to the text (leading space kept
    in the first)."""
    if words_per_chunk < 1:
        raise LatentThoughtsError(f"words per chunk must be positive, got {words_per_chunk}")
    lead = text[: len(text) - len(text.lstrip())]
    words = _WORD.findall(text)
    chunks = ["".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]
    if chunks:
        chunks[0] = lead + chunks[0]
    return chunks


@dataclass(frozen=True)
class DocumentELBO:
    """ELBO(K) of one document: the sum of its chunks' terms, each chunk's K scored thoughts kept."""

    terms: list[float]
    thoughts: list[list[ThoughtScore]]
    text_tokens: int

    @property
    def elbo(self) -> float:
        """The document's ELBO(K), in nats (a lower bound on log p(x))."""
        return sum(self.terms)


def elbo(
    engine: Engine,
    tokenizer: Any,
    documents: Sequence[Sequence[str]],
    k: int,
    *,
    context_tokens: int,
    thought_tokens: int,
    seed: int | None = None,
) -> list[DocumentELBO]:
    """ELBO(K) of each document, given as its chunks (see module notes).

    ``context_tokens`` and ``thought_tokens`` bound the E-step layout as in EM
    (:func:`~latent_thoughts.format.e_step_layout`; ``thought_tokens`` counts the closing EOL, so a
    thought cut at the budget fits the context too); all chunks of all documents go to the engine in
    one E-step call with ``seed``, at the paper's proposal temperature 1. A cut thought's weight is
    exact as in EM: log q covers the tokens the sampler drew, not the EOL appended after the cut.
    """
    if k < 1:
        raise LatentThoughtsError(f"K must be at least 1, got {k}")
    special = SpecialIds.from_tokenizer(tokenizer)
    layouts = []
    owners: list[int] = []
    tokens = []
    for number, chunks in enumerate(documents):
        ids = tokenize_chunks(tokenizer, list(chunks)).ids
        tokens.append(sum(len(chunk) for chunk in ids))
        for index, chunk_ids in enumerate(ids):
            if not chunk_ids:
                continue
            prefix = [token for earlier in ids[:index] for token in earlier]
            layouts.append(e_step_layout(special, prefix, chunk_ids, context_tokens, thought_tokens))
            owners.append(number)
    scored = estep_chunks(engine, layouts, k, thought_tokens, seed)
    results = [DocumentELBO([], [], tokens[number]) for number in range(len(documents))]
    for owner, scores in zip(owners, scored, strict=True):
        results[owner].terms.append(log_mean_weight(scores))
        results[owner].thoughts.append(scores)
    return results
