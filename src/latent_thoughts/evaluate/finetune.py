"""Fine-tune-then-evaluate (METHOD section 7): a copy of a model is fine-tuned on a task's training
problems with the loss on the answer only, then evaluated zero-shot in the same prompt format.

Few-shot scores of small models are noisy; the reference recommends this protocol instead. The
training data:

- ``gsm8k``: ``gsm8k_train.jsonl`` (7,473 problems); evaluated on ``gsm8k_test.jsonl``;
- ``math``: a MATH train split (``math_train.jsonl`` in the data folder, or ``--train-file``) when
  there is one, evaluated on the MATH test set. The shared data folder and the cache fetched from the
  Hub (:mod:`latent_thoughts.evaluate.benchmark_data`) have none: then the model is
  trained on the 4,500 MATH test problems that are not in MATH-500 (the split PRM800K trains on) and
  evaluated on MATH-500, which is disjoint from them by construction (:func:`finetune_split` checks).

A training example is the zero-shot prompt of :mod:`latent_thoughts.evaluate.prompting` and a
completion (:func:`example_pieces`); only the completion's tokens (and EOS) carry loss:

- raw mode: ``Question: <q>\\nAnswer:`` | `` <solution> The final answer is 72.`` EOS;
- latent mode: ``Question: <q>\\n SOL PRIOR`` | ``<solution> EOL Answer: The final answer is 72.`` EOS:
  the worked solution is the thought, so the model learns to think until EOL and then answer, which
  is how latent-mode evaluation runs (thought until EOL, then ``Answer:`` appended).

GSM8K solutions lose their ``<<48/2=24>>`` calculator notes and ``#### N`` line; MATH solutions are
kept as written (with ``\\boxed{}``). Training is ``transformers.Trainer`` on right-padded batches
(prompt and padding labelled -100), deterministic given the seed on a CPU.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latent_thoughts.atomic import write_text
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.prompting import (
    PromptMode,
    answer_header,
    few_shot_prompt,
    prompt_token_ids,
    style_of,
)
from latent_thoughts.evaluate.tasks import DEFAULT_FILES, read_jsonl_rows, read_task
from latent_thoughts.format import LATENT_TOKENS, SpecialIds

logger = logging.getLogger(__name__)

TRAIN_FILES = {"gsm8k": "gsm8k_train.jsonl", "math": "math_train.jsonl"}
"""A task's training split in a data folder."""

NO_MATH_TRAIN_NOTE = (
    "no MATH train split ({train}); training on the {n:,} MATH test problems outside MATH-500 "
    "(the PRM800K split) and evaluating on MATH-500, which is disjoint from them"
)

_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class SolvedProblem:
    """A training problem: the question, its worked solution (cleaned) and its short final answer."""

    question: str
    solution: str
    answer: str


@dataclass
class FinetuneSplit:
    """What to train on and what to evaluate: training problems, the evaluated task and its file, and a
    note saying which substitute split was used (None when the task has a real train split)."""

    train: list[SolvedProblem]
    eval_task: str
    eval_path: Path
    note: str | None = None


@dataclass
class FinetuneSettings:
    """Optimisation of the fine-tune: ``epochs`` passes (or ``steps`` optimizer steps when set)."""

    epochs: float = 1.0
    steps: int | None = None
    lr: float = 2e-5
    batch_size: int = 8
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_length: int = 1024
    seed: int = 0
    precision: str = "auto"
    progress: bool = True


def gsm8k_solution(answer: str) -> str:
    """A GSM8K solution without its calculator notes and final ``#### N`` line, on one line."""
    steps = answer.rsplit("####", 1)[0]
    return " ".join(line.strip() for line in _CALCULATOR.sub("", steps).splitlines() if line.strip())


def read_solved(task: str, path: str | Path) -> list[SolvedProblem]:
    """Training problems of ``task`` (``gsm8k`` or ``math``) from a JSONL file; bad rows are one-line errors."""

    def solved(row: dict[str, Any], number: int) -> SolvedProblem:
        if task == "gsm8k":
            gold = str(row["answer"]).rsplit("####", 1)[-1].strip()
            return SolvedProblem(str(row["question"]), gsm8k_solution(row["answer"]), gold)
        return SolvedProblem(str(row["problem"]), str(row["solution"]).strip(), str(row["answer"]))

    return read_jsonl_rows(
        path,
        solved,
        missing=f"{task} training file not found: {{path}} (set --data-dir or --train-file)",
        what=f"a {task} training problem",
    )


def finetune_split(
    task: str,
    data_dir: str | Path,
    *,
    train_file: str | Path | None = None,
    eval_file: str | Path | None = None,
    files: Callable[[str], Path] | None = None,
) -> FinetuneSplit:
    """The training problems and the evaluated task of ``task`` (see module notes).

    ``files(name)`` gives the path of a data folder's file (default: ``data_dir / name``); the
    evaluation verbs pass one that fetches a file missing from the cache folder
    (:func:`~latent_thoughts.evaluate.benchmark_data.benchmark_file`), asked only for the files
    this split reads."""
    if task not in TRAIN_FILES:
        raise LatentThoughtsError(f"--task: unknown task {task!r}; choose gsm8k or math")
    data_dir = Path(data_dir)
    file_of = files or (lambda name: data_dir / name)
    train_path = Path(train_file) if train_file else file_of(TRAIN_FILES[task])
    if task == "gsm8k" or train_path.is_file():
        eval_path = Path(eval_file) if eval_file else file_of(DEFAULT_FILES[task])
        return FinetuneSplit(read_solved(task, train_path), task, eval_path)
    # No MATH train split: the MATH test problems outside MATH-500 train, MATH-500 evaluates.
    eval_path = Path(eval_file) if eval_file else file_of(DEFAULT_FILES["math500"])
    held_out = {problem.question for problem in read_task("math500", eval_path)}
    pool = read_solved("math", file_of(DEFAULT_FILES["math"]))
    train = [problem for problem in pool if problem.question not in held_out]
    if not train:
        raise LatentThoughtsError(f"{data_dir}: no MATH problem outside {eval_path.name} to train on")
    note = NO_MATH_TRAIN_NOTE.format(train=train_path, n=len(train))
    return FinetuneSplit(train, "math500", eval_path, note)


