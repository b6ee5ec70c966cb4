"""Writing a file so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write the file there.

    When the block ends without an error the temporary file replaces ``path`` by a rename (atomic
    within one file system); on an error it is removed and ``path`` is left as it was. The parent
    folder is created. The temporary name is hidden and unique (``.NAME.<random>.partial``), so
    concurrent writers of one path never share it and globs for ``NAME`` patterns never see it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
