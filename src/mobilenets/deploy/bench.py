"""Cross-runtime benchmark: our models and the reference implementations, side by side, on each backend.

For each model and batch size, every *path* (model x backend) lives in its own worker process and holds its
loaded runtime; the coordinator asks the workers, in a new random order every round, for a short burst of timed
inferences (at least 3, about ``burst_ms``), round after round, so slow drifts of a shared machine hit all paths
alike and no runtime's thread pool runs inside another's process. Per path: the median of all runs, and the
"best-of-burst" figure, the median over rounds of each burst's fastest run (on a machine shared with other jobs
the median mostly measures the scheduler, the fastest run the code). The ratio "ours / peers" is the median over
rounds of (our fastest path in that round) / (the peers' fastest path in that round), the two fastest paths
being chosen by the same statistic; peers' paths are the runtimes (eager PyTorch is not a deployment path).

Paths:

* ``ours``: ``mobilenets.create_model(name)`` exported by :func:`~mobilenets.deploy.export.export_model`
  (BN folded, GlobalAveragePool, parity-checked) and run by :mod:`~mobilenets.deploy.runtime`'s runners, plus
  eager PyTorch (batch 1 only: at batch 32 one eager run takes seconds on a busy machine).
* ``peer``: torchvision's ``mobilenet_v2`` / ``mobilenet_v3_large`` / ``mobilenet_v3_small`` and timm's
  ``mobilenetv1_100``, exported with plain ``torch.onnx.export`` (its defaults: the dynamo exporter, opset 18)
  and run with the runtimes' default settings apart from the thread count (and fp32 precision for OpenVINO,
  whose default on AVX-512 BF16 CPUs is bf16), plus eager PyTorch.
* ``peer+tuned`` (``tuned_peers=True``): the reference ONNX files run by our runners. Our runner settings are
  the runtimes' defaults made explicit, so this is an A/A control: its spread against ``peer`` is the noise.
* ``ours int8`` (``int8=True``): NNCF int8 on OpenVINO and ONNX Runtime QDQ int8 (batch 1).

Random weights: latency does not depend on the values (no sparsity is exploited by these runtimes).
GFLOP/s counts 2 FLOPs per multiply-accumulate (:func:`mobilenets.profile`) against the sgemm roof measured by
:func:`sgemm_roof` on the same threads.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import UserError
from .formats import RUNTIMES, installed, optional_import

log = logging.getLogger(__name__)

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
PEERS = {"mobilenet_v1": ("timm", "mobilenetv1_100"), "mobilenet_v2": ("torchvision", "mobilenet_v2"),
         "mobilenet_v3_large": ("torchvision", "mobilenet_v3_large"),
         "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small")}


@dataclass
class PathSpec:
    """One measured path: what the worker process loads."""

    model: str  # our registry name (the row group)
    who: str  # "ours", "peer", "peer+tuned", "ours int8"
    backend: str
    batch: int
    threads: int
    file: str | None = None  # exported file (None: eager torch)
    source: tuple[str, str] | None = None  # ("mobilenets"|"torchvision"|"timm", name) for eager torch
    tuned: bool = True

    @property
    def label(self) -> str:
        return f"{self.who} {self.backend}"


@dataclass
class PathResult:
    model: str
    path: str
    who: str
    backend: str
    batch: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    images_per_s: float
    gflops: float  # achieved GFLOP/s (2 x MACs x batch / latency)
    roof_fraction: float  # of the measured sgemm roof
    samples: int
    best_ms: float = 0.0  # median over rounds of each round's fastest run: robust to a busy machine
    rounds: list[float] = field(repr=False, default_factory=list)  # per-round median ms
    round_best: list[float] = field(repr=False, default_factory=list)  # per-round fastest ms


# ----------------------------------------------------------------------------------------------- worker
def _load(spec: PathSpec):
    """A callable running one batch for ``spec``."""
    x = np.random.default_rng(0).standard_normal((spec.batch, 3, 224, 224), dtype=np.float32)
    if spec.backend == "torch":
        import torch
        torch.set_num_threads(spec.threads)
        model = _build(*spec.source).eval()
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                model(xt)
        return run
    from .runtime import OnnxRuntimeRunner, OpenVinoRunner
    if spec.backend == "onnxruntime":
        runner = OnnxRuntimeRunner(Path(spec.file), spec.threads, tuned=spec.tuned)
    else:  # our OpenVINO settings are its defaults plus fp32 and the thread count: nothing to tune
        runner = OpenVinoRunner(Path(spec.file), spec.threads)
    return lambda: runner.run(x)


def _worker(conn, spec: PathSpec) -> None:
    try:
        run = _load(spec)
        for _ in range(3):
            run()
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 - reported to the coordinator, which skips the path
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        n = conn.recv()
        if n is None:
            return
        times = []
        for _ in range(n):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)
        conn.send(("times", times))


def _build(library: str, name: str):
    if library == "mobilenets":
        from ..registry import create_model
        return create_model(name)
    if library == "torchvision":
        import torchvision
        return torchvision.models.get_model(name)
    import timm
    return timm.create_model(name)


# ----------------------------------------------------------------------------------------------- exports
def _export_ours(name: str, batch: int, folder: Path, int8: bool, calibration: str | None) -> dict[str, str]:
    from ..registry import create_model
    from .source import meta_for

    model = create_model(name).eval()
    meta = meta_for(model, name, {})
    files = {}
    out = folder / f"{name}_b{batch}.onnx"
    _export_batch(model, meta, out, "onnx", batch)
    files["fp32"] = str(out)
    if int8:
        if installed("openvino") and installed("nncf"):
            xml = folder / f"{name}_b{batch}_int8.xml"
            _export_batch(model, meta, xml, "openvino", batch, int8=True, calibration=calibration)
            files["int8 openvino"] = str(xml)
        if installed("onnxruntime"):
            qdq = folder / f"{name}_b{batch}_int8.onnx"
            _export_batch(model, meta, qdq, "onnx", batch, int8=True, calibration=calibration)
            files["int8 onnxruntime"] = str(qdq)
    return files


def _export_batch(model, meta, out: Path, fmt: str, batch: int, int8: bool = False,
                  calibration: str | None = None) -> None:
    """Export at a fixed batch of ``batch`` (a fixed shape lets the runtimes plan every layer ahead). int8
    parity is reported, not enforced: the random-weight benchmark models have no meaningful top-1."""
    from .export import export_model
    export_model(model, meta, out, fmt, batch=batch, int8=int8, calibration_data=calibration,
                 min_agreement=0.0 if int8 else None, parity_n=max(batch, 4), calibration_n=max(64, batch * 4))


def _export_peer(name: str, batch: int, folder: Path) -> str:
    """The reference model exported the plain way: ``torch.onnx.export`` with its defaults."""
    import torch
    library, peer = PEERS[name]
    model = _build(library, peer).eval()
    out = folder / f"peer_{peer}_b{batch}.onnx"
    for logger in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    torch.onnx.export(model, (torch.zeros(batch, 3, 224, 224),), str(out), opset_version=18,
                      external_data=False, verbose=False)
    return str(out)


# ----------------------------------------------------------------------------------------------- roof
def sgemm_roof(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """GFLOP/s of a float32 n x n matrix product on ``threads`` threads (fastest of repeated runs)."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        times, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return 2 * n ** 3 / min(times) / 1e9  # the roof: the best run (a shared machine only ever slows it)
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------- run
@dataclass
class BenchReport:
    date: str
    cpu: str
    threads: int
    sgemm_gflops: float
    versions: dict
    results: list[PathResult]
    ratios: list[dict]  # per model and batch: our fastest / peers' fastest

    def to_json(self) -> dict:
        return asdict(self)


