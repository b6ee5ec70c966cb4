"""``latent-thoughts evaluate``: a saved model, a problems file, an accuracy and the generations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_thoughts.cli import main
from latent_thoughts.testbed import TestbedConfig, make_eval_problems
from latent_thoughts.testbed.task import write_problems
from tests.test_server import serve_subprocess


@pytest.mark.parametrize("mode", ["raw", "latent"])
def test_evaluate_prints_accuracy_and_writes_generations(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    problems = tmp_path / "eval.jsonl"
    write_problems(make_eval_problems(TestbedConfig(eval_problems=3)), problems)
    out = tmp_path / "result.json"
    argv = ["evaluate", str(tiny_model_dir), "--problems", str(problems), "--mode", mode, "--out", str(out)]
    assert main(argv) == 0
    assert f"{mode} mode: " in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["total"] == 3 and len(record["generations"]) == 3
    assert 0.0 <= record["accuracy"] <= 1.0


def test_evaluate_names_a_missing_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems = tmp_path / "eval.jsonl"
    write_problems(make_eval_problems(TestbedConfig(eval_problems=1)), problems)
    assert main(["evaluate", str(tmp_path / "nope"), "--problems", str(problems), "--mode", "raw"]) == 2
    assert "nope" in capsys.readouterr().err


def test_evaluate_a_served_model(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = tmp_path / "eval.jsonl"
    write_problems(make_eval_problems(TestbedConfig(eval_problems=3)), problems)
    local, remote = tmp_path / "local.json", tmp_path / "remote.json"
    argv = ["evaluate", str(tiny_model_dir), "--problems", str(problems), "--mode", "latent"]
    assert main([*argv, "--device", "cpu", "--dtype", "fp32", "--out", str(local)]) == 0
    with serve_subprocess(tiny_model_dir, tmp_path) as base_url:
        assert main([*argv, "--base-url", base_url, "--out", str(remote)]) == 0
    assert json.loads(remote.read_text())["generations"] == json.loads(local.read_text())["generations"]
