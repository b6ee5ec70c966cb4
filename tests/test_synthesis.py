"""Teacher synthesis (METHOD section 4, issue 4): cache, resume after SIGKILL, shards, failures, costs.

Everything runs on real parts: the testbed's oracle teacher on real testbed chunks, the real
chunker, the real command line (in-process, or as a subprocess where it is killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import ChunkConfig, chunk_document, read_chunks, read_documents, write_chunks
from latent_thoughts.engines.base import ChatReply
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.outputs import output_paths
from latent_thoughts.prompts import WRAP_STYLES
from latent_thoughts.synthesis import (
    CacheRecord,
    Prices,
    ResultCache,
    Sampling,
    cache_key,
    draw_wrap_style,
    failure_reason,
    latent_work,
    make_counter,
    merge_shards,
    parse_shard,
    select_shard,
)
from latent_thoughts.testbed import TestbedConfig, check_thought, generate_documents

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REPO = Path(__file__).resolve().parents[1]
ORACLE_TEACHER = REPO / "configs" / "teachers" / "oracle.yaml"


@pytest.fixture(scope="session")
def testbed_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chunk file of 60 testbed documents cut into short chunks (about 200 chunks)."""
    config = TestbedConfig(
        bootstrap_documents=60, warm_start_documents=0, validation_documents=0, eval_problems=0
    )
    chunking = ChunkConfig(mean_sentences=2, min_sentences=1, max_sentences=4)
    chunks = [
        chunk
        for document in generate_documents(config, "bootstrap")
        for chunk in chunk_document(document.doc_id, document.text, chunking)
    ]
    path = tmp_path_factory.mktemp("testbed") / "chunks.parquet"
    write_chunks(chunks, path)
    return path


def synthesize(chunks: Path, out: Path, *extra: str, teacher: Path = ORACLE_TEACHER) -> dict:
    """Run ``latent-thoughts synthesize`` in-process; returns the summary it saved."""
    status = main(
        ["synthesize", "--chunks", str(chunks), "--teacher", str(teacher), "--out", str(out), *extra]
    )
    assert status == 0
    shard = parse_shard(extra[extra.index("--shard") + 1]) if "--shard" in extra else None
    return json.loads(output_paths(out, shard).summary.read_text())


def cache_lines(folder: Path) -> list[dict]:
    """Every complete record line in a cache folder."""
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().split("\n"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


# --- the cache -----------------------------------------------------------------------------------


def test_cache_key_depends_on_everything_that_determines_the_answer() -> None:
    base = dict(
        task="latent",
        prefix="Earlier text.",
        text="A chunk.",
        teacher="oracle",
        prompt_version="latent-v1",
        sampling={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 64, "seed": 0},
        sample_index=0,
    )
    key = cache_key(**base)
    assert key == cache_key(**base)
    changes = {
        "task": "rephrase:easy",
        "prefix": "Other earlier text.",
        "text": "Another chunk.",
        "teacher": "gpt-4o-mini",
        "prompt_version": "latent-v2",
        "sampling": {**base["sampling"], "temperature": 1.0},
        "sample_index": 1,
    }
    for name, value in changes.items():
        assert cache_key(**{**base, name: value}) != key, name


def record(key: str, status: str = "ok", text: str = "a thought") -> CacheRecord:
    return CacheRecord(
        key=key,
        status=status,  # type: ignore[arg-type]
        text=text,
        teacher="t",
        prompt_version="v",
        finish_reason="stop",
        reason="" if status == "ok" else "length",
    )


def test_cache_ignores_and_repairs_a_half_written_last_line(tmp_path: Path) -> None:
    with ResultCache(tmp_path, "all") as cache:
        cache.append([record("a"), record("b")])
    with open(tmp_path / "all.jsonl", "a") as handle:
        handle.write('{"key": "c", "status": "ok", "te')  # the process died mid-write
    with ResultCache(tmp_path, "all") as cache:
        assert sorted(r.key for r in cache) == ["a", "b"]
        cache.append([record("c")])
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b", "c"]


def test_cache_reads_every_writer_and_a_success_outlives_a_failure(tmp_path: Path) -> None:
    with ResultCache(tmp_path, "shard-0-of-2") as cache:
        cache.append([record("a", "failed", ""), record("b")])
    with ResultCache(tmp_path, "shard-1-of-2") as cache:
        cache.append([record("a", "ok", "retried"), record("b", "ok", "second answer")])
    with ResultCache(tmp_path, "all") as cache:
        a, b = cache.get("a"), cache.get("b")
        assert a is not None and a.status == "ok" and a.text == "retried"
        assert b is not None and b.text == "a thought"  # the first success stays


def test_two_runs_of_one_shard_cannot_write_the_same_cache(tmp_path: Path) -> None:
    with (
        ResultCache(tmp_path, "all"),
        pytest.raises(LatentThoughtsError, match="another run is writing this cache"),
    ):
        ResultCache(tmp_path, "all")


# --- judging answers, shards, styles, prices ----------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (ChatReply("12 x 3 = 36.", "stop"), None),
        (ChatReply("12 x 3 = 36. 36 + 4", "length"), "length"),
        (ChatReply("   \n", "stop"), "empty"),
        (ChatReply("I'm sorry, but I can't help with that.", "stop"), "refusal"),
        (ChatReply("I cannot assist with this request.", "stop"), "refusal"),
        (ChatReply("Sorry, I am unable to do this.", "stop"), "refusal"),
        (ChatReply("server overloaded", "error"), "error: server overloaded"),
    ],
)
def test_unusable_answers_are_failures_with_their_reason(reply: ChatReply, reason: str | None) -> None:
    assert failure_reason(reply) == reason


