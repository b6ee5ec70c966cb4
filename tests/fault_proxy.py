"""A fault-injecting HTTP proxy for the reliability tests: put it between a client and a real
``latent-thoughts serve`` and a seeded fraction of the requests fail in one of the ways servers and
networks fail.

    with FaultProxy("http://127.0.0.1:8000/v1", rate=0.2, seed=0) as proxy:
        ...  # point the client at proxy.url; proxy.injected counts the faults by kind

Each request is, with probability ``rate`` (a ``random.Random(seed)`` draw, one per request in
arrival order), answered by a fault instead of being passed on untouched. The faults come from
``faults`` in a seeded shuffled round robin, so any ``len(faults)`` consecutive faults cover every kind:

- ``429``: HTTP 429 without Retry-After; ``429-retry-after``: HTTP 429 with ``Retry-After: 1``;
- ``500`` and ``503``: a server error with a JSON error body;
- ``reset``: the connection is reset (RST) before any answer;
- ``slow``: no answer for ``slow_s`` seconds (past the client's timeout), then a reset;
- ``truncated``: the upstream's real answer, cut in half below a Content-Length promising all of it;
- ``malformed``: HTTP 200 with a body that is not JSON.

The proxy is a threaded ``http.server``; an upstream answer is passed on whole (status, content
type, body), so a fault-free request sees exactly what the server said.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

FAULTS = ("429", "429-retry-after", "500", "503", "reset", "slow", "truncated", "malformed")


class FaultProxy:
    """A proxy on 127.0.0.1 (a free port) in front of ``upstream`` (``http://host:port/path``).

    ``url`` is the proxy's address with the upstream's path; ``injected`` counts faults by kind and
    ``passed`` the requests passed on untouched."""

    def __init__(
        self,
        upstream: str,
        rate: float,
        seed: int = 0,
        faults: tuple[str, ...] = FAULTS,
        slow_s: float = 2.0,
    ) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown or not faults or not 0.0 <= rate <= 1.0:
            raise ValueError(
                f"bad proxy settings: faults {sorted(unknown)} unknown or rate {rate} not in [0, 1]"
            )
        parts = urllib.parse.urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.rate, self.faults, self.slow_s = rate, faults, slow_s
        self.injected: Counter[str] = Counter()
        self.passed = 0
        self._rng = random.Random(seed)
        self._round: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{parts.path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._tally()

    def _tally(self) -> None:
        """With ``LATENT_THOUGHTS_FAULT_COUNTS=FILE`` set, add the faults injected, by kind, to FILE
        (JSON; ``bench/reliability.py`` reports them)."""
        target = os.environ.get("LATENT_THOUGHTS_FAULT_COUNTS")
        if not target or not self.injected:
            return
        path = Path(target)
        counts = Counter(json.loads(path.read_text())) if path.exists() else Counter()
        counts.update(self.injected)
        path.write_text(json.dumps(dict(sorted(counts.items())), indent=2) + "\n")

    def draw(self) -> str | None:
        """The fault for the next request, or None to pass it on."""
        with self._lock:
            if self._rng.random() >= self.rate:
                self.passed += 1
                return None
            if not self._round:
                self._round = self._rng.sample(self.faults, len(self.faults))
            fault = self._round.pop()
            self.injected[fault] += 1
            return fault

    def forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        """(status, content type, body) of the upstream's answer to the request."""
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=600)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type", "application/json"), response.read()
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.relay()

            def do_POST(self) -> None:
                self.relay()

            def do_DELETE(self) -> None:
                self.relay()

            def log_message(self, format: str, *args: object) -> None:
                pass  # the tests read proxy.injected, not a log

            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy.draw()
                if fault in ("reset", "slow"):
                    if fault == "slow":
                        time.sleep(proxy.slow_s)
                    self.reset()
                    return
                if fault in ("429", "429-retry-after", "500", "503"):
                    status = int(fault[:3])
                    extra = {"Retry-After": "1"} if fault == "429-retry-after" else {}
                    message = b'{"error": {"message": "injected fault", "type": "fault_proxy"}}'
                    self.answer(status, "application/json", message, extra)
                    return
                if fault == "malformed":
                    self.answer(200, "application/json", b'{"choices": [{"text": "cut', {})
                    return
                keep = ("Content-Type", "Authorization", "Accept")
                headers = {name: self.headers[name] for name in keep if self.headers.get(name)}
                status, content_type, answer = proxy.forward(self.command, self.path, body, headers)
                if fault == "truncated":
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer[: len(answer) // 2])
                    self.close_connection = True
                    return
                self.answer(status, content_type, answer, {})

            def answer(self, status: int, content_type: str, body: bytes, extra: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def reset(self) -> None:
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

        return Handler
