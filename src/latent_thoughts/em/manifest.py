"""The EM run's ``manifest.json``: which stage produced which artifact, from what, and whether it is done.

Every stage of a run (``data``, ``warm_start``, ``eval_0``, then ``estep_t``, ``mstep_t``, ``eval_t``
for t = 1..T) has a record: its status, its configuration and the **fingerprint** of that
configuration together with the fingerprints of the stages it reads (so a changed input changes the
fingerprint of everything downstream of it), its inputs (model and data), its outputs (artifacts),
its seed, the code version and its start and end times, and its metrics.

The rules that make a rerun safe (:meth:`Manifest.check`):

- a ``done`` stage whose fingerprint is unchanged is skipped: nothing finished is redone;
- a ``done`` stage whose fingerprint changed is an error naming the stage, unless the run was asked
  to redo it (``--force-from STAGE``: that stage and every later one are redone);
- a ``done`` stage whose recorded outputs are no longer there (a model folder or ``eval.json``
  deleted, emptied or truncated to nothing) is redone, and every later stage with it
  (:meth:`Manifest.missing_output`): a finished record never stands for an artifact that is gone;
- a stage that started but did not finish is resumed by its own machinery (the trainer's
  checkpoints, the E-step cache) when its fingerprint is unchanged, and started over when it changed.

The file is rewritten atomically after every change, so a run killed at any instant leaves a
readable manifest.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from latent_thoughts import __version__
from latent_thoughts.atomic import write_json
from latent_thoughts.errors import LatentThoughtsError

MANIFEST = "manifest.json"
Decision = Literal["skip", "run", "restart"]


def fingerprint(config: Any, upstream: Sequence[str]) -> str:
    """A short hash of a stage's configuration (JSON-able) and its upstream stages' fingerprints."""
    payload = json.dumps({"config": config, "upstream": list(upstream)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def code_version() -> str:
    """``git describe --always --dirty`` of the package's checkout, else the package version."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{__version__}+git.{described}" if described else __version__


def runtime_versions(device: str = "auto") -> dict[str, str]:
    """What else decides a stage's numbers besides its configuration: the torch and transformers
    versions, Python's, and the device (``auto`` resolved: a GPU's name, else the CPU's)."""
    import platform

    import torch
    import transformers

    if device in ("auto", "cuda") and torch.cuda.is_available():
        where = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        where = f"cpu ({_cpu_name()})"
    return {
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "python": platform.python_version(),
        "device": where,
    }


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the machine type."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Manifest:
    """The manifest of one run folder (``RUN/manifest.json``), kept in memory and saved on every change."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def open(cls, run: str | Path) -> Manifest:
        """The run's manifest, or a new empty one; an unreadable file is a one-line error."""
        path = Path(run) / MANIFEST
        if not path.exists():
            return cls(path, {"format": 1, "stages": {}})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LatentThoughtsError(f"{path}: not a readable manifest ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise LatentThoughtsError(f"{path}: not a latent-thoughts EM manifest")
        for name, record in data["stages"].items():
            if not isinstance(record, dict):
                raise LatentThoughtsError(
                    f"{path}: stage {name!r} is not a record; not a latent-thoughts EM manifest"
                )
        return cls(path, data)

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """Stage records by name."""
        return self.data["stages"]

    def save(self) -> None:
        """Write the manifest atomically."""
        write_json(self.path, self.data)

    def check(self, name: str, print_: str, forced: bool) -> Decision:
        """What to do with stage ``name`` whose fingerprint is now ``print_``: ``skip`` (done, same),
        ``run`` (not started, or started with the same fingerprint: resume) or ``restart`` (started
        with another fingerprint, or forced). A done stage with another fingerprint is an error."""
        record = self.stages.get(name)
        if record is None:
            return "run"
        if forced:
            return "restart"
        same = record.get("fingerprint") == print_
        if record.get("status") == "done":
            if same:
                return "skip"
            raise LatentThoughtsError(
                f"stage {name} finished with another configuration or other inputs ({record.get('fingerprint')} "
                f"-> {print_}); rerun with --force-from {name} to redo it and every later stage"
            )
        return "run" if same else "restart"

    def missing_output(self, name: str) -> str | None:
        """The first output path recorded by the done stage ``name`` that is missing or empty (a file
        of no bytes, a folder of no entries), or None. Outputs that are not paths are ignored."""
        record = self.stages.get(name)
        if record is None or record.get("status") != "done":
            return None
        outputs = record.get("outputs")
        for value in (outputs or {}).values() if isinstance(outputs, dict) else ():
            if not isinstance(value, str) or "/" not in value:
                continue
            path = Path(value)
            try:
                empty = path.stat().st_size == 0 if not path.is_dir() else next(path.iterdir(), None) is None
            except OSError:  # missing, or unreadable: either way not the artifact that was recorded
                return value
            if empty:
                return value
        return None

    def start(self, name: str, print_: str, record: dict[str, Any]) -> None:
        """Record that stage ``name`` starts (``running``) with its configuration, inputs and seed."""
        self.stages[name] = {
            "status": "running",
            "fingerprint": print_,
            **record,
            "code_version": code_version(),
            **runtime_versions(),
            "started": time.time(),
        }
        self.save()

    def finish(self, name: str, outputs: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Record that stage ``name`` finished, with its artifacts and metrics."""
        record = self.stages[name]
        record.update(status="done", outputs=outputs, metrics=metrics, finished=time.time())
        self.save()

    def forget(self, names: Sequence[str]) -> None:
        """Drop the records of ``names`` (stages to be redone)."""
        for name in names:
            self.stages.pop(name, None)
        self.save()
