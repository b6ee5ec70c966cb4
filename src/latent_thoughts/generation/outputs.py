"""The output files of a generation stage: where a run (or a shard of one) writes, and the run
description every output carries in its Parquet schema metadata.

Both stages (teacher synthesis and the E-step) write ``NAME.parquet`` with ``NAME.summary.json``
beside it (synthesis also ``NAME.failures.parquet``) and share the cache folder ``NAME.cache/``;
a shard writes ``NAME.shard-i-of-N.*`` (:func:`output_paths`). Tables are written atomically
(:func:`write_table`); the run description (the stage, its mode, the chunk-file fingerprint, the
shard, ...) lives under one schema-metadata key (:func:`with_metadata`, :func:`read_metadata`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from latent_thoughts.atomic import atomic_write
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.generation.shards import shard_writer
from latent_thoughts.tables import open_parquet

METADATA_KEY = b"latent_thoughts"
"""Parquet schema-metadata key holding the run description (stage, mode, shard, chunk-file fingerprint)."""


@dataclass(frozen=True)
class OutputPaths:
    """Where one run writes: the result, its failures and summary, the shared cache folder and writer name."""

    result: Path
    failures: Path
    summary: Path
    cache_dir: Path
    writer: str
    batch_state: Path


def output_paths(out: str | Path, shard: tuple[int, int] | None = None) -> OutputPaths:
    """The files of a run writing ``out`` (``NAME.parquet``), or of one shard of it.

    Shards write ``NAME.shard-i-of-N.parquet`` (and matching failures and summary files); every
    shard shares the cache folder ``NAME.cache/``, writing its own file there.
    """
    out = Path(out)
    if out.suffix != ".parquet":
        raise LatentThoughtsError(f"--out {out}: the output must be a .parquet file")
    stem = out.with_suffix("")
    writer = shard_writer(shard)
    base = stem if writer == "all" else stem.with_name(f"{stem.name}.{writer}")
    return OutputPaths(
        result=base.with_name(base.name + ".parquet"),
        failures=base.with_name(base.name + ".failures.parquet"),
        summary=base.with_name(base.name + ".summary.json"),
        cache_dir=stem.with_name(stem.name + ".cache"),
        writer=writer,
        batch_state=stem.with_name(stem.name + ".cache") / f"{writer}.batches.json",
    )


def write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` as Parquet, atomically (:func:`~latent_thoughts.atomic.atomic_write`)."""
    with atomic_write(path) as partial:
        pq.write_table(table.combine_chunks(), partial)


def with_metadata(table: pa.Table, metadata: dict[str, Any]) -> pa.Table:
    """``table`` with the run description stored in its schema metadata."""
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode("utf-8")})


def read_metadata(path: Path) -> dict[str, Any]:
    """The run description stored in a generation stage's output (empty when absent)."""
    schema = open_parquet(path, "generation output").schema_arrow
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


__all__ = ["METADATA_KEY", "OutputPaths", "output_paths", "read_metadata", "with_metadata", "write_table"]
