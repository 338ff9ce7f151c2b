"""The one inference worker: a thread that owns the runner and runs whatever is queued as one batch.

No waiting for a batch to fill (Ray Serve's default, against the fixed delays TorchServe users complain about):
when the worker frees up it takes every queued request, up to ``max_batch`` images, and runs them together.
At low load a request runs alone at once; under load the requests that arrived during the previous batch form
the next. The runtime's own thread pool is the parallelism; one worker keeps its threads from fighting.

A request holding more images than ``max_batch`` (an OIP tensor of batch N) runs alone. A runner error fails
the requests of that batch only; the worker goes on.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    queue_s: float  # submitted -> taken by the worker
    infer_s: float  # the runner's time for the whole batch
    batch: int  # images in the batch this request ran in


@dataclass
class _Item:
    x: np.ndarray
    future: Future
    submitted: float


class Batcher:
    """``submit(x)`` -> a Future of ``(outputs, Timing)``: ``x`` (n, C, H, W), outputs the runner's arrays
    sliced to this request's n rows. ``on_batch(size, seconds)`` is called after each batch (metrics)."""

    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]], max_batch: int,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run = run
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="mobilenets-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the worker."""
        return len(self._queue)

    def submit(self, x: np.ndarray) -> Future:
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the inference worker has stopped")
            self._queue.append(_Item(x, future, time.perf_counter()))
            self._cond.notify()
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            items = [self._queue.popleft()]
            rows = len(items[0].x)
            while self._queue and rows + len(self._queue[0].x) <= self.max_batch:
                item = self._queue.popleft()
                items.append(item)
                rows += len(item.x)
            return items

    def _work(self) -> None:
        while (items := self._take()) is not None:
            taken = time.perf_counter()
            x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
            try:
                outputs = self.run(x)
            except BaseException as e:  # noqa: BLE001 - the requests of this batch fail, the worker goes on
                for item in items:
                    item.future.set_exception(e)
                continue
            seconds = time.perf_counter() - taken
            start = 0
            for item in items:
                n = len(item.x)
                item.future.set_result(([o[start:start + n] for o in outputs],
                                        Timing(taken - item.submitted, seconds, len(x))))
                start += n
            if self.on_batch is not None:
                self.on_batch(len(x), seconds)