def run_bench(models=MODELS, backends=None, batches=(1, 32), threads: int = 2, rounds: int = 30,
              large_batch_rounds: int = 10, burst_ms: float = 150.0, tuned_peers: bool = False, int8: bool = False,
              calibration: str | None = None, workdir: str | None = None, progress=None, on_block=None
              ) -> BenchReport:
    """Measure every path; ``rounds`` interleaved rounds at batch 1, ``large_batch_rounds`` at larger batches
    (each of their runs is already a long average). int8 and tuned-peer paths are batch-1 figures.
    ``on_block(report)`` receives the report so far after each model and batch (to save partial results)."""
    from .auto import cpu_name
    for value, what in ((threads, "threads"), (rounds, "rounds"), (large_batch_rounds, "large-batch-rounds"),
                        *((b, "batch") for b in batches)):
        if value < 1:
            raise UserError(f"--{what} {value} must be at least 1")
    unknown = [m for m in models if m not in PEERS]
    if unknown:
        raise UserError(f"unknown benchmark model(s) {', '.join(unknown)}; use {', '.join(MODELS)}")
    if backends is None:
        backends = [b for b in RUNTIMES if installed(b)]
    bad = [b for b in backends if b not in RUNTIMES]
    if bad:
        raise UserError(f"unknown backend(s) {', '.join(bad)}; use {', '.join(RUNTIMES)}")
    for b in backends:
        if b != "torch":
            optional_import(b, what=f"backend {b!r}")
    if int8 and calibration is None:
        calibration = "fashion-mnist"
    say = progress or (lambda msg: log.info("%s", msg))
    roof = sgemm_roof(threads)
    say(f"sgemm roof on {threads} threads: {roof:.1f} GFLOP/s")
    from .. import profile
    from importlib.metadata import version
    versions = {}
    for pkg in ("torch", "torchvision", "timm", "onnxruntime", "openvino", "nncf"):
        try:
            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - not installed
            pass
    results, ratios = [], []
    report = BenchReport(date=datetime.now(timezone.utc).isoformat(timespec="minutes"), cpu=cpu_name(),
                         threads=threads, sgemm_gflops=roof, versions=versions, results=results, ratios=ratios)
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        for name in models:
            macs = profile(_build("mobilenets", name), input_size=(3, 224, 224)).macs
            for batch in batches:
                first = batch == 1
                specs = _specs(name, batch, threads, backends, folder, tuned_peers and first, int8 and first,
                               calibration)
                n_rounds = rounds if first else large_batch_rounds
                say(f"{name} batch {batch}: {len(specs)} paths x {n_rounds} rounds")
                measured = _measure(specs, n_rounds, burst_ms)
                for spec, times, per_round, per_round_best in measured:
                    med = statistics.median(times)
                    results.append(PathResult(
                        model=name, path=spec.label, who=spec.who, backend=spec.backend, batch=batch,
                        median_ms=med, p10_ms=float(np.percentile(times, 10)),
                        p90_ms=float(np.percentile(times, 90)), images_per_s=batch / med * 1e3,
                        gflops=2 * macs * batch / med / 1e6, roof_fraction=2 * macs * batch / med / 1e6 / roof,
                        samples=len(times), best_ms=statistics.median(per_round_best), rounds=per_round,
                        round_best=per_round_best))
                ratio = _ratio([r for r in results if r.model == name and r.batch == batch])
                if ratio:
                    ratios.append(ratio)
                    say(f"  ours/peers: {ratio['ratio']:.3f} ({ratio['ours']} vs {ratio['peer']})")
                if on_block:
                    on_block(report)
    return report


