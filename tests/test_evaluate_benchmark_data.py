"""Where benchmark files come from: --data-dir, $LATENT_THOUGHTS_DATA, the cache, or the Hub.

The Hub is out of reach here, so its copies are stood in for by local Parquet files of the same
shape, loaded through ``datasets`` exactly as the Hub's are (``load_dataset("parquet", ...)``):
GSM8K's ``question``/``answer``, MATH-500's six fields, and the seven subject configs of
``EleutherAI/hendrycks_math`` with ``problem``/``level``/``type``/``solution``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.evaluate import benchmark_data
from latent_thoughts.evaluate.benchmark_data import (
    HUB_SOURCES,
    MATH_CONFIGS,
    DataLocation,
    benchmark_file,
    cache_folder,
    fetch_file,
    last_boxed,
    locate_data,
)
from latent_thoughts.evaluate.tasks import read_task
from tests.conftest import SHARED

DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not here")

GSM8K_ROWS = [
    {"question": "Ann has 3 apples and buys 4. How many now?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "Bo earns $5 a day. How much in 6 days?", "answer": "5 * 6 = <<5*6=30>>30\n#### 30"},
]
MATH500_ROWS = [
    {
        "problem": "What is $1+1$?",
        "solution": "It is $\\boxed{2}$.",
        "answer": "2",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/1.json",
    }
]


def hendrycks_rows(config: str) -> list[dict[str, Any]]:
    """Two problems of one subject config, in that copy's fields."""
    subject = config.replace("_", " ").title().replace(" And ", " & ")
    return [
        {
            "problem": f"A {config} problem: $x^2 = 4$, $x > 0$. Find $x$.",
            "level": "Level 2",
            "type": subject,
            "solution": "Since $x > 0$, $x = \\boxed{2}$.",
        },
        {
            "problem": f"Another {config} problem.",
            "level": "Level ?",
            "type": subject,
            "solution": "We get $\\boxed{\\frac{1}{2}}$, not $\\boxed 3$... so $\\boxed{\\{1, 2\\}}$",
        },
    ]


