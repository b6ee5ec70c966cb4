"""Held-out likelihood: NLL per token and bits per byte, and ELBO(K) on the E-step's own computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from latent_thoughts.engines.base import Score
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.likelihood import elbo, nll_windows, raw_nll, uniform_chunks
from latent_thoughts.format import SpecialIds, encode_text, tokenize_chunks
from tests.conftest import save_tiny_llama

DOCUMENTS = [
    "We know that 37 x 24 = 888. Adding 129 gives 1017. So the total is 1017.",
    "The derivative of x^2 is 2x. Hence the slope at x = 3 is 6.",
    "Let n be an integer. If n is even, then n^2 is even. Thus 4 divides n^2.",
    "First compute 12 + 30 = 42. Then 42 x 2 = 84, which is the answer.",
]
THOUGHT_TOKENS = 8


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(TransformersEngineConfig(model=str(tiny_model_dir), device="cpu", dtype="fp32"))


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _logprob(model: torch.nn.Module, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) by one plain forward pass."""
    ids = torch.tensor([[*context, *continuation]])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    start = len(context)
    return sum(float(logprobs[start + i - 1, token]) for i, token in enumerate(continuation))


def test_uniform_chunks_concatenate_back() -> None:
    chunks = uniform_chunks(DOCUMENTS[0], 5)
    assert "".join(chunks) == DOCUMENTS[0] and len(chunks) == 4
    assert chunks[0] == "We know that 37 x "
    with pytest.raises(LatentThoughtsError):
        uniform_chunks("a b", 0)


def test_nll_per_token_and_bits_per_byte_by_hand(engine, model, tiny_tokenizer) -> None:
    result = raw_nll(engine, tiny_tokenizer, DOCUMENTS[:2])
    by_hand = [
        -_logprob(model, [tiny_tokenizer.bos_token_id], encode_text(tiny_tokenizer, doc))
        for doc in DOCUMENTS[:2]
    ]
    tokens = sum(len(encode_text(tiny_tokenizer, doc)) for doc in DOCUMENTS[:2])
    assert result.tokens == tokens
    assert result.nll_per_token == pytest.approx(sum(by_hand) / tokens, rel=1e-4)
    bytes_ = sum(len(doc.encode()) for doc in DOCUMENTS[:2])
    assert result.bits_per_byte == pytest.approx(sum(by_hand) / math.log(2) / bytes_, rel=1e-4)


def test_elbo_1_is_log_p_minus_log_q_of_each_chunk_by_hand(engine, model, tiny_tokenizer) -> None:
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    chunks = uniform_chunks(DOCUMENTS[1], 5)
    [result] = elbo(
        engine, tiny_tokenizer, [chunks], 1, context_tokens=256, thought_tokens=THOUGHT_TOKENS, seed=3
    )
    ids = tokenize_chunks(tiny_tokenizer, chunks).ids
    assert len(result.terms) == len(chunks)
    for index, (term, [thought]) in enumerate(zip(result.terms, result.thoughts, strict=True)):
        prefix = [token for earlier in ids[:index] for token in earlier]
        x, z = ids[index], thought.thought_ids  # z ends with EOL
        # q covers what the sampler drew: the EOL when it closed the thought, not the one appended
        # to a thought cut at the budget
        drawn = z if thought.finish_reason == "stop" else z[:-1]
        log_q = _logprob(
            model, [special.bos, *prefix, special.sol, special.eol, *x, special.sol, special.post], drawn
        )
        log_p = _logprob(model, [special.bos, *prefix, special.sol], [special.prior, *z, *x])
        assert term == pytest.approx(log_p - log_q, abs=1e-3)
    assert result.elbo == pytest.approx(sum(result.terms))


def test_elbo_4_is_at_least_elbo_1_on_average(engine, tiny_tokenizer) -> None:
    documents = [uniform_chunks(doc, 6) for doc in DOCUMENTS]
    kwargs = {"context_tokens": 256, "thought_tokens": THOUGHT_TOKENS}
    one = [t for d in elbo(engine, tiny_tokenizer, documents, 1, seed=11, **kwargs) for t in d.terms]
    four_docs = elbo(engine, tiny_tokenizer, documents, 4, seed=12, **kwargs)
    four = [t for d in four_docs for t in d.terms]
    differences = [b - a for a, b in zip(one, four, strict=True)]
    n = len(differences)
    mean = sum(differences) / n
    stderr = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1) / n)
    # one-sided: ELBO(4) - ELBO(1) is not significantly negative (and on these draws positive)
    assert mean > 0 and mean + 2 * stderr > 0, (mean, stderr, n)
    # and, on the same draws, log mean w >= mean log w (Jensen), chunk by chunk
    for document in four_docs:
        for term, scores in zip(document.terms, document.thoughts, strict=True):
            assert term >= sum(s.log_w for s in scores) / len(scores) - 1e-9


