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
    engine_file = tmp_path / "served.yaml"
    with serve_subprocess(tiny_model_dir, tmp_path) as base_url:
        assert main([*argv, "--base-url", base_url, "--out", str(remote)]) == 0
        # MODEL as an engine file: the same server, named in YAML with the tokenizer's folder
        engine_file.write_text(f"kind: http\nhttp: {{base_url: '{base_url}'}}\ntokenizer: {tiny_model_dir}\n")
        argv[1] = str(engine_file)
        assert main([*argv, "--out", str(tmp_path / "file.json")]) == 0
    expected = json.loads(local.read_text())["generations"]
    assert json.loads(remote.read_text())["generations"] == expected
    assert json.loads((tmp_path / "file.json").read_text())["generations"] == expected


def test_evaluate_a_local_engine_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    problems = tmp_path / "eval.jsonl"
    write_problems(make_eval_problems(TestbedConfig(eval_problems=2)), problems)
    engine_file = tmp_path / "local.yaml"
    engine_file.write_text(
        f"kind: transformers\ntransformers: {{model: {tiny_model_dir}, device: cpu, dtype: fp32}}\n"
    )
    for model, out in ((tiny_model_dir, "folder.json"), (engine_file, "file.json")):
        argv = [
            "evaluate",
            str(model),
            "--problems",
            str(problems),
            "--mode",
            "latent",
            "--out",
            str(tmp_path / out),
        ]
        assert (
            main([*argv, *(["--device", "cpu", "--dtype", "fp32"] if model == tiny_model_dir else [])]) == 0
        )
    folder, file = (json.loads((tmp_path / name).read_text()) for name in ("folder.json", "file.json"))
    assert file["generations"] == folder["generations"] and file["total"] == 2


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUICK = ["--max-thought-tokens", "8", "--max-answer-tokens", "12", "--device", "cpu", "--dtype", "fp32"]


def _benchmark_run(model: Path, out: Path, mode: str, limit: int, extra: list[str]) -> int:
    argv = ["evaluate", str(model), "--tasks", "gsm8k,math", "--mode", mode, "--limit", str(limit)]
    return main([*argv, "--data-dir", str(DATA), "--out", str(out), *QUICK, *extra])


def _check_outputs(out: Path, mode: str, limit: int) -> None:
    for task in ("gsm8k", "math"):
        lines = (out / f"{task}_{mode}.jsonl").read_text().splitlines()
        assert len(lines) == limit
        record = json.loads(lines[0])
        assert {"prompt", "generations", "extracted", "verdicts", "correct"} <= set(record)
        summary = json.loads((out / f"{task}_{mode}.json").read_text())
        assert summary["n"] == limit and 0.0 <= summary["accuracy"] <= 1.0 and "stderr" in summary
    assert "by_subject" in json.loads((out / f"math_{mode}.json").read_text())


