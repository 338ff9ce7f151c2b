"""An ``nn.Module`` -> an ONNX graph fit for CPU runtimes: BatchNorm folded, native hard activations, global
pooling as ``GlobalAveragePool``, no ``Identity`` nodes.

* BatchNorm is folded into the preceding convolution (:func:`fold_batchnorm`, on a copy of the model), so the
  file holds plain ``Conv`` nodes; h-swish / h-sigmoid become the native ONNX ``HardSwish`` / ``HardSigmoid``
  (opset >= 14), which ONNX Runtime and OpenVINO fuse into the convolution.
* Global average pooling is ``GlobalAveragePool`` (a ``ReduceMean`` over H, W is rewritten), which ONNX Runtime
  keeps in its blocked NCHWc layout; a ``ReduceMean`` makes it convert layouts back and forth around every
  squeeze-excite block.

The same graph serves every task: a classifier's logits, a detector's decoded boxes and scores (NMS stays
outside the graph), a segmenter's logits; which module and outputs is the task's choice
(:meth:`mobilenets.tasks.base.Task.export_module`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .files import failing_as, importable, optional_import
from .keys import OPSET

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair fused into one Conv2d.

    Pairs are found structurally, without tracing: consecutive children of an ``nn.Sequential`` (torchvision's
    ``Conv2dNormActivation``) and ``conv`` / ``bn`` attributes of one module (our ``ConvNormAct``). Only plain
    ``nn.BatchNorm2d`` is folded (timm's ``BatchNormAct2d`` carries its activation; the ONNX exporter's constant
    folding handles it). The parity check after export catches any pair that was not really consecutive.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        children = list(parent.named_children())
        pairs = []
        if isinstance(parent, nn.Sequential):
            pairs = [(a, b) for (a, ma), (b, mb) in zip(children, children[1:])
                     if isinstance(ma, nn.Conv2d) and type(mb) is nn.BatchNorm2d]
        elif (isinstance(getattr(parent, "conv", None), nn.Conv2d)
              and type(getattr(parent, "bn", None)) is nn.BatchNorm2d):
            pairs = [("conv", "bn")]
        for conv_name, bn_name in pairs:
            fused = fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name))
            setattr(parent, conv_name, fused)
            setattr(parent, bn_name, nn.Identity())
    left = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    log.debug("folded BatchNorm into convolutions; %d BatchNorm2d left to the exporter", left)
    return model


def to_onnx(fused: nn.Module, input_size: tuple[int, ...], outputs: tuple[str, ...], *, name: str,
            dynamic_batch: bool = False, batch: int = 1):
    """An ``onnx.ModelProto`` of ``fused`` (BN already folded): input ``input`` (N, C, H, W) with ``(C, H, W)``
    = ``input_size``, outputs named ``outputs``; N is ``batch``, or any size with ``dynamic_batch``. ``name``
    names the model in error messages.

    Uses torch.onnx's TorchScript exporter (``dynamo=False``) for every task: for these feed-forward networks it
    writes the same graph as the dynamo exporter (native HardSwish / HardSigmoid, BN folded by constant folding
    as a second line of defence) in about a tenth of the time (2 s instead of 15-20 s for V3-Small on 2 busy
    cores), and pools as ``GlobalAveragePool`` directly. A detector's anchors and box decoding, and a
    segmenter's upsampling to the input size, trace to constants and plain ops (the input size is fixed at
    export, only the batch may vary). torch 2.14 flags the exporter as deprecated; switching is ``dynamo=True``
    plus ``dynamic_shapes`` instead of ``dynamic_axes``, with the same parity check.
    """
    onnx = optional_import("onnx", "onnx", "ONNX export")
    example = torch.zeros(batch, *input_size)
    buffer = io.BytesIO()
    axes = {k: {0: "batch"} for k in ("input", *outputs)} if dynamic_batch else None
    with failing_as(f"torch.onnx could not export {name}", "export supports mobilenets, torchvision and timm "
                    "MobileNets"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings on shape checks
        # torch types f as a path only, but the TorchScript exporter (dynamo=False) writes to a file object too
        torch.onnx.export(fused, (example,), buffer,  # type: ignore[arg-type]
                          dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=list(outputs), do_constant_folding=True, dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    global_pool(proto)
    drop_identities(proto)
    # Every BN after a conv is folded into it; a BN that follows no conv (Mobile MQA's pre-norm in the V4 hybrids)
    # stays a BatchNormalization node, which every runtime runs.
    producer = {out: n.op_type for n in proto.graph.node for out in n.output}
    assert not any(n.op_type == "BatchNormalization" and producer.get(n.input[0]) == "Conv"
                   for n in proto.graph.node), "a conv's BN survived folding"
    onnx.checker.check_model(proto)
    return proto


def to_onnx_qdq(program: nn.Module, input_size: tuple[int, ...], outputs: tuple[str, ...], *, name: str,
                dynamic_batch: bool = False, batch: int = 1):
    """The QDQ ``onnx.ModelProto`` of a converted PT2E int8 graph (a quantization-aware checkpoint's
    :meth:`~mobilenets.qat.FakeQuantized.int8_program`): its quantize / dequantize ops become QuantizeLinear /
    DequantizeLinear with the learned scales, the form ONNX Runtime and OpenVINO run in int8. Only torch.onnx's
    dynamo exporter translates those ops; input and outputs are named as :func:`to_onnx` names them."""
    onnx = optional_import("onnx", "onnx", "ONNX export")
    example = torch.zeros(max(batch, 2) if dynamic_batch else batch, *input_size)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with failing_as(f"torch.onnx could not export the int8 graph of {name}"), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress
        warnings.simplefilter("ignore")
        exported = torch.export.export(program, (example,), dynamic_shapes=shapes)
        onnx_program = torch.onnx.export(exported, dynamo=True, opset_version=OPSET, input_names=["input"],
                                         output_names=list(outputs), verbose=False)
    assert onnx_program is not None  # dynamo=True always returns the ONNXProgram (None is the TorchScript path's)
    proto = onnx_program.model_proto
    onnx.checker.check_model(proto)
    return proto


def drop_identities(proto) -> None:
    """Remove the ``Identity`` nodes the TorchScript exporter adds for shared constants (rewire their readers)."""
    graph_outputs = {o.name for o in proto.graph.output}
    alias = {n.output[0]: n.input[0] for n in proto.graph.node
             if n.op_type == "Identity" and n.output[0] not in graph_outputs}
    if not alias:
        return
    nodes = [n for n in proto.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in nodes:
        for i, name in enumerate(n.input):
            while name in alias:
                name = alias[name]
            n.input[i] = name
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def global_pool(proto) -> None:
    """Rewrite ``ReduceMean(x, axes=[2, 3] or [-2, -1], keepdims=1)`` on 4-D tensors into ``GlobalAveragePool``
    (identical maths; ONNX Runtime runs it in its NCHWc layout, see the module docstring)."""
    from onnx import helper, numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    nodes = []
    for n in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axes = consts.get(n.input[1]) if n.op_type == "ReduceMean" and len(n.input) > 1 else None
        if (axes is not None and sorted(int(a) % 4 for a in axes.ravel()) == [2, 3]
                and attrs.get("keepdims", 1) == 1 and not attrs.get("noop_with_empty_axes", 0)):
            n = helper.make_node("GlobalAveragePool", [n.input[0]], list(n.output), name=n.name)
        nodes.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def set_properties(proto, properties: dict[str, str]) -> None:
    """Write ``properties`` into ``proto.metadata_props``, replacing entries of the same keys."""
    kept = [p for p in proto.metadata_props if p.key not in properties]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for k, v in properties.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def file_properties(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (empty for other files)."""
    if Path(path).suffix != ".onnx" or not importable("onnx"):
        return {}
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
