"""The trainer: configuration, budgets, the data mixture, and real tiny training runs on testbed data."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from latent_thoughts.cli import main as cli_main
from latent_thoughts.config import ConfigError
from latent_thoughts.corpus import ChunkConfig, chunk_document, write_chunks
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import (
    DocumentBuilder,
    FormatConfig,
    Layout,
    SpecialIds,
    pack_documents,
    tokenizer_fingerprint,
)
from latent_thoughts.generation.outputs import with_metadata
from latent_thoughts.testbed import TestbedConfig, TestbedOracle, generate_documents
from latent_thoughts.tokenizer import train_bpe_tokenizer
from latent_thoughts.train import (
    NonFiniteLossError,
    SourceConfig,
    TrainConfig,
    load_train_config,
    raw_tokens_matched_in_flops,
    steps_for_tokens,
    train,
    training_flops_per_token,
)
from latent_thoughts.train.data import (
    build_documents,
    build_source,
    build_training_data,
    epoch_windows,
    mix_documents,
    read_source,
    read_sources,
    read_thoughts,
)

TINY_SCRATCH = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


@pytest.fixture(scope="module")
def testbed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Testbed documents chunked (about 2 sentences a chunk) with the oracle's thoughts, as parquet files."""
    folder = tmp_path_factory.mktemp("testbed_data")
    world = TestbedConfig(
        warm_start_documents=0, bootstrap_documents=40, validation_documents=6, eval_problems=0
    )
    oracle = TestbedOracle.from_config(world)
    for split in ("bootstrap", "validation"):
        documents = generate_documents(world, split)
        chunks = [
            chunk
            for document in documents
            for chunk in chunk_document(document.doc_id, document.text, ChunkConfig(mean_sentences=2))
        ]
        write_chunks(chunks, folder / f"{split}_chunks.parquet")
        rows = [
            {"doc_id": c.doc_id, "chunk_index": c.chunk_index, "thought": oracle.thought(c.prefix, c.text)}
            for c in chunks
        ]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}_thoughts.parquet")
    return folder


def tiny_config(data: Path, output: Path, **changes: object) -> TrainConfig:
    """A run of a width-32 scratch Llama on the testbed thoughts, a few dozen steps of 4 x 64 tokens."""
    values: dict = {
        "output_dir": str(output),
        "seed": 0,
        "model": {"scratch": TINY_SCRATCH, "bpe_vocab_size": 300},
        "data": {
            "sources": [
                {
                    "kind": "thoughts",
                    "chunks": str(data / "bootstrap_chunks.parquet"),
                    "thoughts": str(data / "bootstrap_thoughts.parquet"),
                }
            ],
            "format": {"seq_len": 64},
        },
        "budget": {"tokens": 24 * 4 * 64},
        "optim": {"lr": 3e-3, "warmup_steps": 3, "global_batch": 4, "micro_batch": 2},
        "precision": "fp32",
        "logging_steps": 4,
        "save_steps": 12,
        "progress_bar": False,
    }
    for key, value in changes.items():
        values[key] = value
    return TrainConfig.model_validate(values)


# --- configuration and budgets -----------------------------------------------------------------------


def test_config_errors_are_one_line_and_suggest_keys(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        "output_dir: x\ndata: {sources: [{kind: raw, chunks: c.parquet}]}\nbudget: {tokens: 2M}\n"
    )
    config = load_train_config(path, ["optim.lr=3e-4"])
    assert config.budget.tokens == 2_000_000 and config.optim.lr == 3e-4
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.lr'"):
        load_train_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="needs 'thoughts'"):
        load_train_config(path, ["data.sources=[{kind: thoughts, chunks: c.parquet}]"])
    with pytest.raises(ConfigError, match=r"exactly one of budget\.tokens and budget\.epochs"):
        load_train_config(path, ["budget.epochs=2"])