def test_the_likelihood_verb(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from latent_thoughts.cli import main

    documents = tmp_path / "val.jsonl"
    documents.write_text(
        "".join(json.dumps({"id": str(i), "text": doc}) + "\n" for i, doc in enumerate(DOCUMENTS))
    )
    out = tmp_path / "likelihood.json"
    argv = ["likelihood", str(tiny_model_dir), "--documents", str(documents), "--k", "1,2"]
    sizes = ["--words-per-chunk", "8", "--max-thought-tokens", "8"]
    assert main([*argv, *sizes, "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "nats/token" in printed and "ELBO(2)" in printed
    record = json.loads(out.read_text())
    assert record["documents"] == 4 and {
        "elbo_1_per_document",
        "elbo_2_per_document",
        "bits_per_byte",
    } <= set(record)
    assert main([*argv, "--limit", "0"]) == 2


@pytest.mark.parametrize(("k", "culprit"), [("-1", "-1"), ("1,-2", "-2"), ("1000000", "1024"), ("x", "'x'")])
def test_the_likelihood_verb_refuses_a_k_out_of_range(
    k: str, culprit: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latent_thoughts.cli import main

    documents = tmp_path / "val.jsonl"
    documents.write_text('{"text": "One document. Two sentences."}\n')
    argv = ["likelihood", str(tiny_model_dir), "--documents", str(documents), "--k", k, "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-thoughts: error: --k") and "\n" not in err and culprit in err


# --- documents longer than the context -------------------------------------------------------------

SHORT_CONTEXT = 32
LONG_DOCUMENT = " ".join(DOCUMENTS * 3)  # about 220 tokens of the tiny BPE: several contexts long


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """The tiny Llama with only 32 positions."""
    return save_tiny_llama(tmp_path_factory.mktemp("short_llama"), tiny_tokenizer, positions=SHORT_CONTEXT)


@pytest.fixture(scope="module")
def short_engine(short_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(
        TransformersEngineConfig(model=str(short_model_dir), device="cpu", dtype="fp32")
    )


@pytest.fixture(scope="module")
def short_model(short_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(short_model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("length", [0, 1, 2, 5, 32, 33, 47, 100, 257])
@pytest.mark.parametrize(("context", "stride"), [(32, 16), (32, 1), (32, 31), (8, 3), (2, 1)])
def test_nll_windows_score_every_position_once_with_at_least_context_minus_stride_before_it(
    length: int, context: int, stride: int
) -> None:
    windows = nll_windows(length, context, stride)
    scored = [position for w in windows for position in range(w.scored, w.end)]
    assert scored == list(range(1, length))  # each position after the first once, in order
    for number, window in enumerate(windows):
        assert 0 <= window.start < window.scored < window.end <= length
        assert window.end - window.start <= context
        if number:  # later windows: full windows, at most ``stride`` new tokens
            assert window.end - window.start == context and window.end - window.scored <= stride
    if length <= context:
        assert len(windows) == (1 if length > 1 else 0)


@pytest.mark.parametrize(("context", "stride"), [(32, 0), (32, 32), (1, 1)])
def test_nll_windows_refuse_a_stride_that_leaves_no_context(context: int, stride: int) -> None:
    with pytest.raises(LatentThoughtsError, match=r"stride|context"):
        nll_windows(100, context, stride)


@pytest.mark.parametrize("stride", [16, 7, 31])
def test_a_long_document_is_scored_in_windows_equal_to_the_model_run_by_hand(
    short_engine, short_model, tiny_tokenizer, stride: int
) -> None:
    ids = encode_text(tiny_tokenizer, LONG_DOCUMENT)
    sequence = [tiny_tokenizer.bos_token_id, *ids]
    assert len(sequence) > 5 * SHORT_CONTEXT
    # by hand: the first window sees the first 32 tokens, each later one the 32 tokens ending
    # ``stride`` tokens further and scores the new ones
    end = SHORT_CONTEXT
    by_hand = -_logprob(short_model, sequence[:1], sequence[1:end])
    windows = 1
    while end < len(sequence):
        new_end = min(end + stride, len(sequence))
        by_hand -= _logprob(short_model, sequence[new_end - SHORT_CONTEXT : end], sequence[end:new_end])
        end, windows = new_end, windows + 1
    result = raw_nll(short_engine, tiny_tokenizer, [LONG_DOCUMENT], stride=stride)
    assert result.tokens == len(ids) and result.windows == windows and result.long_documents == 1
    assert result.nll == pytest.approx(by_hand, rel=1e-5)
    assert result.bytes == len(LONG_DOCUMENT.encode())  # the whole document's bytes
    # the default stride is half the context
    assert (
        raw_nll(short_engine, tiny_tokenizer, [LONG_DOCUMENT]).windows
        == math.ceil((len(sequence) - SHORT_CONTEXT) / (SHORT_CONTEXT // 2)) + 1
    )


def test_a_document_that_fits_scores_as_before_and_long_ones_add_their_windows(
    short_engine, short_model, tiny_tokenizer
) -> None:
    fits = DOCUMENTS[3]
    ids = encode_text(tiny_tokenizer, fits)
    assert len(ids) + 1 <= SHORT_CONTEXT
    one_pass = -_logprob(short_model, [tiny_tokenizer.bos_token_id], ids)
    alone = raw_nll(short_engine, tiny_tokenizer, [fits])
    assert alone.windows == 1 and alone.long_documents == 0
    assert alone.nll == pytest.approx(one_pass, rel=1e-5)
    long = raw_nll(short_engine, tiny_tokenizer, [LONG_DOCUMENT])
    both = raw_nll(short_engine, tiny_tokenizer, [fits, LONG_DOCUMENT])
    assert both.nll == pytest.approx(alone.nll + long.nll, rel=1e-5)
    assert both.tokens == alone.tokens + long.tokens and both.windows == 1 + long.windows


def test_a_context_longer_than_the_model_is_refused(short_engine, tiny_tokenizer) -> None:
    with pytest.raises(LatentThoughtsError, match="longer than the model's 32"):
        raw_nll(short_engine, tiny_tokenizer, [LONG_DOCUMENT], context_tokens=64)


class _RefusingEngine:
    """An engine of 32 positions whose scoring refuses any continuation holding token ``bad``."""

    identity = "refusing"
    device = "cpu"
    max_context_tokens = SHORT_CONTEXT

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def score(self, contexts, continuations):
        for i, continuation in enumerate(continuations):
            if self.bad in continuation:
                raise LatentThoughtsError(f"continuation {i} is refused")
        return [Score(token_logprobs=[-1.0] * len(c)) for c in continuations]


def test_an_engine_error_names_the_document(tiny_tokenizer) -> None:
    bad = encode_text(tiny_tokenizer, " slope")[-1]
    assert bad not in encode_text(tiny_tokenizer, DOCUMENTS[0])
    engine = _RefusingEngine(bad)
    with pytest.raises(LatentThoughtsError, match=r"^document 'doc-b': continuation 0 is refused$"):
        raw_nll(engine, tiny_tokenizer, [DOCUMENTS[0], DOCUMENTS[1]], ids=["doc-a", "doc-b"])  # type: ignore[arg-type]


def test_elbo_of_a_long_document_truncates_prefixes_as_the_e_step_does(short_engine, tiny_tokenizer) -> None:
    chunks = uniform_chunks(LONG_DOCUMENT, 4)
    [result] = elbo(short_engine, tiny_tokenizer, [chunks], 1, context_tokens=None, thought_tokens=4, seed=0)
    assert len(result.terms) == len(chunks) and all(math.isfinite(term) for term in result.terms)
    assert result.truncated_chunks > len(chunks) // 2  # the prefix soon outgrows 32 positions
    assert result.dropped_chunk_tokens == 0  # 4-word chunks fit: the bound covers the document
    with pytest.raises(LatentThoughtsError, match="longer than the model's 32"):
        elbo(short_engine, tiny_tokenizer, [chunks], 1, context_tokens=64, thought_tokens=4)
    with pytest.raises(LatentThoughtsError, match=r"^an E-step context of 8 tokens leaves no room"):
        elbo(short_engine, tiny_tokenizer, [chunks], 1, context_tokens=8, thought_tokens=4)


def test_the_likelihood_verb_scores_a_document_longer_than_the_context(
    short_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from latent_thoughts.cli import main

    documents = tmp_path / "val.jsonl"
    rows = [{"id": "short", "text": DOCUMENTS[3]}, {"id": "long-one", "text": LONG_DOCUMENT}]
    documents.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "likelihood.json"
    argv = ["likelihood", str(short_model_dir), "--documents", str(documents), "--device", "cpu"]
    sizes = ["--words-per-chunk", "4", "--max-thought-tokens", "4"]
    assert main([*argv, "--k", "1", *sizes, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 longer than the context of 32 tokens" in printed and "ELBO(1)" in printed
    record = json.loads(out.read_text())
    assert record["tokens"] == sum(len(encode_text_of(short_model_dir, row["text"])) for row in rows)
    assert record["context_tokens"] == 32 and record["stride"] == 16 and record["long_documents"] == 1
    assert record["elbo_truncated_chunks"] > 0 and record["elbo_dropped_chunk_tokens"] == 0
    # a chunk too long for the context is cut as the E-step cuts it, and said so
    assert main([*argv, "--k", "1", "--words-per-chunk", "40", "--max-thought-tokens", "4"]) == 0
    assert "chunk tokens left out of the bound" in capsys.readouterr().out
    for bad, culprit in [
        (["--stride", "32"], "stride"),
        (["--context-tokens", "64"], "longer than the model"),
    ]:
        assert main([*argv, "--k", "0", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
        assert err.startswith("latent-thoughts: error:") and culprit in err


def encode_text_of(model_dir: Path, text: str) -> list[int]:
    from latent_thoughts.tokenizer import load_tokenizer

    return encode_text(load_tokenizer(model_dir), text)
