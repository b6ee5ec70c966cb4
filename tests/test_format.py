"""The thought-augmented training format (METHOD section 2)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_thoughts.corpus import chunk_document, read_documents
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import (
    LATENT_TOKENS,
    DocumentBuilder,
    FormatConfig,
    Layout,
    SpecialIds,
    TruncationCounter,
    choose_layout,
    e_step_layout,
    pack_documents,
    tokenize_chunks,
    tokenizer_fingerprint,
)
from latent_thoughts.tokenizer import add_latent_tokens, load_tokenizer
from tests.conftest import SHARED

LLAMA2 = SHARED / "tokenizers" / "llama2"
CORPUS = SHARED / "corpus" / "math_textbooks.jsonl"
needs_llama2 = pytest.mark.skipif(
    not (LLAMA2 / "tokenizer.model").exists(), reason="shared Llama-2 tokenizer not present"
)
needs_corpus = pytest.mark.skipif(not CORPUS.exists(), reason="shared corpus not present")

PIECE = st.text(alphabet=st.sampled_from(list("ab 12=.x\né")), min_size=1, max_size=30)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(PIECE, min_size=1, max_size=8),
    data=st.data(),
    seed=st.integers(0, 1000),
    posterior_probability=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_every_raw_sentence_appears_once_in_order_whatever_the_layouts(
    tiny_tokenizer, chunks, data, seed, posterior_probability
) -> None:
    thoughts = data.draw(st.lists(st.one_of(st.none(), PIECE), min_size=len(chunks), max_size=len(chunks)))
    builder = DocumentBuilder(
        tiny_tokenizer, FormatConfig(seed=seed, posterior_probability=posterior_probability)
    )
    doc = builder.build("doc", chunks, thoughts)
    # the text spans are the whole text tokenized once, and decode to it exactly
    assert doc.text_ids() == builder.build_plain("".join(chunks)).text_ids()
    assert tiny_tokenizer.decode(doc.text_ids()) == "".join(chunks)
    assert [tiny_tokenizer.decode(ids) for ids in doc.ids_of("thought")] == [
        t.strip() for t in thoughts if t and t.strip()
    ]
    # spans tile the whole document in order
    assert [s.start for s in doc.spans] == [0] + [s.end for s in doc.spans[:-1]]
    assert doc.spans[-1].end == len(doc.input_ids)
    assert doc.input_ids[0] == tiny_tokenizer.bos_token_id
    assert doc.input_ids[-1] == tiny_tokenizer.eos_token_id
    for layout, thought in zip(doc.layouts, thoughts, strict=True):
        assert (layout is Layout.RAW) == (thought is None)
        if posterior_probability == 0.0 and thought is not None:
            assert layout is Layout.PRIOR
        if posterior_probability == 1.0 and thought is not None:
            assert layout is Layout.POSTERIOR


def test_prior_and_posterior_layouts_match_the_method(tiny_tokenizer) -> None:
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    encode = lambda text: tiny_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    x, z = "So 37 x 24 = 888.", "30 x 24 = 720."
    prior = DocumentBuilder(tiny_tokenizer, FormatConfig(posterior_probability=0.0)).build("d", [x], [z])
    assert prior.input_ids == [
        special.bos,
        special.sol,
        special.prior,
        *encode(z),
        special.eol,
        *encode(x),
        special.eos,
    ]
    post = DocumentBuilder(tiny_tokenizer, FormatConfig(posterior_probability=1.0)).build("d", [x], [z])
    assert post.input_ids == [
        special.bos, special.sol, special.eol, *encode(x), special.sol, special.post, *encode(z), special.eol, special.eos
    ]  # fmt: skip


def test_layout_choice_is_seeded_per_chunk_with_the_configured_probability() -> None:
    draws = [choose_layout(7, f"doc{i // 10}", i % 10, 0.5) for i in range(4000)]
    share = sum(layout is Layout.POSTERIOR for layout in draws) / len(draws)
    assert 0.46 < share < 0.54
    assert draws == [choose_layout(7, f"doc{i // 10}", i % 10, 0.5) for i in range(4000)]
    assert draws != [choose_layout(8, f"doc{i // 10}", i % 10, 0.5) for i in range(4000)]
    assert sum(choose_layout(0, "d", i, 0.2) is Layout.POSTERIOR for i in range(4000)) / 4000 < 0.25


def test_layouts_are_redrawn_per_pass_only_with_the_option(tiny_tokenizer) -> None:
    import hashlib
    import struct

    def old_choose_layout(seed: int, doc_id: str, chunk_index: int, probability: float) -> Layout:
        digest = hashlib.sha256(f"{seed}\x00{doc_id}\x00{chunk_index}".encode()).digest()
        uniform = struct.unpack(">Q", digest[:8])[0] / 2**64
        return Layout.POSTERIOR if uniform < probability else Layout.PRIOR

    keys = [(f"doc{i // 10}", i % 10) for i in range(400)]
    pass0 = [choose_layout(3, doc, chunk, 0.5, pass_index=0) for doc, chunk in keys]
    assert pass0 == [old_choose_layout(3, doc, chunk, 0.5) for doc, chunk in keys]  # pass 0: as before
    pass1 = [choose_layout(3, doc, chunk, 0.5, pass_index=1) for doc, chunk in keys]
    pass2 = [choose_layout(3, doc, chunk, 0.5, pass_index=2) for doc, chunk in keys]
    for other in (pass1, pass2):  # each pass an independent draw: about half the chunks change
        assert 0.4 < sum(a is not b for a, b in zip(pass0, other, strict=True)) / len(keys) < 0.6
    assert pass1 != pass2
    chunks, thoughts = ["A. ", "B. ", "C. ", "D. ", "E. ", "F."], ["a", "b", None, "d", "e", "f"]
    fixed = DocumentBuilder(tiny_tokenizer, FormatConfig(seed=3))
    redraw = DocumentBuilder(tiny_tokenizer, FormatConfig(seed=3, redraw_layouts=True))
    first = fixed.build("doc", chunks, thoughts)
    assert all(fixed.build("doc", chunks, thoughts, pass_index=p) == first for p in range(5))
    assert redraw.build("doc", chunks, thoughts, pass_index=0) == first
    layouts = {tuple(redraw.build("doc", chunks, thoughts, pass_index=p).layouts) for p in range(8)}
    assert len(layouts) > 1 and all(layout[2] is Layout.RAW for layout in layouts)


def test_plain_documents_are_wrapped_in_bos_and_eos(tiny_tokenizer) -> None:
    doc = DocumentBuilder(tiny_tokenizer).build_plain("A whole raw document.")
    assert (
        doc.input_ids[0] == tiny_tokenizer.bos_token_id and doc.input_ids[-1] == tiny_tokenizer.eos_token_id
    )
    assert tiny_tokenizer.decode(doc.ids_of("text")[0]) == "A whole raw document."


@settings(max_examples=200, deadline=None)
@given(
    documents=st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=40), max_size=12),
    seq_len=st.integers(1, 33),
    reset=st.booleans(),
)
def test_packing_loses_no_token(documents, seq_len, reset) -> None:
    windows = list(pack_documents(documents, seq_len, pad_id=-1, reset_position_ids=reset))
    assert all(len(w.input_ids) == len(w.labels) == len(w.position_ids) == seq_len for w in windows)
    real = [
        token for w in windows for token, label in zip(w.input_ids, w.labels, strict=True) if label != -100
    ]
    assert real == [token for document in documents for token in document]
    assert all(w.num_real_tokens == seq_len for w in windows[:-1])


def test_position_ids_restart_at_document_boundaries_when_asked() -> None:
    windows = list(pack_documents([[1, 2, 3], [4, 5]], seq_len=4, pad_id=0, reset_position_ids=True))
    assert [w.position_ids for w in windows] == [[0, 1, 2, 0], [0, 1, 2, 3]]
    assert windows[1].labels == [5, -100, -100, -100]
    plain = list(pack_documents([[1, 2, 3], [4, 5]], seq_len=4, pad_id=0))
    assert [w.position_ids for w in plain] == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_e_step_layout_is_the_method_layout_when_everything_fits(tiny_tokenizer) -> None:
    s = SpecialIds.from_tokenizer(tiny_tokenizer)
    layout = e_step_layout(s, [1, 2], [3, 4], context_tokens=64, thought_tokens=16)
    assert not layout.truncated
    assert layout.posterior_prompt == [s.bos, 1, 2, s.sol, s.eol, 3, 4, s.sol, s.post]
    assert layout.joint_context == [s.bos, 1, 2, s.sol]
    # a sampled thought ends with its EOL; the joint continuation does not repeat it
    assert layout.joint_continuation([9, 8, s.eol]) == [s.prior, 9, 8, s.eol, 3, 4]
    assert layout.joint_continuation([9, 8]) == [s.prior, 9, 8, s.eol, 3, 4]
    assert e_step_layout(s, [1], [3], 64, 16, add_bos=False).joint_context == [1, s.sol]
    assert len(LATENT_TOKENS.all()) == 4


def test_e_step_truncation_drops_the_oldest_prefix_tokens_first_then_the_end_of_the_chunk(
    tiny_tokenizer,
) -> None:
    s = SpecialIds.from_tokenizer(tiny_tokenizer)
    prefix, chunk = list(range(10, 20)), list(range(30, 36))
    # 26 positions - 5 special tokens - 8 thought tokens leave 13 for the 16 prefix and chunk tokens
    layout = e_step_layout(s, prefix, chunk, context_tokens=26, thought_tokens=8)
    assert (layout.dropped_prefix, layout.dropped_chunk) == (3, 0)
    assert layout.prefix_ids == prefix[3:] and layout.chunk_ids == chunk
    assert layout.joint_context == [s.bos, *prefix[3:], s.sol]
    # a smaller budget empties the prefix and then cuts the end of the chunk
    layout = e_step_layout(s, prefix, chunk, context_tokens=17, thought_tokens=8)
    assert (layout.dropped_prefix, layout.dropped_chunk) == (10, 2)
    assert layout.prefix_ids == [] and layout.chunk_ids == chunk[:4]
    assert layout.posterior_prompt == [s.bos, s.sol, s.eol, *chunk[:4], s.sol, s.post]
    assert layout.joint_continuation([7]) == [s.prior, 7, s.eol, *chunk[:4]]
    with pytest.raises(LatentThoughtsError, match="no room for a chunk"):
        e_step_layout(s, prefix, chunk, context_tokens=13, thought_tokens=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.integers(0, 40),
    chunk=st.integers(1, 40),
    thought=st.integers(1, 20),
    budget=st.integers(26, 120),
)
def test_both_e_step_sequences_fit_the_budget_and_share_c_and_x(
    tiny_tokenizer, prefix, chunk, thought, budget
) -> None:
    s = SpecialIds.from_tokenizer(tiny_tokenizer)
    c, x = list(range(100, 100 + prefix)), list(range(200, 200 + chunk))
    layout = e_step_layout(s, c, x, budget, thought)
    z = [7] * (thought - 1) + [s.eol]  # the longest thought, with its EOL
    assert len(layout.posterior_prompt) + len(z) <= budget
    assert len(layout.joint_context) + len(layout.joint_continuation(z)) <= budget
    assert layout.prefix_ids == c[len(c) - len(layout.prefix_ids) :]  # the newest prefix tokens stay
    assert layout.chunk_ids == x[: len(layout.chunk_ids)]  # the start of the chunk stays
    assert layout.dropped_chunk == 0 or layout.prefix_ids == []
    assert layout.posterior_prompt[1 : 1 + len(layout.prefix_ids)] == layout.joint_context[1:-1]
    fits = prefix + chunk + thought + 5 <= budget
    assert layout.truncated != fits


def test_truncated_chunks_are_logged_once_per_run_with_their_number(tiny_tokenizer, caplog) -> None:
    s = SpecialIds.from_tokenizer(tiny_tokenizer)
    counter = TruncationCounter()
    for prefix in (0, 30, 40, 5):
        counter.add(e_step_layout(s, list(range(prefix)), [1, 2, 3], context_tokens=40, thought_tokens=8))
    with caplog.at_level(logging.WARNING, logger="latent_thoughts.format"):
        counter.log()
        counter.log()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "2 of 4 chunks truncated" in record.getMessage()
    assert counter.dropped_tokens == (30 + 3 - 27) + (40 + 3 - 27)  # 40 - 5 special - 8 thought = 27


# --- tokenization: one pass over the whole text, cut at the chunks' character offsets ----------


@pytest.fixture(scope="module")
def llama2() -> Any:
    tokenizer = load_tokenizer(LLAMA2)
    add_latent_tokens(tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def corpus_documents() -> list[list[str]]:
    """The chunk texts of 24 documents of the shared corpus, from all four sources, short and long."""
    documents = [doc for doc in read_documents([CORPUS]) if len(doc.text) < 30_000]
    return [[chunk.text for chunk in chunk_document(doc.doc_id, doc.text)] for doc in documents[::25][:24]]


def check_text_spans_are_the_plain_document(tokenizer: Any, chunks: list[str]) -> int:
    """Build ``chunks`` with a thought on every chunk and check METHOD's 'every raw token once'
    against ``build_plain``; returns the document's straddling-token count."""
    text = "".join(chunks)
    builder = DocumentBuilder(tokenizer, FormatConfig(posterior_probability=0.5))
    doc = builder.build(
        "doc", chunks, [f"Thought {i}: the step behind chunk {i}." for i in range(len(chunks))]
    )
    plain = builder.build_plain(text)
    # the text spans concatenate to exactly the tokens of the plain document ...
    assert doc.text_ids() == plain.text_ids()
    # ... one span per chunk, in order, so no token is doubled or dropped at a boundary
    assert [span.chunk for span in doc.spans if span.kind == "text"] == sorted(
        {span.chunk for span in doc.spans if span.kind == "text"}
    )
    # decoding the document without its thought spans (and markers) gives the text byte for byte
    assert tokenizer.decode(doc.text_ids(), clean_up_tokenization_spaces=False).encode() == text.encode()
    return doc.straddling


