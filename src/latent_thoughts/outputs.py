"""Checks every verb runs on its outputs before any work: never an input, and writable.

:func:`check_outputs` is the one helper: an output that resolves to one of the run's inputs (the
same file, through a link or another spelling) is an error, so a run can never overwrite what it
reads; an output that is a folder where a file is meant, lies under a file, or sits where nothing
can be created (a read-only file system, no permission) is an error too, found before hours of
work rather than after. Nothing is created by the check.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from latent_thoughts.errors import LatentThoughtsError

PathLike = str | Path


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _clash(output: Path, inputs: Iterable[PathLike | None]) -> Path | None:
    """The input that ``output`` would overwrite: the same file, or a file read from an input folder."""
    target = _resolved(output)
    for item in inputs:
        if item is None:
            continue
        source = _resolved(item)
        if target == source:
            return Path(item)
        if source.is_dir() and target.is_relative_to(source) and target.is_file():
            return Path(item) / target.relative_to(source)
    return None


def _creatable_under(path: Path, flag: str) -> None:
    """Raise unless a file can be created at ``path`` (its folders may not exist yet)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LatentThoughtsError(f"{flag} {path}: cannot create it, {ancestor} is a file, not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".latent-thoughts-probe-", dir=ancestor)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LatentThoughtsError(f"{flag} {path}: cannot write in {ancestor} ({reason})") from None
    os.close(descriptor)
    os.unlink(probe)


def check_outputs(
    *,
    inputs: Iterable[PathLike | None] = (),
    files: Iterable[PathLike | None] = (),
    folders: Iterable[PathLike | None] = (),
    flag: str = "--out",
) -> None:
    """Check a run's outputs before it starts; a problem is a one-line :class:`LatentThoughtsError`.

    ``inputs`` are the files and folders the run reads (None entries are ignored); ``files`` the
    files it writes, ``folders`` the folders it writes into (give the files it writes there under
    ``files`` too, so that they are checked against the inputs). ``flag`` names the option in
    messages. Raises when an output is an input, a file output is an existing folder, a folder
    output is an existing file, or an output cannot be created.
    """
    inputs = [item for item in inputs if item is not None]
    for item in folders:
        if item is None:
            continue
        path = Path(item)
        if path.exists() and not path.is_dir():
            raise LatentThoughtsError(f"{flag} {path}: is a file; give a folder")
        _creatable_under(path / "probe", flag)
    for item in files:
        if item is None:
            continue
        path = Path(item)
        clash = _clash(path, inputs)
        if clash is not None:
            raise LatentThoughtsError(
                f"{flag} {path}: is also an input ({clash}); writing it would overwrite the input, choose another path"
            )
        if path.is_dir():
            raise LatentThoughtsError(f"{flag} {path}: is a folder; give a file path")
        if path.exists() and not os.access(path, os.W_OK):
            raise LatentThoughtsError(f"{flag} {path}: exists and is not writable")
        _creatable_under(path, flag)