def test_steps_for_tokens_rounds_up_to_whole_steps() -> None:
    assert steps_for_tokens(8192, 64, 4) == 32
    assert steps_for_tokens(8193, 64, 4) == 33
    assert steps_for_tokens(1, 2048, 192) == 1


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_lr_schedule_warms_up_then_decays_to_the_floor(schedule: str) -> None:
    from transformers import get_scheduler

    from latent_thoughts.train.config import OptimConfig
    from latent_thoughts.train.trainer import scheduler_arguments

    optim = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule=schedule, decay_fraction=0.25)
    arguments = scheduler_arguments(optim, max_steps=100)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    scheduler = get_scheduler(
        arguments["lr_scheduler_type"],
        optimizer,
        num_warmup_steps=10,
        num_training_steps=100,
        scheduler_specific_kwargs=arguments["lr_scheduler_kwargs"],
    )
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[5] == pytest.approx(0.5, abs=0.06)  # wsd counts the warm-up from step 1
    assert rates[10] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.1, abs=0.04)
    if schedule == "wsd":  # the peak holds until the last quarter, then falls linearly
        assert rates[74] == pytest.approx(1.0)
        assert rates[87] == pytest.approx(0.1 + 0.9 * (1 - 12 / 25), abs=0.04)
    else:
        assert rates[40] < 0.9


def test_flop_matched_raw_tokens_add_the_extra_compute() -> None:
    per_token = training_flops_per_token(1_000_000, num_layers=4, hidden_size=256, seq_len=512)
    assert per_token == 6e6 + 12 * 4 * 256 * 512
    assert raw_tokens_matched_in_flops(10_000, per_token) == 10_000
    # An E-step that cost as much as the training itself doubles the FLOP-matched raw budget.
    assert raw_tokens_matched_in_flops(10_000, per_token, extra_flops=10_000 * per_token) == 20_000


# --- data ---------------------------------------------------------------------------------------------------


def old_mix_documents(
    sources: list[list[np.ndarray]], shares: list[float], total_tokens: int, seed: int
) -> list[np.ndarray]:
    """The mixture as it was drawn before it became indices: whole documents, a seeded pass at a
    time per source, then one shuffle of all draws."""
    drawn: list[np.ndarray] = []
    for index, (documents, share) in enumerate(zip(sources, shares, strict=True)):
        target, tokens, passes = math.ceil(total_tokens * share), 0, 0
        while tokens < target and documents:
            for position in np.random.default_rng([seed, index, passes]).permutation(len(documents)):
                drawn.append(documents[position])
                tokens += len(documents[position])
                if tokens >= target:
                    break
            passes += 1
    order = np.random.default_rng([seed, len(sources), 0xD0C]).permutation(len(drawn))
    return [drawn[i] for i in order]


def test_mixture_follows_weights_repeats_small_sources_and_is_seeded() -> None:
    small = np.full(5, 10)  # 5 documents of 10 tokens: 50 tokens
    large = np.full(100, 10)  # 1,000 tokens
    mixture = mix_documents([small, large], [0.5, 0.5], 400, seed=3)
    assert mixture.drawn_tokens == [200, 200] and mixture.drawn_documents == [20, 20]
    assert np.bincount(mixture.document[mixture.source == 0]).tolist() == [4] * 5  # read four times over
    again = mix_documents([small, large], [0.5, 0.5], 400, seed=3)
    assert again.source.tolist() == mixture.source.tolist()
    assert again.document.tolist() == mixture.document.tolist()
    other = mix_documents([small, large], [0.5, 0.5], 400, seed=4)
    assert other.source.tolist() != mixture.source.tolist()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=12), min_size=1, max_size=3),
    total=st.integers(0, 600),
    seed=st.integers(0, 2**16),
)
def test_mixture_indices_draw_the_documents_the_old_mixture_drew(
    sizes: list[list[int]], total: int, seed: int
) -> None:
    assume(all(sum(lengths) for lengths in sizes))
    sources = [
        [np.full(n, 1000 * s + d, dtype=np.int32) for d, n in enumerate(ns)] for s, ns in enumerate(sizes)
    ]
    shares = [len(ns) / sum(len(x) for x in sizes) for ns in sizes]
    mixture = mix_documents([np.array(ns) for ns in sizes], shares, total, seed)
    drawn = list(mixture.documents(sources))
    old = old_mix_documents(sources, shares, total, seed)
    assert [d.tolist() for d in drawn] == [d.tolist() for d in old]
    assert sum(mixture.drawn_tokens) == sum(len(d) for d in old)


