"""Files and batches of ``latent-thoughts serve`` as JSON and content files in a state folder.

``ROOT/files/ID.json`` (the file object) and ``ID.data`` (its bytes), ``ROOT/batches/ID.json`` (the
batch object); every write is atomic, so the state survives a crash or a restart.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from latent_thoughts.atomic import atomic_write
from latent_thoughts.server.wire import APIError, new_id, now


class Store:
    """Files and batches as JSON and content files under ``root`` (safe across threads and restarts)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.batches = root / "batches"
        self.files.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    def add_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Store ``content`` as a new file object and return it."""
        meta = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self.lock:
            _write(self.files / f"{meta['id']}.data", content)
            _write(self.files / f"{meta['id']}.json", json.dumps(meta).encode())
        return meta

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
        items = [json.loads(p.read_text()) for p in self.files.glob("*.json")]
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
        items = [json.loads(p.read_text()) for p in self.batches.glob("*.json")]
        return sorted(items, key=lambda b: (-b["created_at"], b["id"]))

    def _read(self, folder: Path, item_id: str, kind: str) -> dict[str, Any]:
        path = folder / f"{item_id}.json"
        if "/" in item_id or item_id.startswith(".") or not path.exists():
            raise APIError(f"No such {kind}: {item_id!r}", 404, param=f"{kind}_id")
        with self.lock:
            data: dict[str, Any] = json.loads(path.read_text())
        return data


def _write(path: Path, data: bytes) -> None:
    with atomic_write(path) as partial:
        partial.write_bytes(data)
