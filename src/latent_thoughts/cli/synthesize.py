"""``latent-thoughts synthesize | merge | thoughts``: teacher synthesis, joining shards, reading thoughts."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from latent_thoughts.cli.executors import add_executor_options
from latent_thoughts.cli.flags import add_options_file, add_progress_option
from latent_thoughts.cli.numbers import non_negative_int, positive_int
from latent_thoughts.outputs import RunPaths


def register(subparsers: Any) -> None:
    """Add the ``synthesize``, ``merge`` and ``thoughts`` verbs."""
    parser = subparsers.add_parser(
        "synthesize",
        help="a teacher writes one latent thought per chunk (or rephrases documents)",
        description=(
            "Run a teacher (TEACHER.yaml: kind http, transformers or oracle) over a chunk file. Answers are "
            "cached as they come, so a rerun or a killed run resumes without asking again; failures "
            "(refusals, empty answers, errors) go to NAME.failures.parquet, never into the thoughts. An answer "
            "cut at sampling.max_new_tokens is no failure: the teacher's on_cut keeps it, asks again with a "
            "larger budget (retry_longer) or leaves the chunk raw (raw, the default)."
        ),
    )
    parser.add_argument("--chunks", required=True, type=Path, help="chunk file from `latent-thoughts chunk`")
    parser.add_argument("--teacher", required=True, type=Path, help="TEACHER.yaml (see configs/teachers/)")
    parser.add_argument("--out", required=True, type=Path, help="output, e.g. RUN/thoughts/NAME.parquet")
    parser.add_argument(
        "--shard",
        help="i/N: this job's share of the documents (0 <= i < N); join with `latent-thoughts merge`",
    )
    parser.add_argument(
        "--mode",
        choices=("thoughts", "rephrase"),
        default="thoughts",
        help="latent thoughts, or WRAP rephrasing",
    )
    parser.add_argument(
        "--style",
        default="wrap",
        help="rephrase style: wrap (one of easy/hard/wiki/qa drawn per document), cot, or one of easy/hard/wiki/qa",
    )
    parser.add_argument(
        "--retry-failures",
        action="store_true",
        help="send the recorded failures again, only them (an answer cut at the token limit is none: see on_cut)",
    )
    parser.add_argument(
        "--batch-api", action="store_true", help="go through the OpenAI Batch API (kind http)"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="with --batch-api: submit (or check) batches and return at once (exit status 3 while in flight)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="project tokens and cost from a sample; send nothing"
    )
    parser.add_argument(
        "--sample", type=positive_int, default=200, help="chunks the dry run tokenises (default 200)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the dry run's sample")
    add_progress_option(parser)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="teacher overrides, e.g. sampling.max_new_tokens=512 (the teacher file is the options file)",
    )
    add_executor_options(parser)
    # The options a synthesis run configures are its teacher's: --teacher is its options file.
    parser.set_defaults(handler=run_synthesize, run_paths=synthesize_paths, config_option="--teacher")

    merge = subparsers.add_parser(
        "merge",
        help="join the shard outputs of a synthesis or E-step run",
        description=(
            "Join NAME.shard-i-of-N.parquet files (of `synthesize`, `estep` or any generation stage: the "
            "shards' metadata names the stage) into NAME.parquet, equal to an unsharded run's output."
        ),
    )
    merge.add_argument(
        "--out", required=True, type=Path, help="the merged output, e.g. RUN/thoughts/NAME.parquet"
    )
    merge.add_argument(
        "shards", nargs="*", type=Path, help="shard outputs (default: all NAME.shard-*-of-N.parquet)"
    )
    merge.set_defaults(handler=run_merge, run_paths=merge_paths)

    view = subparsers.add_parser(
        "thoughts",
        help="print a document with its thoughts interleaved",
        description="Print each chunk of a document followed by its thought (or the reason it has none).",
    )
    view.add_argument("--chunks", required=True, type=Path, help="chunk file")
    view.add_argument("--thoughts", required=True, type=Path, help="thoughts file from synthesize or merge")
    view.add_argument("--doc", help="document id (default: the first document)")
    view.add_argument(
        "--width", type=non_negative_int, default=100, help="wrap thoughts at this width (0: no wrapping)"
    )
    add_options_file(view, "viewing options")
    view.set_defaults(handler=run_thoughts, run_paths=thoughts_paths)


def thoughts_paths(args: argparse.Namespace) -> RunPaths:
    """The chunk and thoughts files (and the options file) read; nothing written."""
    return RunPaths(inputs=[args.chunks, args.thoughts, args.config])


def synthesize_paths(args: argparse.Namespace) -> RunPaths:
    """The chunk file and the teacher read; the thoughts, failures, summary and cache written (a dry
    run writes nothing)."""
    from latent_thoughts.generation.outputs import output_paths
    from latent_thoughts.generation.shards import parse_shard

    inputs = [args.chunks, args.teacher]
    if args.dry_run:
        return RunPaths(inputs=inputs)
    paths = output_paths(args.out, parse_shard(args.shard) if args.shard else None)
    return RunPaths(
        inputs=inputs,
        files=[paths.result, paths.failures, paths.summary, paths.batch_state],
        folders=[paths.cache_dir],
    )


def merge_paths(args: argparse.Namespace) -> RunPaths:
    """The shard outputs (with their failures and summary files) read; the merged files written."""
    from latent_thoughts.generation.outputs import output_paths
    from latent_thoughts.generation.shards import shard_files

    shards = list(args.shards) or shard_files(args.out)
    companions = [
        Path(shard).with_name(Path(shard).name.replace(".parquet", suffix))
        for shard in shards
        for suffix in (".failures.parquet", ".summary.json")
    ]
    paths = output_paths(args.out)
    return RunPaths(inputs=[*shards, *companions], files=[paths.result, paths.failures, paths.summary])


def _request(args: argparse.Namespace) -> Any:
    from latent_thoughts.generation.shards import parse_shard
    from latent_thoughts.synthesis.stage import SynthesisRequest

    return SynthesisRequest(
        chunks=args.chunks,
        teacher=args.teacher,
        out=args.out,
        overrides=list(args.set),
        shard=parse_shard(args.shard) if args.shard else None,
        mode=args.mode,
        style=args.style,
        retry_failures=args.retry_failures,
        batch_api=args.batch_api,
        wait=not args.no_wait,
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def run_synthesize(args: argparse.Namespace) -> int:
    """Run, resume or project a synthesis job and print its summary."""
    from latent_thoughts.cli.executors import check_executor, execute
    from latent_thoughts.errors import LatentThoughtsError
    from latent_thoughts.synthesis.stage import SynthesisStage, project_run

    if args.no_wait and not args.batch_api:
        raise LatentThoughtsError("--no-wait applies to --batch-api only")
    request = _request(args)
    if not getattr(args, "verbose", False):
        # One log line per HTTP request drowns the progress bar; -v brings them back.
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.dry_run:
        if args.sample < 1:
            raise LatentThoughtsError(f"--sample {args.sample}: need at least 1")
        for line in project_run(request, sample_size=args.sample, seed=args.seed).lines():
            print(line)
        return 0
    check_executor(args)
    _check_oracle_chunks(args)
    summary = execute(args, SynthesisStage(request), request.progress)
    if summary is None:  # a Slurm array: its jobs run on their own
        return 0
    for line in summary_lines(summary):
        print(line)
    return 0 if not summary["output"]["missing"] else 3


def _check_oracle_chunks(args: argparse.Namespace) -> None:
    """With the testbed oracle as teacher, chunks that are not testbed text fail here, before any work
    (:func:`latent_thoughts.testbed.oracle.check_testbed_chunks`)."""
    from latent_thoughts.synthesis.teachers import load_teacher
    from latent_thoughts.testbed.oracle import check_testbed_chunks

    if load_teacher(args.teacher, list(args.set)).kind == "oracle":
        check_testbed_chunks(args.chunks)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The closing lines of a synthesis run, from its summary."""
    run, output = summary["run"], summary["output"]
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(run["failure_reasons"].items()))
    unit = "chunks" if summary["mode"] == "thoughts" else "documents"
    longer = f" ({run['longer_requests']:,} with a larger budget)" if run.get("longer_requests") else ""
    lines = [
        f"{run['items']:,} {unit}: {run['cached']:,} from the cache, {run['cached_failures']:,} recorded "
        f"failures kept; {run['requests']:,} requests sent{longer}; {run['succeeded']:,} answered, "
        f"{run.get('answered_cut', 0):,} cut at the token limit, "
        f"{run['failed']:,} failed{' (' + reasons + ')' if reasons else ''}",
        f"tokens this run: {run['prompt_tokens']:,} in, {run['completion_tokens']:,} out; "
        f"cost {summary['cost']:.4f} {summary['currency']} ({'batch' if summary['batch_api'] else 'online'} prices); "
        f"{run['elapsed_s']:.1f} s",
    ]
    if run.get("cut"):
        lines.append(cut_line(summary))
    executor = summary.get("executor")
    if executor:
        lines.append(
            f"executor {executor['kind']}: {executor['workers']} workers over {executor['shards']} shards, "
            f"{executor['wall_s']:.1f} s wall"
        )
    if output["missing"]:
        lines.append(
            f"{output['missing']:,} still unanswered (batches in flight?): rerun to collect; nothing written"
        )
    else:
        lines.append(f"wrote {output['rows']:,} rows -> {output['result']}")
        if output["failures"]:
            lines.append(
                f"{output['failures']:,} failures recorded -> {Path(output['result']).with_suffix('')}.failures.parquet "
                "(retry them with --retry-failures)"
            )
    return lines


