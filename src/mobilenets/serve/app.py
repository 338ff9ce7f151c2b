"""The FastAPI app: the page, ``POST /predict``, Open Inference Protocol v2, ``/metrics``.

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
import importlib.metadata
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from . import oip
from .batching import Batcher
from .limits import Limits, ServeError
from .metrics import Metrics
from .model import ServedModel

log = logging.getLogger(__name__)

RAW_TYPES = ("image/", "application/octet-stream")  # content types of a raw image body


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split()), **extra}, status_code=status, headers=headers)


class _Parser(MultiPartParser):
    spool_max_size = 64 << 20  # the body is already capped and in memory: keep the file part there too


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


class State:
    """What the routes share: the model, limits, worker, pool, metrics, and the count of requests inside."""

    def __init__(self, served: ServedModel, limits: Limits, decode_threads: int):
        self.served, self.limits = served, limits
        self.metrics = Metrics(served.name, limits.max_batch)
        self.batcher = Batcher(served.runner.outputs, limits.max_batch, self.metrics.on_batch)
        self.pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="mobilenets-decode")
        self.decode_threads = decode_threads
        self.inflight = 0
        self.ready = False
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.metrics.inflight.set_function(lambda: self.inflight)

    @contextlib.asynccontextmanager
    async def admitted(self):
        """One request inside the server; 503 with Retry-After when ``max_queue`` are inside already."""
        if not self.ready:
            raise ServeError(503, "the server is starting or shutting down; retry shortly",
                             {"Retry-After": str(self.limits.retry_after_s)})
        if self.inflight >= self.limits.max_queue:
            raise ServeError(503, f"the queue is full ({self.limits.max_queue} requests inside); retry after "
                                  f"{self.limits.retry_after_s} s", {"Retry-After": str(self.limits.retry_after_s)})
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def in_pool(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def infer(self, x: np.ndarray):
        return await asyncio.wrap_future(self.batcher.submit(x))


# Before answering 413, the server reads and discards the rest of an oversized body, up to DRAIN_BYTES in all and
# for at most DRAIN_SECONDS, so that a client which sends the whole body before reading the answer (plain urllib,
# requests: no Expect: 100-continue) gets the 413 and not a connection reset (the lingering close of nginx and
# Apache). A body declared larger still is refused unread; a client that stalls is cut off when the time is up.
DRAIN_BYTES = 64 << 20
DRAIN_SECONDS = 10.0


def _too_large(cap: int, declared: int | None = None) -> ServeError:
    size = "" if declared is None else f" of {declared:,} bytes"
    return ServeError(413, f"upload{size} is over this server's limit of {cap:,} bytes (its max_upload_mb setting); "
                           "send a smaller image")


async def _discard(stream, size: int) -> None:
    async for chunk in stream:
        size += len(chunk)
        if size > DRAIN_BYTES:
            return


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refusing (413) more than ``cap`` bytes: from Content-Length, else as it streams in;
    either way the rest of the body is read and discarded first (up to ``DRAIN_BYTES`` and ``DRAIN_SECONDS``)."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ServeError(400, f"Content-Length {length!r} is not a number")
    declared = int(length) if length is not None else None
    if declared is not None and declared > DRAIN_BYTES:
        raise _too_large(cap, declared)
    chunks, size = [], 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > cap:
            break
        chunks.append(chunk)
    if size > cap or (declared or 0) > cap:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_discard(stream, size), DRAIN_SECONDS)
        raise _too_large(cap, declared)
    return b"".join(chunks)


async def upload_bytes(request: Request, cap: int) -> bytes:
    """The image of a ``POST /predict``: a multipart ``file`` field, or the raw body (``image/*``,
    ``application/octet-stream``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = await read_body(request, cap)

        async def stream():
            yield body

        try:
            form = await _Parser(request.headers, stream(), max_files=4, max_fields=16).parse()
        except MultiPartException as e:
            raise ServeError(400, f"malformed multipart upload ({e.message})") from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            field = form.get("file")
            chosen = field if isinstance(field, UploadFile) else (files[0] if files else None)
            if chosen is None:
                raise ServeError(400, "the multipart upload has no file; send the image in a field named 'file'")
            return await chosen.read()
        finally:
            await form.close()
    if ctype == "" or ctype.startswith(RAW_TYPES):
        return await read_body(request, cap)
    raise ServeError(415, f"content type {ctype!r} is not an image upload; send multipart/form-data with a "
                          "'file' field, or the image bytes as image/jpeg, image/png, ...")


def _query_number(request: Request, name: str, cast, default, low, high):
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = cast(text)
    except ValueError:
        raise ServeError(400, f"{name}={text!r} is not a number; e.g. {name}={default}") from None
    if not low <= value <= high:
        raise ServeError(400, f"{name}={text} must lie between {low} and {high}")
    return value


def _page(served: ServedModel, limits: Limits) -> str:
    html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    model = json.dumps({**served.info(), "max_upload_bytes": limits.max_upload_bytes}).replace("</", "<\\/")
    return html.replace("/*MODEL*/null", model)


def create_app(served: ServedModel, limits: Limits | None = None, decode_threads: int = 2) -> FastAPI:
    """The app serving ``served``; its lifespan warms the model up and starts the inference worker, and on
    shutdown (after uvicorn has let the requests in flight finish) runs what is queued and stops it."""
    limits = limits or Limits()
    state = State(served, limits, decode_threads)
    page = _page(served, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, served.warm_up)
        state.batcher.start()
        state.ready = True
        log.info("ready: %s (%s) on %s", served.name, served.task.name, served.backend)
        try:
            yield
        finally:
            state.ready = False
            await asyncio.get_running_loop().run_in_executor(None, state.batcher.stop)
            state.pool.shutdown(wait=True)

    app = FastAPI(title="mobilenets serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    app.add_middleware(_Metered, metrics=state.metrics)

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        return error(e.status, e.message, e.headers or None)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        text = {404: f"no route {request.url.path}; see / for the page, /predict, /v2 and /metrics",
                405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, e.detail)
        return error(e.status_code, str(text), dict(e.headers or {}) or None)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return error(500, f"internal error: {type(e).__name__}: {e}")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/info")
    async def info():
        return {**served.info(), "limits": {"max_upload_bytes": limits.max_upload_bytes,
                                            "max_pixels": limits.max_pixels, "max_batch": limits.max_batch,
                                            "max_queue": limits.max_queue},
                "threads": {"decode": state.decode_threads, "inference_workers": 1}}

    @app.post("/predict")
    async def predict(request: Request):
        arrived = time.perf_counter()
        async with state.admitted():
            top_k = _query_number(request, "top_k", int, 5, 1, 1000)
            score_thresh = _query_number(request, "score_thresh", float, 0.3, 0.0, 1.0)
            data = await upload_bytes(request, limits.max_upload_bytes)
            start = time.perf_counter()
            x, size = await state.in_pool(served.prepare, data, limits)
            decoded = time.perf_counter()
            state.metrics.decode.observe(decoded - start)
            outputs, timing = await state.infer(x)
            state.metrics.queue.observe(timing.queue_s)
            post = time.perf_counter()
            result = await state.in_pool(served.answer, outputs, size, top_k=top_k, score_thresh=score_thresh)
            done = time.perf_counter()
        return JSONResponse({"model": served.name, "task": served.task.name, "image_size": list(size), **result,
                             "timing": {"decode_ms": round((decoded - start) * 1e3, 3),
                                        "queue_ms": round(timing.queue_s * 1e3, 3),
                                        "infer_ms": round(timing.infer_s * 1e3, 3), "batch": timing.batch,
                                        "postprocess_ms": round((done - post) * 1e3, 3),
                                        "total_ms": round((done - arrived) * 1e3, 3)}})

    # -- Open Inference Protocol v2 -------------------------------------------------------------------------
    def _model(name: str, version: str | None = None) -> None:
        if name != served.name:
            raise ServeError(404, f"unknown model {name!r}; this server serves {served.name!r}")
        if version not in (None, "1"):
            raise ServeError(404, f"model {name!r} has no version {version!r}; it has version 1")

    @app.get("/v2")
    async def server_metadata():
        return {"name": "mobilenets", "version": importlib.metadata.version("mobilenets"),
                "extensions": list(oip.EXTENSIONS)}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not state.ready:
            return error(503, "not ready (starting or shutting down)", ready=False)
        return {"ready": True}

    async def metadata(name: str, version: str | None = None):
        _model(name, version)
        c, h, w = served.input_shape
        return {"name": served.name, "versions": ["1"], "platform": f"mobilenets_{served.backend}",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
                "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, *s]}
                            for n, s in zip(served.output_names, served.output_shapes)]}

    async def model_ready(name: str, version: str | None = None):
        _model(name, version)
        if not state.ready:
            return error(503, "not ready (starting or shutting down)", name=name, ready=False)
        return {"name": name, "ready": True}

    async def infer(request: Request, name: str, version: str | None = None):
        _model(name, version)
        async with state.admitted():
            body = await read_body(request, limits.max_upload_bytes)
            req = await state.in_pool(oip.parse_infer, body, request.headers.get(oip.HEADER))
            x = await state.in_pool(_input_batch, served, req, limits)
            outputs, timing = await state.infer(x)
            state.metrics.queue.observe(timing.queue_s)
            body, headers = await state.in_pool(oip.response, served.name, req,
                                                dict(zip(served.output_names, outputs)), list(served.meta.class_names))
        return Response(body, headers=headers)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    return app


def _input_batch(served: ServedModel, req: oip.InferRequest, limits: Limits) -> np.ndarray:
    """The model's input batch of an infer request: the FP32 tensor ``input``, or encoded images in ``image``."""
    if len(req.inputs) != 1:
        raise ServeError(400, f"{len(req.inputs)} inputs sent; this model takes one: 'input' (FP32 (N, C, H, W)) "
                              "or 'image' (BYTES, encoded images)")
    t = req.inputs[0]
    c, h, w = served.input_shape
    if t.name == "image" and t.datatype == "BYTES":
        if not 0 < len(t.data) <= limits.max_queue:
            raise ServeError(400, f"input 'image' holds {len(t.data)} images; send 1 to {limits.max_queue}")
        return np.concatenate([served.prepare(bytes(b), limits)[0] for b in t.data])
    if t.name != "input":
        raise ServeError(400, f"unknown input {t.name!r}; send 'input' (FP32 (N, {c}, {h}, {w})) or 'image' "
                              "(BYTES, encoded images)")
    if t.datatype != "FP32":
        raise ServeError(400, f"input 'input' is {t.datatype}; send FP32")
    if len(t.shape) != 4 or tuple(t.shape[1:]) != (c, h, w) or t.shape[0] < 1:
        raise ServeError(400, f"input 'input' of shape {t.shape} does not fit the model's [N, {c}, {h}, {w}] "
                              "(N >= 1)")
    x = np.ascontiguousarray(t.data, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ServeError(400, "input 'input' holds NaN or infinite values")
    return x
