"""``latent-thoughts testbed generate|check``: write the testbed world, or check thoughts' arithmetic."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latent_thoughts.cli.flags import add_options_file, deprecated_overrides
from latent_thoughts.outputs import RunPaths
from latent_thoughts.report.thought_checks import CHUNK_COLUMNS, THOUGHT_COLUMNS


def register(subparsers: Any) -> None:
    """Add the ``testbed`` verb with its ``generate`` and ``check`` actions."""
    parser = subparsers.add_parser(
        "testbed",
        help="the procedural compressed-math world: generate splits, check thoughts",
        description="Generate the testbed world, or check the arithmetic of a file of thoughts.",
    )
    actions = parser.add_subparsers(dest="testbed_action", metavar="ACTION", required=True)

    generate = actions.add_parser(
        "generate",
        help="write the splits as JSONL corpora with ground-truth thoughts, plus the evaluation problems",
        description=(
            "Write warm_start.jsonl, bootstrap.jsonl and validation.jsonl (id, text, sentences, thoughts), "
            "eval.jsonl (id, question, answer, expression, thought), config.yaml and chunk.yaml (the "
            "recommended chunking, for `latent-thoughts chunk --config`) to --out, and print the chunk "
            "command to run next."
        ),
    )
    generate.add_argument("--out", required=True, help="output folder, e.g. runs/NAME/testbed")
    generate.add_argument("--config", help="YAML file of TestbedConfig options")
    generate.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="option overrides, e.g. digits=3 steps=3 seed=1",
    )
    deprecated_overrides(generate)
    generate.set_defaults(handler=run_generate, run_paths=generate_paths)

    check = actions.add_parser(
        "check",
        help="print the validity of the thoughts in a Parquet or JSONL file",
        description=(
            "A thought is valid when it makes at least one arithmetic claim, every claim is true and, "
            "when the chunk column is present, it derives every result the chunk states."
        ),
    )
    check.add_argument(
        "path", metavar="THOUGHTS", help="Parquet or JSONL file with one thought (or a list) per row"
    )
    check.add_argument(
        "--thought-column", help=f"column of thoughts (default: first of {', '.join(THOUGHT_COLUMNS)})"
    )
    check.add_argument(
        "--chunk-column", help=f"column of chunk texts (default: first of {', '.join(CHUNK_COLUMNS)})"
    )
    check.add_argument(
        "--chunks",
        help="chunks.parquet the thoughts belong to (joined on doc_id, chunk_index), for coverage checks",
    )
    check.add_argument(
        "--no-coverage", action="store_true", help="check the claims only, not coverage of the chunk"
    )
    check.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_options_file(check, "checking options")
    check.set_defaults(handler=run_check, run_paths=check_paths)


def generate_paths(args: argparse.Namespace) -> RunPaths:
    """The configuration read; the world's files written into --out."""
    from latent_thoughts.testbed.world import DOCUMENT_SPLITS

    out = Path(args.out)
    names = ["config.yaml", "chunk.yaml", *(f"{split}.jsonl" for split in DOCUMENT_SPLITS), "eval.jsonl"]
    return RunPaths(inputs=[args.config], files=[out / name for name in names], folders=[out])


def check_paths(args: argparse.Namespace) -> RunPaths:
    """The thoughts (and chunk, and options) file read; nothing written."""
    return RunPaths(inputs=[args.path, args.chunks, args.config])


def run_generate(args: argparse.Namespace) -> int:
    """Generate every split of the world into ``args.out`` and print what was written."""
    import yaml

    from latent_thoughts.atomic import write_text
    from latent_thoughts.config import dump_config, load_config
    from latent_thoughts.testbed.task import make_eval_problems, write_problems
    from latent_thoughts.testbed.world import (
        DOCUMENT_SPLITS,
        TestbedConfig,
        chunk_overrides,
        generate_documents,
        testbed_chunk_config,
        write_documents,
    )

    config = load_config(TestbedConfig, args.config, [*args.overrides, *args.set])
    out = Path(args.out)
    write_text(out / "config.yaml", dump_config(config))
    # The chunking the testbed needs (a posing and a resolving sentence in separate chunks), as a
    # chunk-stage config file holding the three chunking.* keys of the recommendation.
    chunking = testbed_chunk_config(config).model_dump(
        include={"mean_sentences", "min_sentences", "max_sentences"}
    )
    write_text(out / "chunk.yaml", yaml.safe_dump({"chunking": chunking}, sort_keys=False))
    for split in DOCUMENT_SPLITS:
        documents = generate_documents(config, split)
        write_documents(documents, out / f"{split}.jsonl")
        sentences = sum(len(document.sentences) for document in documents)
        print(f"{split}: {len(documents):,} documents, {sentences:,} sentences -> {out / f'{split}.jsonl'}")
    problems = make_eval_problems(config)
    write_problems(problems, out / "eval.jsonl")
    print(f"eval: {len(problems):,} problems -> {out / 'eval.jsonl'}")
    print(
        f"chunk with: latent-thoughts chunk {out / 'bootstrap.jsonl'} --out RUN/chunks.parquet "
        f"--set {' '.join(chunk_overrides(config))}   (or --config {out / 'chunk.yaml'})"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Check every thought of a file and print the validity rate and claim counts."""
    from latent_thoughts.report.thought_checks import check_thoughts_file

    summary = check_thoughts_file(
        args.path,
        thought_column=args.thought_column,
        chunk_column=args.chunk_column,
        chunks=args.chunks,
        coverage=not args.no_coverage,
    )
    print(json.dumps(summary.as_dict()) if args.json else "\n".join(summary.lines()))
    return 0
