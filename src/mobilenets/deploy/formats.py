"""The ground floor of deployment: what every exported file and every runner agree on.

File formats (:data:`FORMAT`, one :class:`Format` entry each) and the backends that run them (:data:`BACKEND`):

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

Metadata travels inside every file under the keys below (ONNX ``metadata_props``, OpenVINO ``rt_info``, the
ExportedProgram's extra files, ExecuTorch constant methods, Core ML ``user_defined_metadata``), so a runner knows
the model, its classes and preprocessing without the checkpoint.

Adding a format is one :class:`Format` entry in :data:`FORMATS_LIST` plus one module in this package with a
``writer(job: ExportJob) -> Writer`` function (see :mod:`.executorch`); a runtime that runs it is one
:class:`Backend` entry in :data:`BACKENDS_LIST` whose ``runner`` names its Runner class.

This module imports nothing of the package but :mod:`mobilenets.errors`: the runners, the exporter and the
commands all read it, and it reads none of them.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

OPSET = 18  # ONNX opset of every export: native HardSwish / HardSigmoid need >= 14

META_KEY = "mobilenets.meta"  # the CheckpointMeta as JSON
PARITY_KEY = "mobilenets.parity"  # the parity check the file passed, as JSON
PRECISION_KEY = "mobilenets.precision"  # "fp32" or "int8"
# Every key above, and every key of a task's export properties (e.g. the detector's "mobilenets.postprocess"
# NMS settings, defined by the task that writes and reads them), starts with this prefix: what the runners
# read back as ``properties``.
PROPERTY_PREFIX = "mobilenets."
EP_META_FILE = "mobilenets_meta.json"  # ExportedProgram extra file holding META_KEY's value
EP_PROPERTIES_FILE = "mobilenets_properties.json"  # ExportedProgram extra file: the other properties as JSON

@dataclass(frozen=True)
class Format:
    """One export format: ``mobilenets export --format NAME`` writes a file ending in ``suffix``."""

    name: str
    suffix: str
    backends: tuple[str, ...]  # the backends that run it, fastest-first guess
    needs: tuple[str, ...] = ()  # modules the export needs (checked before any work), each with its EXTRA
    writer: str | None = None  # module of this package whose writer(job) writes it; None: export.py's own
    int8: str | None = None  # what --int8 does for it; None: --int8 is refused
    int8_weights: bool = False  # whether its int8 takes --int8-weights 7bit|8bit (deploy/quantize.py)
    learned_int8: bool = False  # whether its int8 of a quantization-aware checkpoint keeps the learned scales
    folder: bool = False  # the "file" is a folder (Core ML's .mlpackage)
    dynamic_batch: bool = True  # whether --dynamic-batch is offered (else refused before any work)
    companions: tuple[str, ...] = ()  # suffixes of the files written beside it (OpenVINO's .bin)
    channels_last: bool = False  # whether --nhwc (an NHWC image input, as camera pipelines give) is offered
    what: str = ""  # for --help and the README


@dataclass(frozen=True)
class Backend:
    """One runtime that runs exported files (``--backend NAME``)."""

    name: str
    module: str  # what must import for it (``installed``)
    extra: str  # the pyproject extra that installs it
    runner: str | None = None  # "module:Class" of its Runner in this package; None: runtime.py's RUNNERS
    checkpoint_format: str | None = None  # what a checkpoint is exported to for it (cached); None: not run
    platforms: tuple[str, ...] | None = None  # sys.platform prefixes it runs on; None: everywhere
    platform_note: str = ""  # why it does not run elsewhere (one line)


FORMATS_LIST: tuple[Format, ...] = (
    Format("onnx", ".onnx", ("onnxruntime", "openvino"), needs=("onnx",), int8="ONNX Runtime QDQ",
           int8_weights=True, learned_int8=True,
           what="ONNX (ONNX Runtime, OpenVINO)"),
    Format("exported-program", ".pt2", ("torch",), what="torch.export ExportedProgram"),
    Format("openvino", ".xml", ("openvino",), needs=("onnx", "openvino"), int8="NNCF", int8_weights=True,
           learned_int8=True,
           companions=(".bin",),
           what="OpenVINO IR (.xml + .bin)"),
    Format("executorch", ".pte", ("executorch",), needs=("executorch",), writer="executorch",
           int8="PT2E with the XNNPACK quantizer", dynamic_batch=False, learned_int8=True,
           what="ExecuTorch, XNNPACK delegate"),
    Format("ort", ".ort", ("onnxruntime",), needs=("onnx", "onnxruntime"), writer="ort_format",
           int8="ONNX Runtime QDQ", int8_weights=True, learned_int8=True, companions=(".required_operators.config",),
           what="ONNX Runtime mobile format (+ the required-operators config of a reduced build)"),
    Format("coreml", ".mlpackage", ("coreml",), needs=("coremltools",), writer="coreml", folder=True,
           dynamic_batch=False, what="Core ML ML program, fp32 (prediction needs macOS)"),
    Format("litert", ".tflite", ("litert",), needs=("litert_torch",), writer="litert",
           int8="AI Edge Quantizer static int8 (int8 I/O)", dynamic_batch=False, channels_last=True,
           what="LiteRT (TensorFlow Lite) flatbuffer, XNNPACK on CPU"),
)
BACKENDS_LIST: tuple[Backend, ...] = (
    Backend("torch", "torch", "", checkpoint_format=None),
    Backend("onnxruntime", "onnxruntime", "onnx", checkpoint_format="onnx"),
    Backend("openvino", "openvino", "openvino", checkpoint_format="onnx"),
    Backend("executorch", "executorch", "executorch", runner="executorch:ExecuTorchRunner",
            checkpoint_format="executorch"),
    Backend("coreml", "coremltools", "coreml", runner="coreml:CoreMLRunner", checkpoint_format="coreml",
            platforms=("darwin",), platform_note="Core ML prediction needs macOS (coremltools runs models only "
                                                 "there); the export is checked for structure only on this system"),
    Backend("litert", "ai_edge_litert", "litert", runner="litert:LiteRTRunner", checkpoint_format="litert"),
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

# The pyproject extra that installs each optional package (and each backend).
EXTRA = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino",
         "executorch": "executorch", "torchao": "executorch", "coremltools": "coreml",
         "ai_edge_litert": "litert", "litert_torch": "litert-convert", "ai_edge_quantizer": "litert-convert",
         **{b.name: b.extra for b in BACKENDS_LIST if b.extra}}


def format_of(path: str | os.PathLike) -> Format | None:
    """The format a file (or Core ML folder) is in, by its suffix; None for a checkpoint or anything else."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS_LIST if f.suffix == suffix), None)


