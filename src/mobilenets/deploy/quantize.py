"""Post-training static int8 quantization, calibrated on real images, per-channel weights.

Two schemes, one per runtime, because what pays differs (measured on the 2-core AVX-512 VNNI development
machine, see BENCHMARKS.md "Deployment"):

* ``--format openvino`` (default for ``--int8`` when OpenVINO is installed): NNCF ``quantize`` of the OpenVINO
  model: symmetric per-channel int8 weights, int8 activations, fast bias correction, V3's squeeze-excite
  ``Multiply`` left in fp32. The fastest int8 path for V3 (V3-Large: 0.58-0.60 of fp32 latency).
* ``--format onnx``: ONNX Runtime ``quantize_static`` into QDQ form (per-channel int8 weights, uint8
  activations, min-max calibration). Portable; the fastest int8 path for V1/V2 on an idle machine (V2: 0.43-0.48
  of fp32) but slower than fp32 for V3-Small; the file also runs on OpenVINO.

Both take the fp32 ONNX graph of any task and return the quantized model and the settings used; writing and the
parity check are the exporter's (:func:`mobilenets.deploy.export.export_model`).

**Weight range** (``weights``, ``--int8-weights``). An int8 convolution multiplies uint8 activations by int8
weights. CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX) accumulate the products in 32 bits; CPUs without it (AVX2,
AVX-512 before VNNI) use VPMADDUBSW, which adds pairs of products into a *saturating* 16-bit lane: 2 x 255 x 127
= 64,770 does not fit, so full-range weights clip wherever two large products meet, and the error depends on the
CPU the file runs on, not on the file. With 7-bit weights (|w| <= 64: 2 x 255 x 64 = 32,640 <= 32,767) no pair
can saturate, on any CPU. ``"7bit"`` (the default) is that: NNCF's ``OverflowFix.ENABLE`` (every convolution and
MatMul), ONNX Runtime's ``reduce_range``. ``"8bit"`` keeps the full range (NNCF's own default fixes the first
layer only), for files that will only run on VNNI / AMX / ARM CPUs. Measured on a trained V3-Small, 10,000
Fashion-MNIST test images (BENCHMARKS.md "int8 on every host", ``benchmarks/int8_hosts.py``): on an emulated AVX2
CPU 8-bit weights lose 0.76 points (NNCF) and 0.85 (ONNX Runtime) where 7-bit weights lose 0.14 and 0.00; on the
AVX-512 VNNI host 8-bit weights lose 0.27 and 0.10, 7-bit weights 0.14 and 0.00.
XNNPACK (ExecuTorch, LiteRT) widens to 16 bits before multiplying and does not saturate: those formats have no
such setting.
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from ..errors import UserError
from .formats import optional_import

log = logging.getLogger(__name__)

INT8_WEIGHTS = ("7bit", "8bit")  # see "Weight range" above; the first is the default


def _check_weights(weights: str) -> None:
    if weights not in INT8_WEIGHTS:
        raise UserError(f"int8 weights {weights!r}: use {' or '.join(INT8_WEIGHTS)} (7bit runs correctly on CPUs "
                        "without VNNI; 8bit only on VNNI / AMX / ARM)")


def weight_range_note(weights: str) -> str | None:
    """One line for the user when ``weights`` can cost accuracy on some CPUs (``None`` when it cannot)."""
    if weights == "8bit":
        return ("8-bit int8 weights saturate on CPUs without VNNI (AVX2, AVX-512 before Cascade Lake): -0.76 points "
                "measured on an AVX2 CPU; export with 7-bit weights (the default) for files that may run there")
    return None


# RMSNorm (V5) as the exporters decompose it: x * 1 / sqrt(mean(x^2) + eps) * weight. The ops of one instance, by
# their ONNX and OpenVINO names, from the square to the weight multiply.
_RMS_CHAIN = {"onnx": ("Pow", "ReduceMean", "Add", "Sqrt", ("Div", "Reciprocal"), "Mul", "Mul"),
              "openvino": ("Power", "ReduceMean", "Add", "Sqrt", ("Divide",), "Multiply", "Multiply")}


def _rms_norm_names(nodes, consumers, kind: str) -> list[str]:
    """Names of the nodes of every decomposed RMSNorm, found by following the chain above from each square whose
    consumer is a mean. ``nodes``: ``(name, type, node)``; ``consumers(node)``: the ``(name, type, node)`` it feeds."""
    chain = _RMS_CHAIN[kind]
    found = []
    for name, kind_, node in nodes:
        if kind_ != chain[0]:
            continue
        run, here = [name], node
        for want in chain[1:]:
            want = want if isinstance(want, tuple) else (want,)
            nxt = [c for c in consumers(here) if c[1] in want]
            if len(nxt) != 1:
                break
            run.append(nxt[0][0])
            here = nxt[0][2]
        if len(run) >= len(chain) - 1:  # up to x / rms, with or without a weight multiply
            found += run
    return found


def rms_norm_nodes_onnx(proto) -> list[str]:
    """The ONNX node names of every decomposed RMSNorm in ``proto`` (kept in float by int8)."""
    feeds: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            feeds.setdefault(i, []).append(n)
    return _rms_norm_names([(n.name, n.op_type, n) for n in proto.graph.node],
                           lambda n: [(c.name, c.op_type, c) for o in n.output for c in feeds.get(o, [])], "onnx")


def rms_norm_nodes_openvino(model) -> list[str]:
    """The OpenVINO op names of every decomposed RMSNorm in ``model`` (kept in float by int8)."""
    def consumers(op):
        return [(t.get_node().get_friendly_name(), t.get_node().get_type_name(), t.get_node())
                for out in op.outputs() for t in out.get_target_inputs()]
    return _rms_norm_names([(op.get_friendly_name(), op.get_type_name(), op) for op in model.get_ops()], consumers,
                           "openvino")


def calibration_batches(proto, calibration: np.ndarray) -> list[np.ndarray]:
    """``calibration`` images (N, C, H, W) cut into batches of the graph's fixed batch (8 when dynamic)."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    batch = dim.dim_value if dim.HasField("dim_value") else 8
    if len(calibration) < batch:
        calibration = np.concatenate([calibration] * (batch // len(calibration) + 1))
    return [calibration[i:i + batch] for i in range(0, len(calibration) - batch + 1, batch)]


def quantize_openvino(proto, calibration: np.ndarray, weights: str = INT8_WEIGHTS[0]):
    """``(openvino.Model, settings)``: NNCF int8 of the fp32 ONNX ``proto`` with ``weights`` ("7bit" / "8bit")."""
    _check_weights(weights)
    optional_import("openvino", "openvino", "int8 quantization for OpenVINO")
    nncf = optional_import("nncf", "openvino", "int8 quantization for OpenVINO")
    from .openvino_io import from_onnx

    batches = calibration_batches(proto, calibration)
    images = sum(len(b) for b in batches)
    # The squeeze-excite rescaling (x * h-sigmoid(s), V3's only Multiply) stays fp32: quantizing it adds a
    # requantization per block and made V3-Large int8 14% slower on the AVX-512 VNNI machine (BENCHMARKS.md).
    settings = {"scheme": "nncf", "preset": "performance (symmetric int8)", "fast_bias_correction": True,
                "calibration_images": images, "fp32_ops": ["Multiply"], "weight_range": weights}
    overflow = nncf.OverflowFix.ENABLE if weights == "7bit" else nncf.OverflowFix.FIRST_LAYER
    model = from_onnx(proto)
    rms = rms_norm_nodes_openvino(model)  # V5's RMSNorm stays float (its mean of squares needs the range)
    if rms:
        settings["fp32_ops"].append(f"RMSNorm ({len(rms)} ops)")
    log.info("quantizing with NNCF on %d images", images)
    quantized = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(batches), fast_bias_correction=True,
                              ignored_scope=nncf.IgnoredScope(types=["Multiply"], names=rms, validate=False),
                              advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=overflow))
    return quantized, settings


def quantize_onnx(proto, calibration: np.ndarray, weights: str = INT8_WEIGHTS[0]):
    """``(onnx.ModelProto, settings)``: ONNX Runtime QDQ int8 of the fp32 ``proto`` with ``weights`` ("7bit" /
    "8bit")."""
    _check_weights(weights)
    onnx = optional_import("onnx", "onnx", "int8 quantization for ONNX Runtime")
    optional_import("onnxruntime", "onnx", "int8 quantization for ONNX Runtime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    batches = calibration_batches(proto, calibration)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    images = sum(len(b) for b in batches)
    settings = {"scheme": "onnxruntime-qdq", "per_channel": True, "activations": "uint8", "weights": "int8",
                "calibration": "minmax", "calibration_images": images, "weight_range": weights}
    rms = rms_norm_nodes_onnx(proto)  # V5's RMSNorm stays float (its mean of squares needs the range)
    if rms:
        settings["fp32_ops"] = [f"RMSNorm ({len(rms)} ops)"]
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmp:
        fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(proto, fp32)
        log.info("quantizing with ONNX Runtime (QDQ) on %d images", images)
        quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=weights == "7bit",
                        nodes_to_exclude=rms)
        quantized = onnx.load(int8)
    return quantized, settings