def test_mixture_streams_every_drawn_document_in_training_order() -> None:
    built = [[np.array([d], dtype=np.int32) for d in range(10)], [np.array([100 + d]) for d in range(3)]]
    mixture = mix_documents([np.ones(10), np.ones(3)], [0.5, 0.5], 150_000, seed=0)  # 150,000 draws
    streamed = [int(document[0]) for document in mixture.documents(built)]
    expected = np.where(mixture.source == 0, mixture.document, 100 + mixture.document)
    assert streamed == expected.tolist()


def test_thoughts_source_builds_interleaved_documents(
    testbed_data: Path, tiny_tokenizer, tmp_path: Path
) -> None:
    source = SourceConfig(
        kind="thoughts",
        chunks=str(testbed_data / "bootstrap_chunks.parquet"),
        thoughts=str(testbed_data / "bootstrap_thoughts.parquet"),
    )
    raw = SourceConfig(kind="raw", chunks=str(testbed_data / "bootstrap_chunks.parquet"), weight=1.0)
    source = source.model_copy(update={"weight": 3.0})
    documents = read_sources([source, raw])
    assert documents[0][0].thoughts is not None and all(documents[0][0].thoughts)
    assert documents[1][0].plain and documents[1][0].thoughts is None
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64))
    built = [build_documents(docs, builder) for docs in documents]
    data = build_training_data([source, raw], built, builder, 40, seed=0, path=tmp_path / "w.bin")
    assert data.windows.input_ids.shape == (40, 64)
    assert int(data.windows.lengths.min()) == 64  # every window full: the mixture never runs dry
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    assert (data.windows.input_ids == special.sol).any()
    thoughts, raws = data.sources
    assert 2.5 < thoughts.drawn_tokens / raws.drawn_tokens < 3.5  # weights 3:1


@pytest.mark.parametrize("reset", [False, True])
def test_training_windows_are_the_old_mixture_packed_by_pack_documents(
    testbed_data: Path, tiny_tokenizer, tmp_path: Path, reset: bool
) -> None:
    sources = [
        SourceConfig(kind="raw", chunks=str(testbed_data / "bootstrap_chunks.parquet"), weight=1.0),
        SourceConfig(
            kind="thoughts",
            chunks=str(testbed_data / "bootstrap_chunks.parquet"),
            thoughts=str(testbed_data / "bootstrap_thoughts.parquet"),
            weight=2.0,
        ),
    ]
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=48, reset_position_ids=reset))
    built = [build_documents(docs, builder) for docs in read_sources(sources)]
    data = build_training_data(sources, built, builder, 70, seed=5, path=tmp_path / "w.bin")
    old = old_mix_documents(built, [1 / 3, 2 / 3], 70 * 48, seed=5)
    windows = list(pack_documents(old, 48, tiny_tokenizer.pad_token_id, reset))[:70]
    assert data.windows.input_ids.tobytes() == np.array([w.input_ids for w in windows], np.int32).tobytes()
    if reset:
        positions = np.array([w.position_ids for w in windows], np.int32)
        assert data.windows.position_ids is not None
        assert data.windows.position_ids.tobytes() == positions.tobytes()


def test_epoch_budget_makes_that_many_passes(testbed_data: Path, tiny_tokenizer, tmp_path: Path) -> None:
    source = SourceConfig(kind="raw", chunks=str(testbed_data / "bootstrap_chunks.parquet"))
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64))
    built = [build_documents(docs, builder) for docs in read_sources([source])]
    windows = epoch_windows(built, 2.0, 64)
    data = build_training_data([source], built, builder, windows, seed=0, path=tmp_path / "w.bin")
    (stats,) = data.sources
    assert data.windows.num_tokens == len(data.windows) * 64
    assert len(data.windows) == windows == -(-2 * stats.tokens // 64)  # ceil(2 passes / window)
    assert 1.99 < stats.epochs < 2.05


def thoughts_source(data: Path) -> SourceConfig:
    return SourceConfig(
        kind="thoughts",
        chunks=str(data / "bootstrap_chunks.parquet"),
        thoughts=str(data / "bootstrap_thoughts.parquet"),
    )


def test_a_redrawn_document_is_what_the_builder_gives_for_its_pass(
    testbed_data: Path, tiny_tokenizer
) -> None:
    (documents,) = read_sources([thoughts_source(testbed_data)])
    fixed = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64))
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64, redraw_layouts=True))
    assert build_source(documents, fixed).redraw is None
    built = build_source(documents, builder)
    assert built.redraw is not None
    assert [d.tolist() for d in built.documents] == [d.tolist() for d in build_documents(documents, fixed)]
    changed = 0
    for pass_index in range(4):
        expected = [builder.build(d.doc_id, d.chunks, d.thoughts, pass_index).input_ids for d in documents]
        redrawn = [built.redraw.document(ids, i, pass_index) for i, ids in enumerate(built.documents)]
        assert [d.tolist() for d in redrawn] == expected
        assert built.redraw.lengths(pass_index).tolist() == [len(ids) for ids in expected]
        changed += sum(a.tolist() != b for a, b in zip(built.documents, expected, strict=True))
    assert changed > 0
    # Raw and rephrased sources keep their documents whatever the pass.
    raw = SourceConfig(kind="raw", chunks=str(testbed_data / "bootstrap_chunks.parquet"))
    assert build_source(read_sources([raw])[0], builder).redraw is None


