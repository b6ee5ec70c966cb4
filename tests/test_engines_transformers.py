"""The transformers engine on tiny real Llamas: log-probs, seeds, batching, stopping, truncation, sampling law."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from latent_thoughts.config import validate_config
from latent_thoughts.engines import Engine
from latent_thoughts.engines.sampling import padded_width
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.modeling import ScratchModelConfig, create_llama

PROMPTS = [
    "We know that 37 x 24 = 888.",
    "The derivative of x^2 is 2x. Hence the slope at x = 3 is",
    "Let n",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> TransformersEngine:
    return TransformersEngine(TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu"))


def test_is_an_engine(engine):
    assert isinstance(engine, Engine)
    assert engine.identity.startswith("transformers:") and engine.identity.endswith(":fp32")


def test_sample_logprobs_equal_score(engine):
    samples = engine.sample(PROMPTS, n=3, max_new_tokens=12, seed=7)
    assert [len(group) for group in samples] == [3, 3, 3]
    contexts, continuations, flat = [], [], []
    for prompt, group in zip(PROMPTS, samples, strict=True):
        for sample in group:
            assert len(sample.token_ids) == len(sample.token_logprobs) > 0
            contexts.append(engine.encode(prompt))
            continuations.append(sample.token_ids)
            flat.append(sample)
    scores = engine.score(contexts, continuations)
    for sample, score in zip(flat, scores, strict=True):
        assert score.logprob == pytest.approx(sample.logprob, abs=1e-4)
        assert score.token_logprobs == pytest.approx(sample.token_logprobs, abs=1e-5)


def test_same_seed_same_samples(engine):
    first = engine.sample(PROMPTS, n=2, max_new_tokens=8, seed=11)
    again = engine.sample(PROMPTS, n=2, max_new_tokens=8, seed=11)
    other = engine.sample(PROMPTS, n=2, max_new_tokens=8, seed=12)
    ids = [[s.token_ids for s in g] for g in first]
    assert ids == [[s.token_ids for s in g] for g in again]
    assert ids != [[s.token_ids for s in g] for g in other]
    # The n samples of one prompt are different draws, not copies.
    assert ids[0][0] != ids[0][1]


def test_batched_equals_per_prompt(engine):
    """Left padding and batch composition change nothing: each prompt alone gives the same answer."""
    batched = engine.sample(PROMPTS, n=2, max_new_tokens=8, seed=3)
    for prompt, group in zip(PROMPTS, batched, strict=True):
        alone = engine.sample([prompt], n=2, max_new_tokens=8, seed=3)[0]
        for a, b in zip(group, alone, strict=True):
            assert a.token_ids == b.token_ids
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)
    contexts = [engine.encode(p) for p in PROMPTS]
    continuations = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    together = engine.score(contexts, continuations)
    for context, continuation, score in zip(contexts, continuations, together, strict=True):
        alone_score = engine.score([context], [continuation])[0]
        assert score.token_logprobs == pytest.approx(alone_score.token_logprobs, abs=1e-5)


@pytest.mark.numeric
def test_batched_equals_per_prompt_in_bf16_with_a_large_vocabulary() -> None:
    """In bf16 a 32 k vocabulary's inverse-CDF draw flips on rounding differences, and the attention's
    rounding depends on how far a row is padded: a prompt's samples must not depend on the longer
    prompts that share its batch (they did when a batch was padded to its longest prompt: a sample
    of the shorter prompts below diverged within 48 tokens, and log-probs differed by 1e-4)."""
    spec = ScratchModelConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,
    )
    model = create_llama(spec, vocab_size=32_000, seed=0)
    bf16 = TransformersEngine(TransformersEngineConfig(dtype="bf16", device="cpu"), model=model)
    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, 32_000, (length,), generator=generator).tolist() for length in (400, 300, 120, 20)
    ]
    options = {"n": 2, "max_new_tokens": 48, "seed": 1, "stop_on_eos": False}
    batched = [s for group in bf16.sample(prompts, **options) for s in group]
    alone = [s for prompt in prompts for s in bf16.sample([prompt], **options)[0]]
    assert [s.token_ids for s in batched] == [s.token_ids for s in alone]
    for a, b in zip(batched, alone, strict=True):
        assert a.token_logprobs == b.token_logprobs  # the same arithmetic, not merely close


def test_small_batches_give_the_same_samples(tiny_model_dir, engine):
    """batch_tokens bounds memory by splitting the work; the samples do not depend on it."""
    small = TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu", batch_tokens=40),
        model=engine.model,
        tokenizer=engine.tokenizer,
    )
    big = engine.sample(PROMPTS, n=3, max_new_tokens=6, seed=5)
    split = small.sample(PROMPTS, n=3, max_new_tokens=6, seed=5)
    assert [[s.token_ids for s in g] for g in big] == [[s.token_ids for s in g] for g in split]
    contexts = [engine.encode(p) for p in PROMPTS]
    continuations = [[5, 6, 7], [8, 9], [10, 11]]
    for a, b in zip(engine.score(contexts, continuations), small.score(contexts, continuations), strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def test_prompt_is_prefilled_once_for_all_samples(engine):
    """The E-step's K samples share one prefill: the prompt goes through the model once."""
    seen: list[tuple[int, ...]] = []
    embeddings = engine.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    try:
        prompt = engine.encode(PROMPTS[1])
        engine.sample([prompt], n=4, max_new_tokens=3, seed=0, stop_on_eos=False)
    finally:
        handle.remove()
    assert seen == [(1, padded_width(len(prompt))), (4, 1), (4, 1)]  # left-padded to a multiple of 64
    unpadded = TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu", pad_multiple=0),
        model=engine.model,
        tokenizer=engine.tokenizer,
    )
    seen.clear()
    handle = embeddings.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    try:
        unpadded.sample([prompt], n=4, max_new_tokens=3, seed=0, stop_on_eos=False)
    finally:
        handle.remove()
    assert seen == [(1, len(prompt)), (4, 1), (4, 1)]  # pad_multiple 0: the batch's longest prompt


