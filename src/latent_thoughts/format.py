"""The thought-augmented training format (METHOD section 2).

Four special tokens mark latent thoughts. A document is a list of chunks, each with an optional
thought, and each chunk is written, by a seeded per-chunk draw, in one of two layouts:

- prior (joint) layout ``SOL PRIOR z EOL x``: the thought before the text it explains;
- posterior layout ``SOL EOL x SOL POST z EOL``: the text first, then the thought.

The draw is made once per chunk for the whole run, or (``redraw_layouts``) anew on every pass
over the chunk's source, as the reference does. A chunk without a thought is written as its raw
text. BOS and EOS wrap each document and documents are packed back to back into fixed windows.
Every built document records which token spans are thought, text or special tokens, so tests (and
the viewer) can check and show them.

Tokenization (:func:`tokenize_chunks`): a document's text is tokenized ONCE, whole, and the token
sequence is cut at the chunks' character offsets, so the text tokens of a document with thoughts
are exactly the tokens of the same document without them (:meth:`DocumentBuilder.build_plain`),
for SentencePiece tokenizers (Llama-2) as for byte-level BPE. A token whose characters lie in two
chunks (`` Then`` after ``... 888. | Then``: the space ends one chunk, the word starts the next)
belongs to the chunk that holds its LAST character, so the whitespace between two chunks travels
with the next chunk's first word, as the tokenizer wrote it; such tokens are counted
(:attr:`BuiltDocument.straddling`), never doubled. A thought is tokenized on its own, after its
surrounding whitespace is stripped, the way the tokenizer starts a text: a SentencePiece tokenizer
gives its first word the word-start marker (``▁The``), a byte-level BPE no leading space
(``The``); decoding the thought span gives back the stripped thought. Text that spells a special
token (``</s>``, ``<|END_OF_LATENT|>``) is tokenized as plain characters, never as the token.
A thought may instead come as token ids (an E-step's sampled thought, ``thought_ids`` of
:meth:`DocumentBuilder.build`): they are written as they are, never decoded and re-tokenized, so the
model trains on exactly the ids that were weighted. Such ids are only meaningful for the tokenizer
that made them: :func:`tokenizer_fingerprint` identifies it.

This module knows nothing of engines; the E-step and evaluation build their prompts with the
functions at the end of this module so that the layout lives in one place: :func:`e_step_layout`
makes the one truncation decision of a chunk and returns both the posterior sampling prompt and
the joint scoring context, so log q and log p always see the same c and x.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Literal

from pydantic import Field

from latent_thoughts.config import StageConfig
from latent_thoughts.errors import LatentThoughtsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentTokens:
    """The text of the four special tokens."""

    sol: str = "<|START_OF_LATENT|>"
    eol: str = "<|END_OF_LATENT|>"
    prior: str = "<|PRIOR_PREFIX|>"
    post: str = "<|POSTERIOR_PREFIX|>"

    def all(self) -> list[str]:
        """The four tokens in a fixed order (SOL, EOL, PRIOR, POST)."""
        return [self.sol, self.eol, self.prior, self.post]


LATENT_TOKENS = LatentTokens()


class Layout(str, Enum):
    """How one chunk is written in a training document."""

    PRIOR = "prior"
    POSTERIOR = "posterior"
    RAW = "raw"


SpanKind = Literal["special", "thought", "text"]


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, end)`` of a built document are of ``kind``; ``chunk`` is the chunk index (-1 for BOS/EOS)."""

    kind: SpanKind
    start: int
    end: int
    chunk: int


@dataclass
class BuiltDocument:
    """A training document as token ids, with its spans and the layout drawn for each chunk.

    ``straddling`` counts the text tokens whose characters lie in two chunks (see the module notes).
    """

    input_ids: list[int]
    spans: list[Span] = field(default_factory=list)
    layouts: list[Layout] = field(default_factory=list)
    straddling: int = 0

    def ids_of(self, kind: SpanKind) -> list[list[int]]:
        """The token ids of every span of ``kind``, in document order."""
        return [self.input_ids[span.start : span.end] for span in self.spans if span.kind == kind]

    def text_ids(self) -> list[int]:
        """The document without its thoughts and special tokens: its text spans joined, in order."""
        return [token for ids in self.ids_of("text") for token in ids]


