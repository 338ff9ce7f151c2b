"""Load test of ``mobilenets serve`` (BENCHMARKS.md "Serving"): V3-Small and V2 at 224 px (random weights,
dynamic-batch ONNX export), concurrency 1, 4, 16, against the same runner called in-process.

For each model: the server runs in its own process (``mobilenets serve FILE --backend B --threads T``, on
127.0.0.1, an ephemeral port) and this process sends ``POST /predict`` of one 640x480 JPEG from C threads, each
with one kept-alive connection, for ``--seconds`` per concurrency (and at most ``--max-requests``): requests/s,
p50/p99 latency, errors (any status but 200). "direct" is the same work without HTTP, in this process, one
request after another: decode + resize (``ServedModel.prepare``), the runner, postprocess (``answer``);
"runner" is the runner alone at batch 1. served/direct is the ratio of requests/s. Everything stops by itself.

    .venv/bin/python benchmarks/serve_load.py --seconds 10 --out benchmarks/serve_load.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobilenets.deploy import ExportOptions
from mobilenets.deploy.export import export_model
from mobilenets.deploy.open import open_runner
from mobilenets.deploy.source import load_source
from mobilenets.serve.client import Client
from mobilenets.serve.limits import Limits
from mobilenets.serve.model import ServedModel


def photo(seed: int = 0, size=(640, 480)) -> bytes:
    """A JPEG of smooth random colour blobs (compresses like a photo, unlike noise)."""
    small = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize(size, Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def start_server(path: Path, backend: str, threads: int, extra: list[str]) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-m", "mobilenets", "serve", str(path), "--backend", backend, "--threads", str(threads),
           "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "serving NAME (task, backend, ...) on http://127.0.0.1:PORT/"
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()[-2000:]}")
    return proc, line.rsplit(" ", 1)[1].strip().rstrip("/"), line.strip()


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def load(url: str, data: bytes, concurrency: int, seconds: float, max_requests: int) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    budget = [max_requests]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(i: int):
        c = Client(url, timeout=60)
        while time.perf_counter() < stop_at:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            t = time.perf_counter()
            try:
                status, _ = c.predict(data, "image/jpeg")
            except OSError:
                status = 0
            latencies[i].append(time.perf_counter() - t)
            errors[i] += status != 200
        c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array([v for part in latencies for v in part]) * 1e3
    n = len(lat)
    return {"concurrency": concurrency, "requests": n, "errors": int(sum(errors)), "seconds": elapsed,
            "rps": (n - sum(errors)) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def direct(served: ServedModel, data: bytes, seconds: float) -> dict:
    """The server's work for one request, in-process and sequential: decode + resize, runner, postprocess."""
    limits = Limits()
    lat = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        x, size = served.prepare(data, limits)
        outputs = served.runner.outputs(x)
        served.answer(outputs, size, top_k=5)
        lat.append(time.perf_counter() - t)
    lat = np.array(lat) * 1e3
    return {"requests": len(lat), "rps": len(lat) / (lat.sum() / 1e3), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def runner_only(served: ServedModel, seconds: float) -> float:
    x = np.random.default_rng(0).standard_normal((1, *served.input_shape), dtype=np.float32)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        served.runner.outputs(x)
        n += 1
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mobilenet_v3_small,mobilenet_v2")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=2, help="runtime threads, in the server and in-process")
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--max-requests", type=int, default=20000, help="per concurrency level")
    p.add_argument("--server-args", default="", help="extra flags for mobilenets serve, e.g. '--max-batch 4'")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    data = photo()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
              "cpus": os.cpu_count(), "load_before": os.getloadavg(), "image_bytes": len(data), "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, meta = load_source(name)
            path = Path(tmp) / f"{name}.onnx"
            export_model(model, meta, path, "onnx", ExportOptions(dynamic_batch=True))
            served = ServedModel(open_runner(path, args.backend, args.threads))
            if served.backend != "torch":
                torch.set_num_threads(1)  # as the server does: torch only resizes, one image at a time
            served.warm_up()
            before = direct(served, data, args.seconds / 2)
            only = runner_only(served, args.seconds / 2)
            proc, url, banner = start_server(path, served.backend, args.threads, args.server_args.split())
            try:
                for _ in range(20):  # warm the connection path
                    Client(url).predict(data, "image/jpeg")
                points = [load(url, data, int(c), args.seconds, args.max_requests)
                          for c in args.concurrency.split(",")]
            finally:
                code = stop_server(proc)
            after = direct(served, data, args.seconds / 2)
            base = (before["rps"] + after["rps"]) / 2
            for pt in points:
                pt["served_over_direct"] = pt["rps"] / base
            entry = {"model": name, "backend": served.backend, "server": banner, "exit_code": code,
                     "runner_batch1_per_s": only, "direct": [before, after], "direct_rps": base, "served": points}
            report["models"].append(entry)
            print(f"\n{name} on {served.backend} ({args.threads} threads): runner alone {only:.0f}/s, direct "
                  f"(decode+run+postprocess, sequential) {base:.0f} req/s, p50 {before['p50_ms']:.2f} ms; "
                  f"server exit {code}")
            print("| concurrency | requests | errors | req/s | p50 ms | p99 ms | served/direct |")
            print("|---:|---:|---:|---:|---:|---:|---:|")
            for pt in points:
                print(f"| {pt['concurrency']} | {pt['requests']} | {pt['errors']} | {pt['rps']:.0f} | "
                      f"{pt['p50_ms']:.2f} | {pt['p99_ms']:.2f} | {pt['served_over_direct']:.2f} |")
    report["load_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