def test_stop_on_token_id(engine):
    free = engine.sample([PROMPTS[0]], n=1, max_new_tokens=10, seed=21, stop_on_eos=False)[0][0]
    stop_id = free.token_ids[3]
    first = free.token_ids.index(stop_id)
    stopped = engine.sample([PROMPTS[0]], n=1, max_new_tokens=10, seed=21, stop=[stop_id], stop_on_eos=False)
    stopped = stopped[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: first + 1]  # the stop token is kept in the ids
    assert stopped.token_logprobs == pytest.approx(free.token_logprobs[: first + 1], abs=1e-5)
    assert stopped.text == engine.decode(free.token_ids[:first])  # ... and left out of the text
    assert free.finish_reason == "length" and len(free.token_ids) == 10


def test_rows_finishing_at_different_steps(engine):
    """Finished rows leave the batch (cache included); the others carry on exactly as before."""
    options = {"n": 3, "max_new_tokens": 10, "seed": 8, "stop_on_eos": False}
    free = engine.sample(PROMPTS, **options)
    stops = {free[0][0].token_ids[1], free[1][2].token_ids[4], free[2][1].token_ids[7]}
    stopped = engine.sample(PROMPTS, stop=sorted(stops), **options)
    lengths = set()
    for free_group, group in zip(free, stopped, strict=True):
        for full, cut in zip(free_group, group, strict=True):
            end = next((i + 1 for i, t in enumerate(full.token_ids) if t in stops), len(full.token_ids))
            assert cut.token_ids == full.token_ids[:end]
            assert cut.token_logprobs == pytest.approx(full.token_logprobs[:end], abs=1e-5)
            assert cut.finish_reason == ("stop" if end < 10 or full.token_ids[-1] in stops else "length")
            lengths.add(end)
    assert len(lengths) >= 3


def test_stop_on_string(engine):
    free = engine.sample([PROMPTS[2]], n=1, max_new_tokens=16, seed=4, stop_on_eos=False)[0][0]
    for k in range(2, len(free.token_ids)):
        piece = engine.decode(free.token_ids[k : k + 1])
        before = engine.decode(free.token_ids[:k])
        if piece.strip() and "\ufffd" not in piece + before and piece not in before:
            break
    else:
        pytest.skip("no clean token to stop on in this sample")
    stopped = engine.sample([PROMPTS[2]], n=1, max_new_tokens=16, seed=4, stop=[piece], stop_on_eos=False)
    stopped = stopped[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == before
    assert stopped.token_ids == free.token_ids[: k + 1]


def test_front_truncation(engine):
    short = TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu", max_context_tokens=16),
        model=engine.model,
        tokenizer=engine.tokenizer,
    )
    long_prompt = list(range(20, 60))  # 40 tokens: more than the 16-token context
    sample = short.sample([long_prompt], n=2, max_new_tokens=4, seed=9, stop_on_eos=False)[0]
    kept = short.sample([long_prompt[-12:]], n=2, max_new_tokens=4, seed=9, stop_on_eos=False)[0]
    assert [s.token_ids for s in sample] == [s.token_ids for s in kept]
    continuation = [7, 8, 9]
    score = short.score([long_prompt], [continuation])[0]
    expected = engine.score([long_prompt[-13:]], [continuation])[0]
    assert score.token_logprobs == pytest.approx(expected.token_logprobs, abs=1e-5)
    with pytest.raises(LatentThoughtsError, match="continuation 0"):
        short.score([[1, 2]], [list(range(20))])
    with pytest.raises(LatentThoughtsError, match="max_new_tokens"):
        short.sample([[1, 2]], max_new_tokens=16)


