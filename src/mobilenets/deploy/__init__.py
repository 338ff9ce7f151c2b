"""Deployment: export to ONNX / ExportedProgram / OpenVINO IR, int8 quantization, runtimes and the benchmark.

Floors, each importing only those below it: :mod:`.formats` (metadata keys, file suffixes, staged writes,
optional imports) -> :mod:`.onnx_graph`, :mod:`.openvino_io`, :mod:`.quantize`, :mod:`.runtime` (the runners,
which only read files) -> :mod:`.export` (the one exporter, for every task) -> :mod:`.auto` (backend choice) ->
:mod:`.open` (``open_runner``: file or checkpoint -> runner) -> :mod:`.bench`. Heavy runtimes (onnxruntime,
openvino, nncf) are imported lazily, so ``import mobilenets.deploy`` is cheap.
"""
from .export import ExportResult, export_model
from .formats import BACKENDS
from .open import open_runner
from .runtime import Runner

__all__ = ["BACKENDS", "ExportResult", "Runner", "export_model", "open_runner"]
