"""``run_bench``: every path of every model and batch size, measured by the harness, into a report."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ...data.loaders import FASHION
from ...errors import UserError
from ..files import optional_import
from ..formats import BACKEND, RUNTIMES, installed, runs_here
from .harness import Timings, Worker, interleave, sgemm_roof
from .paths import MODELS, PEERS, PathSpec, build, input_size, load, specs
from .report import BenchReport
from .stats import PathResult, path_result, ratio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchOptions:
    """What ``run_bench`` measures: ``models`` (benchmark names), ``backends`` (None: every installed one that runs
    here), ``batches``, ``threads`` per runtime, ``rounds`` interleaved rounds at batch 1 and ``large_batch_rounds``
    at larger batches (each of their runs is already a long average), bursts of about ``burst_ms``;
    ``tuned_peers``: also the peers' files with our runner settings; ``int8``: also our int8 files, calibrated on
    ``calibration`` (default fashion-mnist); ``resolution``: one input size for all (default each model's)."""

    models: tuple[str, ...] = MODELS
    backends: tuple[str, ...] | None = None
    batches: tuple[int, ...] = (1, 32)
    threads: int = 2
    rounds: int = 30
    large_batch_rounds: int = 10
    burst_ms: float = 150.0
    tuned_peers: bool = False
    int8: bool = False
    calibration: str | None = None
    resolution: int | None = None


def run_bench(options: BenchOptions | None = None, *, workdir: str | None = None, progress=None, on_block=None,
              **deprecated) -> BenchReport:
    """Measure every path ``options`` asks for (:class:`BenchOptions`). int8 and tuned-peer paths are batch-1
    figures. Each model and its peer run at the model's native resolution, or at ``options.resolution`` for all.
    ``progress(message)`` receives progress lines (default: the log); ``on_block(report)`` receives the report so
    far after each model and batch (to save partial results). The keyword arguments of earlier releases
    (``models=``, ``threads=``, ...) still work for this release, mapped onto ``options`` with a
    DeprecationWarning."""
    from ... import profile
    from ..auto import cpu_name
    from ..options import from_keywords

    options = from_keywords(options, deprecated, "run_bench", cls=BenchOptions)
    models, backends, batches, threads = options.models, options.backends, options.batches, options.threads
    rounds, large_batch_rounds, burst_ms = options.rounds, options.large_batch_rounds, options.burst_ms
    tuned_peers, int8, calibration, resolution = (options.tuned_peers, options.int8, options.calibration,
                                                  options.resolution)
    checked = [(threads, "threads"), (rounds, "rounds"), (large_batch_rounds, "large_batch_rounds"),
               *((b, "batches") for b in batches), *([] if resolution is None else [(resolution, "resolution")])]
    for value, what in checked:
        if value < 1:
            raise UserError(f"{what}={value} must be at least 1")
    unknown = [m for m in models if m not in PEERS]
    if unknown:
        raise UserError(f"unknown benchmark model(s) {', '.join(unknown)}; use {', '.join(PEERS)}")
    if backends is None:
        backends = [b for b in RUNTIMES if installed(b)]
    bad = [b for b in backends if b not in RUNTIMES]
    if bad:
        raise UserError(f"unknown backend(s) {', '.join(bad)}; use {', '.join(RUNTIMES)}")
    for b in backends:
        if not runs_here(b):
            raise UserError(f"backend {b!r} cannot run here: {BACKEND[b].platform_note}; drop it from backends")
        if b != "torch":
            optional_import(BACKEND[b].module, BACKEND[b].extra, what=f"backend={b!r}")
    if int8 and calibration is None:
        calibration = FASHION
    say = progress or (lambda msg: log.info("%s", msg))
    roof = sgemm_roof(threads)
    say(f"sgemm roof on {threads} threads: {roof:.1f} GFLOP/s")
    results: list[PathResult] = []
    ratios: list[dict] = []
    report = BenchReport(date=datetime.now(timezone.utc).isoformat(timespec="minutes"), cpu=cpu_name(),
                         threads=threads, sgemm_gflops=roof, versions=_versions(), results=results, ratios=ratios)
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        for name in models:
            size = input_size(name, resolution)
            macs = profile(build("mobilenets", name), input_size=size).macs
            for batch in batches:
                first = batch == 1
                block = specs(name, batch, threads, backends, folder, tuned_peers and first, int8 and first,
                              calibration, resolution)
                n_rounds = rounds if first else large_batch_rounds
                say(f"{name} at {size[-1]} px, batch {batch}: {len(block)} paths x {n_rounds} rounds")
                for spec, timings in measure(block, n_rounds, burst_ms):
                    results.append(path_result(spec, timings, macs, roof))
                q = ratio([r for r in results if r.model == name and r.batch == batch])
                if q:
                    ratios.append(q)
                    say(f"  ours/peers: {q['ratio']:.3f} ({q['ours']} vs {q['peer']})")
                if on_block:
                    on_block(report)
    return report


def measure(paths: list[PathSpec], rounds: int, burst_ms: float, gap_s: float = 0.05
            ) -> list[tuple[PathSpec, Timings]]:
    """Every path in its own worker process, interleaved; paths whose worker fails to load are skipped."""
    workers = [Worker.start(load, spec) for spec in paths]  # they load in parallel
    live = {}
    for i, (spec, worker) in enumerate(zip(paths, workers)):
        error = worker.ready()
        if error:
            log.warning("skipping %s %s: %s", spec.model, spec.label, error)
        else:
            live[i] = worker
    try:
        timings = interleave({i: w.burst for i, w in live.items()}, rounds, burst_ms=burst_ms, gap_s=gap_s)
    finally:
        for worker in live.values():
            worker.stop()
    return [(paths[i], t) for i, t in timings.items()]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("torch", "torchvision", "timm", "onnxruntime", "openvino", "nncf", "executorch", "torchao",
                "ai-edge-litert", "litert-torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
