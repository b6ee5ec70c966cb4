"""The E-step's importance weights are exact in every case, by construction (no training involved).

- log q covers exactly the tokens the sampler drew, under the law it drew them from: a thought closed
  by EOL (finish ``stop``) with its EOL, a thought cut at the budget (``length``) without the EOL
  appended after the cut; at temperature 1 and at a tempered proposal (log_softmax(logits / T)).
- A cut thought's EOL has its position reserved: thought plus layout fit the context exactly.
- The proposal temperature is in the cache key; at T = 1 closed thoughts score as before.
- The M-step trains on the ids that were weighted: the samples file carries the selected thought's
  ids (``thought_ids``) and its tokenizer's fingerprint, and the trainer writes those ids as they are
  (the text, re-tokenized, would give other ids for most thoughts of a random model); ids of another
  tokenizer fall back to the text, with a warning.

The models are tiny random Llamas whose output layer gets a bias on EOL: -1e4 makes EOL impossible
(every thought is cut: its probability is exactly 0 in float32), +4.3 makes it about one draw in six
(every thought closes well within the budget: P(no EOL in 159 draws) < 1e-12). Neither depends on
training, on the CPU or on the thread count.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latent_thoughts.cli import main
from latent_thoughts.corpus import chunk_document, read_chunks, write_chunks
from latent_thoughts.em.estep import estep_chunks, sample_thoughts, score_thoughts
from latent_thoughts.em.stage import (
    LAYOUT_VERSION,
    ChunkSamples,
    EStepConfig,
    EStepRequest,
    EStepStage,
    chunk_layouts,
    make_items,
    run_estep,
    sampling_key,
    thought_text,
)
from latent_thoughts.engines.base import score_groups
from latent_thoughts.engines.http_engine import HTTPEngine, HTTPEngineConfig
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import (
    DocumentBuilder,
    EStepLayout,
    FormatConfig,
    SpecialIds,
    e_step_layout,
    tokenizer_fingerprint,
)
from latent_thoughts.generation.cache import ResultCache
from latent_thoughts.generation.outputs import read_metadata, with_metadata
from latent_thoughts.recipes.testbed import split_chunks
from latent_thoughts.testbed.world import TestbedConfig, testbed_chunk_config
from latent_thoughts.train.config import SourceConfig
from latent_thoughts.train.data import build_document, build_documents, read_source
from tests.conftest import tiny_llama

pytestmark = pytest.mark.numeric

NEVER_EOL = -1e4
"""EOL bias that makes EOL impossible (exp underflows to 0 in float32): every thought is cut."""

OFTEN_EOL = 4.3
"""EOL bias that makes EOL about one draw in six at T = 1 (more at T < 1): every thought closes."""

CLOSED_BUDGET = 160
CUT_BUDGET = 6


def eol_biased_llama(tokenizer: Any, eol_bias: float, positions: int = 256) -> Any:
    """:func:`~tests.conftest.tiny_llama` whose output layer adds ``eol_bias`` to EOL's logit (and 0
    to every other): EOL's probability is set by construction, not by what training produced."""
    model = tiny_llama(tokenizer, positions=positions)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[SpecialIds.from_tokenizer(tokenizer).eol] = eol_bias
    model.lm_head = head
    return model.eval()


def fp32_engine(model: Any, tokenizer: Any) -> TransformersEngine:
    return TransformersEngine(
        TransformersEngineConfig(dtype="fp32", device="cpu"), model=model, tokenizer=tokenizer
    )


@pytest.fixture(scope="module")
def closing(tiny_tokenizer: Any) -> TransformersEngine:
    """An engine whose model closes every thought with EOL within :data:`CLOSED_BUDGET`."""
    return fp32_engine(eol_biased_llama(tiny_tokenizer, OFTEN_EOL), tiny_tokenizer)


