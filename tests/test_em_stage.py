"""The E-step stage over a chunk file (``latent-thoughts estep``) on a tiny real Llama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import chunk_document, read_chunks, write_chunks
from latent_thoughts.em.estep import ThoughtScore, effective_sample_size, log_mean_weight
from latent_thoughts.em.stage import (
    SAMPLE_SCHEMA,
    ChunkSamples,
    EStepConfig,
    EStepRequest,
    EStepStage,
    merge_sample_shards,
    run_estep,
    thought_text,
)
from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.format import SpecialIds, tokenize_chunks, tokenizer_fingerprint
from latent_thoughts.generation.cache import ResultCache
from latent_thoughts.generation.outputs import read_metadata, with_metadata
from latent_thoughts.generation.stage import STAGE_KEY, stage_class
from latent_thoughts.testbed.world import TestbedConfig, generate_documents, testbed_chunk_config
from latent_thoughts.tokenizer import load_tokenizer
from latent_thoughts.train.config import SourceConfig
from latent_thoughts.train.data import read_source
from tests.test_server import serve_subprocess

pytestmark = pytest.mark.numeric

OPTIONS = {"k": 3, "max_thought_tokens": 10, "batch_chunks": 4, "seed": 5}


@pytest.fixture(scope="module")
def chunks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two testbed documents (one sentence a chunk, the previous sentence as prefix): 29 chunks."""
    world = TestbedConfig(bootstrap_documents=2, results_per_document=2)
    chunks = [
        chunk
        for document in generate_documents(world, "bootstrap")
        for chunk in chunk_document(document.doc_id, document.text, testbed_chunk_config(world))
    ]
    path = tmp_path_factory.mktemp("estep-chunks") / "chunks.parquet"
    write_chunks(chunks, path)
    return path


def estep(model_dir: Path, chunks: Path, out: Path, **options: Any) -> dict[str, Any]:
    base_url = options.pop("base_url", None)
    shard = options.pop("shard", None)
    config = EStepConfig(**{**OPTIONS, **options})
    request = EStepRequest(
        model_dir,
        chunks,
        out,
        config,
        base_url=base_url,
        shard=shard,
        device="cpu",
        dtype="fp32",
        progress=False,
    )
    return run_estep(request)


