"""Per-path figures and the ratios ``mobilenets bench`` reports.

The ratio "ours / peers" is the median over rounds of (our fastest path in that round) / (the peers' fastest
path in that round), the two fastest paths being chosen by the same statistic; peers' paths are the runtimes
(eager PyTorch is not a deployment path). GFLOP/s counts 2 FLOPs per multiply-accumulate
(:func:`mobilenets.profile`) against the sgemm roof (:func:`.harness.sgemm_roof`) on the same threads.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from .harness import Timings
from .paths import PathSpec


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
    resolution: int = 224  # input height = width, px


def path_result(spec: PathSpec, t: Timings, macs: int, roof: float) -> PathResult:
    med = t.median
    gflops = 2 * macs * spec.batch / med / 1e6
    return PathResult(model=spec.model, path=spec.label, who=spec.who, backend=spec.backend, batch=spec.batch,
                      median_ms=med, p10_ms=t.percentile(10), p90_ms=t.percentile(90),
                      images_per_s=spec.batch / med * 1e3, gflops=gflops, roof_fraction=gflops / roof,
                      samples=len(t.times), best_ms=t.best, rounds=t.rounds, round_best=t.round_best,
                      resolution=spec.input_size[-1])


def ratio(rows: list[PathResult]) -> dict | None:
    """Ours / peers for the rows of one model and batch (None without both)."""
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
