"""The shapes of the format table's rows (:class:`Format`, :class:`Backend`) and the protocol between the exporter
and a format module (:class:`ExportJob` in, :class:`Writer` out). The rows themselves are in :mod:`.formats`'
``__init__``, which imports every format module; the format modules import this one.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..quantize import batches
from ..runtime import Runner, module_outputs

# Options every format accepts (fields of :class:`~mobilenets.deploy.options.ExportOptions`), and those of a
# format with an int8 path; a format module's ``OPTIONS`` adds what else it accepts.
COMMON_OPTIONS = ("batch", "parity_data", "parity_n", "tolerance", "min_agreement")
INT8_OPTIONS = ("int8", "calibration_data", "calibration_n")


@dataclass(frozen=True)
class Format:
    """One export format: ``export_model(..., fmt=NAME)`` writes a file ending in ``suffix`` with ``writer``."""

    name: str
    suffix: str
    backends: tuple[str, ...]  # the backends that run it, fastest-first guess
    writer: Callable[[ExportJob], Writer]  # its module's writer(job)
    check: Callable[[bool], None]  # its module's dependency check(int8): one-line UserError naming the extra
    options: tuple[str, ...]  # the ExportOptions fields it accepts (validate refuses the others)
    needs: tuple[str, ...] = ()  # modules its fp32 export needs (auto: can a checkpoint be exported to it here)
    int8: str | None = None  # what int8 is for it; None: int8 is refused
    learned_int8: bool = False  # whether its int8 of a quantization-aware checkpoint keeps the learned scales
    folder: bool = False  # the "file" is a folder (Core ML's .mlpackage)
    companions: tuple[str, ...] = ()  # suffixes of the files written beside it (OpenVINO's .bin)
    what: str = ""  # for --help and the README

    @property
    def dynamic_batch(self) -> bool:
        return "dynamic_batch" in self.options

    @property
    def channels_last(self) -> bool:
        return "nhwc" in self.options


@dataclass(frozen=True)
class Backend:
    """One runtime that runs exported files (``open_runner(path, backend=NAME)``)."""

    name: str
    module: str  # what must import for it (``installed``)
    extra: str  # the pyproject extra that installs it
    runner: Callable[..., Runner]  # (path, threads, **options) -> its Runner
    checkpoint_format: str | None = None  # what a checkpoint is exported to for it (cached); None: run eagerly
    platforms: tuple[str, ...] | None = None  # sys.platform prefixes it runs on; None: everywhere
    platform_note: str = ""  # why it does not run elsewhere (one line)

    @property
    def export_format(self) -> str:
        """``checkpoint_format``, for a backend that runs a checkpoint through an export (every one but torch,
        which runs it eagerly: asking it is a bug)."""
        assert self.checkpoint_format is not None, f"backend {self.name!r} runs a checkpoint eagerly"
        return self.checkpoint_format


@dataclass
class ExportJob:
    """What the exporter hands a format module's ``writer(job)``: the model and everything it was asked for."""

    module: Any  # the task's export module, eval mode (torch.nn.Module); the int8 graph of a learned model
    fused: Any  # the same with BatchNorm folded into the convolutions
    meta: Any  # the CheckpointMeta
    outputs: tuple[str, ...]  # names of the graph's outputs (the task's)
    batch: int
    dynamic_batch: bool
    int8: bool
    nhwc: bool = False  # the file's image input is (N, H, W, C); only for a Format that accepts nhwc
    calibration: Any = None  # float32 (N, C, H, W) images to calibrate int8 on (numpy), None for fp32
    int8_weights: str = "7bit"  # int8 weight range of the quantizers that have one (deploy/quantize.py)
    onnx: Callable[[], Any] | None = None  # () -> the ONNX ModelProto of ``fused`` (made on first call): fp32, or
    #                                       the QDQ int8 of ``learned``
    learned: Any = None  # a quantization-aware model's int8 graph (learned scales; mobilenets.qat) to write
    #                      instead of calibrating: a converted PT2E GraphModule (then also ``fused``), or None
    details: dict = field(default_factory=dict)  # what the writer did (quantizer settings, ...): the report's
    out: Path | None = None  # where the file will end up (the writer saves into a staging folder first)

    @property
    def calibrates(self) -> bool:
        """Whether the writer quantizes by calibration (int8 of a model without learned scales)."""
        return self.int8 and self.learned is None

    def onnx_proto(self) -> Any:
        """``onnx()``: the ONNX ModelProto of ``fused`` (the exporter always sets ``onnx``)."""
        assert self.onnx is not None, "the exporter sets ExportJob.onnx"
        return self.onnx()

    def calibration_batches(self, batch: int | None = None) -> list[np.ndarray]:
        """The calibration images cut into whole batches of ``batch`` (default: the file's)."""
        return batches(self.calibration, batch or self.batch)

    def reference(self, x: np.ndarray) -> list[np.ndarray]:
        """What the model computes in eager PyTorch on ``x``: every output, as numpy arrays."""
        return module_outputs(self.module, x)


@dataclass
class Writer:
    """A format module's answer: ``save(file, properties)`` writes the model with its string metadata (it may be
    called twice: the parity figures go into the second save), ``open(file)`` loads it as a Runner for the parity
    check. ``open`` None: the file cannot run on this system (``unchecked`` says why, one line), and ``inspect``
    checks its structure instead (raises UserError when wrong; returns what it checked, for the report)."""

    save: Callable[[Path, dict[str, str]], None]
    open: Callable[[Path], Runner] | None
    unchecked: str = ""
    inspect: Callable[[Path], dict] | None = None
