"""What LiteRT int8 costs in accuracy: Fashion-MNIST test accuracy (all 10,000 images) of trained checkpoints in
eager PyTorch, LiteRT fp32, LiteRT int8 by the AI Edge Quantizer (the library's ``--int8``) and, for the choice
of route, LiteRT int8 by litert-torch's PT2E quantizer; each int8 calibrated on the same 300 training images.

    .venv/bin/python benchmarks/litert_int8_accuracy.py CKPT.safetensors [CKPT ...] [--workdir /tmp/litert_int8]

The PT2E route is built here (not in the library): ``torch.export`` of the BN-folded model, ``prepare_pt2e`` /
``convert_pt2e`` (torchao) with ``PT2EQuantizer`` and ``get_symmetric_quantization_config(is_per_channel=True)``
(static), then ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``; it runs on the same
LiteRT runner. Times are wall seconds of each int8 conversion (calibration included) on this machine.
"""
import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mobilenets.checkpoint import load_checkpoint
from mobilenets.data.samples import fashion_mnist_inputs, sample_inputs
from mobilenets.deploy import ExportOptions, export_model, open_runner
from mobilenets.deploy.accuracy import accuracy
from mobilenets.deploy.formats.litert import LiteRTRunner, op_counts, with_properties
from mobilenets.deploy.onnx_graph import fold_batchnorm


def pt2e_int8(model, meta, calibration: np.ndarray, out: Path) -> tuple[Path, float, dict]:
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    t = time.time()
    fused = fold_batchnorm(model.eval()).eval()
    example = (torch.zeros(1, *meta.preprocessing.input_size),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(fused, example).module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(torch.from_numpy(np.ascontiguousarray(x[None])))
    converted = convert_pt2e(prepared, fold_quantize=False)
    edge = litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    data = bytes(edge.model_content())
    out.write_bytes(with_properties(data, {"mobilenets.meta": meta.to_json(), "mobilenets.precision": "int8"}))
    return out, time.time() - t, op_counts(data)["ops"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--workdir", default="/tmp/litert_int8")
    p.add_argument("--calibration-samples", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = ["| checkpoint | eager fp32 | LiteRT fp32 | LiteRT int8, AI Edge Quantizer (`--int8`) | LiteRT int8, PT2E "
            "| int8 conversion s (AEQ / PT2E) | ops outside int8 (QUANTIZE+DEQUANTIZE), AEQ / PT2E | size fp32 / "
            "AEQ / PT2E |", "|---|---|---|---|---|---|---|---|"]
    for ckpt in args.checkpoints:
        model, meta = load_checkpoint(ckpt)
        model.eval()
        images, labels, _ = fashion_mnist_inputs(meta.preprocessing, "test")

        def eager(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        stem = Path(ckpt).parent.name if Path(ckpt).stem in ("last", "best") else Path(ckpt).stem
        base = accuracy(eager, images, labels)
        fp32 = export_model(model, meta, work / f"{stem}.tflite", "litert", ExportOptions(parity_data="fashion-mnist"))
        t = time.time()
        aeq = export_model(model, meta, work / f"{stem}_int8.tflite", "litert",
                           ExportOptions(int8=True, calibration_data="fashion-mnist",
                                         calibration_n=args.calibration_samples))
        aeq_s = time.time() - t
        calibration = sample_inputs(meta.preprocessing, "fashion-mnist", args.calibration_samples, split="train",
                                    seed=0)
        pt2e, pt2e_s, pt2e_ops = pt2e_int8(model, meta, calibration, work / f"{stem}_int8_pt2e.tflite")
        runs = [open_runner(fp32.path, "litert", args.threads), open_runner(aeq.path, "litert", args.threads),
                LiteRTRunner(pt2e, args.threads)]
        acc = [accuracy(r.run, images, labels) for r in runs]
        cells = [f"{a:.2%} ({(a - base) * 100:+.2f})" for a in acc]

        def qdq(ops):
            return ops.get("QUANTIZE", 0) + ops.get("DEQUANTIZE", 0)
        sizes = " / ".join(f"{Path(f).stat().st_size / 1e6:.2f} MB" for f in (fp32.path, aeq.path, pt2e))
        size = meta.preprocessing.input_size[1]
        rows.append(f"| {stem} ({meta.model}, {size} px) | {base:.2%} | " + " | ".join(cells)
                    + f" | {aeq_s:.0f} / {pt2e_s:.0f} | {qdq(aeq.details['ops'])} / {qdq(pt2e_ops)} | {sizes} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
