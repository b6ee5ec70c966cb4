"""``em`` over a real corpus (``experiment: corpus``): chunk and split, base model, teacher, warm start, E-step,
M-step, evaluation on GSM8K and held-out likelihood; resumable; and ``em --plan`` for the paper's setup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from latent_thoughts.em.config import load_em_config
from latent_thoughts.em.experiment import experiment_names, get_experiment
from latent_thoughts.em.loop import run_em
from latent_thoughts.em.plan import plan_lines
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.recipes.corpus_em import CorpusEMConfig, SplitRule, split_corpus
from latent_thoughts.report.em_run import summary_table
from latent_thoughts.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_CONFIG = REPO / "configs" / "em" / "textbooks-tiny.yaml"
PAPER_CONFIG = REPO / "configs" / "em" / "paper-tinyllama-finemath.yaml"
TEXTBOOKS = SHARED / "corpus" / "math_textbooks.jsonl"
LLAMA2 = SHARED / "tokenizers" / "llama2"
DATA = SHARED / "data"

SMALLER = [
    "estep.batch_chunks=1",  # one chunk per engine call, as the served E-step below sends them
    "evaluation.limit=2",
    "evaluation.likelihood_k=[1]",
    f"evaluation.data_dir={DATA}",
    "progress=false",
]
"""textbooks-tiny made smaller still for the default test run."""


def test_both_experiments_are_plug_ins_and_an_unknown_one_is_named() -> None:
    assert {"testbed", "corpus"} <= set(experiment_names())
    with pytest.raises(LatentThoughtsError, match="unknown experiment 'nope'; choose one of corpus, testbed"):
        get_experiment("nope")
    with pytest.raises(LatentThoughtsError, match="experiment: expected a name"):
        load_em_config(None, ["experiment=[1]"])


def test_the_split_rule_sends_document_i_by_i_mod_the_modulus() -> None:
    rule = SplitRule()  # the reference: i mod 20, 0 warm start, 13-16 bootstrap, 19 held out
    assert [rule.split_of(i) for i in (0, 13, 16, 19, 20, 33, 5)] == [
        "warm_start", "bootstrap", "bootstrap", "held_out", "warm_start", "bootstrap", None,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="remainder 3 is in both warm_start and bootstrap"):
        SplitRule(modulus=5, warm_start=[3], bootstrap=[3])
    config = CorpusEMConfig.model_validate(
        {"data": {"documents": [str(TEXTBOOKS)], "max_documents": 40}, "teacher": {"base_model": True}}
    )
    splits = split_corpus(config)
    ids = [json.loads(line)["id"] for line in TEXTBOOKS.read_text().splitlines()[:40]]
    assert {chunk.doc_id for chunk in splits["warm_start"]} == {ids[0], ids[20]}
    assert {chunk.doc_id for chunk in splits["bootstrap"]} == {
        ids[i] for i in (13, 14, 15, 16, 33, 34, 35, 36)
    }
    assert [document.doc_id for document in splits["held_out"]] == [ids[19], ids[39]]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    """textbooks-tiny (smaller still), run in this process."""
    out = tmp_path_factory.mktemp("textbooks") / "run"
    config = load_em_config(
        TINY_CONFIG, [*SMALLER, f"out={out}", "baselines=[raw_token_match,raw_flop_match,wrap]"]
    )
    summary = run_em(config, say=lambda line: None)
    return config, summary, out


def test_textbooks_tiny_runs_every_stage_on_the_bundled_corpus(
    tiny_run: tuple[Any, dict[str, Any], Path],
) -> None:
    _, summary, out = tiny_run
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["stages"]
    assert list(stages) == [
        "data", "base", "teacher", "warm_start", "eval_0", "estep_1", "mstep_1", "eval_1",
        "baseline_raw_token_match", "eval_raw_token_match", "baseline_raw_flop_match", "eval_raw_flop_match",
        "rephrase_wrap", "baseline_wrap", "eval_wrap",
    ]  # fmt: skip
    assert all(record["status"] == "done" for record in stages.values())
    # the base model carries the four latent tokens, and every training run starts from it
    tokenizer = load_tokenizer(out / "data" / "base_model")
    assert "<|START_OF_LATENT|>" in tokenizer.get_vocab()
    assert stages["warm_start"]["inputs"]["model"] == str(out / "data" / "base_model")
    # the teacher wrote a thought for every warm-start chunk; the M-step trained on the E-step's samples
    thoughts = pq.read_table(out / "data" / "warm_start" / "thoughts.parquet")
    assert thoughts.num_rows == stages["data"]["metrics"]["warm_start_chunks"]
    samples = pq.read_table(out / "iter_1" / "samples.parquet")
    assert samples.num_rows == stages["data"]["metrics"]["bootstrap_chunks"]
    assert stages["mstep_1"]["inputs"]["data"][0]["thoughts"] == str(out / "iter_1" / "samples.parquet")
    # each iteration's row: the E-step's figures, GSM8K and the held-out likelihood
    zero, one = summary["iterations"]
    assert zero["gsm8k_problems"] == one["gsm8k_problems"] == 2
    for row in (zero, one):
        assert 0.0 <= row["gsm8k_accuracy"] <= 1.0
        assert row["nll_per_token"] > 0 and row["elbo_1_per_token"] > 0
    assert one["k"] == 2 and one["mean_bound"] < 0
    # lineage: the code, library versions and device of every stage
    for key in ("code_version", "torch", "transformers", "device"):
        assert stages["eval_1"][key]
        assert manifest["invocations"][-1][key]


def test_the_raw_baselines_match_the_first_m_step_in_tokens_and_in_flops(
    tiny_run: tuple[Any, dict[str, Any], Path],
) -> None:
    config, summary, out = tiny_run
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    mstep = stages["mstep_1"]["metrics"]["tokens"]
    token_match = stages["baseline_raw_token_match"]["metrics"]["tokens"]
    flop_match = stages["baseline_raw_flop_match"]["metrics"]["tokens"]
    window = config.training.format.seq_len * config.training.optim.global_batch  # budgets are whole steps
    assert mstep <= token_match < mstep + window
    assert flop_match > token_match  # the E-step's compute, in training tokens, on top
    # raw data of the bootstrap split, from the base model, evaluated with the latent tokens banned
    raw = stages["baseline_raw_token_match"]["inputs"]
    assert raw["model"] == str(out / "data" / "base_model")
    assert (out / "baselines" / "raw_token_match" / "eval" / "gsm8k_raw.json").is_file()
    assert set(summary["baselines"]) == {"raw_token_match", "raw_flop_match", "wrap"}
    # WRAP: the teacher's rephrasings of the documents (the rephrased text only), at the M-step's tokens
    wrap = stages["baseline_wrap"]["metrics"]
    assert [source["name"].split(":")[0] for source in wrap["sources"]] == ["rephrased"]
    assert mstep <= wrap["tokens"] < mstep + window
    rephrased = pq.read_table(out / "baselines" / "wrap" / "rephrased.parquet")
    assert rephrased.num_rows == stages["data"]["metrics"]["bootstrap_documents"]
    assert summary["baselines"]["raw_flop_match"]["train_tokens"] == flop_match
    assert "| raw_flop_match |" in "\n".join(summary_table(config, summary))


def test_fine_tune_then_evaluate_is_an_evaluation_of_every_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [*SMALLER, f"out={out}", "iterations=0", "evaluation.tasks=[finetune-gsm8k]",
                 "evaluation.finetune.train_limit=4", "evaluation.finetune.steps=2"]  # fmt: skip
    summary = run_em(load_em_config(TINY_CONFIG, overrides), say=lambda _: None)
    folder = out / "iter_0" / "eval" / "finetune-gsm8k"
    aggregate = json.loads((folder / "eval" / "gsm8k_latent.json").read_text())
    assert (aggregate["shots"], aggregate["n"], aggregate["base_model"]) == (
        0,
        2,
        str(out / "iter_0" / "train" / "model"),
    )
    assert summary["iterations"][0]["finetune-gsm8k_accuracy"] == aggregate["accuracy"]
    tuned = json.loads((out / "iter_0" / "eval.json").read_text())["finetune-gsm8k"]["finetune"]
    assert tuned["examples"] == 4 and tuned["steps"] == 2
    # the copy was fine-tuned away from the model it started from
    from safetensors.torch import load_file

    before, after = (
        load_file(out / "iter_0" / "train" / "model" / "model.safetensors"),
        load_file(folder / "model" / "model.safetensors"),
    )
    assert any(not (before[name] == after[name]).all() for name in before)


def test_a_run_may_not_start_from_its_own_folder(tiny_run: tuple[Any, dict[str, Any], Path]) -> None:
    _, _, out = tiny_run
    for target in (out, out / "inside"):
        config = load_em_config(TINY_CONFIG, [*SMALLER, f"out={target}", f"warm_start_from={out}"])
        with pytest.raises(LatentThoughtsError, match="is \\(or lies inside\\) warm_start_from"):
            run_em(config, say=lambda line: None)
    assert not (out / "inside").exists()


def test_a_rerun_of_a_finished_corpus_run_redoes_nothing(tiny_run: tuple[Any, dict[str, Any], Path]) -> None:
    config, summary, out = tiny_run
    lines: list[str] = []
    again = run_em(config, say=lines.append)
    assert lines == [
        f"== {name}: done, skipped" for name in json.loads((out / "manifest.json").read_text())["stages"]
    ]
    assert again == summary


def em_process(config: Path, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "latent_thoughts", "em", "--config", str(config), *flags],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def test_a_corpus_run_killed_in_its_e_step_resumes_there_and_redoes_nothing_finished(tmp_path: Path) -> None:
    values = yaml.safe_load(TINY_CONFIG.read_text())
    values.update(out=str(tmp_path / "run"), progress=False)
    corpus = tmp_path / "textbooks.jsonl"  # the first 40 textbook documents, cut short: 8 bootstrap documents
    lines = TEXTBOOKS.read_text().splitlines()[:40]
    corpus.write_text(
        "".join(
            json.dumps({**json.loads(line), "text": json.loads(line)["text"][:600]}) + "\n" for line in lines
        )
    )
    values["data"] = {"documents": [str(corpus)], "split": {"modulus": 20}}
    values["estep"]["batch_chunks"] = 1  # a cache write per chunk, so that the kill lands between writes
    values["evaluation"] = {"tasks": ["likelihood"], "likelihood_k": [1], "likelihood_documents": 1}
    config = tmp_path / "em.yaml"
    config.write_text(yaml.safe_dump(values))
    process = em_process(config, tmp_path / "first.log")
    cache = tmp_path / "run" / "iter_1" / "samples.cache"
    deadline = time.monotonic() + 600

    def cached() -> int:
        return sum(path.read_bytes().count(b"\n") for path in cache.glob("*.jsonl")) if cache.is_dir() else 0

    try:
        while cached() < 2:
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    before = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert before["estep_1"]["status"] == "running"
    rerun = em_process(config, tmp_path / "rerun.log")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    log = (tmp_path / "rerun.log").read_text()
    after = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    for name in ("data", "base", "teacher", "warm_start", "eval_0"):
        assert f"== {name}: done, skipped" in log
        assert after[name] == before[name]
    assert "== estep_1: resuming" in log
    estep = after["estep_1"]["metrics"]
    assert estep["from_cache"] >= 2 and estep["from_cache"] + estep["sampled_now"] == estep["chunks"]


@pytest.mark.slow
def test_textbooks_tiny_as_shipped_runs_from_the_command_line(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "latent_thoughts", "em", "--config", str(TINY_CONFIG), "--out", str(tmp_path / "run"),
         "--no-progress", "--set", f"evaluation.data_dir={DATA}"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| iter | train tokens | train loss |" in done.stdout
    assert time.monotonic() - started < 600


def test_em_plan_prints_the_stages_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    done = subprocess.run(
        [sys.executable, "-m", "latent_thoughts", "em", "--config", str(TINY_CONFIG), "--plan", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("data", "base", "teacher", "warm_start", "eval_t", "estep_1", "mstep_1"):
        assert f"| {stage} |" in done.stdout
    assert "nothing is written" in done.stdout
    assert not out.exists()


def test_em_plan_times_the_stages_on_the_devices_named() -> None:
    from latent_thoughts.em.plan import DEVICE_FLOPS, parse_devices

    config = load_em_config(TINY_CONFIG)
    assert parse_devices([]) == DEVICE_FLOPS
    assert parse_devices(["a100=5.5e13", "h200"]) == {"a100": 5.5e13, "h200": DEVICE_FLOPS["h200"]}
    total = next(line for line in plan_lines(config, {"slow": 1e6}) if line.startswith("total compute"))
    flops = float(total.split()[2])
    assert f"slow {flops / 1e6 / 3600:.3g} h" in total or f"slow {flops / 1e6 / 86400:,.3g} days" in total
    for bad in ("a100=fast", "a100=-1", "=5e13", "tpu"):
        with pytest.raises(LatentThoughtsError, match="--plan-device"):
            parse_devices([bad])


def test_the_paper_config_validates_and_plans_on_the_shared_corpus() -> None:
    config = load_em_config(
        PAPER_CONFIG, [f"data.documents={TEXTBOOKS}", "data.max_documents=200", f"model.tokenizer={LLAMA2}"]
    )
    assert (config.estep.k, config.estep.max_thought_tokens, config.iterations) == (4, 1024, 3)
    assert (config.warm_start.tokens, config.mstep.tokens) == (800_000_000, 13_000_000_000)
    assert config.training.optim.lr == 1e-4 and config.training.optim.global_batch == 192
    assert config.teacher.batch_api and config.data.split.bootstrap == [13, 14, 15, 16]
    lines = "\n".join(plan_lines(config))
    assert "1,100,048,384 parameters" in lines
    assert "tokens counted with" in lines and str(LLAMA2) in lines
    assert "USD (Batch API)" in lines and "projected cost batch" in lines
    assert lines.count("| estep_") == 3 and lines.count("| mstep_") == 3
    assert "13,000,1" in lines  # 13 B tokens, in whole steps of 192 x 2,048


def test_the_testbed_config_plans_too() -> None:
    lines = "\n".join(plan_lines(load_em_config(REPO / "configs" / "em" / "testbed-small.yaml")))
    assert "the testbed oracle" in lines and "| estep_2 |" in lines and "5,832 samples" in lines


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_e_step_on_servers_the_run_starts_draws_what_the_in_process_one_draws(
    tiny_run: tuple[Any, dict[str, Any], Path], tmp_path: Path
) -> None:
    """estep_engine.kind http: `latent-thoughts serve` of the model of t-1, started for the E-step and
    stopped after it; the samples are the in-process E-step's, thought for thought."""
    _, _, local = tiny_run
    out = tmp_path / "served"
    served = load_em_config(
        TINY_CONFIG,
        [*SMALLER, f"out={out}", f"warm_start_from={local}", "estep_engine.kind=http",
         f"estep_engine.ports=[{free_port()}]", "estep_engine.http={concurrency: 1}"],
    )  # fmt: skip
    run_em(served, say=lambda line: None)
    here = pq.read_table(local / "iter_1" / "samples.parquet")
    there = pq.read_table(out / "iter_1" / "samples.parquet")
    assert there.column("thought").to_pylist() == here.column("thought").to_pylist()
    assert there.column("thought_ids").to_pylist() == here.column("thought_ids").to_pylist()
    assert list((out / "iter_1" / "servers").glob("server-*.log"))


