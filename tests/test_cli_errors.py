"""A user's mistake is one line naming the culprit and a non-zero exit, never a traceback or lost data.

Each case below is a careless or hostile input found by trying the real command line; each one
once ended in a traceback, a silent wrong result or an overwritten input. The commands run
in-process through ``latent_thoughts.cli.main`` on real files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latent_thoughts.cli import main
from latent_thoughts.corpus import ChunkConfig, chunk_document, write_chunks
from latent_thoughts.testbed.world import TestbedConfig, generate_documents, write_documents

REPO = Path(__file__).resolve().parents[1]
ORACLE = REPO / "configs" / "teachers" / "oracle.yaml"
TRAIN_CONFIG = REPO / "configs" / "train" / "testbed-scratch.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a small testbed corpus, its chunks, a thoughts file and evaluation problems."""
    root = tmp_path_factory.mktemp("world")
    config = TestbedConfig(
        bootstrap_documents=4, warm_start_documents=3, validation_documents=0, eval_problems=5
    )
    write_documents(generate_documents(config, "bootstrap"), root / "corpus.jsonl")
    write_documents(generate_documents(config, "warm_start"), root / "other.jsonl")
    chunking = ChunkConfig(mean_sentences=1, min_sentences=1, max_sentences=1)
    for name in ("corpus", "other"):
        documents = generate_documents(config, "bootstrap" if name == "corpus" else "warm_start")
        write_chunks(
            [c for d in documents for c in chunk_document(d.doc_id, d.text, chunking)],
            root / f"{name}_chunks.parquet",
        )
    assert (
        main(
            [
                "synthesize",
                "--chunks",
                str(root / "corpus_chunks.parquet"),
                "--teacher",
                str(ORACLE),
                "--out",
                str(root / "thoughts" / "oracle.parquet"),
            ]
        )
        == 0
    )
    from latent_thoughts.testbed.task import make_eval_problems, write_problems

    write_problems(make_eval_problems(config), root / "eval.jsonl")
    return root


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the command line; returns its exit status and its stderr, checked to be one error line."""
    capsys.readouterr()
    status = main(args)
    err = capsys.readouterr().err
    return status, err


def assert_one_line_error(status: int, err: str, *culprits: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("latent-thoughts: error: ")]
    assert status in (1, 2), err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for culprit in culprits:
        assert culprit in lines[0], lines[0]


def digest(path: Path) -> bytes:
    return path.read_bytes()


# --- data loss: an output that is an input is refused by every verb ------------------------------

Builder = Callable[[Path], tuple[list[str], Path]]

SAME_PATH_CASES: dict[str, Builder] = {
    "chunk": lambda w: (
        ["chunk", str(w / "corpus.jsonl"), "--out", str(w / "corpus.jsonl")],
        w / "corpus.jsonl",
    ),
    "chunk into a folder input": lambda w: (
        ["chunk", str(w), "--out", str(w / "notes.txt")],
        w / "notes.txt",
    ),
    "synthesize": lambda w: (
        [
            "synthesize",
            "--chunks",
            str(w / "copy.parquet"),
            "--teacher",
            str(ORACLE),
            "--out",
            str(w / "copy.parquet"),
        ],
        w / "copy.parquet",
    ),
    "synthesize onto its teacher": lambda w: (
        [
            "synthesize",
            "--chunks",
            str(w / "corpus_chunks.parquet"),
            "--teacher",
            str(w / "t.parquet"),
            "--out",
            str(w / "t.parquet"),
        ],
        w / "t.parquet",
    ),
    "merge": lambda w: (
        ["merge", "--out", str(w / "m.shard-0-of-1.parquet"), str(w / "m.shard-0-of-1.parquet")],
        w / "m.shard-0-of-1.parquet",
    ),
    "testbed generate": lambda w: (
        ["testbed", "generate", "--out", str(w / "tb"), "--config", str(w / "tb" / "config.yaml")],
        w / "tb" / "config.yaml",
    ),
    "likelihood": lambda w: (
        [
            "likelihood",
            str(w / "model"),
            "--documents",
            str(w / "corpus.jsonl"),
            "--out",
            str(w / "corpus.jsonl"),
        ],
        w / "corpus.jsonl",
    ),
    "decontaminate": lambda w: (
        ["decontaminate", str(w / "copy.parquet"), "--out", str(w), "--data-dir", str(w)],
        w / "copy.parquet",
    ),
    "evaluate": lambda w: (
        ["evaluate", str(w / "model"), "--problems", str(w / "eval.jsonl"), "--out", str(w / "eval.jsonl")],
        w / "eval.jsonl",
    ),
    "train": lambda w: (
        [
            "train",
            "--config",
            str(w / "train.yaml"),
            "--out",
            str(w / "run"),
            "--set",
            f"model.tokenizer={w / 'run' / 'metrics.json'}",
        ],
        w / "run" / "metrics.json",
    ),
}


@pytest.mark.parametrize("case", sorted(SAME_PATH_CASES))
def test_no_verb_writes_over_its_own_input(
    case: str, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "w"
    shutil.copytree(world, work)
    shutil.copy(work / "corpus_chunks.parquet", work / "copy.parquet")
    shutil.copy(work / "corpus_chunks.parquet", work / "t.parquet")
    shutil.copy(work / "thoughts" / "oracle.parquet", work / "m.shard-0-of-1.parquet")
    (work / "notes.txt").write_text("A note. It is read as a document.\n")
    (work / "tb").mkdir()
    (work / "tb" / "config.yaml").write_text("seed: 3\n")
    (work / "model").mkdir()
    (work / "model" / "config.json").write_text("{}")
    (work / "run").mkdir()
    (work / "run" / "metrics.json").write_text("{}")
    shutil.copy(TRAIN_CONFIG, work / "train.yaml")
    args, victim = SAME_PATH_CASES[case](work)
    before = digest(victim)
    status, err = run_cli(args, capsys)
    assert_one_line_error(status, err, "is also an input")
    assert digest(victim) == before


# --- outputs that cannot be written are found before the work ------------------------------------


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder nothing can be created in: a read-only one, or /sys for root (who ignores modes)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return folder
    (folder / "probe").unlink()
    if Path("/sys").is_dir():
        try:
            (Path("/sys") / "latent-thoughts-probe").write_text("")
        except OSError:
            return Path("/sys")
    pytest.skip("no folder here refuses new files")


@pytest.mark.parametrize("where", ["a folder", "under a file", "unwritable"])
@pytest.mark.parametrize("verb", ["chunk", "testbed generate", "evaluate", "serve --state-dir"])
def test_unusable_outputs_are_refused_before_any_work(
    verb: str, where: str, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / "afolder"
    folder.mkdir()
    target = {
        "a folder": folder if verb in ("chunk", "evaluate") else afile,
        "under a file": afile / "out",
        "unwritable": _unwritable_folder(tmp_path) / "out" / "x.parquet",
    }[where]
    args = {
        "chunk": ["chunk", str(world / "corpus.jsonl"), "--out", str(target)],
        "testbed generate": ["testbed", "generate", "--out", str(target)],
        # testbed alone: --out is a JSON file; the model folder is never loaded.
        "evaluate": [
            "evaluate",
            str(tmp_path / "no-model"),
            "--problems",
            str(world / "eval.jsonl"),
            "--out",
            str(target),
        ],
        "serve --state-dir": ["serve", str(world), "--port", "0", "--state-dir", str(target)],
    }[verb]
    if verb == "serve --state-dir":
        (world / "config.json").write_text("{}")  # looks like a model folder; never loaded
    status, err = run_cli(args, capsys)
    assert_one_line_error(
        status, err, str(target.parent if where == "unwritable" else target).split("/out")[0]
    )


# --- wrong results that were silently accepted ---------------------------------------------------


def test_a_corpus_where_every_record_is_skipped_fails_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": ""}\n{"body": "no text field"}\n')
    out = tmp_path / "chunks.parquet"
    status, err = run_cli(["chunk", str(corpus), "--out", str(out)], capsys)
    assert_one_line_error(status, err, "no chunks", "skipped 2 records", "empty document")
    assert not out.exists()


def test_evaluate_refuses_a_negative_limit_with_problems_alone(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run_cli(
        ["evaluate", str(tmp_path), "--problems", str(world / "eval.jsonl"), "--limit", "-1"], capsys
    )
    assert_one_line_error(status, err, "--limit", "-1")


def test_train_refuses_betas_outside_zero_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "train",
        "--config",
        str(TRAIN_CONFIG),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "optim.betas=[2, 3]",
    ]
    status, err = run_cli(args, capsys)
    assert_one_line_error(status, err, "optim.betas")
    status, err = run_cli([*args[:-1], "optim.lr=.nan"], capsys)
    assert_one_line_error(status, err, "optim.lr")


def test_thoughts_refuses_a_chunk_file_it_was_not_made_from(
    world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thoughts = world / "thoughts" / "oracle.parquet"
    assert (
        main(["thoughts", "--chunks", str(world / "corpus_chunks.parquet"), "--thoughts", str(thoughts)]) == 0
    )
    status, err = run_cli(
        ["thoughts", "--chunks", str(world / "other_chunks.parquet"), "--thoughts", str(thoughts)], capsys
    )
    assert_one_line_error(status, err, "another chunk file", "other_chunks.parquet")


# --- tracebacks that became one-line errors -------------------------------------------------------


def test_a_lone_surrogate_is_a_skipped_record_not_a_lost_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"id": "bad", "text": "Broken \\ud800 text. More."}\n{"id": "good", "text": "Fine text. More."}\n'
    )
    out = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out)]) == 0
    assert "lone surrogate" in capsys.readouterr().out
    assert pq.read_table(out)["doc_id"].to_pylist() == ["good"]
    status, err = run_cli(["chunk", str(corpus), "--out", str(tmp_path / "s.parquet"), "--strict"], capsys)
    assert_one_line_error(status, err, f"{corpus}:1", "lone surrogate")


@pytest.mark.parametrize("content", [b"", b"not a parquet file at all\n"], ids=["empty", "fake"])
def test_an_empty_or_fake_parquet_corpus(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "c.parquet"
    corpus.write_bytes(content)
    status, err = run_cli(["chunk", str(corpus), "--out", str(tmp_path / "o.parquet")], capsys)
    assert_one_line_error(status, err, str(corpus), "not a readable Parquet file")


def test_a_chunk_file_with_the_right_columns_and_wrong_types(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.parquet"
    columns = {"doc_id": [1], "chunk_index": ["a"], "prefix": [1], "text": [2], "start": ["x"], "end": [1.5]}
    pq.write_table(pa.table(columns), wrong)
    out = tmp_path / "t.parquet"
    status, err = run_cli(
        ["synthesize", "--chunks", str(wrong), "--teacher", str(ORACLE), "--out", str(out)], capsys
    )
    assert_one_line_error(status, err, str(wrong), "doc_id")
    thoughts = world / "thoughts" / "oracle.parquet"
    status, err = run_cli(["thoughts", "--chunks", str(wrong), "--thoughts", str(thoughts)], capsys)
    assert_one_line_error(status, err, str(wrong), "doc_id")


def test_a_config_that_is_a_folder_or_binary(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    for config in (tmp_path, binary):
        args = [
            "chunk",
            str(world / "corpus.jsonl"),
            "--out",
            str(tmp_path / "o.parquet"),
            "--config",
            str(config),
        ]
        status, err = run_cli(args, capsys)
        assert_one_line_error(status, err, str(config))


def test_a_yaml_alias_bomb_is_refused_at_once(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["chunking:", '  _a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for previous, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"  _{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    lines.append("  seed: *h")  # 9 ** 8 = 43 million strings once expanded
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    args = ["chunk", str(world / "corpus.jsonl"), "--out", str(tmp_path / "o.parquet"), "--config", str(bomb)]
    status, err = run_cli(args, capsys)
    assert_one_line_error(status, err, str(bomb), "aliases")
    assert len(err) < 400


def test_testbed_check_on_invalid_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "thoughts.jsonl"
    bad.write_bytes(b'{"thought": "3 x 4 = 12"}\n{"thought": "12 \xff\xfe"}\n')
    status, err = run_cli(["testbed", "check", str(bad)], capsys)
    assert_one_line_error(status, err, f"{bad}:2", "UTF-8")


def test_testbed_check_on_a_number_over_4300_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python reads at most 4,300 digits as an int: a claim with a longer number is false, not a crash.
    huge = "7" * 5000
    thoughts = tmp_path / "thoughts.jsonl"
    thoughts.write_text(json.dumps({"thought": f"3 x 4 = 12 and 1 + {huge} = 5"}) + "\n")
    status, out = main(["testbed", "check", str(thoughts), "--json"]), capsys.readouterr().out
    summary = json.loads(out)
    assert status == 0 and (summary["claims"], summary["true_claims"], summary["valid"]) == (2, 1, 0)
    number = tmp_path / "number.jsonl"
    number.write_text(f'{{"thought": {huge}}}\n')
    status, err = run_cli(["testbed", "check", str(number)], capsys)
    assert_one_line_error(status, err, f"{number}:1", "too long")


def test_serve_refuses_a_port_out_of_range(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (world / "config.json").write_text("{}")
    status, err = run_cli(["serve", str(world), "--port", "70000"], capsys)
    assert_one_line_error(status, err, "--port", "70000")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_serve_refuses_a_body_limit_that_is_not_a_finite_number(
    world: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (world / "config.json").write_text("{}")
    status, err = run_cli(["serve", str(world), "--port", "0", "--max-body-mb", value], capsys)
    assert_one_line_error(status, err, "--max-body-mb", value)


@pytest.mark.parametrize("cut", [0, 100, 0.5])
def test_a_damaged_model_safetensors_is_one_line_naming_the_folder(
    tiny_model_dir: Path, tmp_path: Path, cut: float, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every verb that loads a model (serve, evaluate, estep, likelihood) goes through this loader.
    from latent_thoughts.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from latent_thoughts.errors import LatentThoughtsError

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * cut) if cut < 1 else int(cut)])
    status, err = run_cli(["serve", str(model), "--port", "0", "--device", "cpu"], capsys)
    assert_one_line_error(status, err, str(model), "cannot load the model")
    with pytest.raises(LatentThoughtsError, match="damaged"):
        TransformersEngine(TransformersEngineConfig(model=str(model), device="cpu", dtype="fp32"))


def test_serve_refuses_a_public_address_without_a_key(
    world: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LATENT_THOUGHTS_API_KEY", raising=False)
    (world / "config.json").write_text("{}")
    status, err = run_cli(["serve", str(world), "--host", "0.0.0.0", "--port", "0"], capsys)
    assert_one_line_error(status, err, "--host 0.0.0.0", "--api-key", "--insecure-no-auth")


# --- the mechanism: one line, exit status, traceback only with --verbose ---------------------------


def test_an_operating_system_error_on_a_named_file_is_one_line(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A corpus file that vanishes between listing and reading (a race a user can cause).
    unreadable = tmp_path / "c.jsonl"
    unreadable.write_text('{"text": "A."}\n')
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):
        pytest.skip("running as root: modes do not stop reads")
    status, err = run_cli(["chunk", str(unreadable), "--out", str(tmp_path / "o.parquet")], capsys)
    assert status == 1
    assert_one_line_error(status, err, str(unreadable), "Permission denied")


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(world: Path, tmp_path: Path) -> None:
    """Chunk into a 64 KiB tmpfs (mounted in a private namespace) so that the disk really fills."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    corpus = tmp_path / "big.jsonl"
    rng = random.Random(0)  # random letters: the Parquet file cannot compress below the disk's size
    with corpus.open("w") as handle:
        for i in range(60):
            words = ("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(400))
            handle.write(json.dumps({"id": f"d{i}", "text": ". ".join(words) + "."}) + "\n")
    small = tmp_path / "small"
    small.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {small} || exit 99; "
        f"{sys.executable} -m latent_thoughts chunk {corpus} --out {small}/chunks.parquet; status=$?; "
        f"ls -A {small}; exit $status"
    )
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    if done.returncode == 99 or "unshare:" in done.stderr:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()[:200]}")
    assert done.returncode == 1, done.stderr
    assert_one_line_error(done.returncode, done.stderr, "chunks.parquet", "no space left")
    assert done.stdout.strip() == ""  # no half-written file left behind


