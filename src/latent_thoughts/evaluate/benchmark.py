"""Few-shot evaluation of a model on GSM8K or MATH through an engine (METHOD section 7).

Input: an :class:`~latent_thoughts.engines.base.Engine`, the model's tokenizer, the problems of one
task (:mod:`latent_thoughts.evaluate.tasks`) and a mode. Output: one :class:`ProblemRecord` per
problem (prompt, generations, extracted answers, verdicts) and an aggregate (:func:`aggregate`).

- raw mode: the few-shot prompt ends with the answer header; the model continues with the four latent
  tokens banned, until EOS, the next exemplar's header or ``max_answer_tokens``;
- latent mode: the prompt ends with ``SOL PRIOR``; the model thinks until EOL (never stopping at EOS;
  the other three latent tokens banned; EOL is appended after ``max_thought_tokens``), then the answer header is appended and the model
  answers as in raw mode. The logged generation is ``thought EOL header answer``; graders cut at EOL.

Greedy decoding (``samples`` 1, ``temperature`` 0) is the default. With ``samples`` k > 1 each problem
gets k samples (k thoughts, each with one answer): the record's verdict is the majority answer's
(maj@k; answers grouped by their extracted text, numbers by value) and ``any_correct`` gives pass@k.
GSM8K is graded strictly (the record also keeps the flexible verdict); MATH with :class:`MathGrader`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from latent_thoughts.atomic import atomic_write
from latent_thoughts.engines.base import Engine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.grading import MathGrader, grade_gsm8k, parse_number
from latent_thoughts.evaluate.prompting import (
    PromptMode,
    answer_header,
    few_shot_prompt,
    prompt_text,
    prompt_token_ids,
)
from latent_thoughts.evaluate.tasks import EvalProblem
from latent_thoughts.evaluate.testbed import _decode, _token_ids, thought_banned_ids
from latent_thoughts.format import LATENT_TOKENS, SpecialIds, encode_text

ANSWER_STOP = ("\n\nQuestion:", "\n\nProblem:")
"""Strings that end an answer: the start of a next few-shot block."""


@dataclass
class ProblemRecord:
    """One problem's evaluation: what was asked, what came back and how it was graded."""

    task: str
    problem_id: str
    subject: str
    level: str
    gold: str
    prompt: str
    generations: list[str]
    extracted: list[str | None]
    verdicts: list[bool]
    correct: bool
    any_correct: bool
    flexible_correct: bool | None = None
    timed_out: int = 0

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (one line of the per-sample log)."""
        return asdict(self)


@dataclass
class BenchmarkSettings:
    """Decoding settings: samples per problem, temperature, token budgets, batch size, seed."""

    samples: int = 1
    temperature: float = 0.0
    max_thought_tokens: int = 256
    max_answer_tokens: int = 384
    batch_size: int = 8
    seed: int = 0
    shots: int | None = None


def evaluate_benchmark(
    engine: Engine,
    tokenizer: Any,
    problems: Sequence[EvalProblem],
    mode: PromptMode,
    settings: BenchmarkSettings | None = None,
    *,
    grader: MathGrader | None = None,
    progress: bool = True,
    on_record: Callable[[ProblemRecord], None] | None = None,
) -> list[ProblemRecord]:
    """Evaluate ``problems`` (all of one task) in ``mode``; see module notes.

    ``grader`` grades MATH answers (one is started and closed here when None). ``on_record`` is called
    with each record as soon as it is graded (the CLI appends it to the JSONL log). The progress bar
    shows problems done and the running accuracy.
    """
    settings = settings or BenchmarkSettings()
    if mode not in ("raw", "latent"):
        raise LatentThoughtsError(f"evaluation mode must be 'raw' or 'latent', got {mode!r}")
    if settings.samples < 1:
        raise LatentThoughtsError(f"--samples must be at least 1, got {settings.samples}")
    if not problems:
        raise LatentThoughtsError("no problems to evaluate")
    task = problems[0].task
    if any(problem.task != task for problem in problems):
        raise LatentThoughtsError("evaluate one task at a time: the problems mix tasks")
    own_grader = grader is None and task != "gsm8k"
    if own_grader:
        grader = MathGrader()
    records: list[ProblemRecord] = []
    bar = tqdm(total=len(problems), desc=f"{task} ({mode})", unit="problem", disable=not progress)
    try:
        for start in range(0, len(problems), settings.batch_size):
            batch = problems[start : start + settings.batch_size]
            generations = _generate(engine, tokenizer, batch, mode, settings)
            for problem, texts in zip(batch, generations, strict=True):
                prompt = prompt_text(few_shot_prompt(task, problem.question, mode, settings.shots))
                record = _grade(problem, prompt, texts, grader)
                records.append(record)
                if on_record is not None:
                    on_record(record)
            bar.update(len(batch))
            bar.set_postfix(accuracy=f"{sum(r.correct for r in records) / len(records):.3f}")
    finally:
        bar.close()
        if own_grader and grader is not None:
            grader.close()
    return records


def _generate(
    engine: Engine,
    tokenizer: Any,
    problems: Sequence[EvalProblem],
    mode: PromptMode,
    settings: BenchmarkSettings,
) -> list[list[str]]:
    """``settings.samples`` generations per problem, as text (latent: ``thought EOL header answer``)."""
    special = SpecialIds.from_tokenizer(tokenizer)
    latent_ids = [special.sol, special.eol, special.prior, special.post]
    k, task = settings.samples, problems[0].task
    prompts = [
        prompt_token_ids(few_shot_prompt(task, problem.question, mode, settings.shots), tokenizer)
        for problem in problems
    ]
    common: dict[str, Any] = {"temperature": settings.temperature, "seed": settings.seed}

    def answer(contexts: list[list[int]], n: int) -> list[list[list[int]]]:
        groups = engine.sample(
            contexts,
            n,
            max_new_tokens=settings.max_answer_tokens,
            stop=ANSWER_STOP,
            stop_on_eos=True,
            banned_ids=latent_ids,
            **common,
        )
        return [[_token_ids(tokenizer, sample) for sample in group] for group in groups]

    if mode == "raw":
        return [[_decode(tokenizer, ids, latent_ids) for ids in group] for group in answer(prompts, k)]
    header_ids = encode_text(tokenizer, answer_header(task))
    thought_groups = engine.sample(
        prompts,
        k,
        max_new_tokens=settings.max_thought_tokens,
        stop=[special.eol],
        stop_on_eos=False,
        banned_ids=thought_banned_ids(special),  # a thought is text that ends at EOL
        **common,
    )
    thoughts: list[list[int]] = []
    contexts: list[list[int]] = []
    for prompt, group in zip(prompts, thought_groups, strict=True):
        for sample in group:
            thought = _token_ids(tokenizer, sample)
            thought = thought[:-1] if thought[-1:] == [special.eol] else thought
            thoughts.append(thought)
            contexts.append([*prompt, *thought, special.eol, *header_ids])
    answers = [group[0] for group in answer(contexts, 1)]
    header = answer_header(task)
    texts = [
        _decode(tokenizer, thought, latent_ids)
        + LATENT_TOKENS.eol
        + header
        + _decode(tokenizer, ids, latent_ids)
        for thought, ids in zip(thoughts, answers, strict=True)
    ]
    return [texts[i * k : (i + 1) * k] for i in range(len(problems))]


def _grade(problem: EvalProblem, prompt: str, texts: list[str], grader: MathGrader | None) -> ProblemRecord:
    """Grade one problem's samples; the verdict is the majority answer's (the only one when k = 1)."""
    extracted: list[str | None] = []
    verdicts: list[bool] = []
    timed_out = 0
    flexible: bool | None = None
    for text in texts:
        if problem.task == "gsm8k":
            answer, verdict = grade_gsm8k(problem.answer, text, strict=True)
        else:
            assert grader is not None
            math_verdict = grader.grade(problem.answer, text)
            answer, verdict, timed_out = (
                math_verdict.extracted,
                math_verdict.correct,
                timed_out + math_verdict.timed_out,
            )
        extracted.append(answer)
        verdicts.append(verdict)
    chosen = _majority(problem.task, extracted)
    if problem.task == "gsm8k":
        flexible = grade_gsm8k(problem.answer, texts[chosen], strict=False)[1]
    return ProblemRecord(
        task=problem.task,
        problem_id=problem.problem_id,
        subject=problem.subject,
        level=problem.level,
        gold=problem.answer,
        prompt=prompt,
        generations=texts,
        extracted=extracted,
        verdicts=verdicts,
        correct=verdicts[chosen],
        any_correct=any(verdicts),
        flexible_correct=flexible,
        timed_out=timed_out,
    )


def _majority(task: str, extracted: Sequence[str | None]) -> int:
    """Index of a sample holding the most frequent extracted answer (the first sample when none has one)."""

    def key(answer: str) -> str:
        number = parse_number(answer) if task == "gsm8k" else None
        return str(number.normalize()) if number is not None else answer.strip()

    keys = [key(answer) if answer is not None else None for answer in extracted]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0
    best = counts.most_common(1)[0][0]
    return keys.index(best)


def _accuracy(values: Sequence[bool]) -> dict[str, float | int]:
    """``n``, ``accuracy`` and its standard error (sample standard deviation over sqrt(n))."""
    n = len(values)
    mean = sum(values) / n if n else 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"n": n, "accuracy": mean, "stderr": math.sqrt(variance / n) if n else 0.0}


def aggregate(records: Sequence[ProblemRecord], mode: PromptMode, samples: int = 1) -> dict[str, Any]:
    """The aggregate of one task: accuracy (maj@k when k > 1) with its standard error, pass@k, the
    flexible GSM8K accuracy, and accuracy per subject and per level when the problems have them."""
    if not records:
        raise LatentThoughtsError("no records to aggregate")
    result: dict[str, Any] = {"task": records[0].task, "mode": mode, "samples": samples}
    result.update(_accuracy([record.correct for record in records]))
    if samples > 1:
        result[f"pass@{samples}"] = _accuracy([record.any_correct for record in records])["accuracy"]
    if records[0].task == "gsm8k":
        result["flexible"] = _accuracy([bool(record.flexible_correct) for record in records])
    result["timed_out"] = sum(record.timed_out for record in records)
    for attribute in ("subject", "level"):
        groups: dict[str, list[bool]] = {}
        for record in records:
            if getattr(record, attribute):
                groups.setdefault(getattr(record, attribute), []).append(record.correct)
        if groups:
            result[f"by_{attribute}"] = {name: _accuracy(groups[name]) for name in sorted(groups)}
    return result


def evaluate_to_files(
    engine: Engine,
    tokenizer: Any,
    problems: Sequence[EvalProblem],
    mode: PromptMode,
    settings: BenchmarkSettings,
    out_dir: str | Path | None,
    *,
    grading_timeout: float = 5.0,
    info: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate_benchmark` on one task (a progress bar unless ``progress`` is false), writing ``out_dir/TASK_MODE.jsonl`` (a record per problem,
    appended as it is graded) and ``out_dir/TASK_MODE.json`` (``info`` plus :func:`aggregate`).

    Both are written under temporary names and renamed when the task is done, the log first: a run
    that fails or is killed midway leaves an earlier run's files as they were. Returns the aggregate
    (with ``info``); nothing is written when ``out_dir`` is None."""
    task = problems[0].task if problems else "?"
    with contextlib.ExitStack() as stack:
        log, aggregate_partial = None, None
        if out_dir is not None:
            # Entered in this order, the files are renamed in the other: the log, then the aggregate.
            aggregate_partial = stack.enter_context(atomic_write(Path(out_dir) / f"{task}_{mode}.json"))
            log_partial = stack.enter_context(atomic_write(Path(out_dir) / f"{task}_{mode}.jsonl"))
            log = stack.enter_context(log_partial.open("w", encoding="utf-8"))

        def write(record: ProblemRecord) -> None:
            if log is not None:
                log.write(json.dumps(record.to_json()) + "\n")
                log.flush()

        with MathGrader(grading_timeout) as grader:
            records = evaluate_benchmark(
                engine, tokenizer, problems, mode, settings, grader=grader, progress=progress, on_record=write
            )
        summary = {**(info or {}), **aggregate(records, mode, settings.samples)}
        if aggregate_partial is not None:
            aggregate_partial.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line of an aggregate: ``gsm8k latent mode: accuracy 0.120 ± 0.046 on 50 problems (flexible ...)``."""
    line = (
        f"{summary['task']} {summary['mode']} mode: accuracy {summary['accuracy']:.3f} ± "
        f"{summary['stderr']:.3f} on {summary['n']} problems"
    )
    if "flexible" in summary:
        line += f" (flexible {summary['flexible']['accuracy']:.3f})"
    samples = summary.get("samples", 1)
    if samples > 1:
        line += f", pass@{samples} {summary[f'pass@{samples}']:.3f}"
    return line
