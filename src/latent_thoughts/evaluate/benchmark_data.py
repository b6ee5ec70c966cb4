"""Where the benchmark files come from: a data folder, the cache, or the Hugging Face Hub.

The evaluation verbs read GSM8K, MATH and MATH-500 from JSONL files in a data folder
(:data:`~latent_thoughts.evaluate.tasks.DEFAULT_FILES`, ``gsm8k_train.jsonl`` for fine-tuning).
:func:`locate_data` picks the folder, first match wins:

1. ``--data-dir DIR`` on the command line;
2. ``$LATENT_THOUGHTS_DATA``;
3. the cache folder (:func:`cache_folder`: ``$LATENT_THOUGHTS_CACHE/data``, default
   ``$XDG_CACHE_HOME/latent-thoughts/data``, i.e. ``~/.cache/latent-thoughts/data``).

A folder named by 1 or 2 is used as it is: a file missing there is an error naming it. In the cache
folder a missing file is fetched once from the Hub's standard copy with the ``datasets`` library
(:data:`HUB_SOURCES`), converted to the project's fields and written there (:func:`fetch_file`), so
the next run reads it offline. An unreachable Hub is a one-line error saying which folder to pass.
No folder relative to the working directory is ever looked at unless named.

The copies (fields as the readers of :mod:`latent_thoughts.evaluate.tasks` expect them):

- GSM8K: ``openai/gsm8k``, config ``main``, splits ``test`` (1,319) and ``train`` (7,473): ``question``,
  ``answer`` (the worked solution ending ``#### N``), kept as they are;
- MATH-500: ``HuggingFaceH4/MATH-500``, split ``test`` (500): ``problem``, ``solution``, ``answer``,
  ``subject``, ``level``, ``unique_id``, kept as they are;
- MATH: ``EleutherAI/hendrycks_math``, the seven subject configs, split ``test`` (5,000 together):
  the copy lm-evaluation-harness reads, the original files of Hendrycks et al. 2021 (MIT) with
  ``problem``, ``level`` (``Level 3``), ``type`` (the subject) and ``solution``. A row becomes
  ``problem``, ``solution``, ``answer`` (the content of the solution's last ``\\boxed{...}``, as the
  MATH-500 and PRM800K files give it), ``subject`` and ``level`` (the number). It has no
  ``unique_id`` (that copy does not keep the original file names), so problems are numbered
  ``math-N``; fine-tuning matches MATH-500's problems by their text, which is unchanged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from latent_thoughts.atomic import write_text
from latent_thoughts.errors import LatentThoughtsError

DATA_ENV = "LATENT_THOUGHTS_DATA"
"""The environment variable naming a data folder (used as it is, like ``--data-dir``)."""

CACHE_ENV = "LATENT_THOUGHTS_CACHE"
"""The environment variable naming the cache root; benchmark files go to its ``data`` folder."""

MATH_CONFIGS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
"""The subject configs of ``EleutherAI/hendrycks_math``, concatenated in this order."""

HubLoader = Callable[[str, "str | None", str], Iterable[Mapping[str, Any]]]
"""``loader(repo, config, split)``: the rows of one split of a Hub dataset."""


@dataclass(frozen=True)
class HubSource:
    """A benchmark file's standard copy on the Hub: the dataset, its configs (rows concatenated in
    order; None for a dataset without configs), the split and the conversion of one row (with its
    config) to the project's fields (None: the row is skipped)."""

    repo: str
    configs: tuple[str | None, ...]
    split: str
    convert: Callable[[Mapping[str, Any], str | None], dict[str, Any] | None]

    def describe(self) -> str:
        """``repo`` with its config(s) and split, for messages."""
        configs = [config for config in self.configs if config]
        named = f" {configs[0]}" if len(configs) == 1 else (f" ({len(configs)} configs)" if configs else "")
        return f"{self.repo}{named}, split {self.split}"


def _gsm8k_row(row: Mapping[str, Any], config: str | None) -> dict[str, Any]:
    return {"question": str(row["question"]), "answer": str(row["answer"])}


def _math500_row(row: Mapping[str, Any], config: str | None) -> dict[str, Any]:
    fields = ("problem", "solution", "answer", "subject", "level", "unique_id")
    return {field: row[field] for field in fields if field in row}


def _hendrycks_row(row: Mapping[str, Any], config: str | None) -> dict[str, Any] | None:
    solution = str(row["solution"])
    answer = last_boxed(solution)
    if answer is None:
        return None
    return {
        "problem": str(row["problem"]),
        "solution": solution,
        "answer": answer,
        "subject": str(row.get("type", "")),
        "level": math_level(row.get("level", "")),
    }


HUB_SOURCES: dict[str, HubSource] = {
    "gsm8k_test.jsonl": HubSource("openai/gsm8k", ("main",), "test", _gsm8k_row),
    "gsm8k_train.jsonl": HubSource("openai/gsm8k", ("main",), "train", _gsm8k_row),
    "math500_test.jsonl": HubSource("HuggingFaceH4/MATH-500", (None,), "test", _math500_row),
    "math_test.jsonl": HubSource("EleutherAI/hendrycks_math", MATH_CONFIGS, "test", _hendrycks_row),
}
"""Each benchmark file the cache can hold, and the Hub copy it is converted from (module notes)."""


