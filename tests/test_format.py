"""The thought-augmented training format (METHOD section 2)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_thoughts.format import (
    LATENT_TOKENS,
    DocumentBuilder,
    FormatConfig,
    Layout,
    SpecialIds,
    choose_layout,
    joint_context,
    joint_continuation,
    pack_documents,
    posterior_prompt,
)

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
    texts = [tiny_tokenizer.decode(ids) for ids in doc.ids_of("text")]
    assert texts == chunks
    assert [tiny_tokenizer.decode(ids) for ids in doc.ids_of("thought")] == [t for t in thoughts if t]
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


def test_e_step_prompts_use_the_layouts(tiny_tokenizer) -> None:
    s = SpecialIds.from_tokenizer(tiny_tokenizer)
    assert posterior_prompt(s, [1, 2], [3]) == [1, 2, s.sol, s.eol, 3, s.sol, s.post]
    assert joint_context(s, [1, 2]) + joint_continuation(s, [9], [3]) == [1, 2, s.sol, s.prior, 9, s.eol, 3]
    assert len(LATENT_TOKENS.all()) == 4
