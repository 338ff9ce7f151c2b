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

**What stays float** (both schemes, ``fp32_ops`` in the settings), found by graph structure, not by name: V5's
RMSNorm (its mean of squares needs the range) and a detector's decode tail, everything after the head's last
convolutions (:func:`decode_tail_onnx`: YOLO's per-side softmax, DFL expectation, distances x stride -> boxes and
class sigmoid; SSDLite's softmax and box decoding; any TopK / Gather after them). Classifiers and segmenters have
no such tail. Measured on a YOLO V3-Small trained 1,200 steps on 128 px scenes (eager mAP 0.377 on 300 test
scenes; AMD EPYC, 7-bit weights, 300 calibration scenes): ONNX Runtime QDQ with the tail quantized lost 4.3 mAP
points (median box shift 1.7 px, 61% of confident detections kept), with it float 0.7 points (0.5 px, 86%); NNCF,
which already left its Multiply ops float, +0.2 and +0.3 points (92% kept either way). The QDQ file of an
end-to-end YOLO kept none of its detections with the tail quantized (its (N, K, 6) rows through one uint8 scale:
labels in steps of 2.08, scores 0) and 96% with it float. With the tail float the QDQ file of a YOLO also runs on
OpenVINO, and NNCF's SSDLite compiles (OpenVINO's CPU plugin refused both before).

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
from typing import Any

import numpy as np

from ..errors import UserError
from .files import optional_import

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