@pytest.fixture(scope="module")
def cutting(tiny_tokenizer: Any) -> TransformersEngine:
    """An engine whose model never draws EOL: every thought is cut at its budget."""
    return fp32_engine(eol_biased_llama(tiny_tokenizer, NEVER_EOL), tiny_tokenizer)


def layout_of(
    tokenizer: Any, context_tokens: int, thought_tokens: int, prefix: str | None = None
) -> EStepLayout:
    builder = DocumentBuilder(tokenizer)
    return e_step_layout(
        SpecialIds.from_tokenizer(tokenizer),
        builder.encode(prefix if prefix is not None else "We know that 37 x 24 = 888."),
        builder.encode(" Adding 129 gives 1017."),
        context_tokens,
        thought_tokens,
    )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("kind", ["stop", "length"])
def test_log_q_is_the_samplers_own_law_for_closed_and_cut_thoughts(
    closing: TransformersEngine,
    cutting: TransformersEngine,
    tiny_tokenizer: Any,
    kind: str,
    temperature: float,
) -> None:
    """log q (log q_T at T = 0.7) from the scoring path equals the sum of the sampler's own per-token
    log-probs within 1e-4 (fp32): the EOL is in q when it was drawn, not when it was appended."""
    engine, budget = (closing, CLOSED_BUDGET) if kind == "stop" else (cutting, CUT_BUDGET)
    layout = layout_of(tiny_tokenizer, 256, budget)
    eol = layout.special.eol
    (samples,) = sample_thoughts(
        engine, [layout], k=6, max_thought_tokens=budget, seed=1, temperature=temperature
    )
    assert [sample.finish_reason for sample in samples] == [kind] * 6
    scores = score_thoughts(engine, layout, [sample.token_ids for sample in samples], temperature)
    for sample, score in zip(samples, scores, strict=True):
        assert score.finish_reason == kind
        assert score.log_q == pytest.approx(sample.logprob, abs=1e-4)
        assert score.thought_ids[-1] == eol and len(score.thought_ids) <= budget
        if kind == "length":  # drawn: budget - 1 tokens; the EOL is appended, not drawn
            assert len(sample.token_ids) == budget - 1 and eol not in sample.token_ids
            assert score.thought_ids == [*sample.token_ids, eol]
        else:
            assert score.thought_ids == sample.token_ids
    # estep_chunks is the same sampling and scoring, with the finish reasons read off the drawn ids
    (chunk,) = estep_chunks(engine, [layout], 6, budget, seed=1, temperature=temperature)
    assert [(s.thought_ids, s.log_q, s.log_p, s.finish_reason) for s in chunk] == [
        (s.thought_ids, s.log_q, s.log_p, s.finish_reason) for s in scores
    ]


def test_log_p_scores_the_closed_thought_at_temperature_one(
    cutting: TransformersEngine, tiny_tokenizer: Any
) -> None:
    """log p of a cut thought is the joint model's ``PRIOR z EOL x`` (the appended EOL included),
    never tempered, whatever the proposal's temperature."""
    layout = layout_of(tiny_tokenizer, 256, CUT_BUDGET)
    (samples,) = sample_thoughts(
        cutting, [layout], k=2, max_thought_tokens=CUT_BUDGET, seed=2, temperature=0.7
    )
    scores = score_thoughts(cutting, layout, [sample.token_ids for sample in samples], 0.7)
    for score in scores:
        (p,) = cutting.score([layout.joint_context], [layout.joint_continuation(score.thought_ids)])
        assert score.log_p == pytest.approx(p.logprob, abs=1e-4)
        assert score.log_p < -1000  # it pays for the EOL this model never draws: p sees it, q does not