@needs_llama2
@needs_corpus
def test_llama2_text_spans_of_corpus_documents_are_the_plain_tokens(llama2, corpus_documents) -> None:
    straddling = [check_text_spans_are_the_plain_document(llama2, chunks) for chunks in corpus_documents]
    boundaries = sum(len(chunks) - 1 for chunks in corpus_documents)
    # SentencePiece writes the space before a word into the word's token: a sentence-ending space is
    # in one chunk and its word in the next, so most boundaries have one straddling token, counted once
    assert 0 < sum(straddling) <= boundaries


@needs_corpus
def test_byte_level_bpe_text_spans_of_corpus_documents_are_the_plain_tokens(
    tiny_tokenizer, corpus_documents
) -> None:
    straddling = [
        check_text_spans_are_the_plain_document(tiny_tokenizer, chunks) for chunks in corpus_documents
    ]
    assert 0 < sum(straddling) <= sum(len(chunks) - 1 for chunks in corpus_documents)


@needs_llama2
def test_a_straddling_token_goes_to_the_chunk_holding_its_last_character(llama2, tiny_tokenizer) -> None:
    chunks = ["We know that 37 x 24 = 888. ", "Then add 129.\n\n", "So the total is 1017."]
    for tokenizer, then in [(llama2, "▁Then"), (tiny_tokenizer, "ĠThen")]:
        cut = tokenize_chunks(tokenizer, chunks)
        pieces = [tokenizer.convert_ids_to_tokens(ids) for ids in cut.ids]
        assert pieces[0][-1] == "." and pieces[1][0] == then  # the space travels with "Then"
        assert pieces[2][0] == "So"  # a newline is a token of its own: nothing straddles there
        assert cut.straddling == 1
        assert list(itertools.chain(*cut.ids)) == DocumentBuilder(tokenizer).encode("".join(chunks))


