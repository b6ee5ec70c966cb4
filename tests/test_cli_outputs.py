"""No verb writes over what it reads: the one guard every verb goes through, and the data-loss cases
that once got past the verbs' own checks (issue 22).

Every verb declares what a run reads and writes (``run_paths``); ``latent_thoughts.cli.main`` checks
it before the verb's handler runs. The first test walks ``build_parser()``, so a new verb is covered
without being listed here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import build_parser, main
from latent_thoughts.corpus import chunk_document, write_chunks
from latent_thoughts.em.stage import MODE, SAMPLE_SCHEMA
from latent_thoughts.evaluate import benchmark
from latent_thoughts.generation.outputs import with_metadata
from latent_thoughts.outputs import LOCK_NAME, folder_lock
from latent_thoughts.testbed.world import TestbedConfig, generate_documents, testbed_chunk_config
from tests.test_cli_errors import TRAIN_CONFIG, assert_one_line_error, run_cli

QUICK = ["--max-thought-tokens", "4", "--max-answer-tokens", "4", "--device", "cpu", "--dtype", "fp32"]


def _leaf_parsers(
    parser: argparse.ArgumentParser, name: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command a user can run (``testbed generate``, ...) with its parser."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, child in action.choices.items():
                found += _leaf_parsers(child, f"{name} {verb}".strip())
    if not found and parser.get_default("handler") is not None:
        found.append((name, parser))
    return found


def test_every_verb_declares_what_it_reads_and_writes() -> None:
    leaves = _leaf_parsers(build_parser())
    assert len(leaves) >= 15, [name for name, _ in leaves]
    undeclared = [name for name, parser in leaves if not callable(parser.get_default("run_paths"))]
    assert undeclared == []


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def chunks(tmp_path: Path) -> Path:
    """A chunk file of one testbed document."""
    world = TestbedConfig(bootstrap_documents=1, results_per_document=2)
    rows = [
        chunk
        for document in generate_documents(world, "bootstrap")
        for chunk in chunk_document(document.doc_id, document.text, testbed_chunk_config(world))
    ]
    path = tmp_path / "chunks.parquet"
    write_chunks(rows, path)
    return path


def _fake_model(folder: Path) -> Path:
    """A folder that looks like a saved model (never loaded: the guard refuses first)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"the input model's weights")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. estep --chunks X --out X --------------------------------------------------------------------


