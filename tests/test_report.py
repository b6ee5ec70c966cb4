"""``latent-thoughts report RUN`` and ``view RUN`` (issue 23): one self-contained HTML page per run.

For every kind of run folder the product writes (an ``em`` run, made here for real at a tiny size;
``bench/bolt.py``'s and ``bench/thoughts_vs_raw.py``'s results; Experiment A's; the demo's;
``evaluate``'s), the report holds the run's numbers, embeds its plots, and fetches nothing when
viewed; ``--markdown`` prints the very tables the bench or the verb printed, from the same code.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from latent_thoughts.cli import main
from tests.test_cli_errors import assert_one_line_error, run_cli
from tests.test_em_loop import TINY

REPO = Path(__file__).resolve().parents[1]
BOLT_RESULTS = REPO / "docs" / "results" / "bolt_cpu.json"
ARMS_RESULTS = REPO / "tests" / "fixtures" / "report" / "thoughts_vs_raw.json"

EMBEDDED_PNG = re.compile(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"')


def assert_self_contained(page: str) -> None:
    """Nothing is fetched when the page is viewed: no external script, style, image or font."""
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"<link\b|@import|url\(\s*['\"]?https?:", page, re.IGNORECASE)
    assert "<style>" in page


def report(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``latent-thoughts report ARGV``; returns what it printed."""
    capsys.readouterr()
    assert main(["report", *argv]) == 0
    return capsys.readouterr().out


# --- bench/bolt.py -----------------------------------------------------------------------------------


@pytest.fixture
def bolt_run(tmp_path: Path) -> Path:
    """A bench/bolt.py folder: its results.json (the main CPU run's, docs/results/bolt_cpu.json)."""
    folder = tmp_path / "bolt"
    folder.mkdir()
    shutil.copy(BOLT_RESULTS, folder / "results.json")
    return folder


def test_a_bolt_report_holds_every_figure_and_its_plots(
    bolt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = report([str(bolt_run)], capsys)
    out = bolt_run / "report.html"
    assert printed.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    for figure in ("0.930", "5,925,142", "0.757 ± 0.030", "1.046", "11%", "g·f"):
        assert figure in page
    # per iteration by K (seeds, mean ± std) and iteration 1 against K (K = 1 and 4)
    assert len(EMBEDDED_PNG.findall(page)) == 2


def test_bolt_markdown_is_what_the_bench_prints(bolt_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bolt.py"), "--report", str(bolt_run)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert report([str(bolt_run), "--markdown"], capsys) == bench.stdout
    assert "| K | seed | iter | accuracy |" in bench.stdout


def test_one_table_by_name_and_an_unknown_name_lists_them(
    bolt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baselines = report([str(BOLT_RESULTS), "--markdown", "--table", "baselines"], capsys)
    assert baselines.splitlines()[:3] == [
        "| baseline (bootstrap split) | training tokens | accuracy | seed |",
        "| --- | --- | --- | --- |",
        "| raw_flop_match | 5,925,142 | 0.000 | 0 |",
    ]
    status, err = run_cli(["report", str(bolt_run), "--table", "nothing"], capsys)
    assert_one_line_error(status, err, "nothing", "iterations, means, baselines, goals, projection")


# --- bench/thoughts_vs_raw.py and Experiment A -------------------------------------------------------


def test_the_arm_table_is_accuracy_mean_std_and_per_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """The columns of docs/testbed.md's status table, from bench/thoughts_vs_raw.py's results."""
    printed = report([str(ARMS_RESULTS), "--table", "arms"], capsys)
    assert printed.splitlines() == [
        "| arm | eval mode | accuracy mean ± std | per seed |",
        "| --- | --- | --- | --- |",
        "| raw | raw | 0.033 ± 0.023 | 0.035, 0.055, 0.010 |",
        "| thoughts | latent | 0.922 ± 0.030 | 0.890, 0.950, 0.925 |",
        "| thoughts | raw | 0.000 ± 0.000 | 0.000, 0.000, 0.000 |",
    ]
    summary = report([str(ARMS_RESULTS), "--table", "summary"], capsys)
    assert "ratio thoughts (latent) / raw: 27.65" in summary
    assert "true arithmetic claims 0.98 ± 0.01" in summary


def test_an_arms_report_shows_accuracy_per_arm_with_a_point_per_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "thoughts_vs_raw"
    folder.mkdir()
    shutil.copy(ARMS_RESULTS, folder / "results.json")
    log = folder / "seed0" / "thoughts" / "metrics.json"  # where the bench's trainer writes its log
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"log_history": [{"loss": 5.8, "step": 1}, {"loss": 1.2, "step": 100}]}))
    report([str(folder)], capsys)
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "0.922 ± 0.030" in page and "0.890, 0.950, 0.925" in page and "27.65" in page
    assert len(EMBEDDED_PNG.findall(page)) == 2  # accuracy per arm; training loss
    assert "seed0/thoughts/metrics.json" in page


