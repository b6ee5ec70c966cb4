"""Held-out likelihood: NLL per token and bits per byte, and ELBO(K) on the E-step's own computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.likelihood import elbo, raw_nll, uniform_chunks
from latent_thoughts.format import SpecialIds, encode_text, tokenize_chunks

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
    assert (
        main([*argv, "--words-per-chunk", "8", "--thought-tokens", "8", "--device", "cpu", "--out", str(out)])
        == 0
    )
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