@needs_llama2
def test_before_the_fix_per_chunk_encoding_gave_llama2_an_extra_token_per_boundary(llama2) -> None:
    chunks = ["We know that 37 x 24 = 888. ", "Then add 129. ", "So the total is 1017."]
    per_chunk = [token for chunk in chunks for token in llama2.encode(chunk, add_special_tokens=False)]
    whole = DocumentBuilder(llama2).build("d", chunks, ["z", "z", "z"]).text_ids()
    assert len(per_chunk) == len(whole) + 2  # a lone "▁" at each boundary
    assert llama2.decode(per_chunk) != "".join(chunks) == llama2.decode(whole)


@needs_llama2
def test_a_thought_is_tokenized_stripped_and_on_its_own(llama2, tiny_tokenizer) -> None:
    thought = "  The derivative of x^2 is 2x.\n"
    for tokenizer, first in [(llama2, "▁The"), (tiny_tokenizer, "The")]:
        builder = DocumentBuilder(tokenizer, FormatConfig(posterior_probability=0.0))
        doc = builder.build("d", ["So the slope at 3 is 6."], [thought])
        (ids,) = doc.ids_of("thought")
        assert ids == builder.encode("The derivative of x^2 is 2x.")
        assert tokenizer.convert_ids_to_tokens(ids)[0] == first
        assert tokenizer.decode(ids) == thought.strip()


