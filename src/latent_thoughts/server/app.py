"""The FastAPI application of ``latent-thoughts serve`` and the function that runs it.

Routes only: each parses its request with :mod:`~latent_thoughts.server.wire`, answers it with
:class:`~latent_thoughts.server.api.ModelAPI`, :class:`~latent_thoughts.server.store.Store` or
:class:`~latent_thoughts.server.batches.BatchRunner`, and turns an :class:`APIError` into the
OpenAI error body.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from latent_thoughts.engines.transformers_engine import TransformersEngine
from latent_thoughts.errors import LatentThoughtsError
from latent_thoughts.server.api import ModelAPI
from latent_thoughts.server.batches import BATCH_ENDPOINTS, BatchRunner
from latent_thoughts.server.store import Store
from latent_thoughts.server.wire import APIError, get_field, new_id, now, parse_multipart

log = logging.getLogger(__name__)


def create_app(engine: TransformersEngine, model_name: str, state_dir: str | Path) -> FastAPI:
    """The FastAPI application serving ``engine`` as ``model_name``, keeping files in ``state_dir``."""
    app = FastAPI(title="latent-thoughts", version="1")
    api = ModelAPI(engine, model_name)
    store = Store(Path(state_dir))
    runner = BatchRunner(store, api)
    app.state.api, app.state.store, app.state.runner = api, store, runner

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        log.info(
            "%s %s -> %d (%.0f ms)",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

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
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise APIError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError("the request body must be a JSON object")
        return body

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
        return await run_in_threadpool(api.completions, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if body.get("stream"):
            raise APIError("stream is not supported", param="stream")
        return await run_in_threadpool(api.chat, body)

    @app.post("/v1/files")
    async def upload_file(request: Request) -> dict[str, Any]:
        fields, files = parse_multipart(request.headers.get("content-type", ""), await request.body())
        if "file" not in files:
            raise APIError("missing the file part", param="file")
        purpose = fields.get("purpose", "")
        if purpose not in ("batch", "user_data", "fine-tune", "assistants"):
            raise APIError(f"unsupported purpose {purpose!r}", param="purpose")
        filename, content = files["file"]
        return store.add_file(content, filename, purpose)

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
) -> None:
    """Load the model in ``model_dir`` and serve it until interrupted (blocks)."""
    import socket
    import tempfile

    import uvicorn

    from latent_thoughts.config import validate_config
    from latent_thoughts.engines.transformers_engine import TransformersEngineConfig

    with socket.socket() as probe:  # a busy port is a one-line error, not a uvicorn traceback
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise LatentThoughtsError(f"{host}:{port}: cannot listen ({exc.strerror})") from None
    config = validate_config(
        TransformersEngineConfig, {**(engine_options or {}), "model": str(model_dir)}, "serve options"
    )
    engine = TransformersEngine(config)
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="latent-thoughts-serve-"))
    name = model_name or Path(model_dir).resolve().name
    app = create_app(engine, name, state)
    log.info("serving %s as %r on http://%s:%d/v1 (state in %s)", model_dir, name, host, port, state)
    uvicorn.run(app, host=host, port=port, log_level="warning")