def write_hub_copies(folder: Path, gsm8k: list[dict], math500: list[dict], math: dict[str, list[dict]]):
    """Parquet files shaped like the Hub's copies, and a loader over them keyed by (repo, config, split)."""
    import datasets

    files: dict[tuple[str, str | None, str], Path] = {}

    def put(key: tuple[str, str | None, str], rows: list[dict]) -> None:
        path = folder / f"{len(files)}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        files[key] = path

    put(("openai/gsm8k", "main", "test"), gsm8k)
    put(("openai/gsm8k", "main", "train"), gsm8k[::-1])
    put(("HuggingFaceH4/MATH-500", None, "test"), math500)
    for config, rows in math.items():
        put(("EleutherAI/hendrycks_math", config, "test"), rows)
    asked: list[tuple[str, str | None, str]] = []

    def loader(repo: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
        asked.append((repo, config, split))
        return datasets.load_dataset(  # what the Hub's load_dataset returns: a datasets.Dataset
            "parquet", data_files=str(files[(repo, config, split)]), split="train", cache_dir=str(folder)
        )

    return loader, asked


@pytest.fixture
def hub(tmp_path: Path):
    """A loader over small Hub-shaped copies, and the list of (repo, config, split) it was asked for."""
    folder = tmp_path / "hub_copies"
    folder.mkdir()
    return write_hub_copies(
        folder,
        GSM8K_ROWS,
        MATH500_ROWS,
        {config: hendrycks_rows(config) for config in MATH_CONFIGS},
    )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No data folder named; the cache under tmp_path/cache; the working directory elsewhere."""
    monkeypatch.delenv("LATENT_THOUGHTS_DATA", raising=False)
    monkeypatch.setenv("LATENT_THOUGHTS_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "anywhere"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "cache" / "data"


def test_the_lookup_order_is_data_dir_then_environment_then_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LATENT_THOUGHTS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("LATENT_THOUGHTS_CACHE", str(tmp_path / "cache"))
    assert locate_data(tmp_path / "mine") == DataLocation(tmp_path / "mine", "--data-dir")
    assert locate_data(None) == DataLocation(tmp_path / "env", "$LATENT_THOUGHTS_DATA")
    monkeypatch.setenv("LATENT_THOUGHTS_DATA", "")  # empty counts as unset
    assert locate_data(None) == DataLocation(tmp_path / "cache" / "data", "cache")
    monkeypatch.delenv("LATENT_THOUGHTS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "latent-thoughts" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_folder() == Path.home() / ".cache" / "latent-thoughts" / "data"


def test_the_hub_copies_convert_to_the_project_fields(hub, tmp_path: Path) -> None:
    loader, asked = hub
    folder = tmp_path / "cache"
    gsm8k = fetch_file("gsm8k_test.jsonl", folder, loader=loader)
    assert [json.loads(line) for line in gsm8k.read_text().splitlines()] == GSM8K_ROWS
    [first, second] = read_task("gsm8k", gsm8k)
    assert (first.answer, second.answer) == ("7", "30")

    math500 = read_task("math500", fetch_file("math500_test.jsonl", folder, loader=loader))
    assert [(p.problem_id, p.answer, p.subject, p.level) for p in math500] == [
        ("test/prealgebra/1.json", "2", "Prealgebra", "1")
    ]

    math_path = fetch_file("math_test.jsonl", folder, loader=loader)
    assert [config for repo, config, _ in asked if repo == "EleutherAI/hendrycks_math"] == list(MATH_CONFIGS)
    rows = [json.loads(line) for line in math_path.read_text().splitlines()]
    assert len(rows) == 2 * len(MATH_CONFIGS)
    assert set(rows[0]) == {"problem", "solution", "answer", "subject", "level"}
    assert (rows[0]["answer"], rows[0]["level"], rows[0]["subject"]) == ("2", 2, "Algebra")
    assert (rows[1]["answer"], rows[1]["level"]) == ("\\{1, 2\\}", "Level ?")  # the last box, braces balanced
    problems = read_task("math", math_path)
    assert {p.subject for p in problems} == {
        "Algebra",
        "Counting & Probability",
        "Geometry",
        "Intermediate Algebra",
        "Number Theory",
        "Prealgebra",
        "Precalculus",
    }
    assert len({p.problem_id for p in problems}) == len(problems)


def test_last_boxed() -> None:
    assert last_boxed("so $\\boxed{\\frac{a}{b}}$ and") == "\\frac{a}{b}"
    assert last_boxed("$\\boxed 5$.") == "5"
    assert last_boxed("$\\fbox{7}$") == "7"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None


def test_a_missing_cache_file_is_fetched_once_and_a_named_folder_never_fetches(hub, tmp_path: Path) -> None:
    loader, asked = hub
    cache = DataLocation(tmp_path / "cache", "cache")
    assert (
        benchmark_file("gsm8k_test.jsonl", cache, fetch=False, loader=loader)
        == cache.folder / "gsm8k_test.jsonl"
    )
    assert not asked  # declared, not fetched
    path = benchmark_file("gsm8k_test.jsonl", cache, loader=loader)
    assert path.is_file() and len(asked) == 1
    assert benchmark_file("gsm8k_test.jsonl", cache, loader=loader) == path and len(asked) == 1
    for origin in ("--data-dir", "$LATENT_THOUGHTS_DATA"):
        named = DataLocation(tmp_path / "empty", origin)  # type: ignore[arg-type]
        assert benchmark_file("gsm8k_test.jsonl", named, loader=loader) == named.folder / "gsm8k_test.jsonl"
    assert len(asked) == 1


def test_an_unreachable_hub_is_one_line_naming_the_folder_to_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real path through ``datasets``, offline (what it does without a network, at once)."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_hub"))
    with pytest.raises(LatentThoughtsError) as caught:
        fetch_file("gsm8k_test.jsonl", tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message and "openai/gsm8k" in message
    assert "pass --data-dir DIR (or set $LATENT_THOUGHTS_DATA), a folder holding gsm8k_test.jsonl" in message
    assert not (tmp_path / "cache" / "gsm8k_test.jsonl").exists()


def _quick_evaluate(model: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        str(model),
        "--tasks",
        "gsm8k",
        "--limit",
        "1",
        "--shots",
        "0",
        "--mode",
        "raw",
        "--max-answer-tokens",
        "4",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        *extra,
    ]


def test_evaluate_anywhere_fetches_into_the_cache_then_reads_it_offline(
    hub, clean_env: Path, tiny_long_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from latent_thoughts.cli import main

    loader, asked = hub
    monkeypatch.setattr(benchmark_data, "load_hub_split", loader)
    out = tmp_path / "eval"
    assert main(_quick_evaluate(tiny_long_model_dir, "--out", str(out))) == 0
    summary = json.loads((out / "gsm8k_raw.json").read_text())
    assert Path(summary["file"]) == clean_env / "gsm8k_test.jsonl" and summary["n"] == 1
    assert asked == [("openai/gsm8k", "main", "test")]

    def unreachable(repo: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(benchmark_data, "load_hub_split", unreachable)
    assert main(_quick_evaluate(tiny_long_model_dir, "--out", str(tmp_path / "again"))) == 0  # cached


def test_evaluate_without_data_and_without_the_hub_is_one_line(
    clean_env: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from latent_thoughts.cli import main

    def unreachable(repo: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(benchmark_data, "load_hub_split", unreachable)
    assert main(_quick_evaluate(tiny_model_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-thoughts: error: cannot fetch gsm8k_test.jsonl") and "\n" not in err
    assert "pass --data-dir DIR" in err and "openai/gsm8k" in err


@needs_data
def test_a_named_data_folder_is_read_in_place(
    clean_env: Path, tiny_long_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from latent_thoughts.cli import main

    def never(repo: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
        raise AssertionError("a named folder is never fetched into")

    monkeypatch.setattr(benchmark_data, "load_hub_split", never)
    for how in ("flag", "environment"):
        out = tmp_path / how
        if how == "flag":
            argv = _quick_evaluate(tiny_long_model_dir, "--data-dir", str(DATA), "--out", str(out))
        else:
            monkeypatch.setenv("LATENT_THOUGHTS_DATA", str(DATA))
            argv = _quick_evaluate(tiny_long_model_dir, "--out", str(out))
        assert main(argv) == 0
        assert Path(json.loads((out / "gsm8k_raw.json").read_text())["file"]) == DATA / "gsm8k_test.jsonl"
    assert not clean_env.exists()


@needs_data
def test_the_converted_copies_agree_with_the_shared_files(tmp_path: Path) -> None:
    """The shared files, written back in the Hub copies' shapes, convert to themselves: GSM8K and
    MATH-500 as they are; MATH's answers from the last box (4,999 of 5,000: the shared file's one
    other answer is a sentence its extractor took for a box) with subject and level."""

    def rows(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (DATA / name).read_text().splitlines()]

    gsm8k, math500, math = rows("gsm8k_test.jsonl"), rows("math500_test.jsonl"), rows("math_test.jsonl")
    by_config: dict[str, list[dict[str, Any]]] = {config: [] for config in MATH_CONFIGS}
    for row in math:
        config = row["unique_id"].split("/")[1]
        level = f"Level {row['level']}"
        by_config[config].append(
            {"problem": row["problem"], "level": level, "type": row["subject"], "solution": row["solution"]}
        )
    folder = tmp_path / "copies"
    folder.mkdir()
    loader, _ = write_hub_copies(folder, gsm8k, math500, by_config)
    cache = tmp_path / "cache"
    assert read_task("gsm8k", fetch_file("gsm8k_test.jsonl", cache, loader=loader)) == read_task(
        "gsm8k", DATA / "gsm8k_test.jsonl"
    )
    assert read_task("math500", fetch_file("math500_test.jsonl", cache, loader=loader)) == read_task(
        "math500", DATA / "math500_test.jsonl"
    )
    fetched = read_task("math", fetch_file("math_test.jsonl", cache, loader=loader))
    shared = {problem.question: problem for problem in read_task("math", DATA / "math_test.jsonl")}
    assert len(fetched) == len(shared) == 5000
    same = [
        (p.answer, p.subject, p.level)
        == (shared[p.question].answer, shared[p.question].subject, shared[p.question].level)
        for p in fetched
    ]
    assert sum(same) == 4999


def test_every_hub_source_names_a_file_the_readers_know() -> None:
    from latent_thoughts.evaluate.finetune import TRAIN_FILES
    from latent_thoughts.evaluate.tasks import DEFAULT_FILES

    known = set(DEFAULT_FILES.values()) | set(TRAIN_FILES.values())
    assert set(HUB_SOURCES) <= known
    assert set(DEFAULT_FILES.values()) <= set(HUB_SOURCES)  # every evaluated file can be fetched


def test_finetune_splits_fetch_the_files_they_read_into_the_cache(hub, tmp_path: Path) -> None:
    from latent_thoughts.evaluate.finetune import finetune_split

    loader, asked = hub
    cache = DataLocation(tmp_path / "cache", "cache")

    def files(name: str) -> Path:
        return benchmark_file(name, cache, loader=loader)

    gsm8k = finetune_split("gsm8k", cache.folder, files=files)
    assert [p.answer for p in gsm8k.train] == [
        "30",
        "7",
    ] and gsm8k.eval_path == cache.folder / "gsm8k_test.jsonl"
    assert asked == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    # MATH: no train split on the Hub list, so the MATH test problems outside MATH-500 train
    math = finetune_split("math", cache.folder, files=files)
    assert math.eval_task == "math500" and len(math.train) == 2 * len(MATH_CONFIGS) and math.note


def test_finetune_eval_without_data_and_without_the_hub_is_one_line(
    clean_env: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from latent_thoughts.cli import main

    def unreachable(repo: str, config: str | None, split: str) -> Iterable[Mapping[str, Any]]:
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(benchmark_data, "load_hub_split", unreachable)
    argv = ["finetune-eval", str(tiny_model_dir), "--task", "gsm8k", "--out", str(tmp_path / "ft")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("latent-thoughts: error: cannot fetch gsm8k_train.jsonl") and "--data-dir" in err
    assert not (tmp_path / "ft" / "model").exists()