def test_shards_split_whole_documents_in_order(testbed_chunks: Path) -> None:
    chunks = read_chunks(testbed_chunks)
    shards = [select_shard(chunks, i, 3) for i in range(3)]
    assert [c for shard in shards for c in shard] == chunks  # concatenated in order: the whole file
    docs = [{c.doc_id for c in shard} for shard in shards]
    assert all(shard for shard in shards)
    assert not (docs[0] & docs[1] or docs[1] & docs[2] or docs[0] & docs[2])
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(LatentThoughtsError, match="--shard"):
            parse_shard(bad)


def test_wrap_style_is_drawn_per_document_by_a_seeded_hash() -> None:
    ids = [f"doc-{i}" for i in range(200)]
    styles = [draw_wrap_style(doc_id, 0) for doc_id in ids]
    assert styles == [draw_wrap_style(doc_id, 0) for doc_id in ids]
    assert set(styles) == set(WRAP_STYLES)
    assert styles != [draw_wrap_style(doc_id, 1) for doc_id in ids]


def test_batch_prices_default_to_half_the_online_prices() -> None:
    prices = Prices(input_per_million=0.15, output_per_million=0.60)
    assert prices.cost(1_000_000, 1_000_000) == pytest.approx(0.75)
    assert prices.cost(1_000_000, 1_000_000, batch=True) == pytest.approx(0.375)
    explicit = Prices(input_per_million=1, output_per_million=2, batch_input_per_million=0.1)
    assert explicit.cost(1_000_000, 1_000_000, batch=True) == pytest.approx(0.1 + 1.0)


# --- the stage end to end on the testbed ----------------------------------------------------------


