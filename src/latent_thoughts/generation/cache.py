"""A content-addressed result cache that survives being killed at any instant.

Every finished request (a thought, a rephrasing, or a recorded failure) is one JSON line appended to
a file in the run's cache folder (``NAME.cache/``) and flushed to disk with ``fsync`` before the run
moves on, so a run killed at any point loses at most the requests still in flight. Each writer (one
per shard, ``all`` for an unsharded run) appends to its own file under an exclusive lock, and every
writer reads all files of the folder: a rerun, a re-sharded run or the merge of shards recomputes
nothing that any of them finished. A half-written last line (the process died mid-write) is ignored
when read and cut off before the writer appends again. Every line is validated whole (it must parse
as a complete record of the right types), so a line cut short but ending in a newline (an editor, a
full disk) is reported as corrupt and its request is redone rather than trusted.

Keys hash exactly what determines a result: the prefix and text, the engine's identity (the
teacher's, or the model's in the E-step), the prompt (or layout) version, the sampling parameters
and the sample index. They do not depend on the shard.

A record's answer is its ``text`` (a teacher's thought or rephrasing) or, for a stage whose answer
is structured, its ``payload``: a JSON object that the stage reads with its own typed model (the
E-step's :class:`~latent_thoughts.em.stage.ChunkSamples`), and checks when the cache is opened
(``validate``), so that an answer of the wrong shape is reported as corrupt and redone too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from latent_thoughts.atomic import disk_error
from latent_thoughts.engines.base import MAX_USAGE_TOKENS
from latent_thoughts.errors import LatentThoughtsError

logger = logging.getLogger(__name__)

Status = Literal["ok", "failed"]


def cache_key(
    *,
    task: str,
    prefix: str,
    text: str,
    teacher: str,
    prompt_version: str,
    sampling: Mapping[str, Any],
    sample_index: int = 0,
) -> str:
    """The SHA-256 (hex) of everything that determines one answer of an engine.

    ``task`` names what is asked (``latent`` for teacher thoughts, ``rephrase:<style>`` for WRAP);
    ``prefix`` and ``text`` are the earlier text and the chunk (or the whole document); ``teacher``
    is the engine's identity; ``sampling`` holds the sampling parameters (temperature, top-p, token
    limit, seed).
    """
    payload = {
        "task": task,
        "prefix": prefix,
        "text": text,
        "teacher": teacher,
        "prompt_version": prompt_version,
        "sampling": dict(sampling),
        "sample_index": sample_index,
    }
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@dataclass
class CacheRecord:
    """One finished request: ``status`` ``ok`` with the answer in ``text`` (or ``payload``), or
    ``failed`` with a ``reason``.

    ``doc_id``, ``chunk_index`` and ``style`` say which work item first asked for it (informational:
    identical requests share one record); token counts are the teacher's reported usage.
    ``payload`` is a structured answer (a JSON object; the stage that wrote it reads it with its own
    typed model), absent from the line when None.
    """

    key: str
    status: Status
    text: str
    teacher: str
    prompt_version: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reason: str = ""
    doc_id: str = ""
    chunk_index: int = -1
    style: str = ""
    created: float = field(default_factory=time.time)
    payload: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, line: str) -> CacheRecord:
        """Parse one cache line; raises ValueError (a JSON error is one) for a malformed one.

        The line must be one whole record: a JSON object with a non-empty string ``key``, a status of
        ``ok`` or ``failed``, and every field it holds of the right type.
        """
        data = json.loads(line)
        if not isinstance(data, dict) or data.get("status") not in ("ok", "failed"):
            raise ValueError("not a cache record")
        if not isinstance(data.get("key"), str) or not data["key"]:
            raise ValueError("a cache record without a key")
        for name in _REQUIRED:
            if name not in data:
                raise ValueError(f"a cache record without {name!r}")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name, value in known.items():
            kinds = _FIELD_TYPES[name]
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"field {name!r} of a cache record holds {type(value).__name__}")
        for name in ("prompt_tokens", "completion_tokens"):
            if not 0 <= known.get(name, 0) <= MAX_USAGE_TOKENS:
                raise ValueError(f"field {name!r} of a cache record is out of range")
        return cls(**known)

    def to_json(self) -> str:
        """The record as one JSON line (without the newline); no ``payload`` entry when it has none."""
        data = asdict(self)
        if data["payload"] is None:
            del data["payload"]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


_REQUIRED = ("key", "status", "text", "teacher", "prompt_version", "finish_reason")
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "status": str,
    "text": str,
    "teacher": str,
    "prompt_version": str,
    "finish_reason": str,
    "prompt_tokens": int,
    "completion_tokens": int,
    "reason": str,
    "doc_id": str,
    "chunk_index": int,
    "style": str,
    "created": (int, float),
    "payload": dict,
}


@dataclass(frozen=True)
class _Entry:
    """Where a record's line lies: file number, byte offset and length; its status for quick decisions."""

    file: int
    offset: int
    length: int
    status: Status


_LINE_HEAD = re.compile(rb'^\{"key":"([^"]+)","status":"(ok|failed)"')