@torch.inference_mode()
def _next_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_logprobs_are_under_the_sampling_distribution(engine):
    """With temperature and top-p, each log-prob is of the renormalised nucleus at that temperature."""
    prompt = engine.encode(PROMPTS[0])
    sample = engine.sample([prompt], n=1, max_new_tokens=6, temperature=0.7, top_p=0.3, seed=2)[0][0]
    for i, (token, logprob) in enumerate(zip(sample.token_ids, sample.token_logprobs, strict=True)):
        logits = _next_logits(engine.model, prompt + sample.token_ids[:i])
        probs = torch.softmax(logits / 0.7, dim=-1).double()
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) < 0.3
        nucleus = order[keep].tolist()
        assert token in nucleus
        expected = torch.log(probs[token] / sorted_p[keep].sum()).item()
        assert logprob == pytest.approx(expected, abs=1e-4)


def test_greedy(engine):
    prompt = engine.encode(PROMPTS[1])
    sample = engine.sample([prompt], n=2, max_new_tokens=5, temperature=0, stop_on_eos=False)[0]
    ids = list(prompt)
    for token in sample[0].token_ids:
        assert token == int(_next_logits(engine.model, ids).argmax())
        ids.append(token)
    assert sample[0].token_ids == sample[1].token_ids
    assert sample[0].token_logprobs == [0.0] * 5


def test_bad_input_is_a_one_line_error(engine):
    with pytest.raises(LatentThoughtsError, match=r"prompt 1: token id 99999 is outside"):
        engine.sample(["fine", [1, 99999]], max_new_tokens=2)
    with pytest.raises(LatentThoughtsError, match="2 contexts but 1 continuations"):
        engine.score(["a", "b"], ["c"])
    with pytest.raises(LatentThoughtsError, match="top_p"):
        engine.sample(["a"], top_p=0.0)
    bare = TransformersEngine(TransformersEngineConfig(dtype="fp32", device="cpu"), model=engine.model)
    with pytest.raises(LatentThoughtsError, match="needs a tokenizer"):
        bare.sample(["text"], max_new_tokens=2)
    with pytest.raises(LatentThoughtsError, match="dtype") as info:
        validate_config(TransformersEngineConfig, {"dtype": "fp16"})
    assert "\n" not in str(info.value)
    with pytest.raises(LatentThoughtsError, match="device"):
        TransformersEngine(TransformersEngineConfig(device="tpu"), model=engine.model)


def test_chat_plain_and_template(engine):
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    replies = engine.chat([conversation], n=2, max_new_tokens=6, seed=1)
    assert len(replies) == 1 and len(replies[0]) == 2
    assert all(isinstance(r.text, str) and r.prompt_tokens > 0 for r in replies[0])
    ids, stops = engine.chat_prompt(conversation)
    assert engine.decode(ids).endswith("user: What is 2 + 2?\nassistant:") and stops
    templated = copy.deepcopy(engine.tokenizer)
    templated.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    with_template = TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu"), model=engine.model, tokenizer=templated
    )
    ids, stops = with_template.chat_prompt(conversation)
    assert with_template.decode(ids).endswith("[user] What is 2 + 2?\n[assistant]") and not stops
    assert len(with_template.chat([conversation], max_new_tokens=4, seed=0)[0]) == 1


def test_bf16_autocast_runs(engine):
    bf16 = TransformersEngine(
        TransformersEngineConfig(dtype="bf16", device="cpu"), model=engine.model, tokenizer=engine.tokenizer
    )
    assert bf16.identity.endswith(":bf16")
    sample = bf16.sample([PROMPTS[0]], n=2, max_new_tokens=5, seed=1)[0][0]
    score = bf16.score([bf16.encode(PROMPTS[0])], [sample.token_ids])[0]
    assert all(v == v and v < 0 for v in sample.token_logprobs)
    assert score.logprob == pytest.approx(sample.logprob, abs=0.2)  # bf16 rounding, not a different law