def select_training(problems: Sequence[SolvedProblem], limit: int | None, seed: int) -> list[SolvedProblem]:
    """``limit`` training problems drawn with ``seed`` (all of them, shuffled, when ``limit`` is None)."""
    if limit is not None and limit <= 0:
        raise LatentThoughtsError(f"--limit-train must be a positive number of problems, got {limit}")
    chosen = random.Random(seed).sample(list(problems), len(problems))
    return chosen[:limit] if limit is not None else chosen


def example_pieces(task: str, problem: SolvedProblem, mode: PromptMode) -> tuple[list[str], list[str]]:
    """``(prompt pieces, completion pieces)`` of one training example (see module notes)."""
    style = style_of(task)
    prompt = few_shot_prompt(task, problem.question, mode, shots=0)
    final = style.final(problem.answer)
    if mode == "raw":
        return prompt, [f" {problem.solution} {final}"]
    return prompt, [problem.solution, LATENT_TOKENS.eol, f"{answer_header(task)} {final}"]


def training_example(
    tokenizer: Any, task: str, problem: SolvedProblem, mode: PromptMode
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: the prompt labelled -100, the completion and EOS labelled by themselves."""
    prompt, completion = example_pieces(task, problem, mode)
    prompt_ids = prompt_token_ids(prompt, tokenizer)
    completion_ids = prompt_token_ids(completion, tokenizer, add_bos=False)
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    return [*prompt_ids, *completion_ids], [-100] * len(prompt_ids) + completion_ids


class _Examples(torch.utils.data.Dataset):
    """Tokenized examples, each a dict of ``input_ids`` and ``labels`` (lists of ints)."""

    def __init__(self, rows: list[tuple[list[int], list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        ids, labels = self.rows[index]
        return {"input_ids": ids, "labels": labels}


def pad_batch(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padding gets ``pad_id``, attention 0 and label -100."""
    width = max(len(row["input_ids"]) for row in rows)
    ids, labels, mask = [], [], []
    for row in rows:
        missing = width - len(row["input_ids"])
        ids.append(row["input_ids"] + [pad_id] * missing)
        labels.append(row["labels"] + [-100] * missing)
        mask.append([1] * len(row["input_ids"]) + [0] * missing)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def finetune(
    model_dir: str | Path,
    task: str,
    problems: Sequence[SolvedProblem],
    mode: PromptMode,
    out_dir: str | Path,
    settings: FinetuneSettings,
) -> dict[str, Any]:
    """Fine-tune a copy of the model in ``model_dir`` on ``problems``; save it to ``out_dir/model``.

    The original folder is not touched. Examples longer than ``settings.max_length`` tokens are left
    out (and counted). Returns the run's metrics (examples, skipped, steps, loss, runtime), also
    written to ``out_dir/finetune.json``.
    """
    from transformers import Trainer, TrainingArguments

    from latent_thoughts.modeling import load_causal_lm
    from latent_thoughts.tokenizer import load_tokenizer
    from latent_thoughts.train.trainer import resolve_precision

    tokenizer = load_tokenizer(model_dir)
    if mode == "latent":
        SpecialIds.from_tokenizer(tokenizer)  # a one-line error when the latent tokens are missing
    rows = [training_example(tokenizer, task, problem, mode) for problem in problems]
    kept = [row for row in rows if len(row[0]) <= settings.max_length]
    if not kept:
        raise LatentThoughtsError(f"no training example fits in --max-length {settings.max_length} tokens")
    model = load_causal_lm(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = Path(out_dir)
    steps = settings.steps or max(1, math.ceil(len(kept) / settings.batch_size * settings.epochs))
    precision = resolve_precision(settings.precision)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine",
        warmup_steps=round(settings.warmup_ratio * steps),
        weight_decay=settings.weight_decay,
        optim="adamw_torch",
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        seed=settings.seed,
        data_seed=settings.seed,
        full_determinism=not torch.cuda.is_available(),
        save_strategy="no",
        logging_steps=max(1, steps // 20),
        report_to=[],
        disable_tqdm=not settings.progress,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Examples(kept),
        data_collator=lambda batch: pad_batch(batch, pad_id),
    )
    output = trainer.train()
    model.config.use_cache = True
    model_out = out / "model"
    trainer.save_model(str(model_out))
    tokenizer.save_pretrained(str(model_out))
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    metrics = {
        "task": task,
        "mode": mode,
        "base_model": str(model_dir),
        "examples": len(kept),
        "skipped_too_long": len(rows) - len(kept),
        "steps": steps,
        "epochs": steps * settings.batch_size / len(kept),
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "precision": precision,
        "first_loss": losses[0] if losses else None,
        "train_loss": output.training_loss,
        "last_loss": losses[-1] if losses else None,
        "runtime_s": round(output.metrics.get("train_runtime", 0.0), 2),
    }
    write_text(out / "finetune.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