@dataclass(frozen=True)
class ChunkTokens:
    """A document's token ids cut into its chunks (``ids[i]`` for chunk i), and how many tokens
    straddle a chunk boundary (each is in exactly one chunk: the one holding its last character)."""

    ids: list[list[int]]
    straddling: int


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added and none read from the text itself."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def tokenize_chunks(tokenizer: Any, chunks: Sequence[str]) -> ChunkTokens:
    """Tokenize the document ``"".join(chunks)`` once and cut its tokens at the chunk boundaries.

    Chunk i covers characters ``[start_i, end_i)`` of the document (the ``start``/``end`` columns of a
    chunk file, i.e. the running sums of the chunk lengths). A token belongs to the chunk holding its
    last character. Needs a tokenizer that reports character offsets (a "fast" tokenizer).
    """
    text = "".join(chunks)
    if not text:
        return ChunkTokens([[] for _ in chunks], 0)
    try:
        encoding = tokenizer(
            text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
        )
    except NotImplementedError:
        raise LatentThoughtsError(
            f"{type(tokenizer).__name__} reports no character offsets; use a fast (tokenizers) tokenizer"
        ) from None
    ids = list(encoding["input_ids"])
    offsets = list(encoding["offset_mapping"])
    # The position of a token is its last character (its first for a token that covers none);
    # a running maximum keeps the cut points in order whatever a tokenizer reports.
    positions: list[int] = []
    last = 0
    for start, end in offsets:
        last = max(last, end - 1 if end > start else start)
        positions.append(last)
    boundaries = [0]
    for chunk in chunks:
        boundaries.append(boundaries[-1] + len(chunk))
    inner = boundaries[1:-1]
    cuts = [0, *(bisect.bisect_left(positions, boundary) for boundary in inner), len(ids)]
    # Only the first token of a chunk can have begun in an earlier one.
    straddling = len(
        {
            cut
            for cut, boundary in zip(cuts[1:-1], inner, strict=True)
            if cut < len(ids) and offsets[cut][0] < boundary
        }
    )
    return ChunkTokens([ids[a:b] for a, b in itertools.pairwise(cuts)], straddling)


