"""lm-eval tasks over the local files: lm-eval renders our raw prompts exactly, and its GSM8K extraction
agrees with ours, on a tiny model's generations and on a table of tricky answers run through lm-eval's
own filters."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from latent_thoughts.cli import main
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.grading import extract_gsm8k
from latent_thoughts.evaluate.lm_eval_export import export_tasks, task_config
from latent_thoughts.evaluate.prompting import few_shot_prompt, prompt_text

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")

TRICKY = [
    "Together 32 + 42 = 74. The final answer is 1,234.",
    "So she pays 5 * 3 = 15 dollars. #### 72",
    "The answer is $18.",
    "We get 3 then 4, so the final answer is 10. Check: 10 - 3 = 7",
    "THE ANSWER IS 12",
    "the answer is -3.5 and not 2",
    "It holds .5 liters, so the answer is .5",
    "the answer is $ 2,000.00.",
    "no number here at all",
    "The final answer is six.",
]


def test_math_tasks_use_the_minerva_exemplars_and_the_final_answer(tmp_path: Path) -> None:
    config = task_config("math500", tmp_path / "m.jsonl")
    assert config["num_fewshot"] == 4 and config["doc_to_text"] == "Problem: {{problem}}\nSolution:"
    assert config["fewshot_config"]["samples"][0]["target"].endswith("The final answer is $[2,5)$.")
    assert config["generation_kwargs"]["until"] == ["Problem:"]
    with pytest.raises(LatentThoughtsError, match="mmlu"):
        task_config("mmlu", tmp_path)


@needs_data
def test_export_writes_one_yaml_per_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-lm-eval", "--out", str(tmp_path), "--data-dir", str(DATA)]) == 0
    names = sorted(path.name for path in tmp_path.glob("*.yaml"))
    assert names == ["lt_gsm8k_cot.yaml", "lt_math.yaml", "lt_math500.yaml"]
    gsm8k = yaml.safe_load((tmp_path / "lt_gsm8k_cot.yaml").read_text())
    assert gsm8k["dataset_kwargs"]["data_files"]["test"] == str((DATA / "gsm8k_test.jsonl").resolve())
    assert "lm_eval --model hf" in capsys.readouterr().out
    argv = ["export-lm-eval", "--out", str(tmp_path), "--tasks", "gsm8k", "--gsm8k-file", "/nowhere/g.jsonl"]
    assert main(argv) == 2
    assert "/nowhere/g.jsonl" in capsys.readouterr().err


def _lm_eval_filters(config: dict) -> dict:  # type: ignore[type-arg]
    """The exported task's filter pipelines, built by lm-eval itself."""
    from lm_eval.filters import build_filter_ensemble

    return {
        item["name"]: build_filter_ensemble(
            item["name"],
            [
                (step["function"], {k: v for k, v in step.items() if k != "function"})
                for step in item["filter"]
            ],
        )
        for item in config["filter_list"]
    }


def _lm_eval_extract(ensemble, texts: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    responses: list = [[text] for text in texts]
    for make in ensemble.filters:
        responses = make().apply(responses, [{}] * len(texts))
    return list(responses)


def _ours(text: str, filter_name: str) -> str:
    extracted = extract_gsm8k(text, strict=filter_name == "strict-match")
    return "[invalid]" if extracted is None else extracted


@pytest.mark.parametrize("filter_name", ["strict-match", "flexible-extract"])
def test_lm_eval_filters_extract_what_we_extract(tmp_path: Path, filter_name: str) -> None:
    ensemble = _lm_eval_filters(task_config("gsm8k", tmp_path / "g.jsonl"))[filter_name]
    theirs = _lm_eval_extract(ensemble, TRICKY)
    assert theirs == [_ours(text, filter_name) for text in TRICKY]
    if filter_name == "strict-match":  # the table is not trivial: answers found and not found
        assert theirs[:4] == ["1,234", "72", "18", "10"] and theirs[-2:] == ["[invalid]", "[invalid]"]


@needs_data
def test_lm_eval_runs_an_exported_task_on_a_tiny_local_model(
    tiny_long_model_dir: Path, tmp_path: Path
) -> None:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    export_tasks({"gsm8k": DATA / "gsm8k_test.jsonl"}, tmp_path / "tasks", max_gen_toks=12)
    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_long_model_dir},dtype=float32",
        tasks=["lt_gsm8k_cot"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        limit=3,
        log_samples=True,
        device="cpu",
        batch_size=1,
    )
    assert results is not None
    samples = results["samples"]["lt_gsm8k_cot"]
    assert sorted({sample["filter"] for sample in samples}) == ["flexible-extract", "strict-match"]
    assert len(samples) == 6
    for sample in samples:
        # lm-eval's prompt is ours, byte for byte (raw mode, 8 exemplars)
        assert sample["arguments"][0][0] == prompt_text(
            few_shot_prompt("gsm8k", sample["doc"]["question"], "raw")
        )
        generation = sample["resps"][0][0]
        assert sample["filtered_resps"][0] == _ours(generation, sample["filter"])
    # lm-eval's accuracy is the share of samples whose extracted answer is the gold one, as its metric
    # settings (case, commas, `$`, a final period and spaces ignored) say, computed here independently
    for filter_name in ("strict-match", "flexible-extract"):
        verdicts = [
            _normal(_ours(sample["resps"][0][0], filter_name))
            == _normal(sample["doc"]["answer"].split("####")[-1].strip())
            for sample in samples
            if sample["filter"] == filter_name
        ]
        assert [bool(s["exact_match"]) for s in samples if s["filter"] == filter_name] == verdicts
        accuracy = results["results"]["lt_gsm8k_cot"][f"exact_match,{filter_name}"]
        assert accuracy == pytest.approx(sum(verdicts) / len(verdicts))


def _normal(answer: str) -> str:
    """An answer as lm-eval's exact_match compares it in the exported tasks."""
    for pattern in task_config("gsm8k", "g.jsonl")["metric_list"][0]["regexes_to_ignore"]:
        answer = re.sub(pattern, "", answer)
    return answer.lower()