@pytest.mark.parametrize("reset", [False, True])
def test_redrawn_windows_give_each_draw_the_layouts_of_its_pass(
    testbed_data: Path, tiny_tokenizer, tmp_path: Path, reset: bool
) -> None:
    sources = [
        SourceConfig(kind="raw", chunks=str(testbed_data / "bootstrap_chunks.parquet"), weight=1.0),
        thoughts_source(testbed_data).model_copy(update={"weight": 2.0}),
    ]
    raw_docs, thought_docs = read_sources(sources)
    fmt = FormatConfig(seq_len=48, reset_position_ids=reset, redraw_layouts=True)
    builder = DocumentBuilder(tiny_tokenizer, fmt)
    built = [build_source(docs, builder) for docs in (raw_docs, thought_docs)]
    documents = [source.documents for source in built]
    redraws = [source.redraw for source in built]
    windows = 3 * epoch_windows(documents, 1.0, 48)  # about three passes over each source

    def build(path: Path):
        return build_training_data(sources, documents, builder, windows, 5, path, redraws)

    data = build(tmp_path / "a.bin")
    assert len(data.windows) == windows and int(data.windows.lengths.min()) == 48
    assert 2.5 < data.sources[1].epochs < 3.5
    again = build(tmp_path / "b.bin")  # deterministic given the seed
    assert again.windows.records.tobytes() == data.windows.records.tobytes()

    # Each draw is its document built with its pass's layouts, in the mixture's order, packed.
    def pass_lengths(pass_index: int) -> np.ndarray:
        return np.array(
            [len(builder.build(d.doc_id, d.chunks, d.thoughts, pass_index).input_ids) for d in thought_docs]
        )

    lengths = [np.array([len(d) for d in docs]) for docs in documents]
    mixture = mix_documents(lengths, [1 / 3, 2 / 3], windows * 48, 5, [None, pass_lengths])
    assert mixture.passes is not None and int(mixture.passes[mixture.source == 1].max()) >= 2
    expected = [
        documents[0][d]
        if s == 0
        else builder.build(
            thought_docs[d].doc_id, thought_docs[d].chunks, thought_docs[d].thoughts, p
        ).input_ids
        for s, d, p in zip(
            mixture.source.tolist(), mixture.document.tolist(), mixture.passes.tolist(), strict=True
        )
    ]
    packed = list(pack_documents(expected, 48, tiny_tokenizer.pad_token_id, reset))[:windows]
    assert data.windows.input_ids.tobytes() == np.array([w.input_ids for w in packed], np.int32).tobytes()
    if reset:
        assert data.windows.position_ids is not None
        positions = np.array([w.position_ids for w in packed], np.int32)
        assert data.windows.position_ids.tobytes() == positions.tobytes()

    # A chunk repeated over passes shows both layouts across them for some chunks.
    seen: dict[tuple[int, int], set[Layout]] = {}
    for d, p in zip(
        mixture.document[mixture.source == 1].tolist(),
        mixture.passes[mixture.source == 1].tolist(),
        strict=True,
    ):
        doc = thought_docs[d]
        for chunk, layout in enumerate(builder.build(doc.doc_id, doc.chunks, doc.thoughts, p).layouts):
            seen.setdefault((d, chunk), set()).add(layout)
    assert sum(len(layouts) == 2 for layouts in seen.values()) > len(seen) / 4

    # Without the option: the windows of before, whatever the passes.
    fixed = DocumentBuilder(tiny_tokenizer, fmt.model_copy(update={"redraw_layouts": False}))
    off = build_training_data(sources, documents, fixed, windows, 5, tmp_path / "off.bin")
    old = old_mix_documents(documents, [1 / 3, 2 / 3], windows * 48, seed=5)
    old_windows = list(pack_documents(old, 48, tiny_tokenizer.pad_token_id, reset))[:windows]
    assert off.windows.input_ids.tobytes() == np.array([w.input_ids for w in old_windows], np.int32).tobytes()
    assert off.windows.input_ids.tobytes() != data.windows.input_ids.tobytes()


