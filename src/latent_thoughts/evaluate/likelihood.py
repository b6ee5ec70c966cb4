"""Held-out likelihood metrics (METHOD section 7): NLL per token, bits per byte, and ELBO(K).

- :func:`raw_nll`: each raw document is scored after BOS (the first token after a tokenizer without
  BOS goes unscored); the result is the NLL per token (nats) and bits per byte of the scored text. A
  document longer than the context is scored as perplexity evaluations do, with a sliding window
  (:func:`nll_windows`): every token is scored exactly once, the first window's tokens after the
  document's start, each later window's ``stride`` new tokens after the ``context - stride`` tokens
  before them (the last window's fewer new tokens after more), so every token after the first window
  has at least ``context - stride`` tokens of context and the metrics cover the whole document.
- :func:`elbo`: a document is cut into chunks (:func:`uniform_chunks`: equal numbers of words); chunk
  i is laid out with the full prefix (chunks before it) as context (:func:`~latent_thoughts.format.e_step_layout`),
  K thoughts are drawn from the posterior and scored in both roles by the E-step's own function
  (:func:`latent_thoughts.em.estep.estep_chunks`), and the chunk's term is log (1/K) sum_k w_k with
  w = p(z, x | c) / q(z | c, x). A document's ELBO(K) is the sum of its chunks' terms, a lower bound
  on log p(x) that tightens as K grows (in expectation, Burda et al. 2016). A layout longer than the
  context is truncated as the E-step's is: the oldest prefix tokens first, then the end of the chunk
  (counted in :attr:`DocumentELBO.truncated_chunks` and :attr:`DocumentELBO.dropped_chunk_tokens`:
  dropped chunk tokens are not covered by the bound).
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
    """Summed NLL (nats) of raw documents, with the scored token and byte counts; ``windows`` forward
    windows scored them, ``long_documents`` documents needed more than one."""

    nll: float
    tokens: int
    bytes: int
    windows: int = 0
    long_documents: int = 0

    @property
    def nll_per_token(self) -> float:
        """Mean NLL per scored token, in nats."""
        return self.nll / self.tokens

    @property
    def bits_per_byte(self) -> float:
        """Summed NLL in bits over the UTF-8 bytes of the scored text."""
        return self.nll / math.log(2) / self.bytes


@dataclass(frozen=True)
class ScoringWindow:
    """One forward window of a sequence: ``ids[start:end]`` is seen, ``ids[scored:end]`` is scored."""

    start: int
    scored: int
    end: int


def nll_windows(length: int, context_tokens: int, stride: int) -> list[ScoringWindow]:
    """The sliding windows that score positions 1 to ``length - 1`` of a sequence once each.

    The first window is ``[0, min(length, context_tokens))``, scoring all but its first token; each
    later one ends ``stride`` tokens further (the last at ``length``) and starts ``context_tokens``
    before its end, scoring the tokens after the previous window's end. ``stride`` must be from 1 to
    ``context_tokens - 1`` (every scored token keeps at least one token of context).
    """
    if context_tokens < 2:
        raise LatentThoughtsError(f"the scoring context must be at least 2 tokens, got {context_tokens}")
    if not 1 <= stride < context_tokens:
        raise LatentThoughtsError(
            f"the stride must be from 1 to the context length - 1 ({context_tokens - 1}), got {stride}"
        )
    if length < 2:
        return []
    end = min(length, context_tokens)
    windows = [ScoringWindow(0, 1, end)]
    while end < length:
        new_end = min(end + stride, length)
        windows.append(ScoringWindow(new_end - context_tokens, end, new_end))
        end = new_end
    return windows


def scoring_context(engine: Engine, context_tokens: int | None) -> int:
    """The longest sequence to score: ``context_tokens``, else the engine's own limit; one longer than
    the engine's limit (``max_context_tokens``, when it has one) is an error."""
    limit = getattr(engine, "max_context_tokens", None)
    if context_tokens is None:
        if limit is None:
            raise LatentThoughtsError("this engine does not say its context length: give context_tokens")
        return int(limit)
    if limit is not None and context_tokens > int(limit):
        raise LatentThoughtsError(
            f"a context of {context_tokens} tokens is longer than the model's {int(limit)} "
            f"(max_position_embeddings); use at most {int(limit)}"
        )
    return context_tokens


