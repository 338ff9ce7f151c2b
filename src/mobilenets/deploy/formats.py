"""The ground floor of deployment: what every exported file and every runner agree on.

File formats and the backends that run them:

======================  ======================  ==================================================================
format                  suffix                  backends
======================  ======================  ==================================================================
``onnx``                ``.onnx``               onnxruntime, openvino
``openvino``            ``.xml`` (+ ``.bin``)   openvino (OpenVINO IR, e.g. an NNCF int8 model)
``exported-program``    ``.pt2``                torch (a ``torch.export`` ExportedProgram)
(a checkpoint)          ``.safetensors``        torch (eager); onnxruntime / openvino through a cached ONNX export
======================  ======================  ==================================================================

Metadata travels inside every file under the keys below (ONNX ``metadata_props``, OpenVINO ``rt_info``, the
ExportedProgram's extra files), so a runner knows the model, its classes and preprocessing without the checkpoint.

This module imports nothing of the package but :mod:`mobilenets.errors`: the runners, the exporter and the
commands all read it, and it reads none of them.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

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

FORMATS = ("onnx", "exported-program", "openvino")
SUFFIX = {"onnx": ".onnx", "exported-program": ".pt2", "openvino": ".xml"}

RUNTIMES = ("torch", "onnxruntime", "openvino")
BACKENDS = ("auto", *RUNTIMES)
RUNS_ON = {".onnx": ("onnxruntime", "openvino"), ".xml": ("openvino",), ".pt2": ("torch",),
           ".safetensors": ("torch", "onnxruntime", "openvino")}
ONNX_RUNTIMES = RUNS_ON[".onnx"]  # fastest-first guess

# The pyproject extra that installs each optional package.
EXTRA = {"onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino"}


# ------------------------------------------------------------------------------------------- optional packages
def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it); ``torch`` always can."""
    return module == "torch" or importlib.util.find_spec(module) is not None


def optional_import(module: str, extra: str | None = None, what: str | None = None):
    """``import module``, or a one-line :class:`UserError` saying that ``what`` needs it and naming
    ``pip install 'mobilenets[extra]'`` (``extra`` defaults to :data:`EXTRA`'s entry for the module)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{what or module} needs {module}, which is not installed; install the extra: "
                        f"pip install 'mobilenets[{extra or EXTRA[module]}]'") from e


def onnx_runtimes() -> list[str]:
    """Installed runtimes that run ONNX files, fastest-first guess; UserError when there is none."""
    found = [b for b in ONNX_RUNTIMES if installed(b)]
    if not found:
        raise UserError("running an ONNX model needs onnxruntime; install the extra: pip install 'mobilenets[onnx]'")
    return found


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


def move_into_place(written: Path, out: Path) -> None:
    """Move a finished file (and, for OpenVINO IR, its .bin) from the staging folder onto ``out``."""
    if written.suffix == ".xml":
        replace_pair(written, out)
    else:
        os.replace(written, out)
