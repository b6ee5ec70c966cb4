"""Opening the Parquet files that stages hand to each other, with one-line errors naming the file."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    if path.is_dir():
        raise LatentThoughtsError(f"{path}: is a folder, expected a {what} file")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as exc:  # ValueError: a footer not UTF-8
        raise LatentThoughtsError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None
    missing = [name for name in columns if name not in parquet.schema_arrow.names]
    if missing:
        raise LatentThoughtsError(f"{path}: not a {what} file (missing columns {', '.join(missing)})")
    return parquet


def read_parquet(path: str | Path, what: str = "Parquet", columns: Sequence[str] | None = None) -> pa.Table:
    """Read ``columns`` (all when None) of a Parquet file, checked as :func:`open_parquet` does."""
    parquet = open_parquet(path, what, columns or ())
    with damaged_parquet(path):
        return parquet.read(columns=list(columns) if columns is not None else None)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


@contextmanager
def damaged_parquet(path: str | Path) -> Iterator[None]:
    """Turn what pyarrow raises on a damaged Parquet file (a page or footer that does not decode,
    a cut data page) into a one-line error naming ``path``; an operating-system error with an
    ``errno`` (a full disk, no permission) is left alone."""
    try:
        yield
    except (OSError, UnicodeDecodeError, pa.ArrowException) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise LatentThoughtsError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None


def _kind(data_type: pa.DataType) -> str:
    """``text``, ``integer``, ``number`` or the type's own name: what a column holds, loosely."""
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "text"
    if pa.types.is_integer(data_type):
        return "integer"
    if pa.types.is_floating(data_type):
        return "number"
    return str(data_type)


def require_types(parquet: pq.ParquetFile, path: str | Path, what: str, schema: pa.Schema) -> None:
    """Check that the columns of ``schema`` present in ``parquet`` hold the same kind of values.

    Text may be ``string`` or ``large_string`` and integers of any width; anything else (a number
    where text is expected, say) is a one-line error naming the file and the column.
    """
    names = parquet.schema_arrow.names
    for expected in schema:
        if expected.name not in names:
            continue
        found = parquet.schema_arrow.field(expected.name).type
        if _kind(found) != _kind(expected.type):
            raise LatentThoughtsError(
                f"{path}: not a {what} file (column {expected.name!r} holds {found}, expected {_kind(expected.type)})"
            )
