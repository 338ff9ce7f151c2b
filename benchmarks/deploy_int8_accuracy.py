"""What int8 costs in accuracy: Fashion-MNIST test accuracy (all 10,000 images) of trained checkpoints in eager
PyTorch, exported fp32, and int8 from each quantizer (calibrated on 300 training images).

    .venv/bin/python benchmarks/deploy_int8_accuracy.py CKPT.safetensors [CKPT ...] --workdir /tmp/int8

Checkpoints come from benchmarks/deploy_train_fashion_mnist.py (or 'mobilenets train'). Latency of the same
int8 schemes at 224 x 224 is in the cross-runtime benchmark (benchmarks/bench_runtimes.py).
"""
import argparse
import logging
from pathlib import Path

import torch

from mobilenets.checkpoint import load_checkpoint
from mobilenets.data.samples import fashion_mnist_inputs
from mobilenets.deploy import ExportOptions, export_model, open_runner
from mobilenets.deploy.accuracy import accuracy


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--workdir", default="/tmp/mobilenets-int8")
    p.add_argument("--calibration-samples", type=int, default=300)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.workdir)
    rows = ["| checkpoint | eager fp32 | exported fp32 (onnxruntime) | int8 NNCF (openvino) | int8 QDQ (onnxruntime) "
            "| int8 QDQ (openvino) |", "|---|---|---|---|---|---|"]
    for ckpt in args.checkpoints:
        model, meta = load_checkpoint(ckpt)
        images, labels, _ = fashion_mnist_inputs(meta.preprocessing, "test")

        def eager(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        stem = Path(ckpt).stem
        base = accuracy(eager, images, labels)
        fp32 = export_model(model, meta, work / f"{stem}.onnx", "onnx", ExportOptions(parity_data="fashion-mnist"))
        nncf = export_model(model, meta, work / f"{stem}_int8.xml", "openvino",
                            ExportOptions(int8=True, calibration_data="fashion-mnist",
                                          calibration_n=args.calibration_samples))
        qdq = export_model(model, meta, work / f"{stem}_int8.onnx", "onnx",
                           ExportOptions(int8=True, calibration_data="fashion-mnist",
                                         calibration_n=args.calibration_samples))
        figures = [accuracy(open_runner(fp32.path, "onnxruntime").run, images, labels),
                   accuracy(open_runner(nncf.path, "openvino").run, images, labels),
                   accuracy(open_runner(qdq.path, "onnxruntime").run, images, labels),
                   accuracy(open_runner(qdq.path, "openvino").run, images, labels)]
        cells = [f"{a:.2%} ({(a - base) * 100:+.2f})" for a in figures]
        size = meta.preprocessing.input_size[1]
        rows.append(f"| {stem} ({meta.model}, {size} px) | {base:.2%} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
