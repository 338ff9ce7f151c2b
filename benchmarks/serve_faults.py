"""Fault test of ``mobilenets serve`` (BENCHMARKS.md "Serving"): 2,000 requests to a V3-Small server (224 px,
random weights) of which 10% are malformed uploads, in five kinds: zero bytes (400), a truncated JPEG (400),
text (415), an oversized upload of 17 MiB (413) and a decompression bomb (a 10000x10000 PNG of a few kB:
413). Every malformed request must get its status, every good one 200, and the server's resident memory
(VmRSS, read from /proc) must grow less than 10% from after a warm-up of 100 good requests to the end.

The server runs in its own process on 127.0.0.1 (ephemeral port) and is stopped with SIGTERM at the end (it
must exit 0); ``--concurrency`` threads send the requests, each over one kept-alive connection.

    .venv/bin/python benchmarks/serve_faults.py --out benchmarks/serve_faults.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from mobilenets.deploy import ExportOptions
from mobilenets.deploy.export import export_model
from mobilenets.deploy.source import load_source
from mobilenets.serve.client import Client
from serve_load import photo, start_server, stop_server  # beside this script (its folder is on sys.path)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def malformed(good: bytes) -> dict[str, tuple[bytes, str, int]]:
    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, format="PNG", optimize=True)
    return {"zero bytes": (b"", "image/jpeg", 400),
            "truncated": (good[:len(good) // 2], "image/jpeg", 400),
            "text": (b"GET / HTTP/1.1 is not a picture\n" * 20, "image/png", 415),
            "oversized": (b"\xff\xd8\xff\xe0" + os.urandom(17 << 20), "image/jpeg", 413),
            "bomb": (buf.getvalue(), "image/png", 413)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--bad-share", type=float, default=0.10)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="runtime threads of the server")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    good = photo()
    bad = malformed(good)
    kinds = list(bad)
    n_bad = int(round(args.requests * args.bad_share))
    plan = [("good", good, "image/jpeg", 200)] * (args.requests - n_bad) + [
        (kinds[i % len(kinds)], *bad[kinds[i % len(kinds)]]) for i in range(n_bad)]
    random.Random(0).shuffle(plan)
    with tempfile.TemporaryDirectory() as tmp:
        model, meta = load_source(args.model)
        path = Path(tmp) / f"{args.model}.onnx"
        export_model(model, meta, path, "onnx", ExportOptions(dynamic_batch=True))
        proc, url, banner = start_server(path, args.backend, args.threads, [])
        try:
            c = Client(url)
            for _ in range(100):
                assert c.predict(good, "image/jpeg")[0] == 200
            c.close()
            rss_start = rss_kib(proc.pid)
            peak = [rss_start]
            outcomes: Counter = Counter()
            wrong: list[str] = []
            lock = threading.Lock()
            queue = list(enumerate(plan))
            start = time.perf_counter()

            def worker():
                client = Client(url, timeout=60)
                while True:
                    with lock:
                        if not queue:
                            break
                        i, (kind, body, ctype, want) = queue.pop()
                    try:
                        status, _, data = client.request("POST", "/predict", body, {"Content-Type": ctype})
                        ok_body = set(json.loads(data)) == {"error"} if status != 200 else "top" in json.loads(data)
                    except OSError as e:
                        status, ok_body = f"{type(e).__name__}", False
                        client.close()
                    with lock:
                        outcomes[(kind, status)] += 1
                        if status != want or not ok_body:
                            wrong.append(f"#{i} {kind}: {status}")
                        if i % 50 == 0:
                            peak[0] = max(peak[0], rss_kib(proc.pid))
                client.close()

            threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - start
            rss_end = rss_kib(proc.pid)
        finally:
            code = stop_server(proc)
    growth = (rss_end - rss_start) / rss_start
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
              "load_after": os.getloadavg(), "server": banner, "requests": len(plan), "malformed": n_bad,
              "seconds": seconds, "outcomes": {f"{k} -> {s}": v for (k, s), v in sorted(outcomes.items(), key=str)},
              "wrong": wrong, "rss_kib_start": rss_start, "rss_kib_peak": peak[0], "rss_kib_end": rss_end,
              "rss_growth": growth, "exit_code": code}
    print(f"{len(plan)} requests ({n_bad} malformed) in {seconds:.1f} s, {args.concurrency} connections; server: "
          f"{banner}")
    for (kind, status), n in sorted(outcomes.items(), key=str):
        print(f"  {kind:>11} -> {status}: {n}")
    print(f"wrong answers: {len(wrong)}{' (' + ', '.join(wrong[:5]) + ')' if wrong else ''}")
    print(f"server RSS: {rss_start / 1024:.1f} MiB after warm-up, peak {peak[0] / 1024:.1f}, end "
          f"{rss_end / 1024:.1f} MiB: growth {growth:+.1%} (limit +10%); exit code {code}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if not wrong and growth < 0.10 and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