class ResultCache:
    """The cache folder of one output: read every writer's file, append to this writer's own.

    Only an index (file, offset, status) is kept in memory, and only for ``keys`` when given (the
    run's own items), so a shard of a very large corpus does not hold every answer of every shard;
    a record's text is read from disk when asked for. Only complete (newline-terminated) lines count.

    With a ``writer`` name the cache holds an exclusive lock on that writer's file, so that two runs
    of the same shard cannot interleave their lines; ``writer=None`` opens it read-only (dry run).
    ``validate`` (a stage's check of its answers' shape: it raises ValueError or TypeError) is applied
    to every ``ok`` record indexed; one it refuses counts as a corrupt line, and its request is redone.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        folder: str | Path,
        writer: str | None = "all",
        keys: Collection[str] | None = None,
        validate: Callable[[CacheRecord], object] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.writer = writer
        self._keys = set(keys) if keys is not None else None
        self._validate = validate
        self._index: dict[str, _Entry] = {}
        self._files: list[Path] = []
        self._handles: dict[int, BinaryIO] = {}
        self._out: BinaryIO | None = None
        self._lock: BinaryIO | None = None
        self.skipped_lines = 0
        self.corrupt_lines: list[str] = []
        """``file:line`` of every corrupt line found (each one's request is redone)."""
        if writer is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LatentThoughtsError(
                    f"{self.folder}: cannot create the cache folder ({exc.strerror})"
                ) from None
            self._lock = open(self.folder / f"{writer}.lock", "wb")  # noqa: SIM115 - held until close()
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise LatentThoughtsError(
                    f"{self.path}: another run is writing this cache (shard {writer}); wait for it or stop it"
                ) from None
            self._cut_partial_tail()
        for path in sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []:
            self._scan(path)
        if writer is not None:
            if self.path not in self._files:
                self._files.append(self.path)
            self._out = open(self.path, "ab")  # noqa: SIM115 - held until close()

    @property
    def path(self) -> Path:
        """This writer's file."""
        return self.folder / f"{self.writer or 'all'}.jsonl"

    def _cut_partial_tail(self) -> None:
        """Drop a half-written last line of this writer's file so that the next append starts a fresh line."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
                logger.warning("%s: dropped a half-written last line left by a killed run", self.path)

    def _scan(self, path: Path) -> None:
        """Index the valid lines of ``path``; report corrupt ones (their requests are then redone).

        A line still being written by another shard (no newline yet) is skipped silently.
        """
        number = len(self._files)
        self._files.append(path)
        offset = 0
        corrupt: list[int] = []
        with open(path, "rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                length = len(line)
                if line.endswith(b"\n") and line.strip():
                    head = _LINE_HEAD.match(line)
                    if (
                        head is not None
                        and self._keys is not None
                        and head.group(1).decode() not in self._keys
                    ):
                        offset += length  # another run's record: not needed, not parsed
                        continue
                    try:
                        record = CacheRecord.from_json(line.decode("utf-8"))
                        if self._validate is not None and record.status == "ok":
                            self._validate(record)
                    except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
                        corrupt.append(line_number)
                    else:
                        if self._keys is None or record.key in self._keys:
                            self._remember(record.key, _Entry(number, offset, length, record.status))
                elif line.strip():
                    self.skipped_lines += 1  # the unfinished last line of a run that was killed or still runs
                offset += length
        if corrupt:
            self.skipped_lines += len(corrupt)
            self.corrupt_lines.extend(f"{path}:{n}" for n in corrupt)
            logger.warning(
                "%s: %d corrupt line(s) ignored (line %s%s); their requests are sent again",
                path,
                len(corrupt),
                ", ".join(map(str, corrupt[:5])),
                ", ..." if len(corrupt) > 5 else "",
            )

    def _remember(self, key: str, entry: _Entry) -> None:
        # A success is never replaced (the first one stays, so rereading is deterministic); a failure
        # is replaced by a later answer for the same key, successful or not.
        current = self._index.get(key)
        if current is None or current.status == "failed":
            self._index[key] = entry

    def status(self, key: str) -> Status | None:
        """``ok``, ``failed``, or None when nothing is recorded for ``key`` (no disk read)."""
        entry = self._index.get(key)
        return entry.status if entry is not None else None

    def get(self, key: str) -> CacheRecord | None:
        """The finished record for ``key``, read from disk, or None when nothing is recorded."""
        entry = self._index.get(key)
        if entry is None:
            return None
        handle = self._handles.get(entry.file)
        if handle is None:
            handle = self._handles[entry.file] = open(self._files[entry.file], "rb")  # noqa: SIM115
        handle.seek(entry.offset)
        line = handle.read(entry.length)
        try:
            return CacheRecord.from_json(line.decode("utf-8", errors="replace"))
        except (ValueError, TypeError):
            logger.warning("%s: unreadable cache line at byte %d", self._files[entry.file], entry.offset)
            return None

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[CacheRecord]:
        for key in list(self._index):
            record = self.get(key)
            if record is not None:
                yield record

    def append(self, records: Iterable[CacheRecord]) -> None:
        """Write ``records`` and force them to disk before returning: after this call they are never lost."""
        if self._out is None:
            raise LatentThoughtsError(f"{self.folder}: the cache was opened read-only")
        lines = [(record, (record.to_json() + "\n").encode("utf-8")) for record in records]
        if not lines:
            return
        offset = self._out.seek(0, os.SEEK_END)
        try:
            self._out.write(b"".join(line for _, line in lines))
            self._out.flush()
            os.fsync(self._out.fileno())
        except OSError as exc:
            # A full disk may leave half a line: the next open cuts it (it has no newline).
            error = disk_error(self.path, exc)
            if error is None:
                raise
            raise error from None
        number = self._files.index(self.path)
        for record, line in lines:
            if self._keys is None or record.key in self._keys:
                self._remember(record.key, _Entry(number, offset, len(line), record.status))
            offset += len(line)

    def close(self) -> None:
        """Close this writer's file and release its lock."""
        for handle in [*self._handles.values(), self._out, self._lock]:
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        self._handles.clear()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
