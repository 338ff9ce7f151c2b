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
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from .formats import optional_import

log = logging.getLogger(__name__)


def calibration_batches(proto, calibration: np.ndarray) -> list[np.ndarray]:
    """``calibration`` images (N, C, H, W) cut into batches of the graph's fixed batch (8 when dynamic)."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    batch = dim.dim_value if dim.HasField("dim_value") else 8
    if len(calibration) < batch:
        calibration = np.concatenate([calibration] * (batch // len(calibration) + 1))
    return [calibration[i:i + batch] for i in range(0, len(calibration) - batch + 1, batch)]


def quantize_openvino(proto, calibration: np.ndarray):
    """``(openvino.Model, settings)``: NNCF int8 of the fp32 ONNX ``proto``."""
    optional_import("openvino", "openvino", "int8 quantization for OpenVINO")
    nncf = optional_import("nncf", "openvino", "int8 quantization for OpenVINO")
    from .openvino_io import from_onnx

    batches = calibration_batches(proto, calibration)
    images = sum(len(b) for b in batches)
    # The squeeze-excite rescaling (x * h-sigmoid(s), V3's only Multiply) stays fp32: quantizing it adds a
    # requantization per block and made V3-Large int8 14% slower on the AVX-512 VNNI machine (BENCHMARKS.md).
    settings = {"scheme": "nncf", "preset": "performance (symmetric int8)", "fast_bias_correction": True,
                "calibration_images": images, "fp32_ops": ["Multiply"]}
    log.info("quantizing with NNCF on %d images", images)
    quantized = nncf.quantize(from_onnx(proto), nncf.Dataset(batches), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(batches), fast_bias_correction=True,
                              ignored_scope=nncf.IgnoredScope(types=["Multiply"], validate=False))
    return quantized, settings


def quantize_onnx(proto, calibration: np.ndarray):
    """``(onnx.ModelProto, settings)``: ONNX Runtime QDQ int8 of the fp32 ``proto``."""
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
                "calibration": "minmax", "calibration_images": images}
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmp:
        fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(proto, fp32)
        log.info("quantizing with ONNX Runtime (QDQ) on %d images", images)
        quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        quantized = onnx.load(int8)
    return quantized, settings