def experiment_a(results: dict[str, Any]) -> dict[str, Any]:
    """Experiment A's schema: any arms, labels in ``arm_labels``, a ``reasoning`` mode."""
    payload = copy.deepcopy(results)
    wrap = [
        {
            **copy.deepcopy(row),
            "arm": "wrap_cot",
            "evaluations": {"raw": {"accuracy": 0.1}, "reasoning": {"accuracy": 0.3 + 0.05 * row["seed"]}},
        }
        for row in payload["runs"]
        if row["arm"] == "raw"
    ]
    payload["runs"] += wrap
    payload.update(
        experiment="A",
        seconds=3600,
        arm_labels={
            "raw": "Raw-Repeat",
            "raw_fresh": "Raw-Fresh",
            "wrap_cot": "WRAP-CoT",
            "thoughts": "Latent thoughts",
        },
    )
    return payload


def test_experiment_a_shows_every_arm_present_by_its_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "experiment_a.json"
    path.write_text(json.dumps(experiment_a(json.loads(ARMS_RESULTS.read_text()))))
    rows = report([str(path), "--table", "arms"], capsys).splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| Raw-Repeat", "raw"],
        ["| WRAP-CoT", "raw"],
        ["| WRAP-CoT", "reasoning"],
        ["| Latent thoughts", "latent"],
        ["| Latent thoughts", "raw"],
    ]
    assert "0.350 ± 0.050 | 0.300, 0.350, 0.400" in rows[2]
    printed = report([str(path)], capsys)
    assert printed.strip() == str(tmp_path / "experiment_a.report.html")
    assert "Experiment A" in (tmp_path / "experiment_a.report.html").read_text(encoding="utf-8")


# --- em ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def em_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict[str, Any]]:
    """A real ``em`` run of two iterations at the tests' tiny size (seconds), with its config and summary."""
    from latent_thoughts.em.config import load_em_config
    from latent_thoughts.em.loop import run_em

    folder = tmp_path_factory.mktemp("em")
    config_file = folder / "em.yaml"
    config_file.write_text(yaml.safe_dump({**TINY, "out": str(folder / "run")}))
    config = load_em_config(config_file)
    summary = run_em(config, say=lambda line: None)
    return folder / "run", config, summary


