"""The ``latent-thoughts`` command line: one verb per stage, no logic of its own.

Every module in this package that defines ``register(subparsers)`` contributes a verb. A verb's
module keeps heavy imports (torch, transformers) inside its handler so that ``--help`` stays fast.
Handlers receive the parsed arguments and return an exit status. A :class:`LatentThoughtsError`
becomes ``error: <one line>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from latent_thoughts import __version__
from latent_thoughts.errors import LatentThoughtsError


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per verb module in this package."""
    parser = argparse.ArgumentParser(
        prog="latent-thoughts",
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 1
    try:
        return int(handler(args) or 0)
    except LatentThoughtsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished work is kept and a rerun resumes it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