@pytest.mark.slow
def test_a_26_mb_single_paragraph_is_chunked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real case: one 2.6 MB paragraph used to hit Punkt's 5 s limit and lose the whole run."""
    words = ["alpha", "beta", "x", "=", "3", "+", "Mr.", "e.g.", "(1)", "end."]
    text = " ".join(words[(i * 7) % len(words)] for i in range(560_000))
    corpus = tmp_path / "huge.jsonl"
    corpus.write_text(
        json.dumps({"id": "huge", "text": text})
        + "\n"
        + json.dumps({"id": "b", "text": "Small. Doc."})
        + "\n"
    )
    out = tmp_path / "chunks.parquet"
    assert main(["chunk", str(corpus), "--out", str(out)]) == 0
    assert "cut into pieces" in capsys.readouterr().out
    rows = pq.read_table(out).to_pylist()
    assert "".join(row["text"] for row in rows if row["doc_id"] == "huge") == text


# --- every numeric option of every verb: NaN, infinity, zero and negatives -------------------------

# (verb, option) -> the values of NAN_INF_ZERO_NEGATIVE that mean something there and are accepted.
ZERO_IS_VALID = {"0"}
NUMERIC_ALLOWED: dict[tuple[str, str], set[str]] = {
    **{(verb, "--seed"): ZERO_IS_VALID for verb in ("demo", "estep", "evaluate", "finetune-eval")},
    **{(verb, "--seed"): ZERO_IS_VALID for verb in ("likelihood", "synthesize")},
    ("evaluate", "--shots"): ZERO_IS_VALID,  # zero-shot
    ("evaluate", "--show"): ZERO_IS_VALID,  # print no generation
    ("evaluate", "--temperature"): ZERO_IS_VALID,  # greedy
    ("estep", "--backoff-initial-s"): ZERO_IS_VALID,  # retry at once
    ("estep", "--gpus-per-worker"): ZERO_IS_VALID,  # CPU actors
    ("synthesize", "--gpus-per-worker"): ZERO_IS_VALID,
    ("estep", "--slurm-gpus"): ZERO_IS_VALID,  # CPU tasks
    ("synthesize", "--slurm-gpus"): ZERO_IS_VALID,
    ("thoughts", "--width"): ZERO_IS_VALID,  # no wrapping
    ("serve", "--port"): ZERO_IS_VALID,  # any free port
}
NAN_INF_ZERO_NEGATIVE = ["nan", "inf", "-inf", "0", "-1", "-0.5"]


