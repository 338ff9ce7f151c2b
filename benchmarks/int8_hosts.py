"""What int8 costs on each kind of CPU: Fashion-MNIST test accuracy of one trained checkpoint, eager fp32 against
every int8 file `mobilenets export --int8` writes (OpenVINO NNCF, ONNX Runtime QDQ, ExecuTorch .pte, LiteRT
.tflite), each file run on this host and on an emulated CPU without VNNI.

    .venv/bin/python benchmarks/int8_hosts.py runs/demo/last.safetensors --workdir /tmp/int8_hosts \\
        --out benchmarks/int8_hosts

Why: int8 convolutions multiply uint8 activations by int8 weights. CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX)
accumulate those products in 32 bits; CPUs without it (AVX2, AVX-512 before Cascade Lake) use VPMADDUBSW, whose
pairwise sums saturate at 16 bits, so full-range int8 weights can clip (NNCF's OverflowFix and ONNX Runtime's
``reduce_range`` document it). ``--int8-weights 7bit`` (the exporter's default) halves the weight range so that no
pair can saturate; ``8bit`` keeps the full range. Both are measured.

The "AVX2" rows run each file under ``qemu-x86_64 -cpu Haswell`` (Debian's qemu-user): a real AVX2/FMA CPU model
without AVX-512 or VNNI, so every runtime's own CPU dispatch picks its AVX2 kernels, saturation included. The
"oneDNN capped" rows run OpenVINO natively with ``ONEDNN_MAX_CPU_ISA=AVX2`` (cheap; OpenVINO's CPU plugin reads
it), to check that the cap reproduces the emulated figure. The same preprocessed test images go to every run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()

# (label, export format, export options, backend that runs it)
VARIANTS = (
    ("OpenVINO NNCF, 7-bit weights", "openvino", {"int8_weights": "7bit"}, "openvino"),
    ("OpenVINO NNCF, 8-bit weights", "openvino", {"int8_weights": "8bit"}, "openvino"),
    ("ONNX Runtime QDQ, 7-bit weights", "onnx", {"int8_weights": "7bit"}, "onnxruntime"),
    ("ONNX Runtime QDQ, 8-bit weights", "onnx", {"int8_weights": "8bit"}, "onnxruntime"),
    ("ExecuTorch .pte (XNNPACK)", "executorch", {}, "executorch"),
    ("LiteRT .tflite (XNNPACK)", "litert", {}, "litert"),
)
SUFFIX = {"openvino": ".xml", "onnx": ".onnx", "executorch": ".pte", "litert": ".tflite"}


def host() -> str:
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AMX" if "amx_tile" in flags else "AVX-512 VNNI" if "avx512_vnni" in flags else \
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return f"{name} ({isa}, {os.cpu_count()} cores)"


def evaluate(files: list[dict], images: Path, labels: Path, threads: int) -> list[dict]:
    """Accuracy of each file on the saved images (runs in a child process: under qemu, or with an ISA cap)."""
    from mobilenets.deploy import open_runner

    x, y = np.load(images), np.load(labels)
    out = []
    for f in files:
        t = time.perf_counter()
        runner = open_runner(Path(f["path"]), backend=f["backend"], threads=threads)
        logits = np.concatenate([runner.outputs(x[i:i + 250])[0] for i in range(0, len(x), 250)])
        out.append({**f, "accuracy": float((logits.argmax(1) == y).mean()), "seconds": time.perf_counter() - t})
    return out


def child(mode: str, work: Path, files: list[dict], threads: int) -> list[dict]:
    env = dict(os.environ)
    cmd = [sys.executable, str(HERE), "--evaluate", str(work), "--threads", str(threads)]
    if mode == "avx2-qemu":
        cmd = ["qemu-x86_64", "-cpu", "Haswell", *cmd]
    elif mode == "onednn-avx2":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    (work / "files.json").write_text(json.dumps(files))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-3000:]}")
    return json.loads((work / "results.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mobilenets-int8-hosts"))
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    p.add_argument("--calibration-samples", type=int, default=300)
    p.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default="native,onednn-avx2,avx2-qemu")
    p.add_argument("--evaluate", type=Path, default=None, help=argparse.SUPPRESS)  # the child's entry
    args = p.parse_args()
    if args.evaluate:
        files = json.loads((args.evaluate / "files.json").read_text())
        results = evaluate(files, args.evaluate / "images.npy", args.evaluate / "labels.npy", args.threads)
        (args.evaluate / "results.json").write_text(json.dumps(results))
        return

    import logging

    import torch

    from mobilenets.checkpoint import load_checkpoint
    from mobilenets.data.samples import fashion_mnist_inputs
    from mobilenets.deploy import ExportOptions, export_model
    from mobilenets.deploy.accuracy import accuracy

    logging.basicConfig(level=logging.WARNING)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model, meta = load_checkpoint(args.checkpoint)
    images, labels, _ = fashion_mnist_inputs(meta.preprocessing, "test", limit=args.limit)
    np.save(work / "images.npy", images)
    np.save(work / "labels.npy", labels)

    def eager(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    base = accuracy(eager, images, labels)
    files = []
    for i, (label, fmt, options, backend) in enumerate(VARIANTS):
        t = time.perf_counter()
        result = export_model(model, meta, work / f"v{i}{SUFFIX[fmt]}", fmt,
                              ExportOptions(int8=True, calibration_data="fashion-mnist",
                                            calibration_n=args.calibration_samples, **options))
        files.append({"label": label, "path": str(result.path), "backend": backend,
                      "settings": result.details, "export_seconds": time.perf_counter() - t})
        print(f"exported {label} in {time.perf_counter() - t:.0f} s", flush=True)
    table = {"host": host(), "checkpoint": args.checkpoint, "images": len(images), "eager_fp32": base,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "modes": {}}
    for mode in args.modes.split(","):
        t = time.perf_counter()
        table["modes"][mode] = child(mode, work, files, args.threads)
        print(f"{mode}: {time.perf_counter() - t:.0f} s", flush=True)
    rows = [f"Host: {table['host']}; {table['date']}; {args.checkpoint}, {len(images)} test images; eager fp32 "
            f"{base:.2%}", "", "| int8 file | " + " | ".join(table["modes"]) + " |",
            "|---|" + "---|" * len(table["modes"])]
    for i, (label, fmt, _, backend) in enumerate(VARIANTS):
        cells = []
        for mode, results in table["modes"].items():
            a = results[i]["accuracy"]
            cells.append(f"{a:.2%} ({(a - base) * 100:+.2f})")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(rows))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(table, indent=1))
        args.out.with_suffix(".md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
