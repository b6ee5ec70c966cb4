"""``python -m latent_thoughts.generation.run_shard SPEC.json [--shard i/N | --merge N]``: one job of a stage.

``SPEC.json`` is a generation stage's serialised request
(:func:`~latent_thoughts.generation.stage.stage_spec`, written by the Slurm launcher); it names the
stage class, so this entry point runs any stage without knowing it. ``--shard i/N`` runs shard i of
N (:func:`~latent_thoughts.generation.stage.run_stage`), ``--merge N`` joins the outputs of the N
shards (:func:`~latent_thoughts.generation.stage.merge_stage`); neither runs the whole file. The
summary is printed as one JSON line; an error is one line, ``latent-thoughts: error: ...``, with the
exit status of the error (2, or 1 for a full disk).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.shards import parse_shard
from latent_thoughts.generation.stage import GenerationStage, merge_stage, run_stage, stage_from_spec


def read_spec(path: Path) -> GenerationStage:
    """The stage of a spec file; an unreadable or foreign file is a one-line error naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not JSON ({exc})"
        raise LatentThoughtsError(f"{path}: cannot read the stage spec ({reason})") from None
    return stage_from_spec(data, str(path))


def parser() -> argparse.ArgumentParser:
    """The entry point's arguments."""
    command = argparse.ArgumentParser(
        prog="python -m latent_thoughts.generation.run_shard",
        description="Run one shard of a generation stage from its spec file, or merge its shards.",
    )
    command.add_argument("spec", type=Path, help="the stage spec (JSON) the launcher wrote")
    work = command.add_mutually_exclusive_group()
    work.add_argument("--shard", help="i/N: run shard i of N (0-based); default the whole chunk file")
    work.add_argument("--merge", type=int, metavar="N", help="join the outputs of the N shards")
    return command


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Run the job ``argv`` names; returns its summary. What submitit runs in a Slurm job."""
    args = parser().parse_args(list(argv))
    stage = read_spec(args.spec)
    if args.merge is not None:
        if args.merge < 2:
            raise LatentThoughtsError(
                f"--merge {args.merge}: need at least 2 shards (one is the whole output)"
            )
        return merge_stage(stage, args.merge)
    return run_stage(stage.with_shard(parse_shard(args.shard) if args.shard else None))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: the job's summary as one JSON line, or a one-line error and its exit status."""
    try:
        summary = run(sys.argv[1:] if argv is None else argv)
    except LatentThoughtsError as exc:
        print(f"latent-thoughts: error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
