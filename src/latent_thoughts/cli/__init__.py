"""The ``latent-thoughts`` command line: one verb per stage, no logic of its own.

Every module in this package that defines ``register(subparsers)`` contributes a verb. A verb's
module keeps heavy imports (torch, transformers) inside its handler so that ``--help`` stays fast.
Handlers receive the parsed arguments and return an exit status. Every verb also declares, once,
what a run reads and writes: ``set_defaults(run_paths=FUNCTION)``, a function of the parsed
arguments returning :class:`~latent_thoughts.outputs.RunPaths`; :func:`main` checks it with the one
guard, :func:`~latent_thoughts.outputs.check_run`, before the handler does any work. A user's mistake never ends in a
traceback: a :class:`LatentThoughtsError` becomes ``latent-thoughts: error: <one line>`` on stderr
and exit status 2; an operating-system error on a named file (a full disk, no permission, a missing
or read-only path) becomes the same kind of line and exit status 1. ``--verbose`` adds the
traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from latent_thoughts import __version__
from latent_thoughts.atomic import disk_error
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.outputs import check_run

PROG = "latent-thoughts"

# Operating-system errors that mean "this path, on this machine", not a bug of the program.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EMFILE,
}


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors read like every other error: one line, ``latent-thoughts: error:
    VERB: ...``, exit status 2 (``VERB --help`` shows the usage); the verbs' sub-parsers are of this
    class too."""

    def error(self, message: str) -> NoReturn:
        verb = self.prog.removeprefix(PROG).strip()
        where = f"{verb}: " if verb else ""
        self.exit(2, f"{PROG}: error: {where}{' '.join(message.split())}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse with the shared spelling rules first applied (:func:`~latent_thoughts.cli.flags.prepare_args`):
        a deprecated alias rewritten to its canonical option, with one warning line; a verb's
        ``--config`` file and ``--set`` overrides read as its options."""
        from latent_thoughts.cli.flags import prepare_args

        words = prepare_args(self, sys.argv[1:] if args is None else args)
        return super().parse_known_args(words, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per verb module in this package."""
    parser = _Parser(
        prog=PROG,
        description="Learn from the latent thoughts behind text: chunk, synthesize, train, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"latent-thoughts {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # a usage error is a status, as every other error; --help still exits
        if exit.code != 2:
            raise
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    run_paths = getattr(args, "run_paths", None)
    if run_paths is None:  # a bug: every verb declares what it reads and writes
        raise RuntimeError(f"{args.verb}: the verb declares no run_paths (its inputs and outputs)")
    try:
        check_run(run_paths(args))
        return int(handler(args) or 0)
    except LatentThoughtsError as exc:
        return _fail(str(exc), exc.exit_status, args.verbose)
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        return _fail(str(disk_error(exc.filename or "output", exc) or _os_message(exc)), 1, args.verbose)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; finished work is kept and a rerun resumes it", file=sys.stderr)
        return 130


def _os_message(exc: OSError) -> str:
    """``PATH: reason`` for an operating-system error on a file."""
    where = exc.filename if exc.filename is not None else "a file"
    also = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{where}{also}: {exc.strerror or exc}"


def _fail(message: str, status: int, verbose: bool) -> int:
    """Print ``latent-thoughts: error: MESSAGE`` (one line; the traceback too with ``--verbose``)."""
    if verbose:
        logging.getLogger(__name__).exception("traceback of the error below")
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
