"""Servers of the model of iteration t-1 for an E-step over HTTP (``estep_engine.kind: http`` of ``em``).

Every iteration's E-step samples from a new model, so a fleet of servers (vLLM, one per GPU, or
``latent-thoughts serve``) cannot be started once for the whole run. :func:`launched_servers` starts
one server per port from a command template (``{model}``, ``{port}``, ``{python}`` (this
interpreter), ``{device}`` and ``{dtype}`` (the run's) filled in), waits until each
answers ``GET /v1/models``, yields their base URLs, and stops them when the E-step is done or fails.
A server that exits before it is ready is a one-line error naming its log file.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from latent_thoughts.errors import LatentThoughtsError


@contextmanager
def launched_servers(
    command: str,
    model: Path,
    ports: Sequence[int],
    logs: Path,
    ready_timeout_s: float = 600.0,
    **fields: str,
) -> Iterator[list[str]]:
    """Start ``command`` once per port for ``model``; yield the servers' base URLs once all are ready.
    ``fields`` fill further ``{name}`` fields of the command (the run's ``device`` and ``dtype``)."""
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    with ExitStack() as stack:
        for port in ports:
            try:
                line = command.format(model=model, port=port, python=sys.executable, **fields)
            except (KeyError, IndexError, ValueError) as exc:
                raise LatentThoughtsError(
                    f"E-step server command {command!r}: cannot fill it in ({exc})"
                ) from None
            argv = shlex.split(line)
            log = logs / f"server-{port}.log"
            handle = stack.enter_context(log.open("ab"))
            try:  # its own session, so that stopping it stops the workers it started too
                process = subprocess.Popen(
                    argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                for started, _ in processes:
                    stop(started)
                raise LatentThoughtsError(
                    f"E-step server command {argv[0]!r}: {exc.strerror or exc}"
                ) from None
            processes.append((process, log))
        try:
            urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
            deadline = time.monotonic() + ready_timeout_s
            for url, (process, log) in zip(urls, processes, strict=True):
                wait_until_ready(url, process, log, deadline)
            yield urls
        finally:
            for process, _ in processes:
                stop(process)


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """Poll ``url/models`` until it answers 200; a server that exits or a deadline passed is an error."""
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise LatentThoughtsError(
                f"E-step server {url} exited with status {process.returncode} before it was ready "
                f"({log}{': ' + tail[0] if tail else ''})"
            )
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                if response.status == 200 and "data" in json.loads(response.read() or b"{}"):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise LatentThoughtsError(f"E-step server {url} not ready in time (see {log})")
        time.sleep(0.5)


def stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the server's session, then SIGKILL it if it is still there after ``grace_s`` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
