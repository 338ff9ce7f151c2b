"""Deployment: export to every format of the format table (ONNX, OpenVINO IR, ExportedProgram, ExecuTorch, ORT,
Core ML, LiteRT), int8 quantization, runtimes, Triton repositories and the benchmark.

Floors, each importing only those below it: :mod:`.keys` (metadata keys) and :mod:`.files` (optional imports,
staged writes) -> :mod:`.runtime` (the Runner base), :mod:`.onnx_graph`, :mod:`.openvino_io`, :mod:`.quantize`
-> :mod:`.formats` (the format table, one module per format: writer, runner, dependency check, options) ->
:mod:`.options` (``ExportOptions``, ``validate``) -> :mod:`.export` (the one exporter, for every task, and the
export cache) -> :mod:`.auto` (backend choice) -> :mod:`.open` (``open_runner``: file or checkpoint -> runner)
-> :mod:`.triton`, :mod:`.bench`. Heavy runtimes (onnxruntime, openvino, nncf, executorch, ...) are imported
lazily, so ``import mobilenets.deploy`` is cheap.
"""
from .export import ExportResult, export_model
from .formats import BACKENDS
from .open import open_runner
from .options import ExportOptions
from .runtime import Runner

__all__ = ["BACKENDS", "ExportOptions", "ExportResult", "Runner", "export_model", "open_runner"]
