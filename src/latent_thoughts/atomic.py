"""Writing a file so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from latent_thoughts.errors import DiskFullError

logger = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The machine a partial file was written on, short and file-name safe: a writer's process id is
# only meaningful there (a shared file system may hold partials of live writers on other machines).
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


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


def partial_name(path: Path) -> Path:
    """A fresh temporary name for writing ``path``: ``.NAME.<host>-<pid>-<random>.partial`` next to it
    (hidden, so globs for ``NAME`` patterns never see it; unique, so concurrent writers never share
    one; naming its writer, so that :func:`remove_stale_partials` can tell a dead writer's file)."""
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.partial")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: str | Path) -> list[Path]:
    """Remove the temporary files of writes of ``path`` whose writer is gone (a process killed
    mid-write, e.g. by SIGKILL, never reaches its clean-up); returns the files removed.

    Only partials written on this machine by a process that no longer exists are removed: a live
    writer's (this process's included) and another machine's are left alone.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_HOST}-(\d+)-[0-9a-f]+\.partial")
    removed: list[Path] = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:  # no folder yet: nothing left behind
        return removed
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):  # another run cleaned it first
            candidate.unlink()
            removed.append(candidate)
    if removed:
        logger.info("%s: removed %d partial file(s) of a killed earlier write", path, len(removed))
    return removed


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write the file there.

    When the block ends without an error the temporary file replaces ``path`` by a rename (atomic
    within one file system); on an error it is removed and ``path`` is left as it was. The parent
    folder is created. The temporary name is hidden and unique (:func:`partial_name`); partials of
    earlier writes of ``path`` killed mid-way are removed first (:func:`remove_stale_partials`).
    A full disk is a one-line :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    partial = partial_name(path)
    try:
        remove_stale_partials(path)
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


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON (UTF-8, a trailing newline) to ``path`` atomically; values JSON
    does not know (paths, dates) are written as their ``str``."""
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
