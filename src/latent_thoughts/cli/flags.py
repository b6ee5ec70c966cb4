"""One spelling per concept on every verb: the options verbs share, and the old spellings kept working.

The canonical spellings (``tests/test_cli_spelling.py`` walks the parser and holds every verb to them):

- ``MODEL``: the positional model argument of every verb that runs a model (a model folder, or an
  engine file where the verb can run one);
- ``--out``: what a run writes (a file or a folder);
- ``--max-thought-tokens``, ``--max-answer-tokens``, ``--context-tokens``: the token budgets of a
  thought, of an answer, and of one scored or sampled sequence;
- ``--tasks``: a comma-separated list of benchmark tasks (``finetune-eval``, which fine-tunes one
  copy on one task, takes the single ``--task``);
- ``--config FILE`` and ``--set KEY=VALUE ...``: a verb's options from a YAML file and overrides
  (:func:`add_options_file` for a verb whose options are its flags; a verb with a typed
  configuration reads its own);
- ``--no-progress``: no progress bars (:func:`add_progress_option`).

An old spelling stays as a hidden deprecated alias (:func:`deprecated_alias`): it still parses, to the
canonical option, and prints one line, ``latent-thoughts: warning: VERB: --old is deprecated; use
--new``. The parser of every verb rewrites aliases (and reads an options file) before parsing
(:func:`prepare_args`, called by ``cli._Parser``).

:func:`add_config_fields` adds a verb's flags from fields of a typed configuration (a pydantic model,
such as :class:`~latent_thoughts.em.stage.EStepConfig`): the flag's name, type, range check and help
come from the field, so they cannot drift from the configuration.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from latent_thoughts.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int

MODEL_METAVAR = "MODEL"
"""The metavar of the positional model argument of every verb that runs a model."""


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of ``canonical`` (an option, or ``MODEL``: a positional).

    :func:`prepare_args` rewrites it to the canonical spelling before parsing, so this action runs
    only if that rewrite missed it; it then warns and stores into the canonical destination."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        canonical: str = "",
        nargs: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, nargs=nargs, help=argparse.SUPPRESS, **kwargs)
        self.canonical = canonical

    @property
    def positional(self) -> bool:
        """Whether the canonical spelling is a positional argument (``MODEL``)."""
        return not self.canonical.startswith("-")

    @property
    def spelling(self) -> str:
        """The canonical spelling as the warning names it."""
        return f"{self.canonical} (positional, no flag)" if self.positional else self.canonical

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warn_deprecated(parser, option_string or self.option_strings[0], self.spelling)
        setattr(namespace, self.dest, values)


class DeprecatedOverrides(argparse.Action):
    """Positional ``KEY=VALUE`` overrides, the old spelling of ``--set KEY=VALUE``: still applied,
    with one warning line when any is given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values:
            warn_deprecated(parser, "KEY=VALUE without --set", "--set KEY=VALUE")
        setattr(namespace, self.dest, list(values or []))


class OptionsFile(argparse.Action):
    """``--config FILE`` of a verb whose options are its flags: the file's keys are the options'
    names (``max_thought_tokens: 64``); :func:`prepare_args` reads it before parsing."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)


def warn_deprecated(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Print ``latent-thoughts: warning: VERB: OLD is deprecated; use NEW`` (one line, stderr)."""
    prog, _, verb = parser.prog.partition(" ")
    where = f"{verb}: " if verb else ""
    print(f"{prog}: warning: {where}{old} is deprecated; use {new}", file=sys.stderr)


def deprecated_alias(
    parser: argparse.ArgumentParser | Any, *old: str, canonical: str, dest: str | None = None
) -> None:
    """Keep the old spellings ``old`` of the option ``canonical`` (``"--out"``) or of the positional
    ``MODEL`` (``canonical="MODEL"``, ``dest`` the positional's) working, hidden from ``--help``.

    The alias takes one value; it has no type of its own (the canonical option's type checks the
    value once the alias is rewritten)."""
    if dest is None:
        dest = canonical.lstrip("-").replace("-", "_")
    parser.add_argument(
        *old, action=DeprecatedAlias, dest=dest, canonical=canonical, default=argparse.SUPPRESS
    )


