"""``latent-thoughts finetune-eval``: a tiny model fine-tuned on a few training problems, then evaluated
zero-shot by the evaluate code; MATH without a train split says what it trains on instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_thoughts.cli import main
from latent_thoughts.format import LATENT_TOKENS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")
QUICK = ["--steps", "2", "--train-batch-size", "2", "--lr", "1e-3", "--max-thought-tokens", "6"]
QUICK += ["--max-answer-tokens", "6", "--device", "cpu", "--dtype", "fp32", "--data-dir", str(DATA)]


@pytest.mark.parametrize(("task", "mode"), [("gsm8k", "latent"), ("math", "raw")])
def test_finetune_then_evaluate(
    tiny_long_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str, mode: str
) -> None:
    argv = ["finetune-eval", str(tiny_long_model_dir), "--task", task, "--mode", mode, "--out", str(tmp_path)]
    assert main([*argv, "--limit-train", "4", "--limit", "3", *QUICK]) == 0
    printed = capsys.readouterr().out
    evaluated = "gsm8k" if task == "gsm8k" else "math500"
    assert ("warning: no MATH train split" in printed) == (task == "math")
    assert "fine-tuned on 4" in printed and f"{evaluated} {mode} mode: accuracy" in printed
    assert (tmp_path / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "finetune.json").read_text())["steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "eval" / f"{evaluated}_{mode}.jsonl").open()]
    assert len(records) == 3
    prompt = records[0]["prompt"]  # zero-shot, in the format the model was fine-tuned on
    header = "Question: " if task == "gsm8k" else "Problem: "
    assert prompt.count(header) == 1 and prompt.startswith(header)
    if mode == "latent":
        assert prompt.endswith(LATENT_TOKENS.sol + LATENT_TOKENS.prior)
    summary = json.loads((tmp_path / "eval" / f"{evaluated}_{mode}.json").read_text())
    assert summary["n"] == 3 and summary["shots"] == 0 and summary["base_model"] == str(tiny_long_model_dir)


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--limit-train", "0"], "--limit-train"),
        (["--limit", "-1"], "--limit"),
        (["--train-file", "/nowhere/train.jsonl"], "/nowhere/train.jsonl"),
        (["--lr", "nan"], "--lr"),
        (["--epochs", "inf"], "--epochs"),
        # an evaluation setting is checked before training, not after it
        (["--grading-timeout", "nan"], "--grading-timeout"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_finetune_eval_errors_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], culprit: str
) -> None:
    argv = ["finetune-eval", str(tiny_model_dir), "--task", "gsm8k", "--out", str(tmp_path), *extra]
    assert main([*argv, "--data-dir", str(DATA)]) == 2
    err = capsys.readouterr().err.strip()
    assert culprit in err and "\n" not in err
    assert not (tmp_path / "model").exists()  # nothing was trained


def test_a_served_model_cannot_be_finetuned(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = tmp_path / "served.yaml"
    engine.write_text(
        f"kind: http\nhttp: {{base_url: 'http://127.0.0.1:9/v1'}}\ntokenizer: {tiny_model_dir}\n"
    )
    assert main(["finetune-eval", str(engine), "--task", "gsm8k", "--out", str(tmp_path / "o")]) == 2
    assert "needs a local model" in capsys.readouterr().err