def test_a_cut_thought_and_its_layout_fit_the_context_exactly(tiny_tokenizer: Any) -> None:
    """With a model of exactly ``context_tokens`` positions and a prefix long enough to be truncated,
    the posterior prompt plus the closed cut thought is exactly the context and the joint sequence two
    tokens shorter; nothing is cut from the front when scoring, so log q is still the sampler's."""
    context, budget = 64, 12
    engine = fp32_engine(eol_biased_llama(tiny_tokenizer, NEVER_EOL, positions=context), tiny_tokenizer)
    assert engine.max_context_tokens == context
    layout = layout_of(tiny_tokenizer, context, budget, prefix="We know that 37 x 24 = 888. " * 8)
    assert layout.dropped_prefix > 0  # the layout used the whole budget
    (samples,) = sample_thoughts(engine, [layout], k=3, max_thought_tokens=budget, seed=3)
    scores = score_thoughts(engine, layout, [sample.token_ids for sample in samples])
    for sample, score in zip(samples, scores, strict=True):
        assert sample.finish_reason == "length"
        assert len(score.thought_ids) == budget
        assert len(layout.posterior_prompt) + len(score.thought_ids) == context
        joint = len(layout.joint_context) + len(layout.joint_continuation(score.thought_ids))
        assert joint == context - 2
        assert score.log_q == pytest.approx(sample.logprob, abs=1e-4)


@pytest.mark.parametrize("budget", [1, 2, 7, 48])
def test_the_layout_reserves_the_whole_thought_budget(tiny_tokenizer: Any, budget: int) -> None:
    """``e_step_layout``'s arithmetic: the posterior prompt leaves ``budget`` positions (EOL included)
    and the joint sequence of a thought of ``budget`` tokens (EOL included) is two shorter."""
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    context = 40 + budget
    for prefix_length, chunk_length in [(0, 1), (5, 5), (100, 3), (0, 200), (30, 30)]:
        layout = e_step_layout(special, [7] * prefix_length, [8] * chunk_length, context, budget)
        assert len(layout.posterior_prompt) + budget <= context
        thought = [9] * (budget - 1) + [special.eol]
        joint = len(layout.joint_context) + len(layout.joint_continuation(thought))
        assert joint == len(layout.posterior_prompt) + budget - 2


def test_a_budget_of_one_draws_nothing(closing: TransformersEngine, tiny_tokenizer: Any) -> None:
    """A thought budget of 1 is the EOL alone: nothing drawn, log q 0, the empty thought closed."""
    layout = layout_of(tiny_tokenizer, 256, 1)
    (scores,) = estep_chunks(closing, [layout], 2, 1, seed=0)
    for score in scores:
        assert score.thought_ids == [layout.special.eol]
        assert score.log_q == 0.0 and score.finish_reason == "length"