def _specs(name, batch, threads, backends, folder, tuned_peers, int8, calibration) -> list[PathSpec]:
    specs = []
    onnx_backends = [b for b in backends if b != "torch"]
    ours = _export_ours(name, batch, folder, int8, calibration) if onnx_backends else {}
    peer = _export_peer(name, batch, folder) if onnx_backends else None
    if "torch" in backends and batch == 1:  # eager at batch 32 takes seconds a run: batch 1 says enough
        specs.append(PathSpec(name, "ours", "torch", batch, threads, source=("mobilenets", name)))
        specs.append(PathSpec(name, "peer", "torch", batch, threads, source=PEERS[name]))
    for b in onnx_backends:
        specs.append(PathSpec(name, "ours", b, batch, threads, file=ours["fp32"]))
        specs.append(PathSpec(name, "peer", b, batch, threads, file=peer, tuned=False))
        if tuned_peers:
            specs.append(PathSpec(name, "peer+tuned", b, batch, threads, file=peer))
        if f"int8 {b}" in ours:
            specs.append(PathSpec(name, "ours int8", b, batch, threads, file=ours[f"int8 {b}"]))
    return specs


def _measure(specs: list[PathSpec], rounds: int, burst_ms: float, gap_s: float = 0.05):
    """Interleaved rounds over worker processes; returns (spec, all times, per-round medians, per-round minima)
    per live path."""
    ctx = mp.get_context("spawn")
    workers = []
    for spec in specs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, spec), daemon=True)
        proc.start()
        workers.append((spec, parent, proc))
    live = []
    for spec, conn, proc in workers:
        kind, payload = conn.recv()
        if kind == "error":
            log.warning("skipping %s %s: %s", spec.model, spec.label, payload)
            conn.close()
            proc.join()
            continue
        live.append([spec, conn, proc, [], [], [], 3])  # spec, conn, proc, times, round medians, round mins, burst
    try:
        shuffle = random.Random(0).shuffle
        for r in range(rounds):
            # A new order every round: no path always follows the same neighbour (a runtime's worker threads
            # still spinning after its burst slow down whichever path comes next).
            order = list(live)
            shuffle(order)
            for entry in order:
                spec, conn, _, times, per_round, per_round_best, n = entry
                time.sleep(gap_s)  # let the previous path's spinning worker threads go idle first
                conn.send(n)
                _, got = conn.recv()
                times.extend(got)
                per_round.append(statistics.median(got))
                per_round_best.append(min(got))
                # Size the burst once from the first round: about burst_ms of work, at least 3 runs.
                if r == 0:
                    entry[6] = max(3, min(50, int(burst_ms / max(statistics.median(got), 1e-3))))
    finally:
        for spec, conn, proc, *_ in live:
            conn.send(None)
            proc.join(timeout=10)
    return [(spec, times, per_round, per_round_best) for spec, _, _, times, per_round, per_round_best, _ in live]


