"""Files and batches of ``latent-thoughts serve`` as JSON and content files in a state folder.

``ROOT/files/ID.json`` (the file object) and ``ID.data`` (its bytes), ``ROOT/batches/ID.json`` (the
batch object); every write is atomic, so the state survives a crash or a restart. An object file
that cannot be read (emptied or damaged by hand or by a failing disk) is logged and left out of the
lists, so it never stops the server; asking for it is a 500 naming it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import atomic_write
from latent_thoughts.server.wire import APIError, new_id, now, valid_id

log = logging.getLogger(__name__)

COPY_BYTES = 256 * 1024
"""Bytes copied at a time when an upload is stored (memory stays bounded whatever its size)."""


class Store:
    """Files and batches as JSON and content files under ``root`` (safe across threads and restarts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.batches = root / "batches"
        self.files.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        for stale in self.files.glob(".upload-*.partial"):  # bodies of uploads cut short by a crash
            stale.unlink(missing_ok=True)

    def upload_path(self) -> Path:
        """A fresh hidden path in the files folder for a request body being received."""
        return self.files / f".upload-{new_id('')}.partial"

    def add_file_from(
        self, source: Path, start: int, end: int, filename: str, purpose: str
    ) -> dict[str, Any]:
        """Store bytes ``[start, end)`` of ``source`` as a new file object, copied in bounded pieces."""
        meta = self._meta(end - start, filename, purpose)
        with self.lock:
            with atomic_write(self.files / f"{meta['id']}.data") as partial, source.open("rb") as data:
                data.seek(start)
                with partial.open("wb") as out:
                    left = end - start
                    while left > 0:
                        piece = data.read(min(left, COPY_BYTES))
                        if not piece:
                            raise OSError(f"{source}: shorter than expected")
                        out.write(piece)
                        left -= len(piece)
            _write(self.files / f"{meta['id']}.json", json.dumps(meta).encode())
        return meta

    def add_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store ``content`` as a new file object and return it."""
        meta = self._meta(len(content), filename, purpose)
        with self.lock:
            _write(self.files / f"{meta['id']}.data", content)
            _write(self.files / f"{meta['id']}.json", json.dumps(meta).encode())
        return meta

    def _meta(self, size: int, filename: str, purpose: str) -> dict[str, Any]:
        return {
            "id": new_id("file-"),
            "object": "file",
            "bytes": size,
            "created_at": now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def file(self, file_id: str) -> dict[str, Any]:
        """The file object ``file_id`` (404 when unknown)."""
        return self._read(self.files, file_id, "file")

    def file_content(self, file_id: str) -> bytes:
        """The bytes of file ``file_id``."""
        self.file(file_id)
        return (self.files / f"{file_id}.data").read_bytes()

    def delete_file(self, file_id: str) -> None:
        """Remove file ``file_id``."""
        self.file(file_id)
        with self.lock:
            for suffix in (".json", ".data"):
                (self.files / f"{file_id}{suffix}").unlink(missing_ok=True)

    def list_files(self) -> list[dict[str, Any]]:
        """Every file object, newest first."""
        items = _readable(self.files)
        return sorted(items, key=lambda f: (-f["created_at"], f["id"]))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch object ``batch_id`` (404 when unknown)."""
        return self._read(self.batches, batch_id, "batch")

    def save_batch(self, batch: dict[str, Any]) -> None:
        """Persist a batch object."""
        with self.lock:
            _write(self.batches / f"{batch['id']}.json", json.dumps(batch).encode())

    def list_batches(self) -> list[dict[str, Any]]:
        """Every batch object, newest first."""
        items = _readable(self.batches)
        return sorted(items, key=lambda b: (-b["created_at"], b["id"]))

    def _read(self, folder: Path, item_id: str, kind: str) -> dict[str, Any]:
        path = folder / f"{item_id}.json"
        if not valid_id(item_id) or not path.exists():
            raise APIError(f"No such {kind}: {item_id[:80]!r}", 404, param=f"{kind}_id")
        with self.lock:
            data = _load(path)
        if data is None:
            raise APIError(f"the stored {kind} {item_id!r} is unreadable ({path.name})", 500)
        return data


def _load(path: Path) -> dict[str, Any] | None:
    """The object stored at ``path``, or None (logged) when the file is not a readable JSON object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable, ignored (%s)", path, exc)
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("id"), str)
        or not isinstance(data.get("created_at"), int)
    ):
        log.warning("%s: not a stored object, ignored", path)
        return None
    return data


def _readable(folder: Path) -> list[dict[str, Any]]:
    """Every readable object of ``folder`` (unreadable ones are logged and left out)."""
    return [data for path in sorted(folder.glob("*.json")) if (data := _load(path)) is not None]


def _write(path: Path, data: bytes) -> None:
    with atomic_write(path) as partial:
        partial.write_bytes(data)