def test_an_em_report_has_the_lineage_the_summary_and_the_plots(
    em_run: tuple[Path, Any, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _, summary = em_run
    report([str(run)], capsys)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    manifest = json.loads((run / "manifest.json").read_text())
    stages = list(manifest["stages"])
    assert stages[:6] == ["data", "warm_start", "eval_0", "estep_1", "mstep_1", "eval_1"]
    positions = [page.index(f"<td>{stage}</td>") for stage in stages]
    assert positions == sorted(positions)  # in the order they ran
    record = manifest["stages"]["estep_1"]
    for figure in (
        record["fingerprint"],
        record["code_version"],
        record["torch"],
        record["transformers"],
        record["device"],
    ):
        assert figure in page
    assert "run/iter_0/train/model" in page  # inputs, relative to the run's parent folder
    assert f"{summary['iterations'][1]['mean_bound']:.2f}" in page
    # per iteration (accuracy, bound, ESS, validity); the three training runs' loss
    assert len(EMBEDDED_PNG.findall(page)) == 2
    assert page.count("iter_") >= 3


def test_em_markdown_is_the_summary_table_em_prints(
    em_run: tuple[Path, Any, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from latent_thoughts.report.em_run import summary_table

    run, config, summary = em_run
    assert report([str(run), "--markdown"], capsys) == "\n".join(summary_table(config, summary)) + "\n"
    lineage = report([str(run / "manifest.json"), "--table", "lineage"], capsys)
    assert "| estep_1 | done |" in lineage


# --- the demo and evaluate ------------------------------------------------------------------------------


def test_a_demo_report_has_its_accuracy_its_evaluations_and_its_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    accuracies = {
        "raw model, raw mode": 0.0,
        "thought model, latent mode": 0.265,
        "thought model, raw mode": 0.0,
    }
    (demo / "results.json").write_text(json.dumps(accuracies))
    record = {"model": "thoughts/model", "mode": "latent", "correct": 53, "total": 200, "accuracy": 0.265}
    (demo / "eval-thoughts-latent.json").write_text(
        json.dumps({**record, "true_claim_share": 0.669, "generations": []})
    )
    (demo / "estep").mkdir()  # the miniature E-step's checker figures
    quality = {"sampled_true_claims": 0.61, "sampled_valid": 0.5, "sampled_result_valid": 0.2}
    quality |= {"selected_true_claims": 0.72, "selected_valid": 0.6, "selected_result_valid": 0.35}
    (demo / "estep" / "quality.json").write_text(json.dumps(quality))
    for arm in ("raw", "thoughts"):
        (demo / arm).mkdir()
        history = [{"loss": 6.0 - step / 100, "step": step} for step in (1, 100, 200)]
        (demo / arm / "metrics.json").write_text(json.dumps({"tokens": 2000, "log_history": history}))
    assert report([str(demo), "--markdown"], capsys).startswith(
        "| model and prompting | accuracy |\n| --- | --- |\n| raw model, raw mode | 0.000 |\n"
        "| thought model, latent mode | 0.265 |"
    )
    report([str(demo)], capsys)
    page = (demo / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "0.265" in page and "53 / 200" in page and "0.669" in page
    assert "| selected | 0.720 | 0.600 | 0.350 |" in report([str(demo), "--table", "estep"], capsys)
    assert len(EMBEDDED_PNG.findall(page)) == 2  # accuracy; training loss of raw/ and thoughts/


def test_evaluate_outputs_a_file_or_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    aggregate = {
        "task": "gsm8k",
        "mode": "latent",
        "samples": 1,
        "n": 50,
        "accuracy": 0.34,
        "stderr": 0.0677,
        "flexible": {"n": 50, "accuracy": 0.4, "stderr": 0.07},
        "timed_out": 0,
    }
    (folder / "gsm8k_latent.json").write_text(json.dumps(aggregate))
    (folder / "gsm8k_latent.jsonl").write_text("{}\n")
    table = report([str(folder), "--table", "benchmarks"], capsys)
    assert "| gsm8k | latent | 1 | 50 | 0.340 ± 0.068 | 0.400 ± 0.070 | 0 |" in table
    testbed = tmp_path / "testbed_raw.json"
    testbed.write_text(json.dumps({"model": "m", "mode": "raw", "correct": 3, "total": 10, "accuracy": 0.3}))
    assert report([str(testbed)], capsys).strip() == str(tmp_path / "testbed_raw.report.html")
    page = (tmp_path / "testbed_raw.report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "3 / 10" in page and len(EMBEDDED_PNG.findall(page)) == 1


# --- mistakes and view ----------------------------------------------------------------------------------


def test_an_unknown_folder_or_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("no results here")
    status, err = run_cli(["report", str(tmp_path)], capsys)
    assert_one_line_error(status, err, str(tmp_path), "not a run folder")
    other = tmp_path / "other.json"
    other.write_text('{"something": "else"}')
    status, err = run_cli(["report", str(other), "--markdown"], capsys)
    assert_one_line_error(status, err, str(other), "not a results file")
    status, err = run_cli(["report", str(tmp_path / "missing")], capsys)
    assert_one_line_error(status, err, "missing")


def test_the_report_never_overwrites_what_it_reads(
    bolt_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (bolt_run / "results.json").read_bytes()
    status, err = run_cli(["report", str(bolt_run), "--out", str(bolt_run / "results.json")], capsys)
    assert_one_line_error(status, err, "is also an input")
    assert (bolt_run / "results.json").read_bytes() == before


def test_view_builds_a_missing_or_stale_report_and_opens_it(
    bolt_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda uri: opened.append(uri) or False)  # no browser here
    out = bolt_run / "report.html"
    assert main(["view", str(bolt_run)]) == 0
    assert out.is_file() and opened == [out.resolve().as_uri()]
    assert str(out) in capsys.readouterr().out  # no browser: the path is printed
    built = out.stat().st_mtime_ns
    assert main(["view", str(bolt_run)]) == 0
    assert out.stat().st_mtime_ns == built  # fresh: not rebuilt
    os.utime(bolt_run / "results.json", ns=(built + 10**9, built + 10**9))
    assert main(["view", str(bolt_run)]) == 0
    assert out.stat().st_mtime_ns != built  # results newer than the report: rebuilt
