"""Core ML ``.mlpackage`` (an ML program, fp32): the writer, its structure check, and a runner for macOS.

* Conversion: ``torch.export`` of the task's export module (BatchNorm folded), decomposed to core ATen ops, then
  ``coremltools.convert(..., convert_to="mlprogram", compute_precision=FLOAT32)``; input ``input`` (N, C, H, W)
  float32, outputs named as the task's. fp32 is deliberate: coremltools' default fp16 compute precision moves
  MobileNetV3 outputs far more than torch's own fp16 does (apple/coremltools#2625).
* Metadata: the file's properties (:mod:`..keys`' keys) go into the model's ``user_defined_metadata``.
* Prediction needs macOS (coremltools runs models only there). On other systems the export is checked for
  structure instead of parity (:func:`inspect`: the ML program's ops, input and output names and shapes, the
  metadata), and the file records that parity was not checked; :class:`CoreMLRunner` runs the package on macOS,
  where the exporter's parity check runs as for every other format.
* int8 is not offered: its accuracy could not be checked where it is exported (Linux).
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import sys
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..files import failing_as, optional_import, require
from ..keys import META_KEY
from ..runtime import Runner, meta_of
from .base import COMMON_OPTIONS, ExportJob, Writer

NEEDS = ("coremltools",)
OPTIONS = COMMON_OPTIONS  # fp32 at a fixed batch
PLATFORM_NOTE = ("Core ML prediction needs macOS (coremltools runs models only there); the export is checked for "
                 "structure only on this system")


def check(int8: bool) -> None:
    require("coremltools", what="fmt='coreml'")

log = logging.getLogger(__name__)


def _import_coremltools():
    # Off macOS coremltools logs one "Failed to load _MLModelProxy" line per native class at import (expected),
    # and a warning that it was tested with older torch and scikit-learn releases (the parity check is ours).
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's Enum registration (see .executorch)
    return optional_import("coremltools", what="fmt='coreml'")


def writer(job: ExportJob) -> Writer:
    """Convert ``job``'s model to a Core ML ML program (fp32); the Writer saves it with the metadata."""
    ct = _import_coremltools()
    import torch

    shape = (job.batch, *job.meta.preprocessing.input_size)
    with failing_as(f"torch.export could not export {job.meta.model} for Core ML"):
        program = torch.export.export(job.fused, (torch.zeros(shape),)).run_decompositions({})
    with failing_as(f"coremltools could not convert {job.meta.model}"), \
            contextlib.redirect_stderr(io.StringIO()):  # coremltools' progress bars
        model = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                           inputs=[ct.TensorType(name="input", shape=shape)],
                           outputs=[ct.TensorType(name=name) for name in job.outputs])
    job.details.update({"compute_precision": "float32", "spec_version": model.get_spec().specificationVersion})

    def save(file: Path, properties: dict[str, str]) -> None:
        metadata = model.user_defined_metadata
        for key, value in properties.items():
            metadata[key] = value
        model.save(str(file))

    if sys.platform == "darwin":
        return Writer(save=save, open=CoreMLRunner)
    return Writer(save=save, open=None, unchecked=PLATFORM_NOTE,
                  inspect=lambda file: inspect(file, job.outputs, shape))


def package_spec(path: Path):
    """The model spec (protobuf) of a ``.mlpackage``, read without loading the model (works on any system)."""
    ct = _import_coremltools()
    with failing_as(f"coremltools cannot read {path}",
                    "pass a .mlpackage written by 'mobilenets export' with fmt='coreml'"):
        return ct.utils.load_spec(str(path))


def program_ops(spec) -> collections.Counter:
    """Operation types of an ML program spec, counted (constants left out)."""
    ops: collections.Counter[str] = collections.Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            ops.update(op.type for op in block.operations if op.type != "const")
    return ops


def inspect(path: Path, outputs: tuple[str, ...], shape: tuple[int, ...]) -> dict:
    """Check a package's structure: an ML program whose input ``input`` has ``shape`` (float32), whose outputs
    are ``outputs``, with convolutions in it and the mobilenets metadata; what was checked, for the report."""
    spec = package_spec(path)
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"it is a {spec.WhichOneof('Type')}, not an ML program")
    inputs = {i.name: tuple(i.type.multiArrayType.shape) for i in spec.description.input}
    if inputs != {"input": tuple(shape)}:
        problems.append(f"inputs {inputs}, expected input {tuple(shape)}")
    names = tuple(o.name for o in spec.description.output)
    if names != tuple(outputs):
        problems.append(f"outputs {names}, expected {tuple(outputs)}")
    ops = program_ops(spec)
    if not ops.get("conv"):
        problems.append("no conv operation")
    if META_KEY not in spec.description.metadata.userDefined:
        problems.append(f"no {META_KEY} metadata")
    if problems:
        raise UserError(f"the Core ML package of this model is malformed ({'; '.join(problems)}); this is a bug in "
                        "the export: please report it with the checkpoint")
    return {"ML program ops": sum(ops.values()), "conv": ops["conv"], "input": list(shape),
            "outputs": ",".join(names), "metadata": "present"}


def properties_of(path: Path) -> dict[str, str]:
    """The string metadata of a ``.mlpackage`` (``user_defined_metadata``), on any system."""
    return dict(package_spec(path).description.metadata.userDefined)


class CoreMLRunner(Runner):
    """A ``.mlpackage`` on Core ML (macOS only; elsewhere a one-line UserError says so)."""

    backend = "coreml"

    def __init__(self, path: Path, threads: int | None = None):
        if not sys.platform == "darwin":
            raise UserError(f"cannot run {path}: {PLATFORM_NOTE}")
        ct = _import_coremltools()
        spec = package_spec(path)
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        self._outputs = [o.name for o in spec.description.output]
        shape = spec.description.input[0].type.multiArrayType.shape
        properties = dict(spec.description.metadata.userDefined)
        super().__init__(path, meta_of(properties), int(shape[0]), properties)

    def _run(self, x):
        got = self.model.predict({"input": x})
        return [np.asarray(got[name], dtype=np.float32) for name in self._outputs]
