"""A/B of NNCF int8 variants of MobileNetV3-Large (random weights; latency does not depend on the values) on OpenVINO,
f32 hint, 2 threads, one process, variants interleaved in random order over 40 rounds of 5 runs (the package's
harness, mobilenets.deploy.bench.harness.interleave); median ms and ratio to fp32. Chose the scheme of
mobilenets.deploy.quantize (the squeeze-excite Multiply kept in fp32).

    .venv/bin/python benchmarks/int8_nncf_variants.py
"""
import logging
from functools import partial

import nncf
import numpy as np
import onnx
import openvino as ov
import torch

logging.disable(logging.WARNING)
import mobilenets
from mobilenets.checkpoint import CheckpointMeta, Preprocessing
from mobilenets.deploy import export_model
from mobilenets.deploy.bench.harness import interleave, timed
from mobilenets.deploy.openvino_io import from_onnx

torch.manual_seed(0)
m = mobilenets.create_model("mobilenet_v3_large").eval()
meta = CheckpointMeta(model="mobilenet_v3_large", options=m.arch_options, preprocessing=Preprocessing(input_size=(3,224,224)))
r = export_model(m, meta, "/tmp/int8_nncf_variants_v3l.onnx", "onnx")
proto = onnx.load("/tmp/int8_nncf_variants_v3l.onnx")
rng = np.random.default_rng(0)
calib = [rng.standard_normal((1,3,224,224)).astype(np.float32) for _ in range(30)]
core = ov.Core()
cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
variants = {"fp32": from_onnx(proto)}
variants["int8 perf (current)"] = nncf.quantize(from_onnx(proto), nncf.Dataset(calib), preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=30, fast_bias_correction=True)
variants["int8 perf target CPU"] = nncf.quantize(from_onnx(proto), nncf.Dataset(calib), preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU, subset_size=30, fast_bias_correction=True)
variants["int8 perf no-Multiply"] = nncf.quantize(from_onnx(proto), nncf.Dataset(calib), preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=30, fast_bias_correction=True, ignored_scope=nncf.IgnoredScope(types=["Multiply"]))
reqs = {k: core.compile_model(v, "CPU", cfg).create_infer_request() for k, v in variants.items()}
reqs["fp32 pinned"] = core.compile_model(variants["fp32"], "CPU", {**cfg, "ENABLE_CPU_PINNING": True}).create_infer_request()
reqs["int8 current pinned"] = core.compile_model(variants["int8 perf (current)"], "CPU", {**cfg, "ENABLE_CPU_PINNING": True}).create_infer_request()
x = rng.standard_normal((1,3,224,224)).astype(np.float32)
for k, rq in reqs.items():
    for _ in range(20): rq.infer({0: x})
timings = interleave({k: timed(partial(rq.infer, {0: x})) for k, rq in reqs.items()}, 40, min_runs=5, max_runs=5)
base = timings["fp32"].median
for k, t in timings.items():
    print(f"{k:24s} median {t.median:.2f} ms  ratio/fp32 {t.median/base:.3f}")