def test_estep_refuses_its_chunk_file_as_its_output(
    tiny_model_dir: Path, chunks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = chunks.read_bytes()
    argv = ["estep", str(tiny_model_dir), "--chunks", str(chunks), "--out", str(chunks)]
    status, err = run_cli(
        [*argv, "--k", "2", "--max-thought-tokens", "4", "--device", "cpu", "--no-progress"], capsys
    )
    assert_one_line_error(status, err, "is also an input", str(chunks))
    assert chunks.read_bytes() == before


# --- 2. merge --out SHARD SHARD OTHER on E-step shards ----------------------------------------------


def _sample_shard(path: Path, index: int, count: int) -> Path:
    """An (empty) E-step shard output: what ``merge`` dispatches on is its metadata."""
    metadata = {"mode": MODE, "shard": f"{index}/{count}", "model": "m", "policy": "importance"}
    pq.write_table(with_metadata(pa.Table.from_pylist([], schema=SAMPLE_SCHEMA), metadata), path)
    return path


def test_merge_of_estep_shards_refuses_a_shard_as_its_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _sample_shard(tmp_path / "s.shard-0-of-2.parquet", 0, 2)
    second = _sample_shard(tmp_path / "s.shard-1-of-2.parquet", 1, 2)
    before = first.read_bytes()
    status, err = run_cli(["merge", "--out", str(first), str(first), str(second)], capsys)
    assert_one_line_error(status, err, "is also an input", str(first))
    assert first.read_bytes() == before


# --- 3. an output over (or a replaced folder around) an input model --------------------------------


def test_train_refuses_an_output_dir_holding_its_input_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fake_model(tmp_path / "run" / "model")
    before = _snapshot(model)
    argv = [
        "train",
        "--config",
        str(TRAIN_CONFIG),
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"model.path={model}",
    ]
    status, err = run_cli(argv, capsys)
    assert_one_line_error(status, err, "--out", str(model))
    assert _snapshot(model) == before


def test_train_refuses_an_input_model_inside_its_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fake_model(tmp_path / "run" / "checkpoints" / "checkpoint-12")
    argv = [
        "train",
        "--config",
        str(TRAIN_CONFIG),
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"model.path={model}",
        "--resume",  # old checkpoints are rotated away: the input model would go with them
    ]
    status, err = run_cli(argv, capsys)
    assert_one_line_error(status, err, "--out", str(model))


def test_finetune_eval_refuses_an_out_folder_holding_its_input_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _fake_model(tmp_path / "run" / "model")
    before = _snapshot(model)
    argv = ["finetune-eval", str(model), "--task", "gsm8k", "--out", str(tmp_path / "run")]
    status, err = run_cli([*argv, "--data-dir", str(tmp_path)], capsys)
    assert_one_line_error(status, err, "--out", str(model))
    assert _snapshot(model) == before


@pytest.mark.parametrize("verb", ["evaluate", "likelihood"])
def test_a_model_named_through_an_engine_file_is_guarded_like_a_model_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    """MODEL as an engine file (kind transformers): the folder it names is an input model folder, so an
    output inside it is refused before anything runs."""
    model = _fake_model(tmp_path / "model")
    engine = tmp_path / "engine.yaml"
    engine.write_text(f"kind: transformers\ntransformers:\n  model: {model}\n")
    before = _snapshot(model)
    if verb == "evaluate":
        argv = [
            "evaluate",
            str(engine),
            "--tasks",
            "gsm8k",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(model / "eval"),
        ]
    else:
        (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "One. Two."}\n')
        argv = [
            "likelihood",
            str(engine),
            "--documents",
            str(tmp_path / "docs.jsonl"),
            "--out",
            str(model / "nll.json"),
        ]
    status, err = run_cli(argv, capsys)
    assert_one_line_error(status, err, "--out", str(model))
    assert _snapshot(model) == before


# --- 4. evaluate: an earlier run's log survives a failed or concurrent rerun ------------------------


@pytest.fixture
def earlier_run(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A GSM8K file of two problems and an --out folder holding an earlier run's log and aggregate."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": f"What is {n} + 1?", "answer": f"{n} + 1 = {n + 1}\n#### {n + 1}"} for n in (2, 5)]
    (data / "gsm8k_test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "eval"
    out.mkdir()
    (out / "gsm8k_latent.jsonl").write_text('{"problem_id": "gsm8k-0", "correct": true}\n' * 2)
    (out / "gsm8k_latent.json").write_text('{"task": "gsm8k", "n": 2, "accuracy": 1.0}\n')
    return data, out, _snapshot(out)


def _evaluate(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["evaluate", str(model), "--tasks", "gsm8k", "--shots", "0", "--data-dir", str(data)]
    return [*argv, "--out", str(out), *QUICK, *extra]


def test_an_evaluate_rerun_cut_short_leaves_the_earlier_log_and_aggregate(
    tiny_model_dir: Path,
    earlier_run: tuple[Path, Path, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, out, before = earlier_run
    real = benchmark.evaluate_benchmark

    def interrupted(*args: object, on_record: object = None, **kwargs: object) -> object:
        def record_then_stop(record: benchmark.ProblemRecord) -> None:
            assert callable(on_record)
            on_record(record)
            raise KeyboardInterrupt  # a kill (Ctrl-C, SIGKILL) midway through the task

        return real(*args, on_record=record_then_stop, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(benchmark, "evaluate_benchmark", interrupted)
    status, err = run_cli(_evaluate(tiny_model_dir, data, out), capsys)
    assert status == 130, err
    assert {k: v for k, v in _snapshot(out).items() if k != LOCK_NAME} == before


def test_an_evaluate_rerun_failing_on_a_bad_argument_leaves_the_earlier_log(
    tiny_model_dir: Path, earlier_run: tuple[Path, Path, dict[str, bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out, before = earlier_run
    try:  # --batch-size 0 failed once the log was open (a traceback then; a one-line error is fine too)
        status: int | None = main(_evaluate(tiny_model_dir, data, out, "--batch-size", "0"))
    except ValueError:
        status = None
    assert status != 0
    assert {k: v for k, v in _snapshot(out).items() if k != LOCK_NAME} == before


def test_two_evaluates_into_one_out_folder_do_not_interleave(
    tiny_model_dir: Path, earlier_run: tuple[Path, Path, dict[str, bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    data, out, before = earlier_run
    with folder_lock(out, "evaluate"):  # another evaluate is writing there
        status, err = run_cli(_evaluate(tiny_model_dir, data, out), capsys)
    assert_one_line_error(status, err, str(out), "another evaluate")
    assert {k: v for k, v in _snapshot(out).items() if k != LOCK_NAME} == before
    assert main(_evaluate(tiny_model_dir, data, out)) == 0  # once it is done, a run goes ahead
    assert len((out / "gsm8k_latent.jsonl").read_text().splitlines()) == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


# --- 5. decontaminate a/NAME b/NAME --out D ----------------------------------------------------------


def test_decontaminate_refuses_two_files_of_one_name(
    chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "a" / "chunks.parquet", tmp_path / "b" / "chunks.parquet"
    for copy in (first, second):
        copy.parent.mkdir()
        shutil.copy(chunks, copy)
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k_test.jsonl").write_text(json.dumps({"question": "Q?", "answer": "#### 1"}) + "\n")
    out = tmp_path / "clean"
    argv = ["decontaminate", str(first), str(second), "--tasks", "gsm8k", "--data-dir", str(data)]
    status, err = run_cli([*argv, "--out", str(out)], capsys)
    assert_one_line_error(status, err, str(first), str(second))
    assert not (out / "chunks.parquet").exists()


# --- a device, a FIFO or a folder where a file is meant ----------------------------------------------


@pytest.mark.parametrize("target", ["a link to /dev/null", "a FIFO", "a folder"])
@pytest.mark.parametrize("verb", ["chunk", "evaluate", "likelihood"])
def test_an_out_that_is_not_a_regular_file_is_refused(
    verb: str, target: str, chunks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    if target == "a link to /dev/null":
        out.symlink_to(os.devnull)  # never /dev/null itself: a broken guard would replace it
    elif target == "a FIFO":
        os.mkfifo(out)
    else:
        out.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One sentence. Another sentence.\n")
    problems = tmp_path / "eval.jsonl"
    from latent_thoughts.testbed.task import make_eval_problems, write_problems

    write_problems(make_eval_problems(TestbedConfig(eval_problems=1)), problems)
    argv = {
        "chunk": ["chunk", str(corpus), "--out", str(out)],
        "evaluate": ["evaluate", str(tmp_path / "no-model"), "--problems", str(problems), "--out", str(out)],
        "likelihood": [
            "likelihood",
            str(tmp_path / "no-model"),
            "--documents",
            str(corpus),
            "--out",
            str(out),
        ],
    }[verb]
    status, err = run_cli(argv, capsys)
    assert_one_line_error(status, err, str(out), "folder" if target == "a folder" else "not a regular file")
    assert out.is_symlink() or out.exists()
    if target == "a FIFO":
        import stat

        assert stat.S_ISFIFO(out.lstat().st_mode)
