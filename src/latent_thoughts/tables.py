"""Opening the Parquet files that stages hand to each other, with one-line errors naming the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from latent_thoughts.errors import LatentThoughtsError


def open_parquet(path: str | Path, what: str = "Parquet", columns: Sequence[str] = ()) -> pq.ParquetFile:
    """Open ``path`` for streaming; a missing, unreadable or column-lacking file is a one-line error.

    ``what`` names the kind of file in messages (``"chunk"`` gives "chunk file not found").
    """
    path = Path(path)
    if not path.exists():
        raise LatentThoughtsError(f"{path}: {what} file not found")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise LatentThoughtsError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [name for name in columns if name not in parquet.schema_arrow.names]
    if missing:
        raise LatentThoughtsError(f"{path}: not a {what} file (missing columns {', '.join(missing)})")
    return parquet


def read_parquet(path: str | Path, what: str = "Parquet", columns: Sequence[str] | None = None) -> pa.Table:
    """Read ``columns`` (all when None) of a Parquet file, checked as :func:`open_parquet` does."""
    parquet = open_parquet(path, what, columns or ())
    return parquet.read(columns=list(columns) if columns is not None else None)
