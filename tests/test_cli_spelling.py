"""One spelling per concept on every verb (issue 21).

Walks ``build_parser()``: a new verb or option is held to the same spellings without being listed
here. CONCEPTS holds each concept's canonical spelling and the variants once seen (or likely); a
verb may keep a variant only as a hidden deprecated alias (``cli.flags.deprecated_alias``), which
still parses, to the canonical destination, with a one-line warning.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
from pathlib import Path
from typing import Any

import pytest

from latent_thoughts.cli import build_parser, flags, main
from latent_thoughts.cli.numbers import NUMERIC_TYPES
from tests.test_cli_outputs import _leaf_parsers

# concept -> (canonical spelling, variants a verb may not show)
CONCEPTS: dict[str, tuple[str, set[str]]] = {
    "the model to run": ("MODEL", {"--model", "--model-dir", "--model-path", "MODEL_DIR", "MODEL_PATH"}),
    "what a run writes": (
        "--out",
        {"--output", "--output-dir", "--out-dir", "--outdir", "--output-file", "-o"},
    ),
    "the thought budget": (
        "--max-thought-tokens",
        {"--thought-tokens", "--max-thought-len", "--max-thought-length", "--thought-budget"},
    ),
    "the answer budget": ("--max-answer-tokens", {"--max-gen-toks", "--answer-tokens", "--max-new-tokens"}),
    "the context budget": (
        "--context-tokens",
        {"--max-context-tokens", "--context-length", "--context-len", "--max-context", "--max-seq-len"},
    ),
    "benchmark tasks": ("--tasks", {"--task-list", "--benchmarks", "--benchmark"}),
    "the options file": ("--config", {"--config-file", "--options", "--yaml"}),
    "option overrides": ("--set", {"--override", "--overrides", "KEY=VALUE"}),
    "no progress bars": ("--no-progress", {"--no-progress-bar", "--quiet", "--progress"}),
}

SINGLE_TASK = "--task"
"""A verb that runs one task (``finetune-eval``: one fine-tuned copy per task) takes ``--task`` with
the task's choices; a list of tasks is always ``--tasks``."""

KEPT_ALIASES = {
    ("estep", "--model"),
    ("train", "--output-dir"),
    ("likelihood", "--thought-tokens"),
    ("export-lm-eval", "--max-gen-toks"),
    ("serve", "--max-context-tokens"),
}
"""Old spellings that scripts and docs used: they must keep parsing."""

MODEL_DESTS = {"model", "model_dir", "model_path"}

NOT_SETTINGS = {"-h", "--out", "--config", "--set", "--no-progress"}


def _verbs() -> list[tuple[str, argparse.ArgumentParser]]:
    return _leaf_parsers(build_parser())


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.help != argparse.SUPPRESS]


def _spellings(action: argparse.Action) -> list[str]:
    """An option's strings, or a positional's metavar (else its destination in capitals)."""
    if action.option_strings:
        return list(action.option_strings)
    return [str(action.metavar or action.dest.upper())]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


def test_the_parser_has_the_verbs() -> None:
    names = {name for name, _ in _verbs()}
    assert {"estep", "evaluate", "train", "likelihood", "testbed generate", "merge"} <= names


def test_no_verb_shows_a_variant_spelling_of_a_concept() -> None:
    shown = []
    for verb, parser in _verbs():
        for action in _visible(parser):
            for spelling in _spellings(action):
                for concept, (canonical, variants) in CONCEPTS.items():
                    if spelling in variants:
                        shown.append(f"{verb} {spelling}: {concept} is spelled {canonical}")
    assert shown == []


def test_every_canonical_spelling_is_in_use() -> None:
    """The table is no stale list: each canonical spelling is some verb's."""
    used = {
        spelling for _, parser in _verbs() for action in _visible(parser) for spelling in _spellings(action)
    }
    assert {canonical for canonical, _ in CONCEPTS.values()} <= used


def test_a_model_argument_is_the_positional_model() -> None:
    wrong = []
    for verb, parser in _verbs():
        for action in parser._actions:
            positional = not action.option_strings and action.dest in MODEL_DESTS
            if positional and (action.metavar != flags.MODEL_METAVAR or action.nargs not in (None, 1)):
                wrong.append(f"{verb}: {action.dest} shown as {action.metavar}, nargs {action.nargs}")
            if action.option_strings and action.dest in MODEL_DESTS and action.help != argparse.SUPPRESS:
                wrong.append(f"{verb}: {action.option_strings} names a model by a flag")
    assert wrong == []
    runs_a_model = {verb for verb, parser in _verbs() if any(a.metavar == "MODEL" for a in parser._actions)}
    assert {"estep", "evaluate", "finetune-eval", "likelihood", "serve"} <= runs_a_model


