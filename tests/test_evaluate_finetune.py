"""Fine-tune-then-evaluate: training splits, examples with the loss on the answer only, and a real
fine-tune of a tiny Llama that lowers its loss, leaves the original alone and repeats with a seed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.finetune import (
    FinetuneSettings,
    SolvedProblem,
    example_pieces,
    finetune,
    finetune_split,
    gsm8k_solution,
    pad_batch,
    select_training,
    training_example,
)
from latent_thoughts.format import LATENT_TOKENS, SpecialIds
from latent_thoughts.modeling import load_causal_lm

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")

PROBLEM = SolvedProblem(
    "Natalia sold 48 clips in April and half as many in May. How many in all?", "48/2 = 24. 48+24 = 72.", "72"
)


def test_gsm8k_solutions_lose_calculator_notes_and_the_final_line() -> None:
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"
    assert gsm8k_solution(answer) == "Natalia sold 48/2 = 24 clips in May. Altogether 48+24 = 72."


def test_a_latent_example_thinks_the_solution_then_answers() -> None:
    prompt, completion = example_pieces("gsm8k", PROBLEM, "latent")
    assert prompt == [f"Question: {PROBLEM.question}\n", LATENT_TOKENS.sol, LATENT_TOKENS.prior]
    assert completion == [PROBLEM.solution, LATENT_TOKENS.eol, "Answer: The final answer is 72."]
    prompt, completion = example_pieces("math", SolvedProblem("Find $x$.", "So $x=\\boxed{2}$.", "2"), "raw")
    assert prompt == ["Problem: Find $x$.\nSolution:"]
    assert completion == [" So $x=\\boxed{2}$. The final answer is $2$."]


@pytest.mark.parametrize("mode", ["raw", "latent"])
def test_only_the_completion_and_eos_carry_loss(tiny_tokenizer, mode) -> None:  # type: ignore[no-untyped-def]
    ids, labels = training_example(tiny_tokenizer, "gsm8k", PROBLEM, mode)
    special = SpecialIds.from_tokenizer(tiny_tokenizer)
    masked = labels.index(next(label for label in labels if label != -100))
    assert labels[:masked] == [-100] * masked and -100 not in labels[masked:]
    assert labels[masked:] == ids[masked:] and ids[-1] == tiny_tokenizer.eos_token_id
    prompt = ids[:masked]
    if mode == "latent":  # the prompt ends in SOL PRIOR; the thought ends at EOL inside the labels
        assert prompt[-2:] == [special.sol, special.prior] and special.eol in labels
    else:
        assert tiny_tokenizer.decode(prompt).endswith("Answer:") and special.eol not in ids
    batch = pad_batch([{"input_ids": ids, "labels": labels}, {"input_ids": ids[:5], "labels": labels[:5]}], 0)
    assert batch["input_ids"].shape == (2, len(ids)) and batch["attention_mask"][1].sum() == 5
    assert (batch["labels"][1, 5:] == -100).all()


@needs_data
def test_math_without_a_train_split_trains_outside_math500_and_evaluates_on_it(tmp_path: Path) -> None:
    split = finetune_split("math", DATA)
    assert split.eval_task == "math500" and split.note is not None and "MATH-500" in split.note
    math500 = {json.loads(line)["problem"] for line in (DATA / "math500_test.jsonl").open()}
    assert len(split.train) == 4500 and not {p.question for p in split.train} & math500
    gsm8k = finetune_split("gsm8k", DATA)
    assert gsm8k.eval_task == "gsm8k" and gsm8k.note is None and len(gsm8k.train) == 7473
    # a data folder with a MATH train split uses it and evaluates on MATH itself
    (tmp_path / "math_train.jsonl").write_text(
        json.dumps({"problem": "1+1?", "solution": "$\\boxed{2}$", "answer": "2"}) + "\n"
    )
    own = finetune_split("math", tmp_path)
    assert (
        own.eval_task == "math"
        and own.note is None
        and own.train == [SolvedProblem("1+1?", "$\\boxed{2}$", "2")]
    )


def test_training_draws_and_bad_input_are_checked(tmp_path: Path) -> None:
    problems = [SolvedProblem(f"q{i}", "s", str(i)) for i in range(10)]
    assert select_training(problems, 4, seed=1) == select_training(problems, 4, seed=1)
    assert select_training(problems, 4, seed=1) != select_training(problems, 4, seed=2)
    with pytest.raises(LatentThoughtsError, match="--limit-train"):
        select_training(problems, 0, seed=0)
    with pytest.raises(LatentThoughtsError, match="nowhere"):
        finetune_split("gsm8k", tmp_path / "nowhere")
    (tmp_path / "gsm8k_train.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(LatentThoughtsError, match=r"gsm8k_train\.jsonl:1"):
        finetune_split("gsm8k", tmp_path)


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_finetuning_a_tiny_llama_lowers_its_loss_and_keeps_the_original(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    problems = [
        SolvedProblem(f"What is {a} + {a}?", f"{a} + {a} = {2 * a}.", str(2 * a)) for a in range(3, 11)
    ]
    before = _digest(tiny_model_dir)
    settings = FinetuneSettings(steps=12, lr=3e-3, batch_size=4, warmup_ratio=0.0, progress=False)
    metrics = finetune(tiny_model_dir, "gsm8k", problems, "latent", tmp_path / "a", settings)
    assert metrics["examples"] == 8 and metrics["steps"] == 12
    assert metrics["last_loss"] < metrics["first_loss"]
    assert _digest(tiny_model_dir) == before  # a copy was trained
    tuned = load_causal_lm(tmp_path / "a" / "model")
    assert (
        tuned.config.use_cache and json.loads((tmp_path / "a" / "finetune.json").read_text())["steps"] == 12
    )
    # the same seed gives the same weights
    finetune(tiny_model_dir, "gsm8k", problems, "latent", tmp_path / "b", settings)
    again = load_causal_lm(tmp_path / "b" / "model")
    for (name, weight), other in zip(tuned.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(weight, other), name
