"""Writing a file so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from latent_thoughts.errors import DiskFullError

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_error(path: str | Path, exc: OSError) -> DiskFullError | None:
    """A one-line error for a full disk (or quota, or file-size limit) hit while writing ``path``.

    Returns None for any other ``OSError``, which the caller re-raises as it is.
    """
    full = exc.errno in _FULL or (exc.errno is None and "No space left" in str(exc))  # pyarrow's errors
    if full:
        return DiskFullError(
            f"{path}: cannot write, {os.strerror(exc.errno or errno.ENOSPC).lower()}; free some space and rerun "
            "(finished work is kept)"
        )
    return None


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write the file there.

    When the block ends without an error the temporary file replaces ``path`` by a rename (atomic
    within one file system); on an error it is removed and ``path`` is left as it was. The parent
    folder is created. The temporary name is hidden and unique (``.NAME.<random>.partial``), so
    concurrent writers of one path never share it and globs for ``NAME`` patterns never see it.
    A full disk is a one-line :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        os.replace(partial, path)
    except OSError as exc:
        error = disk_error(path, exc)
        if error is None:
            raise
        raise error from None
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path) as partial:
        partial.write_bytes(data)