def test_tasks_are_a_list_and_task_is_one_choice() -> None:
    wrong = []
    for verb, parser in _verbs():
        for action in _visible(parser):
            if action.dest == "tasks" and action.option_strings != ["--tasks"]:
                wrong.append(f"{verb}: {action.option_strings}")
            if SINGLE_TASK in action.option_strings and not (action.choices and action.nargs is None):
                wrong.append(f"{verb}: {SINGLE_TASK} must name exactly one of its choices")
    assert wrong == []


def test_budgets_share_destinations_and_types() -> None:
    """A concept's canonical option stores to one destination with a range-checked type everywhere."""
    wrong = []
    for flag, dest in (
        ("--max-thought-tokens", "max_thought_tokens"),
        ("--max-answer-tokens", "max_answer_tokens"),
        ("--context-tokens", None),
    ):
        for verb, parser in _verbs():
            action = _option(parser, flag)
            if action is None:
                continue
            if dest is not None and action.dest != dest:
                wrong.append(f"{verb} {flag}: destination {action.dest}")
            if action.type not in NUMERIC_TYPES:
                wrong.append(f"{verb} {flag}: type {action.type}")
    assert wrong == []


def _config_option(parser: argparse.ArgumentParser) -> str:
    return str(parser.get_default("config_option") or "--config")


def test_every_verb_with_options_takes_config_and_set() -> None:
    """A verb with any option besides its output, its options file and --no-progress has options to
    configure: it takes --set and an options file (--config, or the option it names, such as
    synthesize's --teacher, whose keys --set overrides). A verb whose options are a typed
    configuration's (testbed generate) takes them too; merge, with nothing to configure, neither."""
    missing = []
    for verb, parser in _verbs():
        settings = [
            action
            for action in _visible(parser)
            if action.option_strings and not set(action.option_strings) & NOT_SETTINGS
        ]
        has_set = _option(parser, "--set")
        has_file = _option(parser, _config_option(parser))
        if settings and (has_set is None or has_file is None):
            missing.append(verb)
        if has_set is not None:
            assert has_set.nargs == "*" and has_set.metavar == "KEY=VALUE" and has_set.default == [], verb
    assert missing == []
    verbs = dict(_verbs())
    assert _option(verbs["merge"], "--config") is None and _option(verbs["merge"], "--set") is None
    assert _option(verbs["testbed generate"], "--config") and _option(verbs["testbed generate"], "--set")


def _calls(function: Any, module: types.ModuleType) -> str:
    """The source of ``function`` and of the functions of its module it calls."""
    source = inspect.getsource(function)
    called = [
        getattr(module, name)
        for name in set(re.findall(r"\b(_?\w+)\(", source))
        if inspect.isfunction(getattr(module, name, None)) and getattr(module, name) is not function
    ]
    return source + "".join(inspect.getsource(other) for other in called)


def test_every_verb_with_progress_bars_takes_no_progress() -> None:
    """A verb shows progress when its handler (or a function of its module that it calls) draws a
    tqdm bar or passes a ``progress`` setting on; it says so with ``shows_progress`` and takes
    ``--no-progress``. A verb with ``--no-progress`` shows progress."""
    import sys

    wrong = []
    showing = set()
    for verb, parser in _verbs():
        handler = parser.get_default("handler")
        source = _calls(handler, sys.modules[handler.__module__])
        draws = bool(re.search(r"\btqdm\b|\bprogress\b", source))
        declared = bool(parser.get_default("shows_progress"))
        option = _option(parser, "--no-progress")
        if draws and not declared:
            wrong.append(f"{verb}: draws progress bars but does not say so (add_progress_option)")
        if declared != (option is not None):
            wrong.append(f"{verb}: shows_progress {declared} but --no-progress {option is not None}")
        if option is not None:
            assert isinstance(option, argparse._StoreTrueAction) and option.dest == "no_progress", verb
            showing.add(verb)
    assert wrong == []
    assert {"chunk", "synthesize", "estep", "em", "train", "evaluate", "finetune-eval", "demo"} <= showing


# --- deprecated aliases ---------------------------------------------------------------------------


def _aliases() -> list[tuple[str, argparse.ArgumentParser, flags.DeprecatedAlias]]:
    return [
        (verb, parser, action)
        for verb, parser in _verbs()
        for action in parser._actions
        if isinstance(action, flags.DeprecatedAlias)
    ]


def _required(parser: argparse.ArgumentParser, leave_out: str | None = None) -> list[str]:
    """Words that satisfy a verb's required arguments (``leave_out``: a positional's destination)."""
    words: list[str] = []
    for action in parser._actions:
        value = str(next(iter(action.choices))) if action.choices else "some/file.parquet"
        if action.option_strings and action.required:
            words += [action.option_strings[0], value]
        elif not action.option_strings and action.nargs not in ("*", "?") and action.dest != leave_out:
            words.append(value)
    return words