def raw_nll(
    engine: Engine,
    tokenizer: Any,
    documents: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    context_tokens: int | None = None,
    stride: int | None = None,
) -> RawNLL:
    """NLL of ``documents`` (plain text) under the model behind ``engine`` (see module notes).

    ``context_tokens`` is the longest window (default: the engine's ``max_context_tokens``, the
    model's context), ``stride`` the new tokens each later window scores (default: half the
    context). ``ids`` name the documents in errors (default: their positions, from 0).
    """
    names = list(ids) if ids is not None else [str(i) for i in range(len(documents))]
    if len(names) != len(documents):
        raise LatentThoughtsError(f"{len(names)} ids for {len(documents)} documents")
    context_tokens = scoring_context(engine, context_tokens)
    stride = stride if stride is not None else max(context_tokens // 2, 1)
    nll_windows(context_tokens, context_tokens, stride)  # a bad stride fails before any work
    contexts: list[list[int]] = []
    continuations: list[list[int]] = []
    owners: list[int] = []
    scored_tokens = scored_bytes = long_documents = 0
    for number, document in enumerate(documents):
        text_ids = encode_text(tokenizer, document)
        sequence = [tokenizer.bos_token_id, *text_ids] if tokenizer.bos_token_id is not None else text_ids
        windows = nll_windows(len(sequence), context_tokens, stride)
        if not windows:
            continue
        long_documents += len(windows) > 1
        for window in windows:
            contexts.append(sequence[window.start : window.scored])
            continuations.append(sequence[window.scored : window.end])
            owners.append(number)
        scored_tokens += len(sequence) - 1
        scored_bytes += len(tokenizer.decode(sequence[1:]).encode("utf-8"))
    if not continuations:
        raise LatentThoughtsError("no document has a token to score")
    try:
        scores = engine.score(contexts, continuations)
    except LatentThoughtsError as error:
        raise _name_culprit(engine, contexts, continuations, owners, names, error) from None
    nll = -sum(score.logprob for score in scores)
    return RawNLL(nll, scored_tokens, scored_bytes, len(continuations), long_documents)


def _name_culprit(
    engine: Engine,
    contexts: list[list[int]],
    continuations: list[list[int]],
    owners: list[int],
    names: list[str],
    error: LatentThoughtsError,
) -> LatentThoughtsError:
    """The engine's ``error`` on a batch of windows, as raised by the first document that fails alone
    (its id named); the error itself when none does."""
    for number in dict.fromkeys(owners):
        mine = [i for i, owner in enumerate(owners) if owner == number]
        try:
            engine.score([contexts[i] for i in mine], [continuations[i] for i in mine])
        except LatentThoughtsError as own:
            return LatentThoughtsError(f"document {names[number]!r}: {own}")
    return error


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
    """ELBO(K) of one document: the sum of its chunks' terms, each chunk's K scored thoughts kept.

    ``truncated_chunks`` chunks had their layout cut to fit the context (oldest prefix tokens first,
    then the end of the chunk, as in the E-step); ``dropped_chunk_tokens`` chunk tokens were cut off,
    so the bound covers ``text_tokens - dropped_chunk_tokens`` of the document's tokens."""

    terms: list[float]
    thoughts: list[list[ThoughtScore]]
    text_tokens: int
    truncated_chunks: int = 0
    dropped_chunk_tokens: int = 0

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
    context_tokens: int | None,
    thought_tokens: int,
    seed: int | None = None,
    ids: Sequence[str] | None = None,
) -> list[DocumentELBO]:
    """ELBO(K) of each document, given as its chunks (see module notes).

    ``context_tokens`` and ``thought_tokens`` bound the E-step layout as in EM
    (:func:`~latent_thoughts.format.e_step_layout`; ``thought_tokens`` counts the closing EOL, so a
    thought cut at the budget fits the context too); ``context_tokens`` None is the engine's own
    context (the model's, as the E-step's default), and more than the engine's is an error. All
    chunks of all documents go to the engine in one E-step call with ``seed``, at the paper's
    proposal temperature 1. A cut thought's weight is exact as in EM: log q covers the tokens the
    sampler drew, not the EOL appended after the cut. ``ids`` name the documents in errors.
    """
    if k < 1:
        raise LatentThoughtsError(f"K must be at least 1, got {k}")
    names = list(ids) if ids is not None else [str(i) for i in range(len(documents))]
    if len(names) != len(documents):
        raise LatentThoughtsError(f"{len(names)} ids for {len(documents)} documents")
    context_tokens = scoring_context(engine, context_tokens)
    special = SpecialIds.from_tokenizer(tokenizer)
    # a budget that leaves no room for a chunk fails here, for every document alike
    e_step_layout(special, [], [special.eol], context_tokens, thought_tokens)
    layouts = []
    owners: list[int] = []
    tokens = []
    for number, chunks in enumerate(documents):
        try:
            chunk_tokens = tokenize_chunks(tokenizer, list(chunks)).ids
            for index, chunk_ids in enumerate(chunk_tokens):
                if not chunk_ids:
                    continue
                prefix = [token for earlier in chunk_tokens[:index] for token in earlier]
                layouts.append(e_step_layout(special, prefix, chunk_ids, context_tokens, thought_tokens))
                owners.append(number)
        except LatentThoughtsError as error:
            raise LatentThoughtsError(f"document {names[number]!r}: {error}") from None
        tokens.append(sum(len(chunk) for chunk in chunk_tokens))
    scored = estep_chunks(engine, layouts, k, thought_tokens, seed)
    terms: list[list[float]] = [[] for _ in documents]
    thoughts: list[list[list[ThoughtScore]]] = [[] for _ in documents]
    truncated = [0] * len(documents)
    dropped = [0] * len(documents)
    for owner, layout, scores in zip(owners, layouts, scored, strict=True):
        terms[owner].append(log_mean_weight(scores))
        thoughts[owner].append(scores)
        truncated[owner] += layout.truncated
        dropped[owner] += layout.dropped_chunk
    return [
        DocumentELBO(terms[n], thoughts[n], tokens[n], truncated[n], dropped[n])
        for n in range(len(documents))
    ]