def test_redrawn_layouts_leave_a_single_pass_unchanged(
    testbed_data: Path, tiny_tokenizer, tmp_path: Path
) -> None:
    sources = [thoughts_source(testbed_data)]
    (documents,) = read_sources(sources)
    fixed = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64))
    redraw = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64, redraw_layouts=True))
    built = build_source(documents, redraw)
    windows = epoch_windows([built.documents], 0.9, 64)
    on = build_training_data(
        sources, [built.documents], redraw, windows, 0, tmp_path / "on.bin", [built.redraw]
    )
    off = build_training_data(
        sources, [build_documents(documents, fixed)], fixed, windows, 0, tmp_path / "off.bin"
    )
    assert on.windows.records.tobytes() == off.windows.records.tobytes()


def test_the_window_cache_key_names_redrawn_layouts_only_when_on(testbed_data: Path, tiny_tokenizer) -> None:
    from latent_thoughts.train.data import data_fingerprint
    from latent_thoughts.train.trainer import _data_key

    sources = [thoughts_source(testbed_data)]
    fixed = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64))
    redraw = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64, redraw_layouts=True))
    before = fixed.config.model_dump(mode="json")
    del before["redraw_layouts"]  # the format as it was before the option: the key of old windows
    assert _data_key(sources, fixed, seed=0) == data_fingerprint(
        sources, {"format": before, "vocab": len(tiny_tokenizer), "seed": 0}
    )
    assert _data_key(sources, redraw, seed=0) != _data_key(sources, fixed, seed=0)


def thoughts_as_split_ids(data: Path, folder: Path, tokenizer, named: bool = True) -> SourceConfig:
    """The teacher's thoughts file written as an E-step output: each thought also given as token ids,
    one (or more) per character (never the tokenizer's own merges), and the tokenizer named."""
    builder = DocumentBuilder(tokenizer)
    table = pq.read_table(data / "bootstrap_thoughts.parquet")
    ids = [
        None
        if not thought
        else [token for character in thought.strip() for token in builder.encode(character)]
        for thought in table.column("thought").to_pylist()
    ]
    table = table.append_column("thought_ids", pa.array(ids, pa.list_(pa.int64())))
    meta = {"mode": "estep", **({"tokenizer": tokenizer_fingerprint(tokenizer)} if named else {})}
    path = folder / "samples.parquet"
    pq.write_table(with_metadata(table, meta), path)
    return thoughts_source(data).model_copy(update={"thoughts": str(path)})


def test_a_text_only_thoughts_file_builds_as_before(
    testbed_data: Path, tiny_tokenizer, tmp_path: Path
) -> None:
    """A teacher's thoughts file (text only): no ids, the thoughts' text encoded, windows and their
    cache key those of before the ids existed (byte for byte)."""
    from latent_thoughts.train.data import data_fingerprint, thought_ids_tokenizer
    from latent_thoughts.train.trainer import _data_key

    sources = [thoughts_source(testbed_data)]
    assert thought_ids_tokenizer(sources[0].thoughts or "") is None
    (documents,) = read_sources(sources)
    assert all(document.thought_ids is None for document in documents)
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64))
    built = build_documents(documents, builder)
    before = [builder.build(d.doc_id, d.chunks, d.thoughts).input_ids for d in documents]
    assert [ids.tolist() for ids in built] == before
    data = build_training_data(sources, [built], builder, 30, seed=0, path=tmp_path / "w.bin")
    old = old_mix_documents([[np.asarray(ids, np.int32) for ids in before]], [1.0], 30 * 64, seed=0)
    windows = list(pack_documents(old, 64, tiny_tokenizer.pad_token_id))[:30]
    assert data.windows.input_ids.tobytes() == np.array([w.input_ids for w in windows], np.int32).tobytes()
    fmt = builder.config.model_dump(mode="json", exclude={"redraw_layouts"})
    assert _data_key(sources, builder, seed=0) == data_fingerprint(
        sources, {"format": fmt, "vocab": len(tiny_tokenizer), "seed": 0}
    )


