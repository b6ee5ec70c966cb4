"""The FastAPI application of ``latent-thoughts serve`` and the function that runs it.

Routes only: each parses its request with :mod:`~latent_thoughts.server.wire`, answers it with
:class:`~latent_thoughts.server.api.ModelAPI`, :class:`~latent_thoughts.server.store.Store` or
:class:`~latent_thoughts.server.batches.BatchRunner`, and turns an :class:`APIError` into the
OpenAI error body. With an API key every route asks for ``Authorization: Bearer KEY`` (compared in
constant time); request bodies are read only up to the :class:`~latent_thoughts.server.wire.Limits`;
a completion whose client disconnects stops at the next decode step.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from latent_thoughts.engines.sampling import Cancelled
from latent_thoughts.engines.transformers_engine import TransformersEngine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.server.api import ModelAPI
from latent_thoughts.server.batches import BATCH_ENDPOINTS, BatchRunner
from latent_thoughts.server.store import Store
from latent_thoughts.server.wire import (
    APIError,
    Limits,
    get_field,
    multipart_boundary,
    new_id,
    now,
    parse_json,
    parse_multipart_file,
)

log = logging.getLogger(__name__)

API_KEY_ENV = "LATENT_THOUGHTS_API_KEY"
"""The environment variable ``serve`` reads its API key from (safer than ``--api-key`` on a command
line, which other users of the machine can see)."""


def is_local(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (a loopback address or ``localhost``)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def stream_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body piece by piece, refused (400) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            f"the request body has {int(declared):,} bytes, more than this server's limit of {limit:,}"
        )
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise APIError(f"the request body is larger than this server's limit of {limit:,} bytes")
        yield part


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (400) as soon as it is known to exceed ``limit`` bytes."""
    return b"".join([part async for part in stream_body(request, limit)])


async def receive_upload(request: Request, store: Store, limit: int) -> dict[str, Any]:
    """Stream a ``multipart/form-data`` upload to a file in the store (never whole in memory) and
    store its ``file`` part; the size limit is enforced while the body arrives."""
    content_type = request.headers.get("content-type", "")
    multipart_boundary(content_type)  # a 400 before receiving anything
    spool = store.upload_path()
    try:
        with spool.open("wb") as out:
            async for part in stream_body(request, limit):
                out.write(part)
        fields, files = await run_in_threadpool(parse_multipart_file, content_type, spool)
        if "file" not in files:
            raise APIError("missing the file part", param="file")
        purpose = fields.get("purpose", "")
        if purpose not in ("batch", "user_data", "fine-tune", "assistants"):
            raise APIError(f"unsupported purpose {purpose!r}", param="purpose")
        filename, start, end = files["file"]
        return await run_in_threadpool(store.add_file_from, spool, start, end, filename, purpose)
    finally:
        spool.unlink(missing_ok=True)


