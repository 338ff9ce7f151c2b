"""The one timing harness: interleaved rounds of short bursts, in-process or one process per path.

Every timing in the package and in benchmarks/ goes through :func:`interleave`: each *path* (a thing to time) is a
``burst(n)`` function returning the milliseconds of ``n`` runs. In every round each path runs one burst, in a new
random order every round, so slow drifts of a shared machine hit all paths alike and no path always follows the
same neighbour (a runtime's worker threads still spinning after its burst slow down whichever path comes next).
The first round runs ``min_runs`` per path; from its median the burst is sized to about ``burst_ms`` of work.

A path is :func:`timed` (a callable in this process) or a :class:`Worker` (its own process, holding its loaded
runtime: runtimes' thread pools disturb one another inside one process).
"""
from __future__ import annotations

import multiprocessing as mp
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import numpy as np

Burst = Callable[[int], list[float]]  # n -> the milliseconds of n runs


@dataclass
class Timings:
    """One path's measurements over the rounds of :func:`interleave`."""

    times: list[float] = field(default_factory=list)  # every run, ms
    rounds: list[float] = field(default_factory=list)  # each round's median ms
    round_best: list[float] = field(default_factory=list)  # each round's fastest ms

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        """The median over rounds of each burst's fastest run: on a machine shared with other jobs the median
        mostly measures the scheduler, the fastest run the code."""
        return statistics.median(self.round_best)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.times, q))


def timed(fn: Callable[[], Any]) -> Burst:
    """The burst function of a callable run in this process."""
    def burst(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return times
    return burst


Key = TypeVar("Key", bound=Hashable)


def interleave(paths: Mapping[Key, Burst], rounds: int, *, burst_ms: float = 150.0, min_runs: int = 3,
               max_runs: int = 50, gap_s: float = 0.0, seed: int = 0) -> dict[Key, Timings]:
    """Time every path of ``paths`` over ``rounds`` interleaved rounds (see the module docstring); ``gap_s``
    seconds of sleep before each burst let the previous path's spinning threads go idle first."""
    out = {key: Timings() for key in paths}
    size = {key: min_runs for key in paths}
    shuffle = random.Random(seed).shuffle
    for r in range(rounds):
        order = list(paths)
        shuffle(order)
        for key in order:
            if gap_s:
                time.sleep(gap_s)
            got = paths[key](size[key])
            t = out[key]
            t.times.extend(got)
            t.rounds.append(statistics.median(got))
            t.round_best.append(min(got))
            if r == 0:  # size the burst once, from the first round: about burst_ms of work
                size[key] = max(min_runs, min(max_runs, int(burst_ms / max(statistics.median(got), 1e-3))))
    return out


def median_ms(fn: Callable[[], Any], seconds: float = 1.0, warmup: int = 3, rounds: int = 5) -> float:
    """Median ms of ``fn()`` over about ``seconds`` of runs (one path of :func:`interleave`)."""
    for _ in range(warmup):
        fn()
    return interleave({0: timed(fn)}, rounds, burst_ms=seconds * 1e3 / rounds, max_runs=40)[0].median


# ------------------------------------------------------------------------------------------ worker processes
def _serve(conn: Connection, load: Callable[[Any], Callable[[], Any]], arg: Any, warmup: int) -> None:
    try:
        run = load(arg)
        for _ in range(warmup):
            run()
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 - reported to the coordinator, which skips the path
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    burst = timed(run)
    while True:
        n = conn.recv()
        if n is None:
            return
        conn.send(("times", burst(n)))


@dataclass
class Worker:
    """A path timed in its own (spawned) process: ``load(arg)`` there returns the callable to time; ``burst`` is
    its :data:`Burst` function."""

    conn: Connection
    process: mp.process.BaseProcess

    @classmethod
    def start(cls, load: Callable[[Any], Callable[[], Any]], arg: Any, warmup: int = 3) -> "Worker":
        """Start the process (``load`` and ``arg`` must pickle); :meth:`ready` waits for it."""
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child, load, arg, warmup), daemon=True)
        process.start()
        return cls(parent, process)

    def ready(self) -> str | None:
        """Wait until the path is loaded and warm; the error text when it failed (the process is then gone)."""
        kind, payload = self.conn.recv()
        if kind == "error":
            self.conn.close()
            self.process.join()
            return payload
        return None

    def burst(self, n: int) -> list[float]:
        self.conn.send(n)
        return self.conn.recv()[1]

    def stop(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=10)


# ------------------------------------------------------------------------------------------ roof
def sgemm_roof(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """GFLOP/s of a float32 n x n matrix product on ``threads`` threads (fastest of repeated runs)."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return 2 * n ** 3 / min(times) / 1e9  # the roof: the best run (a shared machine only ever slows it)
    finally:
        torch.set_num_threads(old)
