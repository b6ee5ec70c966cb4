"""lm-evaluation-harness task files over the local benchmark files, for cross-checking ``evaluate``.

:func:`export_tasks` writes one YAML per task into a folder; ``lm_eval --include_path DIR --tasks
lt_gsm8k_cot`` then runs the same problems in raw mode with this project's exemplars and prompt
layout (``Question: ...\\nAnswer: <solution> The final answer is 6.``, blocks joined by a blank line),
greedy, stopping at the next few-shot header:

- ``lt_gsm8k_cot``: GSM8K test, 8-shot; filters ``strict-match`` and ``flexible-extract`` use the very
  regular expressions of :mod:`latent_thoughts.evaluate.grading` (the last match; strict is
  case-insensitive), so lm-eval's extraction can be compared with ours on the same generations;
- ``lt_math`` and ``lt_math500``: MATH and MATH-500 test, 4-shot Minerva problems; the answer in
  ``The final answer is $...$`` is compared as a string (``exact_match``), a lower bound of the
  symbolic equivalence ``evaluate`` grades with.

Latent mode (a thought until EOL, then the answer header appended) is two generation calls per
problem, which lm-eval's ``generate_until`` cannot express, so only raw mode is exported; lm-eval
does not ban the latent tokens either. Files are named by absolute path (lm-eval's ``json`` loader
reads them, no hub needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from latent_thoughts.atomic import write_text
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate.grading import NUMBER_RE, STRICT_RE
from latent_thoughts.evaluate.prompting import style_of

TASK_NAMES = {"gsm8k": "lt_gsm8k_cot", "math": "lt_math", "math500": "lt_math500"}
"""The lm-eval task name of each exported benchmark."""

MATH_ANSWER_PATTERN = r"final answer is \$(.+?)\$"
"""The answer of a MATH generation for lm-eval: what ``The final answer is $...$`` wraps."""


def _regex_filter(name: str, pattern: str) -> dict[str, Any]:
    """An lm-eval filter taking the last match of ``pattern`` (the first group when it has one)."""
    return {
        "name": name,
        "filter": [
            {"function": "regex", "regex_pattern": pattern, "group_select": -1},
            {"function": "take_first"},
        ],
    }


def task_config(task: str, path: str | Path, *, max_gen_toks: int = 384) -> dict[str, Any]:
    """The lm-eval task configuration of ``task`` (gsm8k, math or math500) over the JSONL at ``path``."""
    if task not in TASK_NAMES:
        raise LatentThoughtsError(f"no lm-eval export for task {task!r}; choose gsm8k, math or math500")
    style = style_of(task)
    question_field = "question" if task == "gsm8k" else "problem"
    shots = [
        {question_field: exemplar.question, "target": f"{exemplar.solution} {style.final(exemplar.answer)}"}
        for exemplar in style.exemplars
    ]
    gold = "{{answer.split('####')[-1].strip()" if task == "gsm8k" else "{{answer"
    config: dict[str, Any] = {
        "task": TASK_NAMES[task],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(path).resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": style.question_header + "{{" + question_field + "}}\n" + style.answer_header,
        # Few-shot samples carry their worked solution in `target`; test problems have a gold answer.
        "doc_to_target": gold + " if answer is defined else target}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "num_fewshot": len(shots),
        "fewshot_config": {"sampler": "first_n", "samples": shots},
        "generation_kwargs": {
            "until": [style.question_header.strip()],
            "do_sample": False,
            "max_gen_toks": max_gen_toks,
        },
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "regexes_to_ignore": [",", "\\$", "\\.$", " "],
            }
        ],
        "metadata": {"version": 1.0, "source": "latent-thoughts export-lm-eval"},
    }
    if task == "gsm8k":
        config["filter_list"] = [
            _regex_filter("strict-match", "(?i)" + STRICT_RE.pattern),
            _regex_filter("flexible-extract", NUMBER_RE.pattern),
        ]
    else:
        config["filter_list"] = [_regex_filter("final-answer", MATH_ANSWER_PATTERN)]
    return config


def export_tasks(paths: dict[str, Path], out_dir: str | Path, *, max_gen_toks: int = 384) -> list[Path]:
    """Write ``OUT/<task name>.yaml`` for each benchmark in ``paths`` (task -> its JSONL file).

    A missing file is a one-line error naming it. Returns the written files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task, path in paths.items():
        if not Path(path).is_file():
            raise LatentThoughtsError(f"{task} file not found: {path} (set --data-dir or --{task}-file)")
        target = out / f"{TASK_NAMES[task]}.yaml"
        text = yaml.safe_dump(
            task_config(task, path, max_gen_toks=max_gen_toks), sort_keys=False, allow_unicode=True
        )
        write_text(target, f"# lm-eval task written by `latent-thoughts export-lm-eval`\n{text}")
        written.append(target)
    return written