# The decode tail of a detector (YOLO: per-side softmax over the bins -> expectation (DFL) -> distances x stride ->
# boxes, class logits -> sigmoid; SSDLite: softmax, exp of the box offsets; the TopK / Gather of an end-to-end
# graph): everything after the last weighted layer on every path to an output. int8 keeps it float, as Ultralytics
# does for YOLOv8 (their PR #7372): a quantization step of the bin probabilities or of the box coordinates is
# pixels of box, and the tail costs nothing next to the network (see the module docstring for what it changed). A
# graph has such a tail only when it holds one of ``_DECODE_OPS``: a classifier's logits (Gemm / Conv last) and a
# segmenter's (Conv -> Add -> Resize) have none, and quantize as before.
_WEIGHTED = {"onnx": {"Conv", "ConvTranspose", "ConvInteger", "Gemm", "MatMul", "MatMulInteger"},
             "openvino": {"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                          "GroupConvolutionBackpropData", "MatMul"}}
_DECODE_OPS = {"onnx": {"Softmax", "LogSoftmax", "Sigmoid", "TopK"},
               "openvino": {"Softmax", "LogSoftmax", "Sigmoid", "TopK"}}
_NOT_OPS = {"onnx": {"Constant"}, "openvino": {"Constant", "Parameter", "Result"}}  # nothing to quantize

# A graph for _decode_tail: ``(key, name, type, consumer keys)`` per node, keys unique (names need not be).
Graph = list[tuple[object, str, str, list]]


def _graph_onnx(proto) -> Graph:
    """The nodes of ``proto``, keyed by their index."""
    feeds: dict[str, list[int]] = {}
    for k, n in enumerate(proto.graph.node):
        for i in n.input:
            feeds.setdefault(i, []).append(k)
    return [(k, n.name, n.op_type, [c for o in n.output for c in feeds.get(o, [])])
            for k, n in enumerate(proto.graph.node)]


def _graph_openvino(model) -> Graph:
    """The ops of the OpenVINO ``model``, keyed by their unique name, named by their friendly name."""
    return [(op.get_name(), op.get_friendly_name(), op.get_type_name(),
             [t.get_node().get_name() for out in op.outputs() for t in out.get_target_inputs()])
            for op in model.get_ops()]


def _decode_tail(graph: Graph, kind: str) -> list[str]:
    """Names of the nodes downstream of the last weighted layer on every path to an output -- the nodes from
    which no weighted layer can be reached, the weighted ones excluded -- when they hold a decode op
    (``_DECODE_OPS``), else none. By structure, not by name: whatever the head, its sizes and its names."""
    producers: dict[object, list] = {}
    for key, _, _, consumers in graph:
        for c in consumers:
            producers.setdefault(c, []).append(key)
    upstream = {key for key, _, type_, _ in graph if type_ in _WEIGHTED[kind]}  # weighted, or feeding one
    stack = list(upstream)
    while stack:
        for p in producers.get(stack.pop(), []):
            if p not in upstream:
                upstream.add(p)
                stack.append(p)
    if not upstream:  # no weighted layer at all: nothing comes after one
        return []
    tail = [(name, type_) for key, name, type_, _ in graph if key not in upstream and type_ not in _NOT_OPS[kind]]
    if not any(type_ in _DECODE_OPS[kind] for _, type_ in tail):
        return []
    return [name for name, _ in tail if name]  # an unnamed ONNX node cannot be named to the quantizer


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


def decode_tail_onnx(proto) -> list[str]:
    """The ONNX node names of ``proto``'s decode tail (kept in float by int8; empty for classifiers and
    segmenters)."""
    return _decode_tail(_graph_onnx(proto), "onnx")


def decode_tail_openvino(model) -> list[str]:
    """The OpenVINO op names of ``model``'s decode tail (kept in float by int8; empty for classifiers and
    segmenters)."""
    return _decode_tail(_graph_openvino(model), "openvino")


def float_nodes_onnx(proto) -> dict[str, list[str]]:
    """What int8 keeps in float in the ONNX ``proto``, by what it is: ``{"RMSNorm": names, "decode": names}``,
    the empty groups left out."""
    return {k: v for k, v in (("RMSNorm", rms_norm_nodes_onnx(proto)), ("decode", decode_tail_onnx(proto))) if v}


def float_nodes_openvino(model) -> dict[str, list[str]]:
    """What int8 keeps in float in the OpenVINO ``model``, as :func:`float_nodes_onnx`."""
    return {k: v for k, v in (("RMSNorm", rms_norm_nodes_openvino(model)), ("decode", decode_tail_openvino(model)))
            if v}


def batches(images: np.ndarray, batch: int) -> list[np.ndarray]:
    """``images`` (N, ...) cut into whole batches of ``batch`` (repeated first when there are fewer)."""
    images = np.asarray(images, dtype=np.float32)
    if len(images) < batch:
        images = np.concatenate([images] * (batch // len(images) + 1))
    return [np.ascontiguousarray(images[i:i + batch]) for i in range(0, len(images) - batch + 1, batch)]


def calibration_batches(proto, calibration: np.ndarray) -> list[np.ndarray]:
    """``calibration`` images (N, C, H, W) cut into batches of the graph's fixed batch (8 when dynamic)."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return batches(calibration, dim.dim_value if dim.HasField("dim_value") else 8)


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
    settings: dict[str, Any] = {"scheme": "nncf", "preset": "performance (symmetric int8)",
                                "fast_bias_correction": True, "calibration_images": images,
                                "fp32_ops": ["Multiply"], "weight_range": weights}
    overflow = nncf.OverflowFix.ENABLE if weights == "7bit" else nncf.OverflowFix.FIRST_LAYER
    model = from_onnx(proto)
    # V5's RMSNorm (its mean of squares needs the range) and a detector's decode tail stay float
    kept = float_nodes_openvino(model)
    settings["fp32_ops"] += [f"{what} ({len(names)} ops)" for what, names in kept.items()]
    log.info("quantizing with NNCF on %d images", images)
    quantized = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(batches), fast_bias_correction=True,
                              ignored_scope=nncf.IgnoredScope(types=["Multiply"], names=sum(kept.values(), []),
                                                              validate=False),
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
    # V5's RMSNorm (its mean of squares needs the range) and a detector's decode tail stay float
    kept = float_nodes_onnx(proto)
    if kept:
        settings["fp32_ops"] = [f"{what} ({len(names)} ops)" for what, names in kept.items()]
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmp:
        fp32, int8 = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(proto, fp32)
        log.info("quantizing with ONNX Runtime (QDQ) on %d images", images)
        quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=weights == "7bit",
                        nodes_to_exclude=sum(kept.values(), []))
        quantized = onnx.load(int8)
    return quantized, settings
