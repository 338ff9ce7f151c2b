"""A/B of NNCF int8 variants of MobileNetV3-Large (random weights; latency does not depend on the values) on OpenVINO,
f32 hint, 2 threads, one process, variants interleaved in random order over 40 rounds of 5 runs (the package's
harness, mobilenets.deploy.bench.harness.interleave); median ms and ratio to fp32. Chose the scheme of
mobilenets.deploy.quantize (the squeeze-excite Multiply kept in fp32), which is the "no-Multiply" variant here.

    .venv/bin/python benchmarks/int8_nncf_variants.py

Every variant is saved as IR and loaded by the package's runner (mobilenets.deploy.formats.openvino.OpenVinoRunner, so
its CPU settings are the ones measured); the pinned variants compile the same model with the runner's settings
read back from its compiled model, plus ENABLE_CPU_PINNING.
"""
from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

import nncf
import numpy as np
import onnx
import openvino as ov
import torch

import mobilenets
from mobilenets.checkpoint import CheckpointMeta
from mobilenets.deploy import export_model
from mobilenets.deploy.bench.harness import interleave, timed
from mobilenets.deploy.formats.openvino import OpenVinoRunner
from mobilenets.deploy.openvino_io import from_onnx, save_ir
from mobilenets.deploy.quantize import quantize_openvino
from mobilenets.preprocessing import Preprocessing

RUNNER_SETTINGS = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS")  # what OpenVinoRunner sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v3_large")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--runs", type=int, default=5, help="runs per variant and round")
    p.add_argument("--calibration-samples", type=int, default=30, help="random calibration inputs")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/int8_nncf_variants"))
    args = p.parse_args()
    logging.disable(logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    shape = (1, 3, args.img_size, args.img_size)

    torch.manual_seed(0)
    model = mobilenets.create_model(args.model).eval()
    meta = CheckpointMeta(model=args.model, options=model.arch_options,
                          preprocessing=Preprocessing(input_size=shape[1:]))
    onnx_path = export_model(model, meta, args.workdir / f"{args.model}.onnx", "onnx").path
    proto = onnx.load(onnx_path)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(args.calibration_samples)]

    def nncf_int8(**options):
        return nncf.quantize(from_onnx(proto), nncf.Dataset(calib), preset=nncf.QuantizationPreset.PERFORMANCE,
                             subset_size=len(calib), fast_bias_correction=True, **options)

    variants = {"fp32": from_onnx(proto),
                "int8 perf (old scheme)": nncf_int8(),
                "int8 perf target CPU": nncf_int8(target_device=nncf.TargetDevice.CPU),
                "int8 perf no-Multiply (--int8's)": quantize_openvino(proto, np.concatenate(calib))[0]}
    runners = {}
    for i, (name, variant) in enumerate(variants.items()):
        xml = args.workdir / f"variant{i}.xml"
        save_ir(variant, xml, {})
        runners[name] = OpenVinoRunner(xml, threads=args.threads)
    requests = {name: r.request for name, r in runners.items()}
    core = ov.Core()
    for name, pinned in (("fp32", "fp32 pinned"), ("int8 perf (old scheme)", "int8 old scheme pinned")):
        settings = {k: runners[name].compiled.get_property(k) for k in RUNNER_SETTINGS}
        requests[pinned] = core.compile_model(variants[name], "CPU",
                                              {**settings, "ENABLE_CPU_PINNING": True}).create_infer_request()

    x = rng.standard_normal(shape).astype(np.float32)
    for request in requests.values():
        for _ in range(20):
            request.infer({0: x})
    timings = interleave({k: timed(partial(rq.infer, {0: x})) for k, rq in requests.items()}, args.rounds,
                         min_runs=args.runs, max_runs=args.runs)
    base = timings["fp32"].median
    print(f"{args.model} {args.img_size} px, batch 1, {args.threads} threads, median of {args.rounds} rounds "
          f"x {args.runs} runs")
    for k, t in timings.items():
        print(f"{k:34s} median {t.median:.2f} ms  ratio/fp32 {t.median / base:.3f}")


if __name__ == "__main__":
    main()
