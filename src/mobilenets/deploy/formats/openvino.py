"""OpenVINO IR ``.xml`` + ``.bin``: our ONNX graph read by OpenVINO (fp32 weights kept fp32), or NNCF int8
(:func:`..quantize.quantize_openvino`), with the properties in ``rt_info``; :class:`OpenVinoRunner` runs IR and
ONNX files.
"""
from __future__ import annotations

from pathlib import Path

from ..files import failing_as, require
from ..runtime import Runner, meta_of
from .base import COMMON_OPTIONS, INT8_OPTIONS, ExportJob, Writer

NEEDS = ("onnx", "openvino")
OPTIONS = (*COMMON_OPTIONS, "dynamic_batch", *INT8_OPTIONS, "int8_weights")


def check(int8: bool) -> None:
    require("onnx", what="fmt='openvino'")
    require("openvino", what="fmt='openvino'")
    if int8:
        require("nncf", what="int8 for OpenVINO")


def writer(job: ExportJob) -> Writer:
    from ..openvino_io import from_onnx, save_ir

    if job.calibrates:
        from ..quantize import quantize_openvino
        model, settings = quantize_openvino(job.onnx_proto(), job.calibration, job.int8_weights)
        job.details.update(settings)
    else:  # fp32, or a quantization-aware model's int8 as trained
        model = from_onnx(job.onnx_proto())
    return Writer(save=lambda file, properties: save_ir(model, file, properties), open=OpenVinoRunner)


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: Path, threads: int | None = None):
        import openvino as ov

        from ..onnx_graph import file_properties
        from ..openvino_io import read_properties

        core = ov.Core()
        with failing_as(f"openvino cannot read {path}", "pass an .onnx or .xml file written by 'mobilenets export'"):
            model = core.read_model(str(path))
        # fp32 means fp32: on CPUs with AVX-512 BF16 OpenVINO's default inference precision is bf16, which
        # moves V2 logits by several units (see BENCHMARKS.md). Quantized (int8) layers stay int8 either way.
        # The default performance hint is already LATENCY (one stream, all threads on one request).
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        properties = {**file_properties(path), **read_properties(model)}
        shape = model.inputs[0].get_partial_shape()
        batch = shape[0].get_length() if shape[0].is_static else None
        super().__init__(path, meta_of(properties), batch, properties)

    def _run(self, x):
        results = self.request.infer({0: x})
        return [results[i].copy() for i in range(len(self.compiled.outputs))]  # the request reuses its buffers