def cut_line(summary: dict[str, Any]) -> str:
    """What became of the answers cut at the token limit, with the way to fewer cuts when some were
    left raw."""
    run = summary["run"]
    unit = "chunks" if summary["mode"] == "thoughts" else "documents"
    line = (
        f"cut at the token limit: {run['cut']:,} {unit} (on_cut {summary.get('on_cut') or '?'}): "
        f"{run['cut_kept']:,} kept as cut, {run['cut_retried']:,} asked again with a larger budget, "
        f"{run['cut_raw']:,} left raw (no thought)"
    )
    if run["cut_raw"]:
        line += (
            "; raise sampling.max_new_tokens or set on_cut: retry_longer (retry_max_new_tokens)"
            if summary.get("on_cut") != "retry_longer"
            else "; raise retry_max_new_tokens"
        )
    return line


def run_merge(args: argparse.Namespace) -> int:
    """Join shard outputs with the merge of the stage that wrote them (named in their metadata:
    ``synthesize``, ``estep`` or any other generation stage) and print what was written."""
    import pyarrow.parquet as pq

    from latent_thoughts.generation.stage import merge_outputs

    kind, summary = merge_outputs(args.out, args.shards)
    rows = pq.ParquetFile(args.out).metadata.num_rows
    print(f"merged {len(summary['merged_from'])} {kind.name} shards: {rows:,} rows -> {args.out}")
    return 0


def run_thoughts(args: argparse.Namespace) -> int:
    """Print one document with each chunk followed by its thought, visibly marked."""
    from latent_thoughts.synthesis.view import render_document

    text = render_document(args.chunks, args.thoughts, args.doc, width=args.width)
    try:
        print(text)
    except BrokenPipeError:  # piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


__all__ = ["register", "summary_lines"]
