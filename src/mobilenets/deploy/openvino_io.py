"""OpenVINO IR (.xml + .bin) writing and metadata; imported only when OpenVINO is used."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..checkpoint import CheckpointMeta
from .export import META_KEY, PARITY_KEY, PRECISION_KEY, ParityReport, _require, replace_pair, staged


def openvino():
    return _require("openvino", "openvino", "the OpenVINO backend")


def from_onnx(proto):
    """An ``openvino.Model`` of an ONNX ``ModelProto``."""
    ov = openvino()
    return ov.Core().read_model(proto.SerializeToString())


def write_openvino(proto, out: Path, check, *, meta: CheckpointMeta, precision: str) -> ParityReport:
    return write_ov_model(from_onnx(proto), out, check, meta=meta, precision=precision)


def write_ov_model(model, out: Path, check, *, meta: CheckpointMeta, precision: str) -> ParityReport:
    """Save ``model`` as ``out`` (.xml) and its .bin after ``check(runner)`` passed on a temporary copy."""
    ov = openvino()
    from .runtime import OpenVinoRunner

    with staged(out) as tmp:
        model.set_rt_info(meta.to_json(), [META_KEY])
        model.set_rt_info(precision, [PRECISION_KEY])
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)  # fp16 weights would change the numbers
        report = check(OpenVinoRunner(tmp / "model.xml"))
        model.set_rt_info(json.dumps(asdict(report)), [PARITY_KEY])
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
        replace_pair(tmp, out)
    return report


def read_rt_info(model, key: str) -> str | None:
    return model.get_rt_info([key]).astype(str) if model.has_rt_info([key]) else None
