"""The format table: every export format (:data:`FORMAT`) and every backend that runs them (:data:`BACKEND`),
one row each, the only registry of formats, writers and runners.

======================  ======================  ==================================================================
format                  suffix                  backends
======================  ======================  ==================================================================
``onnx``                ``.onnx``               onnxruntime, openvino
``openvino``            ``.xml`` (+ ``.bin``)   openvino (OpenVINO IR, e.g. an NNCF int8 model)
``exported-program``    ``.pt2``                torch (a ``torch.export`` ExportedProgram)
``executorch``          ``.pte``                executorch (XNNPACK delegate; int8 through PT2E)
``ort``                 ``.ort`` (+ config)     onnxruntime (ONNX Runtime's mobile format, from our ONNX export)
``coreml``              ``.mlpackage`` (folder) coreml (prediction needs macOS: structure-checked elsewhere)
``litert``              ``.tflite``             litert (LiteRT Interpreter, XNNPACK; int8 by the AI Edge Quantizer)
(a checkpoint)          ``.safetensors``        torch (eager); the others through a cached export
======================  ======================  ==================================================================

One module per format (:mod:`.onnx`, :mod:`.openvino`, :mod:`.exported_program`, :mod:`.executorch`,
:mod:`.ort`, :mod:`.coreml`, :mod:`.litert`) holds its ``writer(job: ExportJob) -> Writer``, its runner, its
dependency check ``check(int8)``, the modules it ``NEEDS`` and the :class:`~..options.ExportOptions` fields it
accepts (``OPTIONS``). Adding a format is one such module plus one :class:`Format` row below; a runtime that
runs it is one :class:`Backend` row naming its runner. The format modules import their runtimes lazily, inside
functions, so importing this table is cheap.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..files import importable
from ..keys import (  # noqa: F401 - re-exported: the keys every file carries
    EP_META_FILE,
    EP_PROPERTIES_FILE,
    META_KEY,
    OPSET,
    PARITY_KEY,
    PRECISION_KEY,
    PROPERTY_PREFIX,
)
from . import coreml, executorch, exported_program, litert, onnx, openvino, ort
from .base import Backend, ExportJob, Format, Writer
from .onnx import onnx_runtimes

FORMATS_LIST: tuple[Format, ...] = (
    Format("onnx", ".onnx", ("onnxruntime", "openvino"), onnx.writer, onnx.check, onnx.OPTIONS, onnx.NEEDS,
           int8="ONNX Runtime QDQ", learned_int8=True, what="ONNX (ONNX Runtime, OpenVINO)"),
    Format("exported-program", ".pt2", ("torch",), exported_program.writer, exported_program.check,
           exported_program.OPTIONS, exported_program.NEEDS, what="torch.export ExportedProgram"),
    Format("openvino", ".xml", ("openvino",), openvino.writer, openvino.check, openvino.OPTIONS, openvino.NEEDS,
           int8="NNCF", learned_int8=True, companions=(".bin",), what="OpenVINO IR (.xml + .bin)"),
    Format("executorch", ".pte", ("executorch",), executorch.writer, executorch.check, executorch.OPTIONS,
           executorch.NEEDS, int8="PT2E with the XNNPACK quantizer", learned_int8=True,
           what="ExecuTorch, XNNPACK delegate"),
    Format("ort", ".ort", ("onnxruntime",), ort.writer, ort.check, ort.OPTIONS, ort.NEEDS, int8="ONNX Runtime QDQ",
           learned_int8=True, companions=(ort.CONFIG_SUFFIX,),
           what="ONNX Runtime mobile format (+ the required-operators config of a reduced build)"),
    Format("coreml", ".mlpackage", ("coreml",), coreml.writer, coreml.check, coreml.OPTIONS, coreml.NEEDS,
           folder=True, what="Core ML ML program, fp32 (prediction needs macOS)"),
    Format("litert", ".tflite", ("litert",), litert.writer, litert.check, litert.OPTIONS, litert.NEEDS,
           int8="AI Edge Quantizer static int8 (int8 I/O)",
           what="LiteRT (TensorFlow Lite) flatbuffer, XNNPACK on CPU"),
)
BACKENDS_LIST: tuple[Backend, ...] = (
    Backend("torch", "torch", "", exported_program.TorchRunner.from_exported_program),
    Backend("onnxruntime", "onnxruntime", "onnx", onnx.OnnxRuntimeRunner, checkpoint_format="onnx"),
    Backend("openvino", "openvino", "openvino", openvino.OpenVinoRunner, checkpoint_format="onnx"),
    Backend("executorch", "executorch", "executorch", executorch.ExecuTorchRunner, checkpoint_format="executorch"),
    Backend("coreml", "coremltools", "coreml", coreml.CoreMLRunner, checkpoint_format="coreml",
            platforms=("darwin",), platform_note=coreml.PLATFORM_NOTE),
    Backend("litert", "ai_edge_litert", "litert", litert.LiteRTRunner, checkpoint_format="litert"),
)
FORMAT: dict[str, Format] = {f.name: f for f in FORMATS_LIST}
BACKEND: dict[str, Backend] = {b.name: b for b in BACKENDS_LIST}

FORMATS = tuple(FORMAT)
SUFFIX = {f.name: f.suffix for f in FORMATS_LIST}
RUNTIMES = tuple(BACKEND)
BACKENDS = ("auto", *RUNTIMES)
RUNS_ON: dict[str, tuple[str, ...]] = {}
for _f in FORMATS_LIST:
    RUNS_ON[_f.suffix] = tuple(dict.fromkeys((*RUNS_ON.get(_f.suffix, ()), *_f.backends)))
RUNS_ON[".safetensors"] = tuple(b.name for b in BACKENDS_LIST if b.name == "torch" or b.checkpoint_format)
ONNX_RUNTIMES = RUNS_ON[".onnx"]  # fastest-first guess
assert ONNX_RUNTIMES == onnx.RUNTIMES


def format_of(path: str | os.PathLike) -> Format | None:
    """The format a file (or Core ML folder) is in, by its suffix; None for a checkpoint or anything else."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS_LIST if f.suffix == suffix), None)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it); ``torch`` always can. A backend's name asks
    for its module and its platform (``installed("coreml")`` is False off macOS)."""
    backend = BACKEND.get(module)
    if backend is not None:
        return runs_here(backend.name) and importable(backend.module)
    return importable(module)


def runs_here(backend: str) -> bool:
    """Whether ``backend`` runs on this system at all (Core ML only on macOS)."""
    platforms = BACKEND[backend].platforms
    return platforms is None or sys.platform.startswith(platforms)


__all__ = ["BACKEND", "BACKENDS", "BACKENDS_LIST", "FORMAT", "FORMATS", "FORMATS_LIST", "ONNX_RUNTIMES", "RUNS_ON",
           "RUNTIMES", "SUFFIX", "Backend", "ExportJob", "Format", "Writer", "format_of", "installed",
           "onnx_runtimes", "runs_here"]