def test_oracle_synthesis_writes_one_valid_thought_per_chunk(
    testbed_chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "thoughts" / "oracle.parquet"
    summary = synthesize(testbed_chunks, out)
    chunks = read_chunks(testbed_chunks)
    table = pq.read_table(out)
    assert table.column_names == [
        "doc_id",
        "chunk_index",
        "key",
        "thought",
        "teacher",
        "prompt_version",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
    ]
    rows = table.to_pylist()
    assert [(r["doc_id"], r["chunk_index"]) for r in rows] == [(c.doc_id, c.chunk_index) for c in chunks]
    assert all(check_thought(r["thought"], c.text).valid for r, c in zip(rows, chunks, strict=True))
    assert {r["prompt_version"] for r in rows} == {"latent-v1"}
    assert {r["finish_reason"] for r in rows} == {"stop"}
    assert summary["run"]["requests"] == len(chunks) and summary["output"]["failures"] == 0
    assert pq.read_table(out.with_name("oracle.failures.parquet")).num_rows == 0

    # A rerun asks for nothing and writes the same file.
    before = out.read_bytes()
    again = synthesize(testbed_chunks, out)
    assert again["run"]["requests"] == 0 and again["run"]["cached"] == len(chunks)
    assert out.read_bytes() == before

    capsys.readouterr()
    assert (
        main(["thoughts", "--chunks", str(testbed_chunks), "--thoughts", str(out), "--doc", chunks[0].doc_id])
        == 0
    )
    view = capsys.readouterr().out
    first_doc = [c for c in chunks if c.doc_id == chunks[0].doc_id]
    assert view.count("╭─ thought") == len(first_doc)
    assert (
        view.index(first_doc[0].text.strip())
        < view.index("╭─ thought")
        < view.index(first_doc[-1].text.strip())
    )


def test_three_shards_merged_equal_the_unsharded_run(testbed_chunks: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole" / "oracle.parquet"
    synthesize(testbed_chunks, whole)
    sharded = tmp_path / "sharded" / "oracle.parquet"
    requests = [synthesize(testbed_chunks, sharded, "--shard", f"{i}/3")["run"]["requests"] for i in range(3)]
    assert sum(requests) == len(read_chunks(testbed_chunks)) and min(requests) > 0
    assert main(["merge", "--out", str(sharded)]) == 0
    assert pq.read_table(sharded).equals(pq.read_table(whole))
    assert sharded.read_bytes() == whole.read_bytes()
    assert pq.read_table(sharded.with_name("oracle.failures.parquet")).equals(
        pq.read_table(whole.with_name("oracle.failures.parquet"))
    )
    # The shards' cache is reused whole by an unsharded run over the same folder.
    assert synthesize(testbed_chunks, sharded)["run"]["requests"] == 0
    assert sharded.read_bytes() == whole.read_bytes()


def test_merge_refuses_an_incomplete_set_of_shards(testbed_chunks: Path, tmp_path: Path) -> None:
    out = tmp_path / "oracle.parquet"
    synthesize(testbed_chunks, out, "--shard", "0/3")
    synthesize(testbed_chunks, out, "--shard", "2/3")
    with pytest.raises(LatentThoughtsError, match=r"shard\(s\) 1 of 3 missing"):
        merge_shards(out)


def test_a_cut_answer_is_no_failure_and_on_cut_decides_what_it_becomes(
    testbed_chunks: Path, tmp_path: Path
) -> None:
    # The oracle counts words as tokens; 30 words cuts the longer derivations, not the short ones.
    synthesize(testbed_chunks, tmp_path / "full.parquet")
    full = {
        (r["doc_id"], r["chunk_index"]): r["thought"]
        for r in pq.read_table(tmp_path / "full.parquet").to_pylist()
    }
    out = tmp_path / "short.parquet"
    limit = ["--set", "sampling.max_new_tokens=30"]
    summary = synthesize(testbed_chunks, out, *limit)  # on_cut: raw, the default
    rows = pq.read_table(out).to_pylist()
    raw = [r for r in rows if r["thought"] is None]
    assert len(rows) == len(full) and raw and len(raw) < len(rows)
    assert {r["finish_reason"] for r in raw} == {"length"}
    assert all(len(full[r["doc_id"], r["chunk_index"]].split()) > 30 for r in raw)
    assert pq.read_table(out.with_name("short.failures.parquet")).num_rows == 0
    run = summary["run"]
    assert run["failed"] == 0 and run["failure_reasons"] == {} and run["answered_cut"] == len(raw)
    assert (run["cut"], run["cut_raw"], run["cut_kept"], run["cut_retried"]) == (len(raw), len(raw), 0, 0)
    # Asked again with the same budget, a cut answer would be cut again: --retry-failures leaves it.
    assert synthesize(testbed_chunks, out, *limit, "--retry-failures")["run"]["requests"] == 0

    # keep: the cached answers again, nothing asked; the cut ones are now the thoughts, cut.
    kept = synthesize(testbed_chunks, out, *limit, "on_cut=keep")
    assert kept["run"]["requests"] == 0 and kept["run"]["cut_kept"] == len(raw)
    by_chunk = {(r["doc_id"], r["chunk_index"]): r for r in pq.read_table(out).to_pylist()}
    for row in raw:
        key = (row["doc_id"], row["chunk_index"])
        assert by_chunk[key]["thought"] == " ".join(full[key].split()[:30])

    # retry_longer: each cut answer asked again at 60 words, then 120, each under its own key.
    retry = [*limit, "on_cut=retry_longer", "retry_max_new_tokens=120"]
    longer = synthesize(testbed_chunks, out, *retry)
    run = longer["run"]
    assert run["cached"] == len(rows) - len(raw) and run["requests"] == run["longer_requests"] >= len(raw)
    assert (run["cut"], run["cut_retried"], run["cut_raw"], run["cut_kept"]) == (len(raw), len(raw), 0, 0)
    assert {(r["doc_id"], r["chunk_index"]): r["thought"] for r in pq.read_table(out).to_pylist()} == full
    sampling = Sampling(temperature=0.7, max_new_tokens=60)  # oracle.yaml's, at 60 words
    at_60 = {item.key for item in latent_work(read_chunks(testbed_chunks), longer["teacher"], sampling)}
    cached = {line["key"] for line in cache_lines(tmp_path / "short.cache")}
    asked_at_60 = cached & at_60
    assert len(asked_at_60) == len(raw)  # a plain run with max_new_tokens 60 would find them
    assert synthesize(testbed_chunks, out, *retry)["run"]["requests"] == 0
    # The same from scratch: the same requests, the same files.
    fresh = tmp_path / "fresh" / "short.parquet"
    again = synthesize(testbed_chunks, fresh, *retry)
    assert again["run"]["requests"] == len(rows) + run["requests"]
    assert pq.read_table(fresh).equals(pq.read_table(out))


def test_rephrase_mode_writes_one_row_per_document_in_its_drawn_style(
    testbed_chunks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "wrap.parquet"
    synthesize(testbed_chunks, out, "--mode", "rephrase", "--style", "wrap")
    rows = pq.read_table(out).to_pylist()
    doc_ids = list(dict.fromkeys(c.doc_id for c in read_chunks(testbed_chunks)))
    assert [r["doc_id"] for r in rows] == doc_ids
    assert all(r["style"] == draw_wrap_style(r["doc_id"], 0) for r in rows)
    assert len({r["style"] for r in rows}) == 4 and all(r["text"] for r in rows)
    cot = tmp_path / "cot.parquet"
    synthesize(testbed_chunks, cot, "--mode", "rephrase", "--style", "cot")
    assert {r["style"] for r in pq.read_table(cot).to_pylist()} == {"cot"}


def test_bad_options_are_one_line_errors(
    testbed_chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["synthesize", "--chunks", str(testbed_chunks), "--teacher", str(ORACLE_TEACHER)]
    cases = [
        ([*base, "--out", str(tmp_path / "x.csv")], "must be a .parquet file"),
        ([*base, "--out", str(tmp_path / "x.parquet"), "--shard", "3/3"], "--shard"),
        ([*base, "--out", str(tmp_path / "x.parquet"), "--set", "batch_sise=4"], "did you mean 'batch_size'"),
        ([*base, "--out", str(tmp_path / "x.parquet"), "--batch-api"], "needs a teacher of kind 'http'"),
        ([*base, "--out", str(tmp_path / "x.parquet"), "--mode", "rephrase", "--style", "poem"], "--style"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


# --- resume after SIGKILL ---------------------------------------------------------------------------


def test_a_run_killed_with_sigkill_resumes_without_asking_again(testbed_chunks: Path, tmp_path: Path) -> None:
    out = tmp_path / "thoughts" / "killed.parquet"
    cache = tmp_path / "thoughts" / "killed.cache"
    command = [
        sys.executable,
        "-m",
        "latent_thoughts",
        "synthesize",
        "--chunks",
        str(testbed_chunks),
        "--teacher",
        str(ORACLE_TEACHER),
        "--out",
        str(out),
        "--no-progress",
    ]
    slow = ["--set", "batch_size=1", "delay_s=0.02"]
    process = subprocess.Popen([*command, *slow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(cache_lines(cache)) < 25 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    finished = {line["key"] for line in cache_lines(cache) if line["status"] == "ok"}
    total = len(read_chunks(testbed_chunks))
    assert 25 <= len(finished) < total

    rerun = subprocess.run(command, capture_output=True, text=True, check=True)
    summary = json.loads(out.with_name("killed.summary.json").read_text())
    assert summary["run"]["cached"] == len(finished)
    assert summary["run"]["requests"] == total - len(finished), rerun.stdout
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == total
    assert len({(r["doc_id"], r["chunk_index"]) for r in rows}) == total
    assert len({r["key"] for r in cache_lines(cache)}) == len(cache_lines(cache)) == total  # none asked twice

    fresh = tmp_path / "fresh" / "killed.parquet"
    synthesize(testbed_chunks, fresh)
    assert pq.read_table(out).equals(pq.read_table(fresh))


# --- dry run --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def textbook_chunks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chunks of the first 12 documents of the shared textbook corpus."""
    documents = []
    for document in read_documents([SHARED / "corpus" / "math_textbooks.jsonl"]):
        documents.append(document)
        if len(documents) == 12:
            break
    chunks = [chunk for document in documents for chunk in chunk_document(document.doc_id, document.text)]
    path = tmp_path_factory.mktemp("textbooks") / "chunks.parquet"
    write_chunks(chunks, path)
    return path


def test_dry_run_projects_tokens_and_cost_without_sending(
    textbook_chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = REPO / "configs" / "teachers" / "openai-gpt-4o-mini.yaml"
    out = tmp_path / "gpt.parquet"
    chunks = read_chunks(textbook_chunks)
    argv = ["synthesize", "--chunks", str(textbook_chunks), "--teacher", str(teacher), "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, "--dry-run", "--sample", "100000", "--set", "count_tokens_with=chars"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists() and not out.with_name("gpt.cache").exists()

    # With every chunk in the sample the projection is the exact count of the character estimate.
    from latent_thoughts.prompts import LatentThoughtPrompt

    counter = make_counter("chars")
    expected_in = sum(
        counter.count_messages(LatentThoughtPrompt().messages(c.prefix, c.text)) for c in chunks
    )
    # each answer 2.3 x its text's tokens, bounded by the teacher's max_new_tokens (2048)
    expected_out = sum(min(round(counter.count(c.text) * 2.3), 2048) for c in chunks)
    assert f"projected input tokens:  {expected_in:>14,}" in printed
    assert f"projected output tokens: {expected_out:>14,}" in printed
    online = (expected_in * 0.15 + expected_out * 0.60) / 1e6
    assert f"projected cost online:   {online:>14,.2f} USD" in printed
    assert f"projected cost batch:    {online / 2:>14,.2f} USD" in printed


# --- errors: isolated ones are recorded, an outage stops the run ---------------------------------------


def test_a_request_that_raises_is_recorded_alone_and_the_rest_answered(
    testbed_chunks: Path, textbook_chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The oracle cannot read a textbook chunk and raises for it: only that request may fail.
    foreign = read_chunks(textbook_chunks)[0]
    mixed = [*read_chunks(testbed_chunks)[:10], foreign]
    chunks = tmp_path / "mixed.parquet"
    write_chunks(mixed, chunks)
    out = tmp_path / "mixed-thoughts.parquet"
    summary = synthesize(chunks, out, "--set", "batch_size=4")
    assert summary["run"]["requests"] == 11 and summary["run"]["succeeded"] == 10
    failures = pq.read_table(out.with_name("mixed-thoughts.failures.parquet")).to_pylist()
    assert [(f["doc_id"], f["chunk_index"]) for f in failures] == [(foreign.doc_id, foreign.chunk_index)]
    assert failures[0]["reason"].startswith("error: LatentThoughtsError: ")
    assert pq.read_table(out).num_rows == 10

    capsys.readouterr()
    main(["thoughts", "--chunks", str(chunks), "--thoughts", str(out), "--doc", foreign.doc_id])
    assert "✗ no thought: error: LatentThoughtsError" in capsys.readouterr().out


def test_an_unreachable_teacher_stops_the_run_without_recording_failures(
    testbed_chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    teacher = tmp_path / "down.yaml"
    teacher.write_text(
        f"kind: http\nhttp: {{base_url: 'http://127.0.0.1:{port}/v1', model: m, max_attempts: 1}}\n"
        "batch_size: 2\nmax_consecutive_errors: 4\n"
    )
    out = tmp_path / "down.parquet"
    argv = ["synthesize", "--chunks", str(testbed_chunks), "--teacher", str(teacher), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "4 requests in a row failed" in err and "cannot connect" in err
    assert cache_lines(tmp_path / "down.cache") == [] and not out.exists()


def test_a_cache_line_cut_short_with_a_newline_is_redone_by_the_rerun(
    testbed_chunks: Path, tmp_path: Path
) -> None:
    out = tmp_path / "oracle.parquet"
    first = synthesize(testbed_chunks, out)
    cache_file = out.with_name("oracle.cache") / "all.jsonl"
    lines = cache_file.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3][:150] + b"\n"  # key and status intact, the rest lost
    cache_file.write_bytes(b"".join(lines))
    rerun = synthesize(testbed_chunks, out)
    assert rerun["output"]["missing"] == 0 and rerun["run"]["requests"] == 1
    assert rerun["output"]["rows"] == first["output"]["rows"]


# --- issue 22: malformed Batch API lines and impossible token counts ----------------------------------


class _FakeBatchClient:
    """The few ``openai.OpenAI`` calls of the Batch API path, answering from a prepared output file."""

    def __init__(self, output: str) -> None:
        from types import SimpleNamespace

        self.output = output
        batch = SimpleNamespace(
            id="batch_1", status="completed", input_file_id="file_in", output_file_id="file_out",
            error_file_id=None, errors=None,
        )  # fmt: skip
        self.files = SimpleNamespace(
            create=lambda **_: SimpleNamespace(id="file_in"),
            content=lambda file_id: SimpleNamespace(text=self.output),
        )
        self.batches = SimpleNamespace(
            list=lambda **_: [], create=lambda **_: batch, retrieve=lambda batch_id: batch
        )


def _batch_line(key: str, content: object = "a thought", **changes: object) -> str:
    body: dict = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    body.update(changes)
    return json.dumps({"custom_id": key, "response": {"status_code": 200, "body": body}, "error": None})


def test_a_malformed_batch_line_fails_alone_and_the_good_answers_are_cached(tmp_path: Path) -> None:
    from latent_thoughts.synthesis.batch import synthesize_batch
    from latent_thoughts.synthesis.pipeline import RunStats, Sampling, WorkItem

    items = [WorkItem(f"d{i}", 0, f"key{i}", "", "text", None) for i in range(6)]
    lines = [
        _batch_line("key0"),
        _batch_line("key1", content=123),
        _batch_line("key2", choices="abc"),
        _batch_line("key3", usage={"prompt_tokens": "many", "completion_tokens": 1}),
        _batch_line("key4", usage={"prompt_tokens": 1, "completion_tokens": 1e300}),
        _batch_line("key5"),
    ]
    stats = RunStats()
    with ResultCache(tmp_path / "cache", "all") as cache:
        done = synthesize_batch(
            items, cache, stats, client=_FakeBatchClient("\n".join(lines) + "\n"), model="m",
            teacher="t", sampling=Sampling(), state_path=tmp_path / "all.batches.json",
            poll_interval_s=0.01, max_requests_per_batch=100, refusal_patterns=(), progress=False,
        )  # fmt: skip
        assert done
        got = {key: cache.get(key) for key in (item.key for item in items)}
    assert {key: r.status for key, r in got.items() if r} == {
        "key0": "ok", "key1": "failed", "key2": "failed", "key3": "failed", "key4": "failed", "key5": "ok"
    }  # fmt: skip
    assert stats.succeeded == 2 and stats.failed == 4 and stats.completion_tokens == 10
    for key, culprit in (
        ("key1", "content"),
        ("key2", "choices"),
        ("key3", "prompt_tokens"),
        ("key4", "completion"),
    ):
        reason = got[key].reason  # type: ignore[union-attr]
        assert reason.startswith("error: malformed batch result") and culprit in reason, reason


@pytest.mark.parametrize("tokens", [10**300, -5], ids=["huge", "negative"])
def test_a_cache_record_with_impossible_token_counts_is_corrupt(tokens: int) -> None:
    bad = CacheRecord("k", "ok", "t", "teacher", "v1", "stop", completion_tokens=tokens)
    with pytest.raises(ValueError, match="completion_tokens"):
        CacheRecord.from_json(bad.to_json())