def _numeric_options() -> list[tuple[str, str, list[str]]]:
    """(verb, option, its required arguments) for every option of type int, float or a numeric type."""
    from latent_thoughts.cli import build_parser
    from latent_thoughts.cli.numbers import NUMERIC_TYPES
    from tests.test_cli_outputs import _leaf_parsers

    found = []
    for verb, parser in _leaf_parsers(build_parser()):
        required: list[str] = []
        for action in parser._actions:
            value = str(next(iter(action.choices))) if action.choices else "/nonexistent/x.parquet"
            if action.option_strings and action.required:
                required += [action.option_strings[0], value]
            elif not action.option_strings and action.nargs not in ("*", "?"):
                required.append("/nonexistent/x")
        for action in parser._actions:
            if action.option_strings and action.type in (int, float, *NUMERIC_TYPES):
                found.append((verb, action.option_strings[-1], required))
    return found


def test_every_numeric_option_refuses_nan_infinity_zero_and_negatives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Walks ``build_parser()``: a value that means nothing is refused while parsing, before any
    work, in one line naming the option; the values that mean something are in NUMERIC_ALLOWED."""
    from latent_thoughts.cli import build_parser

    options = _numeric_options()
    assert len(options) >= 60, options
    assert set(NUMERIC_ALLOWED) <= {(verb, option) for verb, option, _ in options}
    unrefused = []
    for verb, option, required in options:
        allowed = NUMERIC_ALLOWED.get((verb, option), set())
        for value in NAN_INF_ZERO_NEGATIVE:
            argv = [*verb.split(), *required, f"{option}={value}"]
            if value in allowed:
                parsed = build_parser().parse_args(argv)
                assert float(getattr(parsed, option.lstrip("-").replace("-", "_"))) == float(value)
                continue
            status, err = run_cli(argv, capsys)
            lines = err.strip().splitlines()
            if not (status == 2 and len(lines) == 1 and f"{verb}: argument {option}:" in lines[0]):
                unrefused.append(f"{verb} {option}={value}: {status} {err.strip()[:200]}")
            else:
                assert lines[0].startswith("latent-thoughts: error: ") and "Traceback" not in err
    assert unrefused == []