@pytest.mark.parametrize("redraw", [False, True])
def test_thoughts_given_as_ids_are_trained_as_those_ids_in_every_pass(
    testbed_data: Path, tiny_tokenizer, tmp_path: Path, redraw: bool
) -> None:
    """An E-step output's ``thought_ids`` of the trainer's tokenizer are the thought spans of every
    document, in pass 0 and in the layouts redrawn for later passes (the per-chunk thought counts
    are of the ids); the window cache key then names the tokenizer."""
    from latent_thoughts.train.data import data_fingerprint
    from latent_thoughts.train.trainer import _data_key

    source = thoughts_as_split_ids(testbed_data, tmp_path, tiny_tokenizer)
    (documents,) = read_sources([source])
    builder = DocumentBuilder(tiny_tokenizer, FormatConfig(seq_len=64, redraw_layouts=redraw))
    built = build_source(documents, builder)
    text_path = [builder.build(d.doc_id, d.chunks, d.thoughts).input_ids for d in documents]
    assert [ids.tolist() for ids in built.documents] != text_path  # the ids are not the text's encoding
    for pass_index in range(3 if redraw else 1):
        expected = [
            builder.build(d.doc_id, d.chunks, d.thoughts, pass_index, thought_ids=d.thought_ids)
            for d in documents
        ]
        for document, doc in zip(documents, expected, strict=True):
            assert document.thought_ids is not None
            assert doc.ids_of("thought") == [ids for ids in document.thought_ids if ids is not None]
        if built.redraw is not None:
            redrawn = [built.redraw.document(ids, i, pass_index) for i, ids in enumerate(built.documents)]
            assert [d.tolist() for d in redrawn] == [doc.input_ids for doc in expected]
            assert built.redraw.lengths(pass_index).tolist() == [len(doc.input_ids) for doc in expected]
        else:
            assert [d.tolist() for d in built.documents] == [doc.input_ids for doc in expected]
    exclude = None if redraw else {"redraw_layouts"}
    key = {"format": builder.config.model_dump(mode="json", exclude=exclude), "vocab": len(tiny_tokenizer)}
    assert _data_key([source], builder, seed=0) == data_fingerprint(
        [source], {**key, "tokenizer": builder.fingerprint, "seed": 0}
    )
    # a file that names no tokenizer: its ids are not used, nor is the tokenizer in the key
    folder = tmp_path / "unnamed"
    folder.mkdir()
    unnamed = thoughts_as_split_ids(testbed_data, folder, tiny_tokenizer, named=False)
    assert _data_key([unnamed], builder, seed=0) == data_fingerprint([unnamed], {**key, "seed": 0})
    (plain,) = read_sources([unnamed])
    assert [ids.tolist() for ids in build_documents(plain, builder)] == text_path


def test_the_trainer_builds_redrawn_windows_once_and_reuses_them(
    testbed_data: Path, tiny_tokenizer, tmp_path: Path
) -> None:
    from latent_thoughts.train.trainer import _load_or_build

    config = tiny_config(testbed_data, tmp_path, budget={"epochs": 3.0})
    config.data.format.redraw_layouts = True
    documents = read_sources(config.data.sources)
    builder = DocumentBuilder(tiny_tokenizer, config.data.format)
    summary, windows, steps = _load_or_build(config, documents, builder, tmp_path)
    assert 2.9 < summary["sources"][0]["epochs"] < 3.1 and len(windows) == steps * 4
    built = build_source(documents[0], builder)
    expected = build_training_data(
        config.data.sources, [built.documents], builder, len(windows), 0, tmp_path / "x.bin", [built.redraw]
    )
    assert windows.records.tobytes() == expected.windows.records.tobytes()
    (cached,) = (tmp_path / "data").glob("train-*.bin")
    stamp = cached.stat().st_mtime_ns
    again_summary, again, again_steps = _load_or_build(config, documents, builder, tmp_path)
    assert cached.stat().st_mtime_ns == stamp  # read back, not rebuilt: a resumed run sees the same windows
    assert (again_summary, again_steps) == (summary, steps)
    assert again.records.tobytes() == windows.records.tobytes()