# ------------------------------------------------------------------------------------------- format modules
@dataclass
class ExportJob:
    """What the exporter hands a format module's ``writer(job)``: the model and everything it was asked for."""

    module: Any  # the task's export module, eval mode (torch.nn.Module)
    fused: Any  # the same with BatchNorm folded into the convolutions
    meta: Any  # the CheckpointMeta
    outputs: tuple[str, ...]  # names of the graph's outputs (the task's)
    batch: int
    dynamic_batch: bool
    int8: bool
    nhwc: bool = False  # the file's image input is (N, H, W, C); only for a Format with channels_last
    calibration: Any = None  # float32 (N, C, H, W) images to calibrate int8 on (numpy), None for fp32
    int8_weights: str = "7bit"  # int8 weight range of the quantizers that have one (deploy/quantize.py)
    onnx: Callable[[], Any] | None = None  # () -> the ONNX ModelProto of ``fused`` (made on first call): fp32, or
    #                                       the QDQ int8 of ``learned``
    learned: Any = None  # a quantization-aware model's int8 graph (learned scales; mobilenets.qat) to write
    #                      instead of calibrating: a converted PT2E GraphModule (then also ``fused``), or None
    details: dict = field(default_factory=dict)  # what the writer did (quantizer settings, ...): the report's
    out: Path | None = None  # where the file will end up (the writer saves into a staging folder first)


@dataclass
class Writer:
    """A format module's answer: ``save(file, properties)`` writes the model with its string metadata (it may be
    called twice: the parity figures go into the second save), ``open(file)`` loads it as a Runner for the parity
    check. ``open`` None: the file cannot run on this system (``unchecked`` says why, one line), and ``inspect``
    checks its structure instead (raises UserError when wrong; returns what it checked, for the report)."""

    save: Callable[[Path, dict[str, str]], None]
    open: Callable[[Path], Any] | None
    unchecked: str = ""
    inspect: Callable[[Path], dict] | None = None