def test_the_proposal_temperature_is_checked(closing: TransformersEngine, tiny_tokenizer: Any) -> None:
    layout = layout_of(tiny_tokenizer, 256, 8)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(LatentThoughtsError, match="temperature"):
            sample_thoughts(closing, [layout], 1, 8, temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            EStepConfig(temperature=bad)
        with pytest.raises(LatentThoughtsError, match="temperature"):
            closing.score_many(layout.posterior_prompt, [[5]], temperature=bad)


def test_the_temperature_is_in_the_cache_key() -> None:
    """Different proposal temperatures, different keys (and T = 1 is the paper's, the default)."""
    from latent_thoughts.corpus import Chunk

    assert EStepConfig().temperature == 1.0
    plain, tempered = sampling_key(EStepConfig(), 256), sampling_key(EStepConfig(temperature=0.7), 256)
    assert plain["temperature"] == 1.0 and tempered["temperature"] == 0.7
    assert {key: value for key, value in plain.items() if key != "temperature"} == {
        key: value for key, value in tempered.items() if key != "temperature"
    }
    chunk = Chunk(doc_id="d", chunk_index=0, text="x", prefix="", start=0, end=1)
    layout: Any = None
    keys = {
        make_items([(chunk, layout)], "model", sampling_key(EStepConfig(temperature=t), 256))[0].key
        for t in (1.0, 0.7, 1.3)
    }
    assert len(keys) == 3
    assert LAYOUT_VERSION != "estep-v1"  # records of the old budget and the old log q are not reused


def test_temperature_one_scores_closed_thoughts_exactly_as_before(
    closing: TransformersEngine, tiny_tokenizer: Any
) -> None:
    """At T = 1 a closed thought's (log q, log p) are bit for bit the untempered scoring path's (the
    one before the temperature existed), and the engine's temperature=1.0 is that same path."""
    layout = layout_of(tiny_tokenizer, 256, CLOSED_BUDGET)
    (samples,) = sample_thoughts(closing, [layout], k=4, max_thought_tokens=CLOSED_BUDGET, seed=4)
    thoughts = [sample.token_ids for sample in samples]
    assert all(ids[-1] == layout.special.eol for ids in thoughts)
    groups = [
        (layout.posterior_prompt, thoughts),
        (layout.joint_context, [layout.joint_continuation(ids) for ids in thoughts]),
    ]
    q, p = score_groups(closing, groups)
    scores = score_thoughts(closing, layout, thoughts)
    assert [(s.log_q, s.log_p) for s in scores] == [(a.logprob, b.logprob) for a, b in zip(q, p, strict=True)]
    assert closing.score_groups(groups, temperature=1.0) == closing.score_groups(groups)
    assert closing.score_groups(groups, temperature=[1.0, 1.0]) == closing.score_groups(groups)
    # a tempered posterior leaves the joint role (at 1) as it was
    tempered = closing.score_groups(groups, temperature=[0.7, 1.0])
    assert [s.logprob for s in tempered[1]] == pytest.approx([s.logprob for s in p], abs=1e-5)
    assert [s.logprob for s in tempered[0]] != pytest.approx([s.logprob for s in q], abs=1e-3)


def test_a_served_model_refuses_a_tempered_score(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Echoed prompt log-probs are untempered: the HTTP engine says so in one line, and the stage
    refuses a tempered E-step against a served model before it samples anything."""
    engine = HTTPEngine(HTTPEngineConfig(base_url="http://127.0.0.1:9/v1", model="m"))
    try:
        with pytest.raises(LatentThoughtsError, match="temperature 1 only"):
            engine.score_many([1, 2], [[3]], temperature=0.7)
        with pytest.raises(LatentThoughtsError, match="temperature 1 only"):
            score_groups(engine, [([1, 2], [[3]])], temperature=[0.7])
    finally:
        engine.close()
    request = EStepRequest(
        tiny_model_dir,
        tmp_path / "chunks.parquet",
        tmp_path / "out.parquet",
        EStepConfig(temperature=0.7),
        base_url="http://127.0.0.1:9/v1",
    )
    with pytest.raises(LatentThoughtsError, match="temperature"):
        EStepStage(request).check()


def test_estep_has_a_temperature_flag(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit):
        main(["estep", "--help"])
    assert "--temperature" in capsys.readouterr().out
    command = ["estep", str(tiny_model_dir), "--chunks", str(tmp_path / "c.parquet")]
    assert main([*command, "--out", str(tmp_path / "o.parquet"), "--temperature", "0"]) == 2
    error = capsys.readouterr().err
    assert "temperature" in error and len(error.strip().splitlines()) == 1


def test_the_temperature_flag_reaches_the_samples(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``estep --temperature 0.7`` samples at 0.7 (recorded in the output's metadata), and log q of
    each stored thought is the tempered law's score of what was drawn."""
    world = TestbedConfig(bootstrap_documents=1, results_per_document=1)
    chunks = split_chunks(world, "bootstrap")
    chunk_file = tmp_path / "chunks.parquet"
    write_chunks(chunks, chunk_file)
    out = tmp_path / "samples.parquet"
    flags = [
        "--k",
        "2",
        "--max-thought-tokens",
        "6",
        "--temperature",
        "0.7",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
    ]
    command = ["estep", str(tiny_model_dir), "--chunks", str(chunk_file), "--out", str(out)]
    assert main([*command, *flags, "--no-progress"]) == 0
    assert read_metadata(out)["sampling"]["temperature"] == 0.7
    rows = pq.read_table(out).to_pylist()
    engine = TransformersEngine(
        TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu")
    )
    laid_out = chunk_layouts(chunks, engine.tokenizer, 512, 6)
    assert len(rows) == len(laid_out) >= 2
    eol = SpecialIds.from_tokenizer(engine.tokenizer).eol
    with ResultCache(out.with_name("samples.cache"), None) as cache:
        for (_, layout), row in zip(laid_out, rows, strict=True):
            record = cache.get(row["key"])
            assert record is not None
            samples = ChunkSamples.from_record(record)
            drawn = [
                ids if finish == "stop" else ids[:-1]
                for ids, finish in zip(samples.thought_ids, samples.finish, strict=True)
            ]
            assert all(
                ids[-1:] != [eol] for ids, f in zip(drawn, samples.finish, strict=True) if f == "length"
            )
            scores = engine.score_many(layout.posterior_prompt, drawn, temperature=0.7)
            assert row["log_q"] == pytest.approx([score.logprob for score in scores], abs=1e-4)


# --- what the M-step trains on ------------------------------------------------------------------


def trained_and_weighted_ids(tiny_model_dir: Path, tmp_path: Path) -> list[tuple[list[int], list[int]]]:
    """For every selected thought of a small E-step run (tiny random model): the ids the trainer's
    own reader and builder put in the thought's span, and the sampled ids that were weighted."""
    from latent_thoughts.tokenizer import load_tokenizer

    world = TestbedConfig(bootstrap_documents=2, results_per_document=2)
    chunks = split_chunks(world, "bootstrap")
    chunk_file = tmp_path / "chunks.parquet"
    write_chunks(chunks, chunk_file)
    out = tmp_path / "samples.parquet"
    config = EStepConfig(k=2, max_thought_tokens=8, batch_chunks=16, seed=0)
    run_estep(
        EStepRequest(tiny_model_dir, chunk_file, out, config, device="cpu", dtype="fp32", progress=False)
    )
    tokenizer = load_tokenizer(tiny_model_dir)
    builder = DocumentBuilder(tokenizer)
    eol = builder.special.eol
    rows = {(row["doc_id"], row["chunk_index"]): row for row in pq.read_table(out).to_pylist()}
    pairs: list[tuple[list[int], list[int]]] = []
    with ResultCache(out.with_name("samples.cache"), None) as cache:
        for document in read_source(SourceConfig(kind="thoughts", chunks=str(chunk_file), thoughts=str(out))):
            built = build_document(document, builder)
            spans = {
                span.chunk: built.input_ids[span.start : span.end]
                for span in built.spans
                if span.kind == "thought"
            }
            for index, trained in spans.items():
                row = rows[(document.doc_id, index)]
                record = cache.get(row["key"])
                assert record is not None
                weighted = ChunkSamples.from_record(record).thought_ids[row["chosen"]]
                assert thought_text(tokenizer, weighted, eol) == row["thought"]
                pairs.append((trained, weighted[:-1] if weighted[-1:] == [eol] else weighted))
    assert pairs
    return pairs


def test_the_trainer_trains_on_the_ids_that_were_weighted(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The M-step trains on the token ids the E-step weighted (sampled from q, scored by p), though
    their text would tokenize to other ids for most of them (byte fragments decoded to U+FFFD,
    special tokens drawn inside a thought, stripped whitespace, non-canonical BPE splits)."""
    from latent_thoughts.tokenizer import load_tokenizer

    pairs = trained_and_weighted_ids(tiny_model_dir, tmp_path)
    assert [trained for trained, _ in pairs] == [weighted for _, weighted in pairs]
    # the measured gap is real: the text path would have trained on other ids for some thoughts
    tokenizer = load_tokenizer(tiny_model_dir)
    builder, eol = DocumentBuilder(tokenizer), SpecialIds.from_tokenizer(tokenizer).eol
    retokenized = [builder.encode_thought(thought_text(tokenizer, ids, eol)) for _, ids in pairs]
    assert retokenized != [weighted for _, weighted in pairs]


def samples_file(path: Path, rows: list[dict[str, Any]], tokenizer: str | None) -> Path:
    """A thoughts file as the E-step writes it (the trainer's columns, the ids, the tokenizer named)."""
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("doc_id", pa.string()),
                ("chunk_index", pa.int64()),
                ("thought", pa.string()),
                ("thought_ids", pa.list_(pa.int64())),
            ]
        ),
    )
    metadata: dict[str, Any] = {"mode": "estep"}
    if tokenizer is not None:
        metadata["tokenizer"] = tokenizer
    pq.write_table(with_metadata(table, metadata), path)
    return path


def the_split(tokenizer: Any) -> tuple[DocumentBuilder, list[int], str]:
    """``the`` drawn as three single-character tokens (a tokenization the model can sample, not the
    one the tokenizer writes), and its text."""
    builder = DocumentBuilder(tokenizer)
    eol = builder.special.eol
    letters = [builder.encode(character)[0] for character in "the"]
    assert builder.encode("the") != letters  # the tokenizer merges them
    return builder, letters, thought_text(tokenizer, [*letters, eol], eol)


def test_a_non_canonical_tokenization_survives_the_trip_to_the_trainer(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    """The mechanism in one thought: the text alone comes back as the merge, the ids the samples file
    carries come back as they were drawn (whichever layout the chunk is given)."""
    builder, letters, thought = the_split(tiny_tokenizer)
    assert builder.encode_thought(thought) != letters  # text cannot carry a tokenization
    chunks = tmp_path / "chunks.parquet"
    write_chunks(
        chunk_document("d", "Some text. More text here.", testbed_chunk_config(TestbedConfig())), chunks
    )
    rows = [{"doc_id": "d", "chunk_index": 0, "thought": thought, "thought_ids": letters}]
    path = samples_file(tmp_path / "samples.parquet", rows, tokenizer_fingerprint(tiny_tokenizer))
    (document,) = read_source(SourceConfig(kind="thoughts", chunks=str(chunks), thoughts=str(path)))
    for posterior in (0.0, 1.0):
        built = build_document(
            document, DocumentBuilder(tiny_tokenizer, FormatConfig(posterior_probability=posterior))
        )
        assert built.ids_of("thought") == [letters]


def test_ids_of_another_tokenizer_fall_back_to_the_text_with_one_warning(
    tiny_tokenizer: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A samples file made with another tokenizer (or naming none): its ids mean other tokens here,
    so the trainer encodes the thoughts' text, as for a teacher's file, and says so once."""
    from latent_thoughts.tokenizer import add_latent_tokens, train_bpe_tokenizer

    other = train_bpe_tokenizer(["another tokenizer, trained on other text " * 20], vocab_size=300)
    add_latent_tokens(other)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)
    builder, letters, thought = the_split(tiny_tokenizer)
    chunks = tmp_path / "chunks.parquet"
    text = "Some text. More text here. And a third sentence."
    write_chunks(chunk_document("d", text, testbed_chunk_config(TestbedConfig())), chunks)
    rows = [
        {"doc_id": "d", "chunk_index": index, "thought": thought, "thought_ids": letters}
        for index in range(len(read_chunks(chunks)))
    ]
    for name, named in (("other", tokenizer_fingerprint(other)), ("unnamed", None)):
        path = samples_file(tmp_path / f"{name}.parquet", rows, named)
        (document,) = read_source(SourceConfig(kind="thoughts", chunks=str(chunks), thoughts=str(path)))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="latent_thoughts.train.data"):
            built = build_documents([document, document], builder)
        warnings = [r for r in caplog.records if "thought_ids" in r.getMessage()]
        assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
        as_text = builder.build(document.doc_id, document.chunks, document.thoughts)
        assert [ids.tolist() for ids in built] == [as_text.input_ids] * 2
        assert as_text.ids_of("thought") == [builder.encode_thought(thought)] * len(rows)
