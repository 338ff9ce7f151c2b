"""ONNX ``.onnx``: our ONNX graph (BatchNorm folded, GlobalAveragePool; :mod:`..onnx_graph`), fp32 or ONNX Runtime
QDQ int8 (:func:`..quantize.quantize_onnx`), with the properties in ``metadata_props``; run by
:class:`OnnxRuntimeRunner` (also for ``.ort`` files) or OpenVINO (:class:`.openvino.OpenVinoRunner`).
"""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..files import failing_as, importable, require
from ..runtime import Runner, meta_of
from .base import COMMON_OPTIONS, INT8_OPTIONS, ExportJob, Writer

NEEDS = ("onnx",)
OPTIONS = (*COMMON_OPTIONS, "dynamic_batch", *INT8_OPTIONS, "int8_weights")
RUNTIMES = ("onnxruntime", "openvino")  # what runs an ONNX file, fastest-first guess


def onnx_runtimes() -> list[str]:
    """Installed runtimes that run ONNX files, fastest-first guess; UserError when there is none."""
    found = [b for b in RUNTIMES if importable(b)]
    if not found:
        raise UserError("running an ONNX model needs onnxruntime; install the extra: pip install 'mobilenets[onnx]'")
    return found


def check(int8: bool) -> None:
    require("onnx", what="fmt='onnx'")
    if int8:
        require("onnxruntime", what="int8 for ONNX Runtime")
    onnx_runtimes()  # the parity check runs the file


def runner_class() -> type[Runner]:
    """The runner the parity check opens an ONNX file with: the first installed ONNX runtime's."""
    if onnx_runtimes()[0] == "onnxruntime":
        return OnnxRuntimeRunner
    from .openvino import OpenVinoRunner
    return OpenVinoRunner


def quantized(job: ExportJob):
    """``job``'s ONNX graph, quantized by ONNX Runtime (QDQ) when it calibrates: fp32, the learned QDQ, or QDQ."""
    proto = job.onnx_proto()
    if job.calibrates:
        from ..quantize import quantize_onnx
        proto, settings = quantize_onnx(proto, job.calibration, job.int8_weights)
        job.details.update(settings)
    return proto


def writer(job: ExportJob) -> Writer:
    import onnx

    from ..onnx_graph import set_properties

    proto = quantized(job)

    def save(file: Path, properties: dict[str, str]) -> None:
        set_properties(proto, properties)
        onnx.save(proto, file)
    return Writer(save=save, open=runner_class())


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, *, tuned: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3  # no warnings about initializers the optimizer dropped
        if threads:
            so.intra_op_num_threads = threads
        if tuned:
            # One request at a time: a single intra-op pool, sequential node execution, every graph rewrite
            # (NCHWc blocked layout, conv + activation fusion).
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with failing_as(f"onnxruntime cannot load {path}", "pass an ONNX file written by 'mobilenets export'"):
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        properties = dict(self.session.get_modelmeta().custom_metadata_map)
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        super().__init__(path, meta_of(properties), batch, properties)

    def _run(self, x):
        return self.session.run(None, {self._input: x})