class Guard:
    """ASGI middleware: checks the API key (when there is one) and logs every request.

    A plain ASGI layer rather than ``@app.middleware``: that wrapper hides a client's disconnect from
    the routes, which need it to stop generating for nobody.
    """

    def __init__(self, app: Any, api_key: str | None = None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def send_logged(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if self.expected is not None and not self._authorized(scope):
            error = APIError("missing or wrong API key (send Authorization: Bearer KEY)", 401)
            response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send_logged)
        else:
            await self.app(scope, receive, send_logged)
        milliseconds = (time.perf_counter() - started) * 1000
        log.info("%s %s -> %d (%.0f ms)", scope["method"], scope["path"], status[0], milliseconds)

    def _authorized(self, scope: Any) -> bool:
        given = b""
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                given = value
        assert self.expected is not None
        return hmac.compare_digest(given, self.expected)  # constant time: no timing oracle on the key


def create_app(
    engine: TransformersEngine,
    model_name: str,
    state_dir: str | Path,
    *,
    api_key: str | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The FastAPI application serving ``engine`` as ``model_name``, keeping files in ``state_dir``.

    ``api_key``: when given, every route answers 401 unless the request carries
    ``Authorization: Bearer <api_key>``. ``limits``: what one request may ask (default
    :class:`Limits`). ``app.state.cancelled`` counts completions stopped because the client left.
    """
    app = FastAPI(title="latent-thoughts", version="1")
    api = ModelAPI(engine, model_name, limits)
    store = Store(Path(state_dir))
    runner = BatchRunner(store, api)
    app.state.api, app.state.store, app.state.runner = api, store, runner
    app.state.cancelled = 0

    app.add_middleware(Guard, api_key=api_key)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        log.info("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(str(exc.errors()[:1])).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(str(exc.detail), exc.status_code).body(), status_code=exc.status_code)

    async def json_body(request: Request) -> dict[str, Any]:
        return parse_json(await read_body(request, api.limits.max_body_bytes))

    async def cancellable(
        request: Request, answer: Callable[..., dict[str, Any]], body: dict[str, Any]
    ) -> Any:
        """Run ``answer(body, should_stop)`` in a worker thread; stop it if the client disconnects."""
        gone = threading.Event()
        work = asyncio.ensure_future(run_in_threadpool(answer, body, gone.is_set))
        while True:
            done, _ = await asyncio.wait({work}, timeout=0.2)
            if done:
                try:
                    return work.result()
                except Cancelled:
                    break
            if await request.is_disconnected():
                gone.set()
        app.state.cancelled += 1
        log.info("%s: the client went away; generation stopped", request.url.path)
        return JSONResponse(APIError("client closed the request", 499).body(), status_code=499)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return api.models()

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if body.get("stream"):
            raise APIError("stream is not supported", param="stream")
        return await cancellable(request, api.completions, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if body.get("stream"):
            raise APIError("stream is not supported", param="stream")
        return await cancellable(request, api.chat, body)

    @app.post("/v1/files")
    async def upload_file(request: Request) -> dict[str, Any]:
        return await receive_upload(request, store, api.limits.max_upload_bytes)

    @app.get("/v1/files")
    async def list_files() -> dict[str, Any]:
        return {"object": "list", "data": store.list_files(), "has_more": False}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict[str, Any]:
        return store.file(file_id)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> dict[str, Any]:
        store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        return Response(store.file_content(file_id), media_type="application/octet-stream")

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        input_file_id = get_field(body, "input_file_id", str, "")
        endpoint = get_field(body, "endpoint", str, "")
        window = get_field(body, "completion_window", str, "24h")
        if endpoint not in BATCH_ENDPOINTS:
            raise APIError(
                f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}, got {endpoint!r}", param="endpoint"
            )
        if window != "24h":
            raise APIError(f"completion_window must be '24h', got {window!r}", param="completion_window")
        try:
            store.file(input_file_id)
        except APIError:
            raise APIError(f"no input file {input_file_id!r}", param="input_file_id") from None
        created = now()
        batch = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "model": model_name,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None,
            "expires_at": created + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": get_field(body, "metadata", dict, None),
        }
        store.save_batch(batch)
        runner.submit(batch["id"])
        return batch

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20, after: str | None = None) -> dict[str, Any]:
        batches = store.list_batches()
        if after is not None:
            ids = [b["id"] for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[: max(limit, 1)]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(batches) > len(page),
        }

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str) -> dict[str, Any]:
        return store.batch(batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> dict[str, Any]:
        with store.lock:
            batch = store.batch(batch_id)
            if batch["status"] in ("validating", "in_progress"):
                batch.update(status="cancelling", cancelling_at=now())
                store.save_batch(batch)
        return batch

    return app


def serve(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    state_dir: str | Path | None = None,
    model_name: str | None = None,
    engine_options: dict[str, Any] | None = None,
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    limits: Limits | None = None,
) -> None:
    """Load the model in ``model_dir`` and serve it until interrupted (blocks).

    ``api_key`` (default: the ``LATENT_THOUGHTS_API_KEY`` environment variable) protects every
    route. Listening on an address other than a loopback one without a key is refused unless
    ``insecure_no_auth`` says that anyone who can reach the port may use the model, files and batches.
    """
    import socket
    import tempfile

    import uvicorn

    from latent_thoughts.config import validate_config
    from latent_thoughts.engines.transformers_engine import TransformersEngineConfig
    from latent_thoughts.outputs import check_outputs

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if not 0 <= port <= 65535:
        raise LatentThoughtsError(f"--port {port}: a port is a number from 0 to 65535")
    if api_key is None and not is_local(host) and not insecure_no_auth:
        raise LatentThoughtsError(
            f"--host {host}: other machines could use this server without a key; set --api-key (or "
            f"${API_KEY_ENV}), or pass --insecure-no-auth to serve anyone who can reach the port"
        )
    if api_key is None and not is_local(host):
        log.warning("serving on %s without an API key: anyone who can reach port %d can use it", host, port)
    if state_dir is not None:
        check_outputs(folders=[state_dir], flag="--state-dir")
    with socket.socket() as probe:  # a busy port is a one-line error, not a uvicorn traceback
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except (OSError, OverflowError) as exc:
            raise LatentThoughtsError(
                f"{host}:{port}: cannot listen ({getattr(exc, 'strerror', None) or exc})"
            ) from None
    config = validate_config(
        TransformersEngineConfig, {**(engine_options or {}), "model": str(model_dir)}, "serve options"
    )
    engine = TransformersEngine(config)
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="latent-thoughts-serve-"))
    name = model_name or Path(model_dir).resolve().name
    app = create_app(engine, name, state, api_key=api_key, limits=limits)
    log.info(
        "serving %s as %r on http://%s:%d/v1 (state in %s; %s)",
        model_dir,
        name,
        host,
        port,
        state,
        "API key required" if api_key else "no API key",
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