@pytest.mark.parametrize(
    "engine",
    [
        [
            "estep_engine.kind=ray",
            "estep_engine.workers=1",
            "estep_engine.shards=2",
            "estep_engine.ray_cpus=4",
        ],
        ["estep_engine.kind=slurm", "estep_engine.shards=2", "estep_engine.slurm_cluster=local"],
    ],
    ids=["ray", "slurm-local"],
)
def test_an_e_step_spread_by_an_executor_writes_the_in_process_samples(
    tiny_run: tuple[Any, dict[str, Any], Path], tmp_path: Path, engine: list[str]
) -> None:
    _, _, local = tiny_run
    out = tmp_path / "spread"
    run_em(
        load_em_config(TINY_CONFIG, [*SMALLER, f"out={out}", f"warm_start_from={local}", *engine]),
        say=lambda _: None,
    )
    here = pq.read_table(local / "iter_1" / "samples.parquet")
    there = pq.read_table(out / "iter_1" / "samples.parquet")
    for column in ("doc_id", "chunk_index", "thought", "thought_ids", "log_w"):
        assert there.column(column).to_pylist() == here.column(column).to_pylist()


@pytest.mark.parametrize(
    ("command", "message"),
    [("false {model} {port}", "exited with status 1"), ("no-such-server {port}", "No such file")],
)
def test_an_e_step_server_that_cannot_start_is_named(
    tiny_run: tuple[Any, dict[str, Any], Path], tmp_path: Path, command: str, message: str
) -> None:
    _, _, local = tiny_run
    broken = load_em_config(
        TINY_CONFIG,
        [*SMALLER, f"out={tmp_path / 'broken'}", f"warm_start_from={local}", "estep_engine.kind=http",
         f"estep_engine.command={command}"],
    )  # fmt: skip
    with pytest.raises(LatentThoughtsError, match=message):
        run_em(broken, say=lambda line: None)


def test_a_corpus_input_inside_the_runs_data_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data stage clears RUN/data when it starts over: a corpus file kept there is refused at once."""
    from latent_thoughts.cli import main

    kept = tmp_path / "run" / "data" / "corpus.jsonl"
    kept.parent.mkdir(parents=True)
    kept.write_text('{"id": "a", "text": "One. Two."}\n')
    before = kept.read_bytes()
    argv = [
        "em",
        "--config",
        str(TINY_CONFIG),
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"data.documents=[{kept}]",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-thoughts: error:") and "\n" not in err and str(kept) in err
    assert kept.read_bytes() == before