# ------------------------------------------------------------------------------------------- optional packages
def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it); ``torch`` always can. A backend's name asks
    for its module and its platform (``installed("coreml")`` is False off macOS)."""
    backend = BACKEND.get(module)
    if backend is not None:
        return runs_here(backend.name) and _importable(backend.module)
    return _importable(module)


def _importable(module: str) -> bool:
    if module == "torch":
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def runs_here(backend: str) -> bool:
    """Whether ``backend`` runs on this system at all (Core ML only on macOS)."""
    platforms = BACKEND[backend].platforms
    return platforms is None or sys.platform.startswith(platforms)


def optional_import(module: str, extra: str | None = None, what: str | None = None):
    """``import module``, or a one-line :class:`UserError` saying that ``what`` needs it and naming
    ``pip install 'mobilenets[extra]'`` (``extra`` defaults to :data:`EXTRA`'s entry for the module)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{what or module} needs {module}, which is not installed; install the extra: "
                        f"pip install 'mobilenets[{extra or EXTRA[module]}]'") from e


def require(module: str, extra: str | None = None, what: str | None = None) -> None:
    """The one-line :class:`UserError` of :func:`optional_import` when ``module`` is not installed, without
    importing it (a format's module imports it when it runs, quietly)."""
    if not _importable(module):
        raise UserError(f"{what or module} needs {module}, which is not installed; install the extra: "
                        f"pip install 'mobilenets[{extra or EXTRA[module]}]'")


def onnx_runtimes() -> list[str]:
    """Installed runtimes that run ONNX files, fastest-first guess; UserError when there is none."""
    found = [b for b in ONNX_RUNTIMES if installed(b)]
    if not found:
        raise UserError("running an ONNX model needs onnxruntime; install the extra: pip install 'mobilenets[onnx]'")
    return found


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what a runtime's C++ side writes to file descriptor 2 (ExecuTorch's cpuinfo probing ARM-only
    files while XNNPACK starts, a line each; LiteRT's converter and quantizer); Python exceptions still carry
    the error."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# ------------------------------------------------------------------------------------------- staged writes
@contextlib.contextmanager
def staged(out: Path):
    """A temporary folder beside ``out`` (same file system, so the final ``os.replace`` is atomic), removed
    afterwards whatever happens: a failed export leaves nothing behind."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot write into {out.parent}: {e.strerror}; choose another --out") from e
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_pair(xml: Path, out: Path) -> None:
    """Move ``xml`` and the .bin beside it onto ``out`` (.xml) and its .bin, the .bin first so a reader never
    sees an .xml without its weights; on failure neither is left half-moved."""
    bin_out = out.with_suffix(".bin")
    os.replace(xml.with_suffix(".bin"), bin_out)
    try:
        os.replace(xml, out)
    except BaseException:
        bin_out.unlink(missing_ok=True)
        raise


def companion(path: Path, suffix: str) -> Path:
    """The file written beside ``path`` with ``suffix`` in place of its own (model.xml -> model.bin)."""
    return path.with_suffix(suffix)


def move_into_place(written: Path, out: Path) -> None:
    """Move a finished file from the staging folder onto ``out``, with the files its format writes beside it
    (OpenVINO's .bin, ORT's operator config) first, so a reader never sees the model without them; a folder
    (Core ML's .mlpackage) replaces an older folder of the same name."""
    fmt = format_of(out)
    if written.suffix == ".xml":
        replace_pair(written, out)
        return
    moved = []
    try:
        for suffix in fmt.companions if fmt else ():
            os.replace(companion(written, suffix), companion(out, suffix))
            moved.append(companion(out, suffix))
        if written.is_dir():
            _replace_folder(written, out)
        else:
            os.replace(written, out)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        raise


def _replace_folder(folder: Path, out: Path) -> None:
    """``os.replace`` for a folder onto a possibly existing one: the old folder is moved aside, then removed."""
    if not out.exists():
        os.replace(folder, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(folder, out)
    except BaseException:
        os.replace(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