def test_usage_is_counted(engine):
    before = engine.usage.completion_tokens
    samples = engine.sample([PROMPTS[0]], n=2, max_new_tokens=3, seed=0, stop_on_eos=False)
    assert engine.usage.completion_tokens - before == sum(len(s.token_ids) for s in samples[0]) == 6


# ---------------------------------------------------------------------- shared-context scoring
CONTINUATIONS = [[5, 17, 42, 9], [5], [], [33, 33, 12, 81, 7, 64, 3], [250, 1]]


@pytest.mark.parametrize("batch_tokens", [16384, 40])
def test_score_many_equals_separate_score_calls(engine, tiny_model_dir, batch_tokens):
    """One context, K continuations: the same log-probs as K score calls, within 1e-4 in fp32
    (40 batch tokens split the K continuations into several groups sharing the one prefill)."""
    shared = TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu", batch_tokens=batch_tokens),
        model=engine.model,
        tokenizer=engine.tokenizer,
    )
    context = engine.encode(PROMPTS[1])
    many = shared.score_many(context, CONTINUATIONS)
    separate = [engine.score([context], [cont])[0] for cont in CONTINUATIONS]
    assert [len(s.token_logprobs) for s in many] == [len(c) for c in CONTINUATIONS]
    for got, expected in zip(many, separate, strict=True):
        assert got.token_logprobs == pytest.approx(expected.token_logprobs, abs=1e-4)


def test_score_many_prefills_the_context_once(engine):
    seen: list[tuple[int, ...]] = []
    embeddings = engine.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    try:
        context = engine.encode(PROMPTS[0])
        engine.score_many(context, CONTINUATIONS)
    finally:
        handle.remove()
    # the context once, then the four non-empty continuations together (right-padded to 7 tokens)
    assert seen == [(1, len(context)), (4, 7)]


