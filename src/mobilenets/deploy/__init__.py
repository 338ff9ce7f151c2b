"""Deployment: export to ONNX / ExportedProgram / OpenVINO IR, int8 quantization, runtimes and the benchmark.

Data flows one way: a checkpoint or model name (:mod:`.source`) -> an exported file checked against eager
PyTorch (:mod:`.export`, :mod:`.quantize`) -> a runner on one backend (:mod:`.runtime`) -> :mod:`.bench`.
Heavy runtimes (onnxruntime, openvino, nncf) are imported lazily, so ``import mobilenets.deploy`` is cheap.
"""
from .export import ExportResult, ParityReport, export_model
from .runtime import BACKENDS, Runner, open_runner

__all__ = ["BACKENDS", "ExportResult", "ParityReport", "Runner", "export_model", "open_runner"]