@pytest.fixture(scope="module")
def local_run(tiny_model_dir: Path, chunks_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("estep-local") / "samples.parquet"
    estep(tiny_model_dir, chunks_file, out)
    return out


def test_log_w_equals_a_hand_computation_from_score(
    tiny_model_dir: Path, chunks_file: Path, local_run: Path
) -> None:
    """For every sample: log q = score(BOS c SOL EOL x SOL POST -> z EOL) for a thought closed by EOL,
    score(... -> z) for one cut at the budget (its appended EOL was never drawn), log p =
    score(BOS c SOL -> PRIOR z EOL x), sequences laid out by hand; log w = log p - log q to 1e-4 (fp32)."""
    engine = TransformersEngine(
        TransformersEngineConfig(model=str(tiny_model_dir), dtype="fp32", device="cpu")
    )
    tokenizer = engine.tokenizer
    s = SpecialIds.from_tokenizer(tokenizer)
    chunks = read_chunks(chunks_file)
    rows = pq.read_table(local_run).to_pylist()
    assert [(r["doc_id"], r["chunk_index"]) for r in rows] == [(c.doc_id, c.chunk_index) for c in chunks]
    with ResultCache(local_run.with_name("samples.cache"), None) as cache:
        for chunk, row in zip(chunks, rows, strict=True):
            document = [c for c in chunks if c.doc_id == chunk.doc_id]
            ids = tokenize_chunks(tokenizer, [c.text for c in document]).ids
            x = ids[chunk.chunk_index]
            c = ids[chunk.chunk_index - 1] if chunk.chunk_index > 0 else []  # the prefix is one chunk
            record = cache.get(row["key"])
            assert record is not None
            thoughts = ChunkSamples.from_record(record).thought_ids
            assert len(thoughts) == len(row["log_w"]) == 3
            for k, z in enumerate(thoughts):
                assert z[-1] == s.eol and len(z) <= OPTIONS["max_thought_tokens"]
                drawn = z if row["finish_reasons"][k] == "stop" else z[:-1]
                (q,) = engine.score([[s.bos, *c, s.sol, s.eol, *x, s.sol, s.post]], [drawn])
                (p,) = engine.score([[s.bos, *c, s.sol]], [[s.prior, *z, *x]])
                assert row["log_q"][k] == pytest.approx(q.logprob, abs=1e-4)
                assert row["log_p"][k] == pytest.approx(p.logprob, abs=1e-4)
                assert row["log_w"][k] == pytest.approx(p.logprob - q.logprob, abs=2e-4)
            scores = [ThoughtScore([], q, p) for q, p in zip(row["log_q"], row["log_p"], strict=True)]
            assert row["ess"] == pytest.approx(effective_sample_size(scores))
            assert row["log_mean_w"] == pytest.approx(log_mean_weight(scores))
            assert row["thought"] == row["samples"][row["chosen"]]


def test_e_step_outputs_name_their_stage(local_run: Path) -> None:
    """What ``latent-thoughts merge`` finds the stage's merge by."""
    assert stage_class(read_metadata(local_run)[STAGE_KEY], str(local_run)) is EStepStage


def test_ess_is_k_for_equal_weights_and_one_for_a_dominant_weight() -> None:
    equal = [ThoughtScore([1], -3.0, -5.0) for _ in range(4)]
    assert effective_sample_size(equal) == pytest.approx(4.0)
    dominant = [ThoughtScore([1], 0.0, 0.0), *(ThoughtScore([1], 0.0, -80.0) for _ in range(3))]
    assert effective_sample_size(dominant) == pytest.approx(1.0, abs=1e-9)
    assert log_mean_weight(equal) == pytest.approx(-2.0)


def test_k_of_one_keeps_its_sample(tiny_model_dir: Path, chunks_file: Path, tmp_path: Path) -> None:
    estep(tiny_model_dir, chunks_file, tmp_path / "k1.parquet", k=1)
    for row in pq.read_table(tmp_path / "k1.parquet").to_pylist():
        assert row["chosen"] == 0 and row["thought"] == row["samples"][0] and row["ess"] == 1.0


def test_shards_merge_into_the_unsharded_output_and_a_rerun_samples_nothing(
    tiny_model_dir: Path,
    chunks_file: Path,
    local_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "samples.parquet"
    common = ["estep", str(tiny_model_dir), "--chunks", str(chunks_file), "--out", str(out)]
    flags = ["--k", "3", "--max-thought-tokens", "10", "--seed", "5", "--device", "cpu", "--dtype", "fp32"]
    for shard in ("0/2", "1/2"):
        assert main([*common, *flags, "--shard", shard, "--no-progress"]) == 0
    assert main(["merge", "--out", str(out)]) == 0
    merged, reference = pq.read_table(out).to_pylist(), pq.read_table(local_run).to_pylist()
    assert [(r["doc_id"], r["chunk_index"], r["thought"], r["thought_ids"], r["log_w"]) for r in merged] == [
        (r["doc_id"], r["chunk_index"], r["thought"], r["thought_ids"], r["log_w"]) for r in reference
    ]
    assert read_metadata(out)["tokenizer"] == read_metadata(local_run)["tokenizer"]
    # the unsharded run finds every chunk in the shards' cache
    assert main([*common, *flags, "--no-progress"]) == 0
    assert f"0 sampled now, {len(reference)} from the cache" in capsys.readouterr().out
    # a new policy costs no sampling: selection runs from the cached samples
    summary = estep(tiny_model_dir, chunks_file, out, policy="highest")
    assert summary["sampled_now"] == 0
    for row in pq.read_table(out).to_pylist():
        assert row["log_w"][row["chosen"]] == max(row["log_w"])


def test_a_cache_written_before_typed_payloads_is_read_without_sampling_again(
    tiny_model_dir: Path, chunks_file: Path, local_run: Path, tmp_path: Path
) -> None:
    """The E-step's cache records hold their samples as a typed payload; a killed run's records of
    the older layout (the same object as JSON in ``text``) are finished work: the rerun samples
    nothing and writes the same output."""
    lines = (local_run.with_name("samples.cache") / "all.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(record["text"] == "" and "thought_ids" in record["payload"] for record in records)
    for record in records:
        record["text"] = json.dumps(record.pop("payload"), separators=(",", ":"))
    out = tmp_path / "samples.parquet"
    (tmp_path / "samples.cache").mkdir()
    (tmp_path / "samples.cache" / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = estep(tiny_model_dir, chunks_file, out)
    assert (summary["sampled_now"], summary["from_cache"]) == (0, len(records))
    assert out.read_bytes() == local_run.read_bytes()


def test_the_trainer_reads_the_samples_as_a_thoughts_source(chunks_file: Path, local_run: Path) -> None:
    """The samples file is a thoughts file: the trainer's own reader gives each chunk its selected thought."""
    rows = {(r["doc_id"], r["chunk_index"]): r["thought"] for r in pq.read_table(local_run).to_pylist()}
    documents = read_source(SourceConfig(kind="thoughts", chunks=str(chunks_file), thoughts=str(local_run)))
    assert len(documents) == 2
    for document in documents:
        assert document.thoughts is not None
        for index, thought in enumerate(document.thoughts):
            assert thought == (rows[(document.doc_id, index)] or None)


def test_the_samples_carry_the_selected_thoughts_ids_and_their_tokenizer(
    tiny_model_dir: Path, chunks_file: Path, local_run: Path
) -> None:
    """``thought_ids`` is the selected sample's ids as weighted, without the closing EOL, and the
    metadata names the tokenizer they are ids of; the trainer's reader gives them to each chunk."""
    tokenizer = load_tokenizer(tiny_model_dir)
    eol = SpecialIds.from_tokenizer(tokenizer).eol
    assert read_metadata(local_run)["tokenizer"] == tokenizer_fingerprint(tokenizer)
    rows = pq.read_table(local_run).to_pylist()
    with ResultCache(local_run.with_name("samples.cache"), None) as cache:
        for row in rows:
            record = cache.get(row["key"])
            assert record is not None and row["chosen"] >= 0
            weighted = ChunkSamples.from_record(record).thought_ids[row["chosen"]]
            assert weighted[-1] == eol and row["thought_ids"] == weighted[:-1]
            assert len(row["thought_ids"]) == row["sample_tokens"][row["chosen"]]
            assert row["thought"] == thought_text(tokenizer, weighted, eol)
    ids = {(r["doc_id"], r["chunk_index"]): r["thought_ids"] for r in rows}
    documents = read_source(SourceConfig(kind="thoughts", chunks=str(chunks_file), thoughts=str(local_run)))
    for document in documents:
        assert document.thought_ids is not None and document.ids_tokenizer == tokenizer_fingerprint(tokenizer)
        assert document.thought_ids == [ids.get((document.doc_id, i)) for i in range(len(document.chunks))]


def shards_of(table: pa.Table, folder: Path, meta: dict[str, Any]) -> list[Path]:
    """``table`` cut in two shard outputs of an E-step in ``folder`` (as ``--shard i/2`` writes them)."""
    half = table.num_rows // 2
    paths = []
    for index, part in enumerate([table.slice(0, half), table.slice(half)]):
        path = folder / f"samples.shard-{index}-of-2.parquet"
        pq.write_table(with_metadata(part, {**meta, "shard": f"{index}/2"}), path)
        paths.append(path)
    return paths


def test_shards_written_before_thought_ids_merge_with_the_column_null(
    chunks_file: Path, local_run: Path, tmp_path: Path
) -> None:
    """Older shards (no ``thought_ids``, no tokenizer named) still merge: the column is null and the
    trainer reads their text, as before. An older shard beside a newer one is a one-line error."""
    table = pq.read_table(local_run)
    meta = {key: value for key, value in read_metadata(local_run).items() if key != "tokenizer"}
    older = table.drop_columns(["thought_ids"]).replace_schema_metadata(None)
    out = tmp_path / "samples.parquet"
    shards_of(older, tmp_path, meta)
    assert main(["merge", "--out", str(out)]) == 0
    merged = pq.read_table(out)
    assert merged.schema.remove_metadata() == SAMPLE_SCHEMA
    assert merged.column("thought_ids").null_count == merged.num_rows
    assert "tokenizer" not in read_metadata(out)
    assert merged.drop_columns(["thought_ids"]).to_pylist() == older.to_pylist()
    documents = read_source(SourceConfig(kind="thoughts", chunks=str(chunks_file), thoughts=str(out)))
    assert all(document.thought_ids is None for document in documents)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _, second = shards_of(table.replace_schema_metadata(None), mixed, read_metadata(local_run))
    pq.write_table(with_metadata(older.slice(table.num_rows // 2), {**meta, "shard": "1/2"}), second)
    with pytest.raises(LatentThoughtsError, match=r"shard-1-of-2\.parquet: written before .*thought_ids"):
        merge_sample_shards(mixed / "samples.parquet")


def test_estep_against_a_served_model_gives_the_in_process_log_w(
    tiny_model_dir: Path, chunks_file: Path, local_run: Path, tmp_path: Path
) -> None:
    """``latent-thoughts serve`` (fp32, a real subprocess) and the in-process engine draw the same
    thoughts (sampling is a function of seed, prompt ids and sample index) and score them to within
    1e-3 nats (echo scoring of each full sequence against shared-context scoring: float rounding)."""
    out = tmp_path / "served.parquet"
    with serve_subprocess(tiny_model_dir, tmp_path) as base_url:
        estep(tiny_model_dir, chunks_file, out, base_url=base_url)
    served, local = pq.read_table(out).to_pylist(), pq.read_table(local_run).to_pylist()
    for remote_row, local_row in zip(served, local, strict=True):
        assert remote_row["samples"] == local_row["samples"]
        assert remote_row["log_w"] == pytest.approx(local_row["log_w"], abs=1e-3)
        assert remote_row["chosen"] == local_row["chosen"]


def test_bad_input_is_a_one_line_error_naming_it(
    tiny_model_dir: Path, chunks_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["estep", "--chunks", str(chunks_file), "--out", str(tmp_path / "s.parquet")]
    assert main([*common, str(tmp_path / "nowhere")]) == 2
    assert "MODEL" in capsys.readouterr().err
    assert main([*common, str(tiny_model_dir), "--policy", "best"]) == 2
    assert "unknown selection policy 'best'" in capsys.readouterr().err
    assert main([*common, str(tiny_model_dir), "--k", "0"]) == 2
    assert "k" in capsys.readouterr().err
    # the retry options are a served model's; checked before any request or model load
    assert main([*common, str(tiny_model_dir), "--timeout-s", "5"]) == 2
    assert "--timeout-s: for a served model only" in capsys.readouterr().err
    served = [*common, str(tiny_model_dir), "--base-url", "http://127.0.0.1:9/v1"]
    assert main([*served, "--max-attempts", "0"]) == 2
    assert "--max-attempts" in capsys.readouterr().err
    assert main([*served, "--device", "cpu"]) == 2
    assert "--device/--dtype: the model served at --base-url" in capsys.readouterr().err
    engine = tmp_path / "engine.yaml"
    engine.write_text("kind: http\nhttp: {base_url: 'http://127.0.0.1:9/v1'}\n")
    assert main([*common, str(engine)]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_an_engine_file_runs_the_e_step_like_the_model_folder(
    tiny_model_dir: Path, chunks_file: Path, local_run: Path, tmp_path: Path
) -> None:
    engine = tmp_path / "engine.yaml"
    engine.write_text(
        f"kind: transformers\ntransformers: {{model: '{tiny_model_dir}', device: cpu, dtype: fp32}}\n"
    )
    out = tmp_path / "samples.parquet"
    flags = ["--k", "3", "--max-thought-tokens", "10", "--batch-chunks", "4", "--seed", "5", "--no-progress"]
    assert main(["estep", str(engine), "--chunks", str(chunks_file), "--out", str(out), *flags]) == 0
    assert pq.read_table(out).equals(pq.read_table(local_run))


def test_batch_tokens_bounds_the_engine_and_changes_no_sample(
    tiny_model_dir: Path, chunks_file: Path, local_run: Path, tmp_path: Path
) -> None:
    """The E-step's token batch reaches the engine; a small bound splits the work into more, smaller
    batches and writes the same thoughts (and log w to float rounding)."""
    from latent_thoughts.em.stage import engine_spec
    from latent_thoughts.engines.spec import open_engine

    config = EStepConfig(**{**OPTIONS, "batch_tokens": 64})
    request = EStepRequest(tiny_model_dir, chunks_file, tmp_path / "x.parquet", config, device="cpu")
    with open_engine(engine_spec(request)) as (engine, _):
        assert isinstance(engine, TransformersEngine) and engine.config.batch_tokens == 64
    out = tmp_path / "small-batches.parquet"
    estep(tiny_model_dir, chunks_file, out, batch_tokens=64)
    small, reference = pq.read_table(out).to_pylist(), pq.read_table(local_run).to_pylist()
    assert [r["samples"] for r in small] == [r["samples"] for r in reference]
    for got, want in zip(small, reference, strict=True):
        assert got["log_w"] == pytest.approx(want["log_w"], abs=1e-4)