def _canonical(parser: argparse.ArgumentParser, alias: flags.DeprecatedAlias) -> argparse.Action:
    if alias.positional:
        return next(a for a in parser._actions if not a.option_strings and a.dest == alias.dest)
    action = _option(parser, alias.canonical)
    assert action is not None, alias.canonical
    return action


def test_the_old_spellings_are_kept_as_hidden_aliases() -> None:
    found = {(verb, alias.option_strings[0]) for verb, _, alias in _aliases()}
    assert found >= KEPT_ALIASES
    for verb, parser, alias in _aliases():
        assert alias.help == argparse.SUPPRESS
        usage = parser.format_help()
        for old in alias.option_strings:
            assert old not in usage.replace(alias.canonical, ""), (verb, old)
        canonical = _canonical(parser, alias)
        assert canonical.help != argparse.SUPPRESS and canonical.dest == alias.dest, (
            verb,
            alias.option_strings,
        )


@pytest.mark.parametrize("form", ["separate", "equals", "abbreviated"])
def test_a_deprecated_alias_parses_to_the_canonical_destination_with_one_warning(
    form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for verb, parser, alias in _aliases():
        canonical = _canonical(parser, alias)
        value = "7" if canonical.type in (int, float, *NUMERIC_TYPES) else "some/model"
        expected = canonical.type(value) if callable(canonical.type) else value
        old = alias.option_strings[0]
        if form == "abbreviated":
            old = old[:-1]  # argparse takes a unique prefix; so does the rewrite
        given = [f"{old}={value}"] if form == "equals" else [old, value]
        argv = [*verb.split(), *_required(parser, alias.dest if alias.positional else None), *given]
        capsys.readouterr()
        args = build_parser().parse_args(argv)
        assert getattr(args, alias.dest) == expected, (verb, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("latent-thoughts: warning: "), (verb, err)
        assert f"{alias.option_strings[0]} is deprecated; use {alias.canonical}" in err[0], err


def test_the_canonical_spelling_prints_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    for verb, parser, alias in _aliases():
        canonical = _canonical(parser, alias)
        value = "7" if canonical.type in (int, float, *NUMERIC_TYPES) else "some/model"
        given = [] if alias.positional else [alias.canonical, value]
        capsys.readouterr()
        build_parser().parse_args([*verb.split(), *_required(parser), *given])
        assert capsys.readouterr().err == "", verb


def test_estep_takes_model_as_its_positional_or_the_old_flag(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--chunks", "c.parquet", "--out", "s.parquet", "--k", "2"]
    new = build_parser().parse_args(["estep", "m", *common])
    # the old flag anywhere, even after an option of several values
    old = build_parser().parse_args(["estep", *common, "--set", "seed=1", "--model", "m"])
    assert new.model == old.model == Path("m") and old.set == ["seed=1"] and old.k == 2
    assert "--model is deprecated; use MODEL" in capsys.readouterr().err
    assert main(["estep", *common]) == 2
    assert "required: MODEL" in capsys.readouterr().err


def test_positional_overrides_are_the_deprecated_spelling_of_set(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["train", "--config", "t.yaml", "optim.lr=1e-4", "--set", "seed=2"])
    assert args.overrides == ["optim.lr=1e-4"] and args.set == ["seed=2"]
    assert "KEY=VALUE without --set is deprecated; use --set KEY=VALUE" in capsys.readouterr().err
    args = build_parser().parse_args(["testbed", "generate", "--out", "d", "--set", "digits=3"])
    assert args.set == ["digits=3"] and args.overrides == []
    assert capsys.readouterr().err == ""


def test_train_out_is_output_dir(tmp_path: Path) -> None:
    from latent_thoughts.cli.train import _config
    from tests.test_cli_errors import TRAIN_CONFIG

    for spelling in ("--out", "--output-dir"):
        args = build_parser().parse_args(["train", "--config", str(TRAIN_CONFIG), spelling, str(tmp_path)])
        assert _config(args).output_dir == str(tmp_path)
    args = build_parser().parse_args(["train", "--config", str(TRAIN_CONFIG), "--no-progress"])
    assert _config(args).progress_bar is False


# --- options from a typed configuration: estep's flags are EStepConfig's fields -------------------


def test_estep_flags_are_the_fields_of_estep_config() -> None:
    from latent_thoughts.cli.estep import ESTEP_FIELDS, options
    from latent_thoughts.config import load_config
    from latent_thoughts.em.stage import EStepConfig

    assert set(ESTEP_FIELDS) == set(EStepConfig.model_fields)
    assert {"k", "max_thought_tokens", "temperature", "context_tokens", "policy", "seed"} <= set(ESTEP_FIELDS)
    assert {"batch_chunks", "batch_tokens"} <= set(ESTEP_FIELDS)
    parser = dict(_verbs())["estep"]
    for name in ESTEP_FIELDS:
        action = _option(parser, f"--{name.replace('_', '-')}")
        assert action is not None and action.dest == name and action.default is None, name
        description = EStepConfig.model_fields[name].description
        assert description and str(action.help).startswith(description), name
    given = {
        "k": "3",
        "max_thought_tokens": "9",
        "temperature": "0.5",
        "context_tokens": "64",
        "policy": "highest",
        "seed": "0",
        "batch_chunks": "2",
        "batch_tokens": "512",
    }
    argv = ["estep", "m", "--chunks", "c", "--out", "o", "--set", "k=8"]
    argv += [word for name, value in given.items() for word in (f"--{name.replace('_', '-')}", value)]
    config = load_config(EStepConfig, None, options(build_parser().parse_args(argv)))
    assert config.model_dump() == EStepConfig.model_validate(given).model_dump()  # the flags win over --set
    unset = build_parser().parse_args(["estep", "m", "--chunks", "c", "--out", "o"])
    assert options(unset) == []  # nothing given: the configuration's defaults stand


@pytest.mark.parametrize(
    ("flag", "value"), [("--k", "0"), ("--temperature", "0"), ("--seed", "-1"), ("--batch-tokens", "nan")]
)
def test_estep_flags_keep_the_fields_range_checks(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estep", "m", "--chunks", "c", "--out", "o", f"{flag}={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {flag}:" in err[0]


def test_field_types_follow_the_constraints() -> None:
    from typing import Literal

    from pydantic import BaseModel, Field

    from latent_thoughts.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int

    class Options(BaseModel):
        count: int = Field(1, ge=1)
        offset: int = Field(0, ge=0)
        above: int | None = Field(None, gt=8)
        shift: int = 0
        rate: float = Field(1.0, gt=0)
        delay: float = Field(0.0, ge=0)
        mode: Literal["a", "b"] = "a"
        name: str = "x"

    kinds = {name: flags.field_type(f.annotation, f.metadata) for name, f in Options.model_fields.items()}
    assert kinds == {
        "count": (positive_int, None),
        "offset": (non_negative_int, None),
        "above": (positive_int, None),
        "shift": (int, None),
        "rate": (positive_float, None),
        "delay": (non_negative_float, None),
        "mode": (None, ["a", "b"]),
        "name": (None, None),
    }


# --- --config and --set of a verb whose options are its flags -------------------------------------


def test_an_options_file_sets_flags_and_the_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "evaluate.yaml"
    config.write_text("tasks: [gsm8k, math]\nlimit: 5\nmax-thought-tokens: 32\nno_progress: true\nshots: 0\n")
    argv = ["evaluate", "m", "--config", str(config), "--set", "limit=7", "shots=2", "--shots", "1"]
    args = build_parser().parse_args(argv)
    assert args.tasks == "gsm8k,math" and args.max_thought_tokens == 32 and args.no_progress is True
    assert args.limit == 7  # --set over the file
    assert args.shots == 1  # the command line over --set
    assert Path(args.config) in {Path(p) for p in args.run_paths(args).inputs if p is not None}
    # an option exclusive with one given on the command line is left to the command line
    tune = ["finetune-eval", "m", "--task", "gsm8k", "--out", "o", "--set", "epochs=2"]
    assert build_parser().parse_args([*tune, "--steps", "3"]).steps == 3
    assert build_parser().parse_args(tune).epochs == 2.0
    # required options may come from the file
    view = tmp_path / "view.yaml"
    view.write_text("chunks: c.parquet\nthoughts: t.parquet\nwidth: 0\n")
    args = build_parser().parse_args(["thoughts", "--config", str(view)])
    assert (args.chunks, args.thoughts, args.width) == (Path("c.parquet"), Path("t.parquet"), 0)


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--set", "limt=5"], "did you mean 'limit'"),
        (["--set", "model=x"], "'model' is the argument MODEL"),
        (["--set", "no_progress=3"], "no_progress: expected true or false"),
        (["--set", "limit=0"], "argument --limit"),
        (["--set", "justtext"], "key=value"),
        (["--config", "/nonexistent/options.yaml"], "configuration file not found"),
    ],
)
def test_a_bad_options_file_or_override_is_one_line(
    extra: list[str], culprit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "m", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latent-thoughts: error: evaluate: "), err
    assert culprit in err[0], err
