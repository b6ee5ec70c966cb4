"""``latent-thoughts testbed generate|check``: write the testbed world, or check thoughts' arithmetic."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latent_thoughts.errors import LatentThoughtsError

THOUGHT_COLUMNS = ("thought", "thoughts", "completion")
"""Columns tried, in order, for the thoughts when ``--thought-column`` is not given."""
CHUNK_COLUMNS = ("text", "chunk", "suffix")
"""Columns tried, in order, for the chunk text each thought explains (for the coverage check)."""


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
        "overrides", nargs="*", metavar="KEY=VALUE", help="option overrides, e.g. digits=3 steps=3 seed=1"
    )
    generate.set_defaults(handler=run_generate)

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
    check.set_defaults(handler=run_check)


def run_generate(args: argparse.Namespace) -> int:
    """Generate every split of the world into ``args.out`` and print what was written."""
    import yaml

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

    config = load_config(TestbedConfig, args.config, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    # The chunking the testbed needs (a posing and a resolving sentence in separate chunks), as a
    # chunk-stage config file holding the three chunking.* keys of the recommendation.
    chunking = testbed_chunk_config(config).model_dump(
        include={"mean_sentences", "min_sentences", "max_sentences"}
    )
    (out / "chunk.yaml").write_text(yaml.safe_dump({"chunking": chunking}, sort_keys=False), encoding="utf-8")
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


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a Parquet or JSONL file as dicts."""
    if not path.exists():
        raise LatentThoughtsError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_table(path).to_pylist())
        except (OSError, pa.ArrowInvalid) as exc:
            raise LatentThoughtsError(f"{path}: not a readable Parquet file ({exc})") from None
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise LatentThoughtsError(f"{path}:{number}: not a JSON line") from None
    return rows


def _pick_column(
    path: Path, rows: list[dict[str, Any]], wanted: str | None, options: tuple[str, ...]
) -> str | None:
    columns = list(rows[0]) if rows else []
    if wanted is not None:
        if wanted not in columns:
            raise LatentThoughtsError(f"{path}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    return next((name for name in options if name in columns), None)


JOINED_CHUNK_COLUMN = "chunk text (from --chunks)"


def _join_chunk_texts(path: Path, rows: list[dict[str, Any]], chunks_path: Path) -> None:
    """Add each row's chunk text from ``chunks_path``, matched on (doc_id, chunk_index)."""
    from latent_thoughts.corpus import iter_chunks

    texts = {(chunk.doc_id, chunk.chunk_index): chunk.text for chunk in iter_chunks(chunks_path)}
    for number, row in enumerate(rows, start=1):
        key = (row.get("doc_id"), row.get("chunk_index"))
        if key not in texts:
            raise LatentThoughtsError(f"{path}: row {number}: chunk {key} is not in {chunks_path}")
        row[JOINED_CHUNK_COLUMN] = texts[key]


def run_check(args: argparse.Namespace) -> int:
    """Check every thought of a file and print the validity rate and claim counts."""
    from latent_thoughts.testbed.checker import check_thought

    path = Path(args.path)
    rows = _read_rows(path)
    if not rows:
        raise LatentThoughtsError(f"{path}: no rows")
    thought_column = _pick_column(path, rows, args.thought_column, THOUGHT_COLUMNS)
    if thought_column is None:
        raise LatentThoughtsError(
            f"{path}: no thought column (tried {', '.join(THOUGHT_COLUMNS)}; columns: {', '.join(rows[0])})"
        )
    if args.chunks and not args.no_coverage:
        _join_chunk_texts(path, rows, Path(args.chunks))
        args.chunk_column = JOINED_CHUNK_COLUMN
    chunk_column = None if args.no_coverage else _pick_column(path, rows, args.chunk_column, CHUNK_COLUMNS)
    if chunk_column == thought_column:
        chunk_column = None
    thoughts = valid = claims = true_claims = covered = 0
    for number, row in enumerate(rows, start=1):
        value = row[thought_column]
        # E-step sample files may hold K thoughts per chunk as a list.
        for thought in value if isinstance(value, list) else [value]:
            if thought is None:
                continue
            chunk = row.get(chunk_column) if chunk_column else None
            try:
                result = check_thought(str(thought), chunk)
            except LatentThoughtsError as exc:
                raise LatentThoughtsError(f"{path}: row {number}: {exc}") from None
            thoughts += 1
            valid += result.valid
            claims += result.claims
            true_claims += result.valid_claims
            covered += bool(result.covered)
    if thoughts == 0:
        raise LatentThoughtsError(f"{path}: no thoughts in column {thought_column!r}")
    claim_accuracy = true_claims / claims if claims else 0.0
    summary = {
        "thoughts": thoughts,
        "valid": valid,
        "validity_rate": valid / thoughts,
        "claims": claims,
        "true_claims": true_claims,
        "claim_accuracy": claim_accuracy,
        "coverage_rate": covered / thoughts if chunk_column else None,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"thoughts: {thoughts:,} (column {thought_column!r})")
    print(f"valid: {valid:,} ({100 * valid / thoughts:.1f}%)")
    print(f"claims: {claims:,}, true: {true_claims:,} ({100 * claim_accuracy:.1f}%)")
    if chunk_column:
        print(f"cover their chunk (column {chunk_column!r}): {covered:,} ({100 * covered / thoughts:.1f}%)")
    else:
        print("coverage not checked (no chunk column)")
    return 0
