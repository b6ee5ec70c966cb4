"""A model folder's fingerprint: a short hash of its configuration and weights, computed once per model.

The fingerprint names a local model in the E-step's cache keys and in the EM manifest's lineage, so
a model retrained into the same folder gets new keys. It hashes ``config.json`` and every weight
file (``.safetensors``, ``.bin``, ``.pt``) of the folder, names and bytes in name order; not the
folder's path or the files' times (:func:`hash_files`).

Hashing gigabytes of weights at every E-step (and in every Ray actor) is wasted work, so the
trainer writes the value beside the weights when it saves the final model
(:func:`write_fingerprint`: ``MODEL/fingerprint.json``, with the name, size and modification time
of every file it hashed). :func:`model_fingerprint` reads that file while the folder's files still
have those names, sizes and times, and hashes the files otherwise; it never writes into a model
folder (a folder someone else made gets no file it did not ask for).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import write_json
from latent_thoughts.errors import LatentThoughtsError

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
"""The file beside a model's weights that holds their fingerprint (:func:`write_fingerprint`)."""

FORMAT = 1
"""Version of :data:`FINGERPRINT_FILE`'s contents."""

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def hashed_files(folder: str | Path) -> list[Path]:
    """The files a fingerprint hashes: ``config.json`` and the weight files of ``folder``, by name."""
    folder = Path(folder)
    files = sorted(
        path for path in folder.iterdir() if path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES
    )
    if not files:
        raise LatentThoughtsError(f"{folder}: not a model folder (no config.json or weights)")
    return files


def hash_files(files: list[Path]) -> str:
    """The fingerprint of ``files``: sha256 over each file's name and bytes in turn, 16 hex digits."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def file_stats(files: list[Path]) -> list[dict[str, Any]]:
    """Name, size and modification time (ns) of each of ``files``: what a recorded fingerprint stands for."""
    stats = []
    for path in files:
        stat = path.stat()
        stats.append({"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return stats


def recorded_fingerprint(folder: str | Path, files: list[Path] | None = None) -> str | None:
    """The fingerprint recorded in ``folder``'s :data:`FINGERPRINT_FILE`, or None when there is none, it
    is unreadable, or the folder's hashed files (``files``, default :func:`hashed_files`) are no longer
    the ones it recorded: other names, sizes or modification times."""
    path = Path(folder) / FINGERPRINT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable (%s); hashing the weights", path, exc)
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("fingerprint"), str)
    ):
        return None
    current = file_stats(files if files is not None else hashed_files(folder))
    if data.get("files") != current:
        logger.info("%s: the weights changed since it was written; hashing them", path)
        return None
    return str(data["fingerprint"])


def model_fingerprint(folder: str | Path) -> str:
    """A short hash of a model folder's configuration and weights (:func:`hash_files`), so a model
    retrained into the same folder gets new cache keys: the one recorded beside the weights when the
    files are still those it was computed from (:func:`recorded_fingerprint`), else computed from the
    bytes. Writes nothing."""
    files = hashed_files(folder)
    recorded = recorded_fingerprint(folder, files)
    return recorded if recorded is not None else hash_files(files)


def write_fingerprint(folder: str | Path) -> str:
    """Hash ``folder``'s model files and record the value in its :data:`FINGERPRINT_FILE` (with each
    file's name, size and modification time); returns it. What the trainer runs once on the model it
    has just saved. A file that changes while it is hashed leaves no record."""
    folder = Path(folder)
    files = hashed_files(folder)
    before = file_stats(files)
    value = hash_files(files)
    after = file_stats(files)
    if after != before:
        logger.warning("%s: model files changed while they were hashed; no fingerprint recorded", folder)
        return value
    write_json(folder / FINGERPRINT_FILE, {"format": FORMAT, "fingerprint": value, "files": after})
    return value


__all__ = [
    "FINGERPRINT_FILE",
    "hash_files",
    "hashed_files",
    "model_fingerprint",
    "recorded_fingerprint",
    "write_fingerprint",
]
