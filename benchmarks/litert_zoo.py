"""Which registry models convert to LiteRT (.tflite) and pass the exporter's parity check, and the file sizes.

    .venv/bin/python benchmarks/litert_zoo.py [--models a,b] [--int8 a,b] [--out litert_zoo.jsonl]

Every model (classifiers and the detection / segmentation models, random init with BatchNorm statistics and
affine parameters randomised so that parity means something) is exported by ``export_model(..., "litert")`` at
its native resolution, each in its own process (a converter crash or hang costs one row); a model that fails
gets the first line of its error. ``--int8`` models are also exported int8 (AI Edge Quantizer, calibrated on 64
Fashion-MNIST training images turned to RGB by the preprocessing) for their file size; their agreement on a
random-weight model says nothing about accuracy (see deploy_int8_accuracy.py for that).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import dataclasses, json, sys, time, logging
from pathlib import Path
import torch
from mobilenets.deploy import ExportOptions, export_model
from mobilenets.deploy.source import meta_for
from mobilenets.registry import create_model, get_entry
logging.basicConfig(level=logging.ERROR)
name, out, int8 = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
torch.manual_seed(0)
entry = get_entry(name)
model = create_model(name).eval()
g = torch.Generator().manual_seed(1)
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
meta = dataclasses.replace(meta_for(model, name, {}), task=entry.task)
row = {"model": name, "task": entry.task, "px": meta.preprocessing.input_size[-1]}
t = time.time()
r = export_model(model, meta, out, "litert", ExportOptions(parity_n=2))
row.update(fp32_s=round(time.time() - t, 1), fp32_bytes=Path(out).stat().st_size,
           max_abs_diff=r.parity.max_abs_diff, agreement=r.parity.agreement, what=r.parity.what,
           ops=r.details.get("ops"))
if int8:
    q = out.replace(".tflite", "_int8.tflite")
    t = time.time()
    r8 = export_model(model, meta, q, "litert", ExportOptions(int8=True, calibration_data="fashion-mnist",
                                                              calibration_n=64, parity_n=16, min_agreement=0.0))
    row.update(int8_s=round(time.time() - t, 1), int8_bytes=Path(q).stat().st_size,
               int8_agreement_random_weights=r8.parity.agreement)
print("ROW " + json.dumps(row))
"""


def main():
    from mobilenets.registry import list_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated (default: every registered model)")
    p.add_argument("--int8", default="mobilenet_v1,mobilenet_v2,mobilenet_v3_large,mobilenet_v3_small")
    p.add_argument("--workdir", default="/tmp/litert_zoo")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    p.add_argument("--out", default=None, help="also append each row as JSON to this file")
    args = p.parse_args()
    names = args.models.split(",") if args.models else list_models()
    int8 = set(args.int8.split(",")) if args.int8 else set()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    for name in names:
        t = time.time()
        try:
            done = subprocess.run([sys.executable, "-c", CHILD, name, str(work / f"{name}.tflite"),
                                   "1" if name in int8 else "0"], capture_output=True, text=True,
                                  timeout=args.timeout)
            rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
            if rows:
                row = json.loads(rows[-1])
            else:
                err = [line for line in done.stderr.strip().splitlines() if line.strip()]
                last = next((line for line in reversed(err) if "Error" in line or "error" in line), err[-1] if err
                            else f"exit {done.returncode}")
                row = {"model": name, "error": last[:400]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timed out after {args.timeout} s"}
        row["wall_s"] = round(time.time() - t, 1)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