def deprecated_overrides(parser: argparse.ArgumentParser, dest: str = "overrides") -> None:
    """Positional ``KEY=VALUE`` overrides, hidden from ``--help``: the old spelling of ``--set``."""
    parser.add_argument(
        dest, nargs="*", metavar="KEY=VALUE", action=DeprecatedOverrides, default=[], help=argparse.SUPPRESS
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` of a verb that draws progress bars (``shows_progress`` on the parser's
    defaults says it does)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(shows_progress=True)


def add_options_file(parser: argparse.ArgumentParser, what: str = "options") -> None:
    """``--config FILE`` and ``--set KEY=VALUE ...`` for a verb whose options are its flags.

    Keys are the options' long names with underscores (``max_thought_tokens``, ``tasks``); values as
    on the command line (a list is joined with commas, ``true`` sets a switch). The command line wins
    over ``--set``, which wins over the file."""
    parser.add_argument(
        "--config",
        action=OptionsFile,
        metavar="FILE",
        help=f"YAML file of {what}: keys are the options' names, e.g. max_thought_tokens: 64",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="option overrides, e.g. limit=50 (over --config; a flag on the command line wins)",
    )


# --- flags from a typed configuration -------------------------------------------------------------


def _bounds(metadata: Iterable[Any]) -> tuple[float | None, bool]:
    """The lower bound of a field's constraints and whether it is strict (``gt``)."""
    lower: float | None = None
    strict = False
    for item in metadata:
        gt, ge = getattr(item, "gt", None), getattr(item, "ge", None)
        if gt is not None and (lower is None or gt >= lower):
            lower, strict = float(gt), True
        if ge is not None and (lower is None or ge > lower):
            lower, strict = float(ge), False
    return lower, strict


def _base_type(annotation: Any) -> Any:
    """``int`` of ``int | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def field_type(annotation: Any, metadata: Iterable[Any]) -> tuple[Any, list[Any] | None]:
    """The argparse ``type`` (a range-checked one of :mod:`latent_thoughts.cli.numbers` where the field's
    bounds allow) and ``choices`` of a configuration field."""
    base = _base_type(annotation)
    if get_origin(base) is Literal:
        return None, list(get_args(base))
    lower, strict = _bounds(metadata)
    if base is int:
        if lower is not None and (lower >= 1 or (strict and lower >= 0)):
            return positive_int, None
        if lower is not None and lower >= 0:
            return non_negative_int, None
        return int, None
    if base is float:
        if lower is not None and (lower > 0 or (strict and lower >= 0)):
            return positive_float, None
        if lower is not None and lower >= 0:
            return non_negative_float, None
        return float, None
    if base is Path:
        return Path, None
    return None, None


def add_config_fields(
    parser: argparse.ArgumentParser | Any,
    config: type[BaseModel],
    names: Sequence[str],
    *,
    types: Mapping[str, Any] | None = None,
) -> list[str]:
    """Add ``--field-name`` for each field ``names`` of ``config``: type, range check and choices from
    the field's annotation and constraints (``types`` overrides a field's argparse type), help from its
    description and default. Every flag defaults to None: only the flags given override the
    configuration (:func:`config_overrides`). Returns the names."""
    for name in names:
        field = config.model_fields[name]
        kind, choices = field_type(field.annotation, field.metadata)
        if types and name in types:
            kind = types[name]
        help_text = field.description or name.replace("_", " ")
        if field.default is not None and "default" not in help_text:
            help_text += f" (default {field.default})"
        if _base_type(field.annotation) is bool:
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=kind, choices=choices, default=None, help=help_text
        )
    return list(names)


def config_overrides(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """``key=value`` overrides of the flags of :func:`add_config_fields` that were given."""
    found = []
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            found.append(f"{name}={str(value).lower() if isinstance(value, bool) else value}")
    return found


# --- before parsing: aliases rewritten, the options file read --------------------------------------


def _resolve(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    """The action of ``flag`` as argparse resolves it: an exact option string, else (abbreviations
    allowed) the one option it is a prefix of."""
    actions = parser._option_string_actions
    if flag in actions:
        return actions[flag]
    if not parser.allow_abbrev:
        return None
    found = {id(action): action for option, action in actions.items() if option.startswith(flag)}
    return next(iter(found.values())) if len(found) == 1 else None


def _rewrite_aliases(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """``args`` with every deprecated alias in its canonical spelling (a positional's value moved to
    the front), each alias warned about once."""
    if not any(isinstance(action, DeprecatedAlias) for action in parser._actions):
        return args
    front: list[str] = []
    out: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--":
            out.extend(args[index:])
            break
        flag, equals, value = token.partition("=")
        action = _resolve(parser, flag) if token.startswith("--") else None
        if not isinstance(action, DeprecatedAlias):
            out.append(token)
            index += 1
            continue
        warn_deprecated(parser, action.option_strings[0], action.spelling)
        if not action.positional:
            out.append(action.canonical + equals + value)
            index += 1
            continue
        if equals:
            front.append(value)
            index += 1
        elif index + 1 < len(args):
            front.append(args[index + 1])
            index += 2
        else:
            parser.error(f"argument {flag}: expected one argument")
    return [*front, *out]


class _Stop(Exception):
    pass


class _PreParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _Stop(message)


def _file_and_overrides(parser: argparse.ArgumentParser, args: list[str]) -> tuple[str | None, list[str]]:
    """``--config`` and ``--set`` of ``args``, read as the verb's parser will read them."""
    spelled = []
    for token in args:
        flag, equals, value = token.partition("=")
        action = _resolve(parser, flag) if token.startswith("--") else None
        if action is not None and action.dest in ("config", "set"):
            token = f"--{action.dest}{equals}{value}"
        spelled.append(token)
    pre = _PreParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--set", nargs="*", default=[])
    try:
        known, _ = pre.parse_known_args(spelled)
    except _Stop:
        return None, []  # the verb's parser reports it
    return known.config, list(known.set)


def _given(parser: argparse.ArgumentParser, args: list[str]) -> set[int]:
    """The ids of the actions ``args`` names explicitly."""
    given = set()
    for token in args:
        if token == "--":
            break
        if token.startswith("--"):
            action = _resolve(parser, token.partition("=")[0])
            if action is not None:
                given.add(id(action))
    return given


def _as_args(action: argparse.Action, key: str, value: Any) -> list[str]:
    """The command-line words that give ``value`` to the option of ``action``."""
    from latent_thoughts.config import ConfigError

    flag = next(
        (option for option in action.option_strings if option.startswith("--")), action.option_strings[0]
    )
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        on = value if isinstance(action, argparse._StoreTrueAction) else not value
        return [flag] if on else []
    if value is None:
        return []
    if isinstance(value, dict):
        raise ConfigError(f"{key}: expected a value, got a mapping")
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        return [flag, *(str(item) for item in items)]
    text = ",".join(str(item) for item in value) if isinstance(value, list) else str(value)
    return [f"{flag}={text}"]


def _settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options an options file may set, by destination."""
    skip = (argparse._HelpAction, argparse._VersionAction, DeprecatedAlias, OptionsFile)
    return {
        action.dest: action
        for action in parser._actions
        if action.option_strings and not isinstance(action, skip) and action.dest != "set"
    }


def _options_file_args(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """The command-line words of the verb's ``--config`` file and ``--set`` overrides (the options
    ``args`` gives explicitly, and those exclusive with them, left out: the command line wins)."""
    from latent_thoughts.config import ConfigError, deep_merge, parse_overrides, read_yaml

    path, overrides = _file_and_overrides(parser, args)
    if path is None and not overrides:
        return []
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    values = deep_merge(values, parse_overrides(overrides))
    settable = _settable(parser)
    given = _given(parser, args)
    for group in parser._mutually_exclusive_groups:
        if any(id(action) in given for action in group._group_actions):
            given |= {id(action) for action in group._group_actions}
    source = path if path is not None else "--set"
    words: list[str] = []
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        action = settable.get(dest)
        if action is None:
            positional = [
                a.metavar or a.dest for a in parser._actions if not a.option_strings and a.dest == dest
            ]
            if positional:
                raise ConfigError(
                    f"{source}: {key!r} is the argument {positional[0]}; give it on the command line"
                )
            close = difflib.get_close_matches(dest, list(settable), n=1, cutoff=0.5)
            hint = (
                f"; did you mean {close[0]!r}?" if close else f" (valid keys: {', '.join(sorted(settable))})"
            )
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        if id(action) not in given:
            words += _as_args(action, str(key), value)
    return words


def prepare_args(parser: argparse.ArgumentParser, args: Sequence[str]) -> list[str]:
    """``args`` as the verb's parser reads them: deprecated aliases in their canonical spelling (one
    warning each), then, for a verb with :func:`add_options_file`, its ``--config`` file's and
    ``--set`` options in front (a bad file or key is the parser's one-line error)."""
    from latent_thoughts.errors import LatentThoughtsError

    words = _rewrite_aliases(parser, list(args))
    if any(isinstance(action, OptionsFile) for action in parser._actions):
        try:
            words = [*_options_file_args(parser, words), *words]
        except LatentThoughtsError as exc:
            parser.error(str(exc))
    return words


__all__ = [
    "MODEL_METAVAR",
    "DeprecatedAlias",
    "DeprecatedOverrides",
    "OptionsFile",
    "add_config_fields",
    "add_options_file",
    "add_progress_option",
    "config_overrides",
    "deprecated_alias",
    "deprecated_overrides",
    "field_type",
    "prepare_args",
    "warn_deprecated",
]