def _ratio(rows: list[PathResult]) -> dict | None:
    ours = [r for r in rows if r.who == "ours"]
    peers = [r for r in rows if r.who == "peer" and r.backend != "torch"] or [r for r in rows if r.who == "peer"]
    if not ours or not peers:
        return None
    best_ours = min(ours, key=lambda r: r.median_ms)
    best_peer = min(peers, key=lambda r: r.median_ms)
    per_round = [a / b for a, b in zip(best_ours.rounds, best_peer.rounds)]
    # The same comparison on each round's fastest runs (paths picked by the same statistic): on a machine
    # shared with other jobs a run's median mostly measures the scheduler, its minimum the code.
    best_ours_b = min(ours, key=lambda r: r.best_ms)
    best_peer_b = min(peers, key=lambda r: r.best_ms)
    per_round_b = [a / b for a, b in zip(best_ours_b.round_best, best_peer_b.round_best)]
    return {"model": rows[0].model, "batch": rows[0].batch, "ours": best_ours.path, "peer": best_peer.path,
            "ours_ms": best_ours.median_ms, "peer_ms": best_peer.median_ms,
            "ratio": statistics.median(per_round), "ratio_p25": float(np.percentile(per_round, 25)),
            "ratio_p75": float(np.percentile(per_round, 75)),
            "best": {"ours": best_ours_b.path, "peer": best_peer_b.path, "ours_ms": best_ours_b.best_ms,
                     "peer_ms": best_peer_b.best_ms, "ratio": statistics.median(per_round_b) if per_round_b else None,
                     "ratio_p25": float(np.percentile(per_round_b, 25)) if per_round_b else None,
                     "ratio_p75": float(np.percentile(per_round_b, 75)) if per_round_b else None},
            "int8_vs_fp32": _int8_ratio(rows, best_ours, best_ours_b)}


def _int8_ratio(rows, best_fp32, best_fp32_b):
    int8 = [r for r in rows if r.who == "ours int8"]
    if not int8:
        return None
    best = min(int8, key=lambda r: r.median_ms)
    best_b = min(int8, key=lambda r: r.best_ms)
    return {"path": best.path, "ms": best.median_ms,
            "ratio": statistics.median(a / b for a, b in zip(best.rounds, best_fp32.rounds)),
            "best_path": best_b.path, "best_ms": best_b.best_ms,
            "best_ratio": statistics.median(a / b for a, b in zip(best_b.round_best, best_fp32_b.round_best))}


def format_table(report: BenchReport) -> str:
    lines = [f"# {report.date}  {report.cpu}  threads={report.threads}  sgemm roof {report.sgemm_gflops:.1f} GFLOP/s",
             "# " + "  ".join(f"{k} {v}" for k, v in report.versions.items()),
             "",
             "| model | batch | path | median ms | p10-p90 ms | best-of-burst ms | img/s | GFLOP/s | % roof |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report.results:
        lines.append(f"| {r.model} | {r.batch} | {r.path} | {r.median_ms:.2f} | {r.p10_ms:.2f}-{r.p90_ms:.2f} | "
                     f"{r.best_ms:.2f} | {r.images_per_s:.0f} | {r.gflops:.1f} | {r.roof_fraction:.0%} |")
    if report.ratios:
        lines += ["", "| model | batch | ours / peers, medians (p25-p75 over rounds) | ours / peers, best-of-burst "
                  "(p25-p75) | our int8 / our fp32, medians | our int8 / our fp32, best-of-burst |",
                  "|---|---|---|---|---|---|"]
        for q in report.ratios:
            b, i8 = q.get("best") or {}, q["int8_vs_fp32"]
            best_text = (f"{b['ratio']:.3f} ({b['ratio_p25']:.2f}-{b['ratio_p75']:.2f}): {b['ours']} "
                         f"{b['ours_ms']:.2f} ms / {b['peer']} {b['peer_ms']:.2f} ms") if b.get("ratio") else "-"
            i8_text = f"{i8['ratio']:.2f} ({i8['path']})" if i8 else "-"
            i8_best = f"{i8['best_ratio']:.2f} ({i8['best_path']}, {i8['best_ms']:.2f} ms)" if i8 else "-"
            lines.append(f"| {q['model']} | {q['batch']} | {q['ratio']:.3f} ({q['ratio_p25']:.2f}-{q['ratio_p75']:.2f}): "
                         f"{q['ours']} {q['ours_ms']:.2f} ms / {q['peer']} {q['peer_ms']:.2f} ms | {best_text} "
                         f"| {i8_text} | {i8_best} |")
    return "\n".join(lines)


def parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise UserError(f"--{what} {text!r} is not a comma-separated list ({e}); e.g. --{what} 1,32") from e
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list")
    return items

