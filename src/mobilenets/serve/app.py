"""The FastAPI app: the page, ``POST /predict``, ``/metrics``, and Open Inference Protocol v2 (:mod:`.oip`'s router).

Threads, all in one process: the event loop (HTTP, one thread); a pool of ``decode_threads`` that decode and
resize uploads and postprocess results (Pillow and torch release the GIL for the pixel work); the one inference
worker (:mod:`.batching`) whose runner uses ``threads`` intra-op threads. With the defaults on a machine of N
cores: N runner threads + 1 worker + min(2, N) decode threads + 1 loop; the worker and the loop mostly wait,
and the decode threads work while the runner computes the previous batch.

Every answer that is not a success is ``{"error": "<one line>"}`` with its status: 400 bad request, 404 unknown
route or model, 405, 413 too large (upload or pixels), 415 not an image / wrong content type, 503 queue full
(with ``Retry-After``) or shutting down, 500 a failure inside (logged with its traceback; the server goes on).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from . import oip
from .body import upload_bytes
from .limits import Limits, ServeError, number
from .metrics import Metrics
from .model import ServedModel
from .pipeline import State, error, state_of

log = logging.getLogger(__name__)


def create_app(served: ServedModel, limits: Limits | None = None, decode_threads: int = 2) -> FastAPI:
    """The app serving ``served``; its lifespan warms the model up and starts the inference worker, and on
    shutdown (after uvicorn has let the requests in flight finish) runs what is queued and stops it."""
    limits = limits or Limits()
    app = FastAPI(title="mobilenets serve", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers={ServeError: _serve_error, HTTPException: _http_error, Exception: _internal})
    app.state.serve = State(served, limits, decode_threads)
    app.state.page = _page(served, limits)
    app.add_middleware(_Metered, metrics=app.state.serve.metrics)
    app.include_router(router)
    app.include_router(oip.router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    state: State = app.state.serve
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, state.served.warm_up)
    state.batcher.start()
    state.ready = True
    log.info("ready: %s (%s) on %s", state.served.name, state.served.task.name, state.served.backend)
    try:
        yield
    finally:
        state.ready = False
        await loop.run_in_executor(None, state.batcher.stop)
        state.pool.shutdown(wait=True)


class _Metered:
    """ASGI middleware: count every HTTP request by route template and status, and time it."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.on_request(getattr(route, "path", "unmatched"), status[0], time.perf_counter() - start)


async def _serve_error(request: Request, e: ServeError) -> JSONResponse:
    return error(e.status, e.message, e.headers or None)


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    text = {404: f"no route {request.url.path}; see / for the page, /predict, /v2 and /metrics",
            405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, e.detail)
    return error(e.status_code, str(text), dict(e.headers or {}) or None)


async def _internal(request: Request, e: Exception) -> JSONResponse:
    log.exception("request %s %s failed", request.method, request.url.path)
    return error(500, f"internal error: {type(e).__name__}: {e}")


def _page(served: ServedModel, limits: Limits) -> str:
    html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    model = json.dumps({**served.info(), "max_upload_bytes": limits.max_upload_bytes}).replace("</", "<\\/")
    return html.replace("/*MODEL*/null", model)


def _query_number(request: Request, name: str, cast, default, low, high):
    text = request.query_params.get(name)
    if text is None:
        return default
    value = number(text, cast, f"{name}={text!r}", f"; e.g. {name}={default}")
    if not low <= value <= high:
        raise ServeError(400, f"{name}={text} must lie between {low} and {high}")
    return value


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


# -- the page, /info, /predict, /metrics (the Open Inference Protocol's routes are oip.router) ------------------

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def index(request: Request):
    return HTMLResponse(request.app.state.page)


@router.get("/info")
async def info(request: Request):
    state = state_of(request)
    limits = state.limits
    return {**state.served.info(), "limits": {"max_upload_bytes": limits.max_upload_bytes,
                                              "max_pixels": limits.max_pixels, "max_batch": limits.max_batch,
                                              "max_queue": limits.max_queue},
            "threads": {"decode": state.decode_threads, "inference_workers": 1}}


@router.post("/predict")
async def predict(request: Request) -> JSONResponse:
    arrived = time.perf_counter()
    state = state_of(request)
    served, limits = state.served, state.limits
    options: dict = {}

    async def read() -> bytes:  # the options first: a bad one is answered before the upload is read
        options["top_k"] = _query_number(request, "top_k", int, 5, 1, 1000)
        options["score_thresh"] = _query_number(request, "score_thresh", float, 0.3, 0.0, 1.0)
        return await upload_bytes(request, limits.max_upload_bytes)

    def answer(outputs, size: tuple[int, int]) -> dict:
        return {"image_size": list(size), **served.answer(outputs, size, **options)}

    result, t = await state.run(read, lambda data: served.prepare(data, limits), answer, time_decode=True)
    return JSONResponse({"model": served.name, "task": served.task.name, **result,
                         "timing": {"decode_ms": _ms(t.decode_s), "queue_ms": _ms(t.queue_s),
                                    "infer_ms": _ms(t.infer_s), "batch": t.batch,
                                    "postprocess_ms": _ms(t.answer_s), "total_ms": _ms(t.finished - arrived)}})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    m = state_of(request).metrics
    return Response(m.render(), media_type=m.content_type)