class FormatConfig(StageConfig):
    """Options of the training format (reference values from METHOD section 2)."""

    posterior_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="chance a chunk uses the posterior layout"
    )
    seed: int = Field(0, description="seed of the per-chunk layout draw")
    redraw_layouts: bool = Field(
        False,
        description="draw each chunk's layout anew on every pass over its source, as the reference does; "
        "false keeps one layout per chunk for the whole run",
    )
    seq_len: int = Field(2048, gt=0, description="packed window length in tokens")
    reset_position_ids: bool = Field(False, description="restart position ids at each document in a window")
    add_bos: bool = True
    add_eos: bool = True


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the special tokens in one tokenizer."""

    sol: int
    eol: int
    prior: int
    post: int
    bos: int | None
    eos: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialIds:
        """Look the four latent tokens up in ``tokenizer``; a missing one is a one-line error."""
        ids = []
        for token in LATENT_TOKENS.all():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise LatentThoughtsError(
                    f"tokenizer lacks the special token {token}; add them with tokenizer.add_latent_tokens"
                )
            ids.append(int(token_id))
        sol, eol, prior, post = ids
        return cls(sol, eol, prior, post, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)


TOKENIZER_KEY = "tokenizer"
"""The entry of a file's run metadata that names the tokenizer of the token ids it holds (its
:func:`tokenizer_fingerprint`): an E-step output's ``thought_ids``."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of ``tokenizer``'s vocabulary (every token and its id, added tokens included) and
    of the ids of its special tokens (BOS, EOS and the four latent ones): equal for two tokenizers
    that give every token the same id, e.g. a tokenizer and its ``save_pretrained`` copy. A file
    holding token ids records it, so a reader can tell whether the ids are its tokenizer's."""
    vocab = sorted((str(token), int(index)) for token, index in tokenizer.get_vocab().items())
    special = asdict(SpecialIds.from_tokenizer(tokenizer))
    payload = json.dumps({"vocab": vocab, "special": special}, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def choose_layout(
    seed: int, doc_id: str, chunk_index: int, posterior_probability: float, pass_index: int = 0
) -> Layout:
    """The layout of one chunk: a pure function of (seed, document id, chunk index, pass).

    ``pass_index`` counts the passes over the chunk's source (0: the first); pass 0 draws what this
    function drew before passes existed, each later pass an independent draw.
    """
    key = f"{seed}\x00{doc_id}\x00{chunk_index}"
    if pass_index:
        key += f"\x00pass\x00{pass_index}"
    digest = hashlib.sha256(key.encode()).digest()
    uniform = struct.unpack(">Q", digest[:8])[0] / 2**64
    return Layout.POSTERIOR if uniform < posterior_probability else Layout.PRIOR


class DocumentBuilder:
    """Turns chunks (and thoughts) into token ids with spans, for one tokenizer and format config."""

    def __init__(self, tokenizer: Any, config: FormatConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or FormatConfig()
        self.special = SpecialIds.from_tokenizer(tokenizer)

    @cached_property
    def fingerprint(self) -> str:
        """:func:`tokenizer_fingerprint` of the builder's tokenizer (computed once)."""
        return tokenizer_fingerprint(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` on its own, without any special tokens (see :func:`encode_text`)."""
        return encode_text(self.tokenizer, text)

    def encode_thought(self, thought: str) -> list[int]:
        """Token ids of a thought: its text without surrounding whitespace, tokenized on its own."""
        return self.encode(thought.strip())

    def layout(self, doc_id: str, chunk_index: int, pass_index: int = 0) -> Layout:
        """The layout of a chunk with a thought in pass ``pass_index`` over its source: pass 0's
        layout in every pass unless the config's ``redraw_layouts`` is on (:func:`choose_layout`)."""
        return choose_layout(
            self.config.seed,
            doc_id,
            chunk_index,
            self.config.posterior_probability,
            pass_index if self.config.redraw_layouts else 0,
        )

    def build(
        self,
        doc_id: str,
        chunks: Sequence[str],
        thoughts: Sequence[str | None] | None = None,
        pass_index: int = 0,
        thought_ids: Sequence[Sequence[int] | None] | None = None,
    ) -> BuiltDocument:
        """Build a document from its chunk texts and, optionally, one thought per chunk.

        ``chunks`` concatenate to the document's text; their tokens are cut from one tokenization of
        that text (:func:`tokenize_chunks`). A chunk whose thought is ``None`` (or every chunk, when
        ``thoughts`` is None) is written raw. ``pass_index`` is the pass over the document's source
        the layouts are drawn for (:meth:`layout`; it matters only with ``redraw_layouts``).

        ``thought_ids`` (one entry per chunk) gives thoughts as token ids of this builder's tokenizer,
        written as they are: a chunk whose entry is not ``None`` has that thought (its text, if any,
        is not encoded), the others take their thought from ``thoughts`` as above.
        """
        if thoughts is not None and len(thoughts) != len(chunks):
            raise LatentThoughtsError(
                f"document {doc_id!r}: {len(chunks)} chunks but {len(thoughts)} thoughts"
            )
        if thought_ids is not None and len(thought_ids) != len(chunks):
            raise LatentThoughtsError(
                f"document {doc_id!r}: {len(chunks)} chunks but {len(thought_ids)} thoughts as token ids"
            )
        tokens = tokenize_chunks(self.tokenizer, chunks)
        doc = BuiltDocument(input_ids=[], straddling=tokens.straddling)
        s = self.special
        if self.config.add_bos and s.bos is not None:
            self._append(doc, "special", [s.bos], -1)
        for index, text_ids in enumerate(tokens.ids):
            given = thought_ids[index] if thought_ids is not None else None
            thought = thoughts[index] if thoughts is not None else None
            if given is None and thought is None:
                doc.layouts.append(Layout.RAW)
                self._append(doc, "text", text_ids, index)
                continue
            layout = self.layout(doc_id, index, pass_index)
            doc.layouts.append(layout)
            ids = [int(token) for token in given] if given is not None else self.encode_thought(str(thought))
            if layout is Layout.PRIOR:
                self._append(doc, "special", [s.sol, s.prior], index)
                self._append(doc, "thought", ids, index)
                self._append(doc, "special", [s.eol], index)
                self._append(doc, "text", text_ids, index)
            else:
                self._append(doc, "special", [s.sol, s.eol], index)
                self._append(doc, "text", text_ids, index)
                self._append(doc, "special", [s.sol, s.post], index)
                self._append(doc, "thought", ids, index)
                self._append(doc, "special", [s.eol], index)
        if self.config.add_eos and s.eos is not None:
            self._append(doc, "special", [s.eos], -1)
        return doc

    def build_plain(self, text: str) -> BuiltDocument:
        """A raw or rephrased baseline document: the whole text tokenised at once, wrapped in BOS/EOS."""
        doc = BuiltDocument(input_ids=[])
        if self.config.add_bos and self.special.bos is not None:
            self._append(doc, "special", [self.special.bos], -1)
        self._append(doc, "text", self.encode(text), 0)
        doc.layouts.append(Layout.RAW)
        if self.config.add_eos and self.special.eos is not None:
            self._append(doc, "special", [self.special.eos], -1)
        return doc

    @staticmethod
    def _append(doc: BuiltDocument, kind: SpanKind, ids: list[int], chunk: int) -> None:
        if not ids:
            return
        start = len(doc.input_ids)
        doc.input_ids.extend(ids)
        doc.spans.append(Span(kind, start, start + len(ids), chunk))


@dataclass
class PackedWindow:
    """One fixed-length training window.

    ``labels`` equal ``input_ids`` except on padding (``-100``); ``position_ids`` count from 0 at the
    window start, or at every document start when position resets are on.
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @property
    def num_real_tokens(self) -> int:
        """Tokens that are not padding."""
        return sum(label != -100 for label in self.labels)


def pack_documents(
    documents: Iterable[Sequence[int]],
    seq_len: int,
    pad_id: int,
    reset_position_ids: bool = False,
) -> Iterator[PackedWindow]:
    """Pack documents back to back into windows of ``seq_len`` tokens; no token is lost.

    A document longer than a window continues in the next one. The last window is padded with
    ``pad_id`` (label ``-100``) rather than dropped.
    """
    if seq_len <= 0:
        raise LatentThoughtsError(f"seq_len must be positive, got {seq_len}")
    ids: list[int] = []
    positions: list[int] = []
    for document in documents:
        for offset, token in enumerate(document):
            ids.append(int(token))
            positions.append(offset if reset_position_ids else len(positions))
            if len(ids) == seq_len:
                yield PackedWindow(ids, list(ids), _window_positions(positions, reset_position_ids))
                ids, positions = [], []
    if ids:
        real = len(ids)
        padding = seq_len - real
        positions = _window_positions(positions, reset_position_ids)
        yield PackedWindow(
            ids + [pad_id] * padding,
            ids + [-100] * padding,
            positions + list(range(positions[-1] + 1, positions[-1] + 1 + padding)),
        )


def _window_positions(positions: list[int], reset: bool) -> list[int]:
    """Positions within a window: absolute offsets restart at 0 in each window without resets;
    with resets, a document continuing from the previous window keeps counting from 0 here."""
    if not reset:
        return list(range(len(positions)))
    shift = positions[0]
    out = []
    for position in positions:
        if position == 0:
            shift = 0
        out.append(position - shift)
    return out


# --- prompts in the latent layouts (used by the E-step and by evaluation) ---------------------


@dataclass(frozen=True)
class EStepLayout:
    """The token layouts of one chunk in the E-step (METHOD section 5), from ONE truncation decision.

    ``prefix_ids`` (c) and ``chunk_ids`` (x) are what is left after truncation;
    ``dropped_prefix`` tokens were cut from the front of the prefix and ``dropped_chunk`` from the end
    of the chunk. ``posterior_prompt`` is ``BOS c SOL EOL x SOL POST`` (sample z ~ q(z | c, x) from it,
    stopping at EOL); ``joint_context`` is ``BOS c SOL``, after which :meth:`joint_continuation`
    ``PRIOR z EOL x`` is scored to give log p(z, x | c).
    """

    special: SpecialIds
    prefix_ids: list[int]
    chunk_ids: list[int]
    dropped_prefix: int
    dropped_chunk: int
    posterior_prompt: list[int]
    joint_context: list[int]

    @property
    def truncated(self) -> bool:
        """Whether any prefix or chunk token was cut."""
        return bool(self.dropped_prefix or self.dropped_chunk)

    def joint_continuation(self, thought_ids: Sequence[int]) -> list[int]:
        """``PRIOR z EOL x`` for a thought's token ids (a trailing EOL in them is not repeated)."""
        thought = list(thought_ids)
        if thought[-1:] == [self.special.eol]:
            thought = thought[:-1]
        return [self.special.prior, *thought, self.special.eol, *self.chunk_ids]


def e_step_layout(
    special: SpecialIds,
    prefix_ids: Sequence[int],
    chunk_ids: Sequence[int],
    context_tokens: int,
    thought_tokens: int,
    add_bos: bool = True,
) -> EStepLayout:
    """Lay out one chunk for the E-step within ``context_tokens`` positions (METHOD section 5).

    ``prefix_ids`` and ``chunk_ids`` are the tokens of the prefix and the chunk as the training format
    cuts them from their document (:func:`tokenize_chunks`); ``thought_tokens`` is the longest thought,
    its EOL included. The posterior prompt plus a thought is the longer of the two sequences (two
    special tokens more than the joint one), so it sets the budget: when it does not fit, the oldest
    prefix tokens are dropped first, then the end of the chunk (METHOD 5.5). Both layouts are built
    from the same truncated c and x, and begin with BOS (when ``add_bos`` and the tokenizer has one)
    as every training document does. A budget that leaves no chunk token is an error.
    """
    bos = [special.bos] if add_bos and special.bos is not None else []
    fixed = len(bos) + 4  # SOL EOL ... SOL POST around the chunk
    room = context_tokens - fixed - thought_tokens
    if room < 1:
        raise LatentThoughtsError(
            f"an E-step context of {context_tokens} tokens leaves no room for a chunk after "
            f"{fixed} special tokens and a thought of {thought_tokens}"
        )
    prefix, chunk = list(prefix_ids), list(chunk_ids)
    overflow = max(len(prefix) + len(chunk) - room, 0)
    dropped_prefix = min(overflow, len(prefix))
    dropped_chunk = overflow - dropped_prefix
    prefix = prefix[dropped_prefix:]
    chunk = chunk[: len(chunk) - dropped_chunk]
    s = special
    return EStepLayout(
        special=s,
        prefix_ids=prefix,
        chunk_ids=chunk,
        dropped_prefix=dropped_prefix,
        dropped_chunk=dropped_chunk,
        posterior_prompt=[*bos, *prefix, s.sol, s.eol, *chunk, s.sol, s.post],
        joint_context=[*bos, *prefix, s.sol],
    )


@dataclass
class TruncationCounter:
    """Counts E-step layouts that were truncated over a run and logs them once, at warning level."""

    chunks: int = 0
    truncated_chunks: int = 0
    cut_chunks: int = 0
    dropped_tokens: int = 0
    logged: bool = False

    def add(self, layout: EStepLayout) -> EStepLayout:
        """Count ``layout`` (returned unchanged, so that calls can be chained)."""
        self.chunks += 1
        if layout.truncated:
            self.truncated_chunks += 1
            self.cut_chunks += bool(layout.dropped_chunk)
            self.dropped_tokens += layout.dropped_prefix + layout.dropped_chunk
        return layout

    def log(self) -> None:
        """Log the truncation summary once per run (nothing when no chunk was truncated)."""
        if self.truncated_chunks and not self.logged:
            logger.warning(
                "E-step context budget: %d of %d chunks truncated (%d of them lost the end of the chunk, "
                "not only prefix), %d tokens dropped",
                self.truncated_chunks,
                self.chunks,
                self.cut_chunks,
                self.dropped_tokens,
            )
            self.logged = True


def thinking_prompt(special: SpecialIds, question_ids: Sequence[int]) -> list[int]:
    """``question SOL PRIOR``: asks a thought-trained model to think before it answers."""
    return [*question_ids, special.sol, special.prior]
