"""MobileNetV4 against the older model of similar cost, timed in the same interleaved rounds (issue #20).

The paper claims V4 is faster on CPUs at equal accuracy. ``mobilenets bench`` times each model against its own
peer, one model after another, so two models' figures come from different minutes of a shared machine. Here the
paths of both models of a pair (ONNX Runtime and OpenVINO, our exports, parity-checked) are timed in the same
rounds of :func:`mobilenets.deploy.bench.harness.interleave`, one worker process per path, and the ratio is the
median over rounds of (V4's fastest runtime in that round) / (the other model's fastest runtime in that round).
Each model runs at its native resolution (V4 Conv-M: 256 px, the rest 224 px), as the paper compares them.

    .venv/bin/python benchmarks/v4_latency_pairs.py --out benchmarks/v4_latency_pairs
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mobilenets.deploy.auto import cpu_name
from mobilenets.deploy.bench.harness import Worker, interleave, sgemm_roof
from mobilenets.deploy.bench.paths import PathSpec, build, export_ours, input_size, load
from mobilenets.profile import profile

PAIRS = (("mobilenet_v4_conv_small", "mobilenet_v3_large"), ("mobilenet_v4_conv_medium", "mobilenet_v2_140"))
BACKENDS = ("onnxruntime", "openvino")


def time_pair(pair, batch, threads, rounds, folder):
    specs = []
    for name in pair:
        size = input_size(name)
        onnx = export_ours(name, batch, folder, int8=False, calibration=None, size=size)["fp32"]
        specs += [PathSpec(name, "ours", b, batch, threads, file=onnx, input_size=size) for b in BACKENDS]
    workers = {(s.model, s.backend): Worker.start(load, s) for s in specs}
    for key, w in list(workers.items()):
        error = w.ready()
        if error:
            print(f"  {key}: skipped ({error})")
            del workers[key]
    try:
        timings = interleave({k: w.burst for k, w in workers.items()}, rounds, gap_s=0.05)
    finally:
        for w in workers.values():
            w.stop()
    rows = {}
    for name in pair:
        mine = {b: timings[(name, b)] for b in BACKENDS if (name, b) in timings}
        fastest = min(mine, key=lambda b: mine[b].median)
        per_round = [min(t.rounds[r] for t in mine.values()) for r in range(rounds)]
        macs = profile(build("mobilenets", name).eval(), input_size(name)).macs
        rows[name] = {"fastest": fastest, "median_ms": {b: t.median for b, t in mine.items()},
                      "best_ms": {b: t.best for b, t in mine.items()}, "per_round_fastest_ms": per_round,
                      "images_per_s": batch / mine[fastest].median * 1e3, "macs": macs,
                      "resolution": input_size(name)[-1]}
    v4, ref = pair
    ratios = [a / b for a, b in zip(rows[v4]["per_round_fastest_ms"], rows[ref]["per_round_fastest_ms"])]
    return {"pair": list(pair), "batch": batch, "rows": rows, "ratio": statistics.median(ratios),
            "ratio_p25": float(np.percentile(ratios, 25)), "ratio_p75": float(np.percentile(ratios, 75))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", default="1,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--large-batch-rounds", type=int, default=10)
    p.add_argument("--out", default="benchmarks/v4_latency_pairs")
    args = p.parse_args()
    started = datetime.now(timezone.utc).isoformat(timespec="minutes")
    roof = sgemm_roof(args.threads)
    print(f"{cpu_name()}, {args.threads} threads, sgemm roof {roof:.1f} GFLOP/s, {started}")
    results = []
    with tempfile.TemporaryDirectory(prefix="v4-pairs-") as tmp:
        for batch in [int(b) for b in args.batch.split(",")]:
            for pair in PAIRS:
                rounds = args.rounds if batch == 1 else args.large_batch_rounds
                got = time_pair(pair, batch, args.threads, rounds, Path(tmp))
                results.append(got)
                v4, ref = pair
                a, b = got["rows"][v4], got["rows"][ref]
                print(f"batch {batch}: {v4} {a['fastest']} {a['median_ms'][a['fastest']]:.2f} ms / {ref} "
                      f"{b['fastest']} {b['median_ms'][b['fastest']]:.2f} ms = {got['ratio']:.3f} "
                      f"({got['ratio_p25']:.2f}-{got['ratio_p75']:.2f})", flush=True)
    lines = ["| V4 model (px, MMACs) | other model (px, MMACs) | batch | V4 fastest, median ms | other fastest, "
             "median ms | V4 / other (p25-p75 of rounds) |", "|---|---|---|---|---|---|"]
    for g in results:
        v4, ref = g["pair"]
        a, b = g["rows"][v4], g["rows"][ref]
        lines.append(f"| {v4} ({a['resolution']}, {a['macs'] / 1e6:.0f}) | {ref} ({b['resolution']}, "
                     f"{b['macs'] / 1e6:.0f}) | {g['batch']} | {a['fastest']} {a['median_ms'][a['fastest']]:.2f} | "
                     f"{b['fastest']} {b['median_ms'][b['fastest']]:.2f} | {g['ratio']:.3f} "
                     f"({g['ratio_p25']:.2f}-{g['ratio_p75']:.2f}) |")
    head = f"{cpu_name()}, {args.threads} threads, sgemm roof {roof:.1f} GFLOP/s, started {started}\n\n"
    Path(f"{args.out}.md").write_text(head + "\n".join(lines) + "\n")
    Path(f"{args.out}.json").write_text(json.dumps({"cpu": cpu_name(), "threads": args.threads, "date": started,
                                                    "sgemm_gflops": roof, "results": results}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
