"""Quantization-aware training against post-training int8 (issue 32), per int8 format, on a trained classifier.

    .venv/bin/python benchmarks/qat_vs_ptq.py runs/demo/last.safetensors --out benchmarks/qat_vs_ptq

1. ``mobilenets train --qat --weights FLOAT`` fine-tunes the float checkpoint with fake quantization (``--epochs``
   at ``--lr`` on the training split; validated on the default held-out part of it; the last checkpoint is used,
   no choice on test data).
2. For each int8 format: post-training int8 of FLOAT (the format's own quantizer, calibrated on 300 training
   images) and the int8 of the QAT checkpoint (its learned scales where the format takes them: ONNX QDQ run by
   ONNX Runtime, OpenVINO, ExecuTorch), each file's Fashion-MNIST test accuracy (all 10,000 images, touched
   once here, for the figure), beside the float checkpoint's eager accuracy.

Writes OUT.json and OUT.md (the table for BENCHMARKS.md) and prints the table. One thread by default.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_cli import join_flag_values

REPO = Path(__file__).resolve().parents[1]
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "executorch": ".pte"}


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a trained float classifier (Fashion-MNIST)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "qat_vs_ptq")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/qat_vs_ptq"))
    p.add_argument("--epochs", type=int, default=1, help="QAT epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="QAT learning rate (fine-tuning: well below training's)")
    p.add_argument("--limit-train", type=int, default=None, help="QAT on the first N training images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--train-args", default="",
                   help="more 'mobilenets train' flags for the QAT run, e.g. the float model's own recipe: "
                        "\"--augment none --label-smoothing 0 --warmup-epochs 0\" (the demo's)")
    args = p.parse_args(join_flag_values(sys.argv[1:], "--train-args"))

    torch.set_num_threads(args.threads)
    from mobilenets.checkpoint import load_checkpoint
    from mobilenets.data.samples import fashion_mnist_inputs
    from mobilenets.deploy import ExportOptions
    from mobilenets.deploy.accuracy import accuracy
    from mobilenets.deploy.export import export_model
    from mobilenets.deploy.formats import RUNS_ON, installed
    from mobilenets.deploy.open import open_runner

    args.workdir.mkdir(parents=True, exist_ok=True)
    run = args.workdir / "qat"
    command = [str(REPO / ".venv" / "bin" / "mobilenets"), "train", "--qat", "--weights", str(args.checkpoint),
               "--data", "fashion-mnist", "--epochs", str(args.epochs), "--lr", str(args.lr), "--out", str(run),
               "--threads", str(args.threads), "--no-progress"]
    if args.limit_train:
        command += ["--limit-train", str(args.limit_train)]
    command += shlex.split(args.train_args)
    started = time.perf_counter()
    if not (run / "last.safetensors").is_file():
        subprocess.run(command, check=True)
    qat_minutes = (time.perf_counter() - started) / 60

    float_model, float_meta = load_checkpoint(args.checkpoint)
    qat_model, qat_meta = load_checkpoint(run / "last.safetensors")
    images, labels, _ = fashion_mnist_inputs(float_meta.preprocessing, "test")

    def eager(model):
        def predict(x):
            with torch.inference_mode():
                return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return accuracy(predict, images, labels)

    rows = {"float (eager)": eager(float_model), "QAT, fake-quantized (eager)": eager(qat_model)}
    table = []
    for fmt in args.formats.split(","):
        suffix = FORMATS[fmt]
        backend = next(b for b in RUNS_ON[suffix] if installed(b))
        accs = {}
        for kind, (model, meta) in (("ptq", (float_model, float_meta)), ("qat", (qat_model, qat_meta))):
            path = args.workdir / f"{kind}_{fmt}{suffix}"
            result = export_model(model, meta, path, fmt, ExportOptions(int8=True, calibration_data="fashion-mnist"))
            runner = open_runner(path, backend=backend)
            accs[kind] = {"accuracy": accuracy(runner.run, images, labels), "scheme": result.details.get("scheme"),
                          "parity": str(result.parity)}
        table.append({"format": fmt, "backend": backend, **accs})
        print(fmt, json.dumps(accs), flush=True)

    base = rows["float (eager)"]
    result = {"benchmark": shlex.join([".venv/bin/python", "benchmarks/qat_vs_ptq.py", *sys.argv[1:]]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "host": {"cpu": cpu(), "threads": args.threads}, "checkpoint": str(args.checkpoint),
              "qat_command": shlex.join(command), "qat_minutes": round(qat_minutes, 1),
              "qat_history": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()],
              "eager": rows, "formats": table, "test_images": len(images)}
    lines = [f"`{result['benchmark']}` ({result['date']}; {result['host']['cpu']}, {args.threads} thread(s)); "
             f"QAT: `{' '.join(['mobilenets', *command[1:]])}` ({result['qat_minutes']} min). Fashion-MNIST test, "
             f"{len(images):,} images; float eager {base:.2%}, QAT fake-quantized eager "
             f"{rows['QAT, fake-quantized (eager)']:.2%}.", "",
             "| format (runtime) | post-training int8 | change | QAT int8 | change | QAT scales |",
             "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['format']} ({r['backend']}) | {r['ptq']['accuracy']:.2%} | "
                     f"{(r['ptq']['accuracy'] - base) * 100:+.2f} | {r['qat']['accuracy']:.2%} | "
                     f"{(r['qat']['accuracy'] - base) * 100:+.2f} | {r['qat']['scheme'] or 're-calibrated'} |")
    md = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