@pytest.mark.parametrize("mode", ["raw", "latent"])
def test_evaluate_gsm8k_and_math_writes_the_log_and_the_aggregate(
    tiny_long_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    assert _benchmark_run(tiny_long_model_dir, tmp_path / "eval", mode, 5, ["--shots", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"gsm8k {mode} mode: accuracy" in printed and f"math {mode} mode: accuracy" in printed
    _check_outputs(tmp_path / "eval", mode, 5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raw", "latent"])
def test_evaluate_50_gsm8k_and_50_math_problems(tiny_long_model_dir: Path, tmp_path: Path, mode: str) -> None:
    assert _benchmark_run(tiny_long_model_dir, tmp_path / "eval", mode, 50, []) == 0
    _check_outputs(tmp_path / "eval", mode, 50)


def test_benchmarks_and_the_testbed_together(tiny_long_model_dir: Path, tmp_path: Path) -> None:
    problems = tmp_path / "eval.jsonl"
    write_problems(make_eval_problems(TestbedConfig(eval_problems=2)), problems)
    argv = ["evaluate", str(tiny_long_model_dir), "--tasks", "math500,testbed", "--problems", str(problems)]
    assert (
        main([*argv, "--limit", "2", "--shots", "1", "--data-dir", str(DATA), "--out", str(tmp_path), *QUICK])
        == 0
    )
    assert json.loads((tmp_path / "testbed_latent.json").read_text())["total"] == 2
    assert json.loads((tmp_path / "math500_latent.json").read_text())["n"] == 2


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--tasks", "gsm8k", "--limit", "0"], "--limit"),
        (["--tasks", "gsm8k", "--limit", "-3"], "--limit"),
        (["--tasks", "gsm8k,mmlu"], "mmlu"),
        (["--tasks", "testbed"], "--problems"),
        (["--tasks", "gsm8k", "--gsm8k-file", "/nowhere/gsm8k.jsonl"], "/nowhere/gsm8k.jsonl"),
        (["--tasks", "gsm8k", "--base-url", "http://127.0.0.1:9/v1", "--device", "cpu"], "--device"),
    ],
)
def test_evaluate_errors_are_one_line(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], culprit: str
) -> None:
    assert main(["evaluate", str(tiny_model_dir), "--data-dir", str(DATA), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert culprit in err and "\n" not in err and err.startswith("latent-thoughts: error:")


def test_evaluate_gsm8k_on_a_served_model_matches_the_local_one(
    tiny_long_model_dir: Path, tmp_path: Path
) -> None:
    argv = ["evaluate", str(tiny_long_model_dir), "--tasks", "gsm8k", "--limit", "2", "--shots", "1"]
    argv += ["--data-dir", str(DATA), "--max-thought-tokens", "8", "--max-answer-tokens", "12"]
    assert main([*argv, "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path / "local")]) == 0
    with serve_subprocess(tiny_long_model_dir, tmp_path) as base_url:
        assert main([*argv, "--base-url", base_url, "--out", str(tmp_path / "remote")]) == 0

    def generations(folder: str) -> list[list[str]]:
        lines = (tmp_path / folder / "gsm8k_latent.jsonl").read_text().splitlines()
        return [json.loads(line)["generations"] for line in lines]

    assert generations("remote") == generations("local")


def _bad_file(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


# Each case once ended in a traceback or ran on without a sound; the model folder is never loaded.
BAD_INPUTS = {
    "a JSON array line": lambda t: (
        [
            "--tasks",
            "math",
            "--math-file",
            _bad_file(t, "m.jsonl", b'{"problem": "1+1", "answer": "2"}\n[1, 2]\n'),
        ],
        ["m.jsonl:2", "not an object"],
    ),
    "invalid UTF-8 in --gsm8k-file": lambda t: (
        [
            "--tasks",
            "gsm8k",
            "--gsm8k-file",
            _bad_file(t, "g.jsonl", b'{"question": "\xff", "answer": "#### 1"}\n'),
        ],
        ["g.jsonl:1", "UTF-8"],
    ),
    "invalid UTF-8 in --problems": lambda t: (
        ["--problems", _bad_file(t, "p.jsonl", b'{"id": "1"}\n{"id": "\xfe\xff"}\n')],
        ["p.jsonl:2", "UTF-8"],
    ),
    "--batch-size 0": lambda t: (["--tasks", "gsm8k", "--batch-size", "0"], ["--batch-size", "0"]),
    "--grading-timeout nan": lambda t: (
        ["--tasks", "math", "--grading-timeout", "nan"],
        ["--grading-timeout"],
    ),
    "--shots -1": lambda t: (["--tasks", "gsm8k", "--shots", "-1"], ["--shots", "-1"]),
    "--tasks ,": lambda t: (["--tasks", ","], ["--tasks", "no task"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_evaluate_inputs_are_one_line_errors(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, culprits = BAD_INPUTS[case](tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    assert main(["evaluate", str(model), "--data-dir", str(DATA), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-thoughts: error:") and "\n" not in err, err
    for culprit in culprits:
        assert culprit in err, err
