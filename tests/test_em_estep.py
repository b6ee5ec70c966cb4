"""The E-step of one chunk on a tiny Llama trained for a few steps on thought documents (and, where a
test needs thoughts closed or cut for certain, on a random one with a bias on EOL)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from latent_thoughts.em.estep import closed_thought, sample_thoughts, score_roles, score_thoughts
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.format import DocumentBuilder, FormatConfig, SpecialIds, e_step_layout, pack_documents
from tests.conftest import tiny_llama
from tests.test_em_estep_exact import NEVER_EOL, OFTEN_EOL, eol_biased_llama

pytestmark = pytest.mark.numeric

CHUNKS = [
    ["We know that 37 x 24 = 888. ", "Adding 129 gives 1017. ", "So the total is 1017."],
    ["The derivative of x^2 is 2x. ", "Hence the slope at x = 3 is 6."],
    ["First compute 12 + 30 = 42. ", "Then 42 x 2 = 84, ", "which is the answer."],
]
THOUGHTS = ["37 x 24 is 30 x 24 plus 7 x 24.", "888 + 129 = 1017.", "The power rule gives 2x."]
THOUGHT_TOKENS = 48  # the longest thought is about 30 tokens with digits split


@pytest.fixture(scope="module")
def trained(tiny_tokenizer) -> Any:
    """A 2-layer Llama (width 32) after 40 AdamW steps on thought documents: peaked, not random."""
    model = tiny_llama(tiny_tokenizer, positions=256)
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(seed=1))
    documents = [
        builder.build(f"doc{i}-{copy}", chunks, [THOUGHTS[(i + j) % 3] for j in range(len(chunks))]).input_ids
        for copy in range(4)
        for i, chunks in enumerate(CHUNKS)
    ]
    windows = list(pack_documents(documents, seq_len=64, pad_id=tiny_tokenizer.pad_token_id))
    ids = torch.tensor([w.input_ids for w in windows])
    labels = torch.tensor([w.labels for w in windows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(40):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]  # it learned something: its distributions are peaked
    return model.eval()


def make_engine(model: Any, tokenizer: Any, dtype: str) -> TransformersEngine:
    return TransformersEngine(
        TransformersEngineConfig(dtype=dtype, device="cpu"), model=model, tokenizer=tokenizer
    )


def layout_of(tokenizer: Any) -> Any:
    builder = DocumentBuilder(tokenizer)
    prefix = builder.encode("We know that 37 x 24 = 888.")
    chunk = builder.encode(" Adding 129 gives 1017.")
    return e_step_layout(SpecialIds.from_tokenizer(tokenizer), prefix, chunk, 256, THOUGHT_TOKENS)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_log_w_is_zero_when_prior_and_posterior_agree(trained, tiny_tokenizer, dtype) -> None:
    """log q and log p come from one numeric path, so when both roles see the same tokens under the
    same law, log w = 0 to float rounding (tolerance 1e-6), in fp32 and under bf16 autocast alike."""
    engine = make_engine(trained, tiny_tokenizer, dtype)
    layout = layout_of(tiny_tokenizer)
    samples = sample_thoughts(engine, [layout], k=4, max_thought_tokens=THOUGHT_TOKENS, seed=0)[0]
    thoughts = [closed_thought(layout, s.token_ids) for s in samples]
    same = (layout.posterior_prompt, thoughts)
    for log_q, log_p in score_roles(engine, same, same):
        assert abs(log_p - log_q) <= 1e-6
    # and score_thoughts takes log q and log p from exactly that path (the same batched pass over
    # its layout's two roles), not from the sampler
    joint = (layout.joint_context, [layout.joint_continuation(ids) for ids in thoughts])
    for scored, (log_q, log_p) in zip(
        score_thoughts(engine, layout, thoughts), score_roles(engine, same, joint), strict=True
    ):
        assert (scored.log_q, scored.log_p) == (log_q, log_p)


@pytest.mark.parametrize("eol_bias", [OFTEN_EOL, NEVER_EOL], ids=["closed", "cut"])
def test_log_q_is_the_law_the_thoughts_were_sampled_from(tiny_tokenizer, eol_bias) -> None:
    """In fp32 the scoring path's log q equals the sampler's own log-probs (temperature 1, top-p 1),
    for thoughts closed by EOL and for thoughts cut at the budget alike. Which of the two a thought is
    holds by construction (a bias on EOL's logit: drawn about one time in six, or never), not by
    what a few training steps happen to produce on this CPU with this many threads."""
    engine = make_engine(eol_biased_llama(tiny_tokenizer, eol_bias), tiny_tokenizer, "fp32")
    layout = layout_of(tiny_tokenizer)
    budget = 160 if eol_bias == OFTEN_EOL else THOUGHT_TOKENS
    samples = sample_thoughts(engine, [layout], k=4, max_thought_tokens=budget, seed=1)[0]
    finish = "stop" if eol_bias == OFTEN_EOL else "length"
    assert [s.finish_reason for s in samples] == [finish] * 4
    scores = score_thoughts(engine, layout, [s.token_ids for s in samples])
    for sample, score in zip(samples, scores, strict=True):
        assert score.log_q == pytest.approx(sample.logprob, abs=1e-4)
        assert score.finish_reason == finish


def test_joint_and_posterior_scores_equal_separate_score_calls(trained, tiny_tokenizer) -> None:
    """The shared-context form (one prefill per role) equals K separate score calls within 1e-4 (fp32)."""
    engine = make_engine(trained, tiny_tokenizer, "fp32")
    layout = layout_of(tiny_tokenizer)
    samples = sample_thoughts(engine, [layout], k=4, max_thought_tokens=THOUGHT_TOKENS, seed=2)[0]
    scores = score_thoughts(engine, layout, [s.token_ids for s in samples])
    for score in scores:
        drawn = score.thought_ids if score.finish_reason == "stop" else score.thought_ids[:-1]
        (q,) = engine.score([layout.posterior_prompt], [drawn])
        (p,) = engine.score([layout.joint_context], [layout.joint_continuation(score.thought_ids)])
        assert score.log_q == pytest.approx(q.logprob, abs=1e-4)
        assert score.log_p == pytest.approx(p.logprob, abs=1e-4)
        assert score.log_w == pytest.approx(p.logprob - q.logprob, abs=2e-4)
        assert score.thought_ids[-1] == layout.special.eol


def test_thoughts_end_at_eol_never_at_eos(trained, tiny_tokenizer) -> None:
    """With EOS made the likeliest token, E-step thoughts run through it to EOL or to the budget."""
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.lm_head.weight[tiny_tokenizer.eos_token_id] *= 0  # logit 0 ...
        model.lm_head.weight[tiny_tokenizer.eos_token_id] += model.model.norm.weight * 3  # ... then large
    engine = make_engine(model, tiny_tokenizer, "fp32")
    layout = layout_of(tiny_tokenizer)
    samples = sample_thoughts(engine, [layout], k=8, max_thought_tokens=THOUGHT_TOKENS, seed=3)[0]
    eos, eol = tiny_tokenizer.eos_token_id, layout.special.eol
    assert any(eos in s.token_ids[:-1] for s in samples)  # EOS was drawn and the thought went on
    for sample in samples:  # the budget counts the EOL: a cut thought draws one token fewer
        assert sample.token_ids[-1] == eol or len(sample.token_ids) == THOUGHT_TOKENS - 1
