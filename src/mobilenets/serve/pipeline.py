"""What the routes share: the server's :class:`State` and the one way an inference request goes through it.

:meth:`State.run` is the pipeline of ``POST /predict`` and of the Open Inference Protocol's ``infer`` alike:
admit the request (503 while the server is not ready or ``max_queue`` requests are inside), read its body on
the event loop, decode it into the model's input batch in the decode pool, wait for the one inference worker,
and build the answer in the pool again.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from .batching import Batcher
from .limits import Limits, ServeError
from .metrics import Metrics
from .model import ServedModel

R = TypeVar("R")  # what a route reads
C = TypeVar("C")  # what its decoding hands to its answer besides the outputs
A = TypeVar("A")  # its answer


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    """The answer of a failure: ``{"error": "<one line>", **extra}`` with ``status``."""
    return JSONResponse({"error": " ".join(message.split()), **extra}, status_code=status, headers=headers)


@dataclass
class Trace:
    """Where one request's time went: its decoding (waiting for the pool included), the worker's queue and
    batch, its answer; ``finished``: ``time.perf_counter()`` when the answer was ready."""

    decode_s: float
    queue_s: float
    infer_s: float
    batch: int
    answer_s: float
    finished: float


class State:
    """What the routes share: the model, limits, worker, pool, metrics, and the count of requests inside.
    ``create_app`` keeps it as ``app.state.serve``; a route reaches it with :func:`state_of`."""

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
        retry = {"Retry-After": str(self.limits.retry_after_s)}
        if not self.ready:
            raise ServeError(503, "the server is starting or shutting down; retry shortly", retry)
        if self.inflight >= self.limits.max_queue:
            raise ServeError(503, f"the queue is full ({self.limits.max_queue} requests inside); retry after "
                                  f"{self.limits.retry_after_s} s", retry)
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def in_pool(self, fn: Callable[..., A], *args, **kwargs) -> A:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def run(self, read: Callable[[], Awaitable[R]], decode: Callable[[R], tuple[np.ndarray, C]],
                  answer: Callable[[list[np.ndarray], C], A], *, time_decode: bool = False) -> tuple[A, Trace]:
        """One inference request: admitted, ``read()`` on the event loop, ``decode(read) -> (x, context)`` in
        the pool (observed by the decode metric when ``time_decode``), ``x`` through the worker (the queue
        metric), ``answer(outputs, context)`` in the pool."""
        async with self.admitted():
            data = await read()
            start = time.perf_counter()
            x, context = await self.in_pool(decode, data)
            decoded = time.perf_counter()
            if time_decode:
                self.metrics.decode.observe(decoded - start)
            outputs, timing = await asyncio.wrap_future(self.batcher.submit(x))
            self.metrics.queue.observe(timing.queue_s)
            inferred = time.perf_counter()
            result = await self.in_pool(answer, outputs, context)
            done = time.perf_counter()
        return result, Trace(decoded - start, timing.queue_s, timing.infer_s, timing.batch, done - inferred, done)


def state_of(request: Request) -> State:
    state: Any = request.app.state.serve
    return state