def last_boxed(solution: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``) of a MATH
    solution, braces balanced; None when it has none."""
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    if start < 0:
        return None
    rest = start + (len("\\boxed") if solution.startswith("\\boxed", start) else len("\\fbox"))
    if solution.startswith(" ", rest):  # \boxed 5$: up to the closing dollar
        end = solution.find("$", rest)
        return solution[rest + 1 : end if end >= 0 else len(solution)].strip()
    if not solution.startswith("{", rest):
        return None
    depth = 0
    for index in range(rest, len(solution)):
        if solution[index] == "{":
            depth += 1
        elif solution[index] == "}":
            depth -= 1
            if depth == 0:
                return solution[rest + 1 : index]
    return None


_LEVEL = re.compile(r"\s*level\s+(\d+)\s*", re.IGNORECASE)


def math_level(level: Any) -> int | str:
    """``Level 3`` (the original MATH files) as 3; anything else (``Level ?``) as its text."""
    if isinstance(level, int):
        return level
    match = _LEVEL.fullmatch(str(level))
    return int(match.group(1)) if match else str(level)


def cache_folder() -> Path:
    """Where fetched benchmark files live: ``$LATENT_THOUGHTS_CACHE/data``, else
    ``$XDG_CACHE_HOME/latent-thoughts/data``, else ``~/.cache/latent-thoughts/data``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "data"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "latent-thoughts" / "data"


@dataclass(frozen=True)
class DataLocation:
    """The data folder chosen and why: ``--data-dir``, ``$LATENT_THOUGHTS_DATA`` or ``cache`` (only
    the cache fetches what it lacks)."""

    folder: Path
    origin: Literal["--data-dir", "$LATENT_THOUGHTS_DATA", "cache"]


def locate_data(data_dir: str | Path | None) -> DataLocation:
    """The data folder: ``data_dir`` (``--data-dir``), else ``$LATENT_THOUGHTS_DATA``, else the cache
    folder (module notes). An empty value counts as unset."""
    if data_dir is not None and str(data_dir) != "":
        return DataLocation(Path(data_dir), "--data-dir")
    named = os.environ.get(DATA_ENV)
    if named:
        return DataLocation(Path(named), "$LATENT_THOUGHTS_DATA")
    return DataLocation(cache_folder(), "cache")


def benchmark_file(
    name: str, location: DataLocation, *, fetch: bool = True, loader: HubLoader | None = None
) -> Path:
    """The path of the benchmark file ``name`` in ``location``: in the cache folder a file not there
    yet is fetched first (with ``fetch``; without, its path is returned, as a run declares what it
    will read before reading it). A folder named by the user is used as it is."""
    path = location.folder / name
    if location.origin != "cache" or not fetch or path.is_file() or name not in HUB_SOURCES:
        return path
    return fetch_file(name, location.folder, loader=loader)


def load_hub_split(repo: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
    """The rows of one split of a Hub dataset, through ``datasets.load_dataset`` (its own cache and
    offline mode apply)."""
    import datasets

    return datasets.load_dataset(repo, config, split=split)


def convert_rows(source: HubSource, loader: HubLoader) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``source`` in the project's fields, and how many were skipped (a MATH solution
    without a boxed answer)."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    for config in source.configs:
        for row in loader(source.repo, config, source.split):
            converted = source.convert(row, config)
            if converted is None:
                skipped += 1
            else:
                rows.append(converted)
    return rows, skipped


def fetch_file(name: str, folder: Path, *, loader: HubLoader | None = None) -> Path:
    """Fetch the benchmark file ``name`` from its Hub copy (:data:`HUB_SOURCES`) into ``folder`` as
    JSONL (written atomically); returns its path. Any failure to load it (no network, no
    ``datasets``) is a one-line error saying which folder to pass instead."""
    source = HUB_SOURCES.get(name)
    if source is None:
        raise LatentThoughtsError(f"{name}: no Hub copy is known; pass --data-dir DIR, a folder holding it")
    path = folder / name
    print(f"fetching {name} from the Hugging Face Hub ({source.describe()}) into {folder}", flush=True)
    try:
        rows, skipped = convert_rows(source, loader or load_hub_split)
    except LatentThoughtsError:
        raise
    except Exception as exc:  # network, Hub and dataset errors of every kind, or no datasets at all
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if isinstance(exc, ImportError):
            reason = f"the datasets library is missing: {reason}"
        raise LatentThoughtsError(
            f"cannot fetch {name} from the Hugging Face Hub ({source.describe()}: {reason}); "
            f"pass --data-dir DIR (or set ${DATA_ENV}), a folder holding {name}"
        ) from None
    if not rows:
        raise LatentThoughtsError(f"{source.describe()}: no row to write to {path}")
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    note = f", {skipped} without a boxed answer skipped" if skipped else ""
    print(f"wrote {len(rows):,} rows to {path}{note}", flush=True)
    return path