def test_text_spelling_a_special_token_stays_plain_characters(tiny_tokenizer) -> None:
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    doc = DocumentBuilder(tiny_tokenizer).build("d", ["a </s> b ", "<|END_OF_LATENT|> c"], None)
    assert not {special.eos, special.eol, special.sol} & set(doc.text_ids())
    assert tiny_tokenizer.decode(doc.text_ids()) == "a </s> b <|END_OF_LATENT|> c"


def test_thoughts_given_as_ids_are_written_as_they_are(tiny_tokenizer: Any) -> None:
    """``thought_ids`` wins over a chunk's thought text, even ids its text would never give (a special
    token inside, a non-canonical split, an empty thought); a None entry keeps the text path."""
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    chunks = ["One sentence. ", "Two sentences. ", "Three."]
    thoughts = ["a thought", None, "a third"]
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(posterior_probability=0.5, seed=3))
    odd = [*builder.encode(" t"), special.eol, *builder.encode("h")]
    doc = builder.build("d", chunks, thoughts, thought_ids=[odd, [], None])
    assert doc.ids_of("thought") == [odd, builder.encode_thought("a third")]  # the empty one has no span
    assert doc.layouts[1] is not Layout.RAW and doc.layouts[2] is builder.layout("d", 2)
    assert doc.text_ids() == builder.build("d", chunks, thoughts).text_ids()
    assert builder.build("d", chunks, thoughts, thought_ids=[None] * 3) == builder.build(
        "d", chunks, thoughts
    )
    with pytest.raises(LatentThoughtsError, match="2 thoughts as token ids"):
        builder.build("d", chunks, thoughts, thought_ids=[None, None])


def test_the_tokenizer_fingerprint_survives_a_save_and_tells_tokenizers_apart(
    tiny_tokenizer: Any, tmp_path
) -> None:
    from latent_thoughts.tokenizer import train_bpe_tokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "saved")
    saved = load_tokenizer(tmp_path / "saved")
    add_latent_tokens(saved)  # idempotent, as the trainer calls it
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(tiny_tokenizer)
    assert DocumentBuilder(saved).fingerprint == tokenizer_fingerprint(tiny_tokenizer)
    other = train_bpe_tokenizer(["other words entirely " * 10], vocab_size=300)
    add_latent_tokens(other)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)