def cached_positions(engine: TransformersEngine) -> tuple[list[int], object]:
    """Record rows x (cached + new positions) of every forward pass of ``engine``'s model."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        ids = kwargs["input_ids"]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache.get_seq_length() if cache is not None else 0
        seen.append(ids.shape[0] * (cached + ids.shape[1]))

    return seen, engine.model.register_forward_pre_hook(hook, with_kwargs=True)


GROUPS = [
    (PROMPTS[0], CONTINUATIONS),
    (PROMPTS[1], [[7, 8, 9], [], [10]]),
    (PROMPTS[2], [[11] * 12, [12, 13]]),
]


@pytest.mark.parametrize("batch_tokens", [16384, 48])
def test_score_groups_equals_score_many_of_each_group_within_the_token_bound(engine, batch_tokens):
    """Several groups in batched passes: the log-probs of one score_many per group (1e-5, fp32), and
    no forward pass holds more than batch_tokens cached positions (48 splits groups over batches)."""
    bounded = TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu", batch_tokens=batch_tokens),
        model=engine.model,
        tokenizer=engine.tokenizer,
    )
    seen, handle = cached_positions(bounded)
    try:
        grouped = bounded.score_groups(GROUPS)
    finally:
        handle.remove()
    assert max(seen) <= batch_tokens
    for (context, continuations), scores in zip(GROUPS, grouped, strict=True):
        expected = engine.score_many(context, continuations)
        assert [len(s.token_logprobs) for s in scores] == [
            len(engine.encode(c, bos=False)) for c in continuations
        ]
        for got, want in zip(scores, expected, strict=True):
            assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-5)


def test_score_groups_prefills_each_context_once_in_one_batch(engine):
    """Groups of one shape share a batch: their contexts go through together, once each, then all
    their continuations in one pass."""
    groups = [
        ([1, *range(10, 20)], [[5, 6, 7], [8, 9]]),
        ([1, *range(20, 30)], [[5, 6, 7]]),
        ([1, *range(30, 40)], [[4, 4, 4], [7]]),
    ]
    seen: list[tuple[int, ...]] = []
    embeddings = engine.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    try:
        engine.score_groups(groups)
    finally:
        handle.remove()
    assert seen == [(3, 11), (5, 3)]


def test_sampling_holds_at_most_batch_tokens_cached_positions(engine):
    bounded = TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu", batch_tokens=120),
        model=engine.model,
        tokenizer=engine.tokenizer,
    )
    seen, handle = cached_positions(bounded)
    try:
        samples = bounded.sample(PROMPTS, n=4, max_new_tokens=10, seed=0, stop_on_eos=False)
    finally:
        handle.remove()
    assert [len(group) for group in samples] == [4, 4, 4]
    assert len(seen) > 10 and max(seen) <= 120


def test_banned_ids_are_never_generated_and_the_law_is_renormalised(engine):
    prompt = engine.encode(PROMPTS[0])
    free = engine.sample([prompt], n=1, max_new_tokens=1, temperature=0, stop_on_eos=False)[0][0]
    banned = [free.token_ids[0], *torch.topk(_next_logits(engine.model, prompt), 5).indices.tolist()]
    greedy = engine.sample([prompt], n=1, max_new_tokens=1, temperature=0, banned_ids=banned)[0][0]
    logits = _next_logits(engine.model, prompt).clone()
    logits[banned] = float("-inf")
    assert greedy.token_ids == [int(logits.argmax())]
    drawn = engine.sample([prompt], n=64, max_new_tokens=3, seed=4, banned_ids=banned, stop_on_eos=False)[0]
    assert not {token for s in drawn for token in s.token_ids} & set(banned)
    first = drawn[0]
    expected = torch.log_softmax(logits, -1)[first.token_ids[0]].item()
    assert first.token_logprobs[0] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(LatentThoughtsError, match="banned_ids: token id 99999"):
        engine.sample([prompt], max_new_tokens=1, banned_ids=[99999])


def test_the_engine_says_where_it_runs(engine):
    assert engine.device == "cpu"
    assert str(next(engine.model.parameters()).device) == "cpu"


# ---------------------------------------------------------------------- the sampling law
VOCAB = 12


@pytest.fixture(scope="module")
def peaked_model():
    """A 12-token Llama with sharpened logits, so that a wrong law (positions, cache) shows."""
    spec = ScratchModelConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = create_llama(spec, vocab_size=VOCAB, seed=3).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(6.0)
    return model


def _exact_two_token_law(model, prompt: list[int]) -> dict[tuple[int, int], float]:
    with torch.inference_mode():
        first = torch.softmax(_next_logits(model, prompt), -1)
        batch = torch.tensor([[*prompt, t] for t in range(VOCAB)])
        second = torch.softmax(model(input_ids=batch).logits[:, -1].float(), -1)
    return {(a, b): float(first[a] * second[a, b]) for a in range(VOCAB) for b in range(VOCAB)}


def _total_variation(counts: Counter, total: int, law: dict[tuple[int, int], float]) -> float:
    return 0.5 * sum(abs(counts.get(cell, 0) / total - p) for cell, p in law.items())


def _chi_square(counts: Counter, total: int, law: dict[tuple[int, int], float]) -> tuple[float, int]:
    """Pearson's statistic over cells expected at least 5 times (the rest pooled) and its degrees of freedom."""
    statistic, pooled_expected, pooled_seen, cells = 0.0, 0.0, 0, 0
    for cell, p in law.items():
        expected = p * total
        if expected >= 5:
            statistic += (counts.get(cell, 0) - expected) ** 2 / expected
            cells += 1
        else:
            pooled_expected += expected
            pooled_seen += counts.get(cell, 0)
    if pooled_expected > 0:
        statistic += (pooled_seen - pooled_expected) ** 2 / pooled_expected
        cells += 1
    return statistic, cells - 1


def test_shared_prefix_sampler_matches_generate(peaked_model):
    """The first two tokens follow the model's law, as model.generate's do (fixed seeds: no flakiness)."""
    prompt = [1, 5, 2, 7, 3]
    total = 4000
    law = _exact_two_token_law(peaked_model, prompt)
    engine = TransformersEngine(TransformersEngineConfig(dtype="fp32", device="cpu"), model=peaked_model)
    drawn = engine.sample([prompt, [4, 4]], n=total, max_new_tokens=2, seed=123, stop_on_eos=False)[0]
    ours = Counter(tuple(s.token_ids) for s in drawn)
    torch.manual_seed(123)
    generated = peaked_model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        max_new_tokens=2,
        min_new_tokens=2,
        num_return_sequences=total,
        pad_token_id=0,
    )[:, len(prompt) :]
    theirs = Counter(tuple(row) for row in generated.tolist())
    # The law is far from uniform, so the test has power: uniform sampling would be far off.
    assert 0.5 * sum(abs(p - 1 / VOCAB**2) for p in law.values()) > 0.3
    for counts in (ours, theirs):
        assert _total_variation(counts, total, law) < 0.06
        statistic, dof = _chi_square(counts, total, law)
        assert statistic < dof + 5 * (2 * dof) ** 0.5
    empirical = {cell: n / total for cell, n in theirs.items()}
    assert 0.5 * sum(abs(ours.get(c, 0) / total - empirical.get(c, 0)) for c in law) < 0.08