def test_bad_inputs_name_the_file(tmp_path: Path, testbed_data: Path) -> None:
    with pytest.raises(LatentThoughtsError, match=r"missing\.parquet: chunk file not found"):
        read_source(SourceConfig(kind="raw", chunks=str(tmp_path / "missing.parquet")))
    table = pa.table({"doc_id": ["a", "a"], "chunk_index": [0, 0], "thought": ["x", "y"]})
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(LatentThoughtsError, match=r"dup\.parquet: more than one thought for chunk 0"):
        read_thoughts(tmp_path / "dup.parquet")
    pq.write_table(pa.table({"doc_id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(LatentThoughtsError, match=r"bad\.parquet: not a thoughts file \(missing columns"):
        read_thoughts(tmp_path / "bad.parquet")
    pq.write_table(
        pa.table({"doc_id": ["zz"], "chunk_index": [0], "thought": ["x"]}), tmp_path / "other.parquet"
    )
    source = SourceConfig(
        kind="thoughts",
        chunks=str(testbed_data / "bootstrap_chunks.parquet"),
        thoughts=str(tmp_path / "other.parquet"),
    )
    with pytest.raises(LatentThoughtsError, match="wrong pairing"):
        read_source(source)


# --- training runs -----------------------------------------------------------------------------------------------


def test_training_on_thoughts_lowers_held_out_loss_and_saves_a_loadable_model(
    testbed_data: Path, tmp_path: Path
) -> None:
    validation = [
        {
            "kind": "thoughts",
            "chunks": str(testbed_data / "validation_chunks.parquet"),
            "thoughts": str(testbed_data / "validation_thoughts.parquet"),
        }
    ]
    config = tiny_config(testbed_data, tmp_path / "run", precision="auto")
    config.data.validation = [SourceConfig.model_validate(v) for v in validation]
    result = train(config)
    metrics = result.metrics
    assert result.finished and result.steps == 24 and result.tokens == 24 * 4 * 64
    assert metrics["eval_loss"] < metrics["eval_loss_start"] - 0.5
    logged = [log for log in metrics["log_history"] if "loss" in log]
    assert all({"tokens_seen", "tokens_per_second", "learning_rate"} <= set(log) for log in logged[1:])
    assert logged[-1]["tokens_seen"] == 24 * 4 * 64
    # progress.json, which another process watches, ends at the last step
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress == {"step": 24, "max_steps": 24, "tokens": 24 * 4 * 64}

    model_dir = tmp_path / "run" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert (
        model.get_input_embeddings().weight.shape[0]
        == json.loads((model_dir / "config.json").read_text())["vocab_size"]
    )
    from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

    engine = TransformersEngine(TransformersEngineConfig(model=str(model_dir), device="cpu", dtype="fp32"))
    scores = engine.score(["So 12 x 34 + 100 ="], [" 508."])
    assert len(scores[0].token_logprobs) > 0 and np.isfinite(scores[0].logprob)
    # A finished run asked to resume returns at once; asked with another budget or seed, it says so.
    assert train(config.model_copy(update={"progress_bar": False}), resume=True).model_dir == model_dir
    with pytest.raises(LatentThoughtsError, match=r"another configuration \(seed differ"):
        train(config.model_copy(update={"seed": 1}), resume=True)


@pytest.mark.parametrize(
    "optim",
    [{}, {"optimizer": "muon", "schedule": "wsd"}],
    ids=["adamw-cosine", "muon-wsd"],
)
def test_interrupted_and_resumed_run_ends_with_the_same_weights(
    testbed_data: Path, tmp_path: Path, optim: dict
) -> None:
    budget = {"tokens": 16 * 4 * 64}
    options = {"lr": 3e-3, "warmup_steps": 3, "global_batch": 4, "micro_batch": 2, **optim}

    def config(folder: str, **changes: object) -> TrainConfig:
        return tiny_config(testbed_data, tmp_path / folder, budget=budget, optim=options, **changes)

    straight = train(config("straight", save_steps=8))
    stopped = train(config("resumed", stop_after_steps=8))
    assert not stopped.finished and stopped.steps == 8 and stopped.last_checkpoint is not None
    assert stopped.last_checkpoint.name == "checkpoint-8"
    saved = torch.load(stopped.last_checkpoint / "optimizer.pt", weights_only=False)
    assert any(group.get("muon") for group in saved["param_groups"]) == ("optimizer" in optim)
    with pytest.raises(LatentThoughtsError, match="pass --resume"):
        train(config("resumed"))
    resumed = train(config("resumed"), resume=True)
    assert resumed.finished and resumed.steps == straight.steps
    a = load_file(straight.output_dir / "model" / "model.safetensors")
    b = load_file(resumed.output_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)
    losses_a = [log["loss"] for log in straight.metrics["log_history"] if "loss" in log and log["step"] > 8]
    losses_b = [log["loss"] for log in resumed.metrics["log_history"] if "loss" in log and log["step"] > 8]
    assert len(losses_a) == 2 and losses_a == pytest.approx(losses_b, abs=1e-5)


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_resume_from_a_damaged_checkpoint_is_one_line_naming_the_file(
    testbed_data: Path, tmp_path: Path, damaged: str
) -> None:
    config = tiny_config(
        testbed_data, tmp_path / "run", budget={"tokens": 8 * 4 * 64}, save_steps=2, stop_after_steps=2
    )
    stopped = train(config)
    assert stopped.last_checkpoint is not None and stopped.last_checkpoint.name == "checkpoint-2"
    path = stopped.last_checkpoint / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    with pytest.raises(LatentThoughtsError) as info:
        train(tiny_config(testbed_data, tmp_path / "run", budget={"tokens": 8 * 4 * 64}), resume=True)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "damaged checkpoint" in message


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(
    testbed_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = original(self, *args, **kwargs)
        calls["n"] += 1
        if self.training and calls["n"] > 2 * 14:  # two micro-batches a step: NaN from step 15 on
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(LlamaForCausalLM, "forward", poisoned)
    config = tiny_config(testbed_data, tmp_path / "nan", save_steps=6)
    with pytest.raises(NonFiniteLossError, match=r"at step 15.*last good checkpoint: .*checkpoint-12"):
        train(config)
    assert not (tmp_path / "nan" / "model").exists()
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "nan" / "checkpoints").iterdir())
    assert steps[-1] == 12
    weights = load_file(tmp_path / "nan" / "checkpoints" / "checkpoint-12" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_hugging_face_model_gets_the_latent_tokens_and_a_resized_embedding(
    tmp_path: Path, testbed_data: Path
) -> None:
    from latent_thoughts.modeling import ScratchModelConfig, create_llama

    tokenizer = train_bpe_tokenizer(["So 12 x 34 + 100 = 508. Hence 3 x 4 = 12."] * 20, vocab_size=300)
    tokenizer.pad_token = tokenizer.eos_token
    base = create_llama(ScratchModelConfig(**TINY_SCRATCH), vocab_size=len(tokenizer), seed=0)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    config = tiny_config(testbed_data, tmp_path / "run", budget={"tokens": 2 * 4 * 64})
    config.model.path = str(tmp_path / "base")
    result = train(config)
    assert result.model_dir is not None
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 4


def test_cli_trains_and_reports_bad_options(
    testbed_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_config(testbed_data, tmp_path / "cli")
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    assert cli_main(["train", "--config", str(path), "optim.betas=[0.9, 0.95", "budget.tokens=512"]) == 2
    assert cli_main(["train", "--config", str(path), "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert cli_main(["train", "--config", str(path), "budget.tokens=512"]) == 0
    assert "model:" in capsys.readouterr().out and (tmp_path / "cli" / "model" / "config.json").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_accelerate_launch_with_two_cpu_processes(testbed_data: Path, tmp_path: Path) -> None:
    config = tiny_config(testbed_data, tmp_path / "ddp", budget={"tokens": 8 * 4 * 64}, save_steps=4)
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None
    # accelerate 1.x starts several local processes only through its torchrun path (--multi_gpu);
    # without a GPU each process runs on the CPU and they talk over gloo. (--cpu means one process.)
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "latent_thoughts", "train", "--config", str(path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 8
    from latent_thoughts.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "model")
    assert model.get_input_embeddings().weight.shape[0] == len(load_tokenizer(tmp_path / "ddp" / "model"))
