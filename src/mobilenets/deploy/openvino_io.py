"""OpenVINO models in and out: an ``openvino.Model`` from an ONNX graph, IR files with their metadata.

Imported only when OpenVINO is used; the metadata keys are :mod:`.keys`'.
"""
from __future__ import annotations

from pathlib import Path

from .files import optional_import
from .keys import PROPERTY_PREFIX


def openvino():
    return optional_import("openvino", "openvino", "the OpenVINO backend")


def from_onnx(proto):
    """An ``openvino.Model`` of an ONNX ``ModelProto``."""
    return openvino().Core().read_model(proto.SerializeToString())


def save_ir(model, xml: Path, properties: dict[str, str]) -> None:
    """Write ``model`` as ``xml`` + its .bin with ``properties`` in its ``rt_info``; fp32 weights stay fp32."""
    for key, value in properties.items():
        model.set_rt_info(value, [key])
    openvino().save_model(model, xml, compress_to_fp16=False)  # fp16 weights would change the numbers


def read_properties(model) -> dict[str, str]:
    """The ``mobilenets.*`` entries of a model's ``rt_info`` (those :func:`save_ir` wrote)."""
    info = model.get_rt_info()
    return {k: info[k].astype(str) for k in info.keys() if k.startswith(PROPERTY_PREFIX)}
