"""The one exporter: any task's model to any format of :data:`~.formats.FORMAT` (ONNX, a ``torch.export``
ExportedProgram, OpenVINO IR, ExecuTorch, ONNX Runtime's ``.ort``, Core ML), fp32 or int8, checked against eager
PyTorch before it is written.

What every export does, whatever the task:

* The task (:func:`mobilenets.tasks.get_task` of the checkpoint's task) says what to write:
  :meth:`~mobilenets.tasks.base.Task.export_module` (a classifier itself; a detector's decoded boxes and scores
  before NMS; a segmenter's logits), the names of its outputs (:attr:`~mobilenets.tasks.base.Task.outputs`) and
  metadata strings that travel with the file (:meth:`~mobilenets.tasks.base.Task.export_properties`, e.g. NMS
  settings).
* BatchNorm is folded and the ONNX graph is tidied for CPU runtimes (:mod:`.onnx_graph`); int8 quantizes that
  graph (:mod:`.quantize`).
* The :class:`~mobilenets.checkpoint.CheckpointMeta`, the precision, the task's properties and the parity figures
  travel inside the file (:mod:`.formats`' keys), so a runner knows classes and preprocessing.
* Parity: the written file is run on ``parity_n`` inputs (:meth:`~mobilenets.tasks.base.Task.parity_inputs`: real
  images when a data set is given) and the task compares its outputs with eager PyTorch's
  (:meth:`~mobilenets.tasks.base.Task.compare`); a file that fails is deleted before it ever reaches ``out``.
  A file that cannot run on this system (Core ML off macOS) is checked for structure instead, and says so.
* Formats other than ONNX / ExportedProgram / OpenVINO are written by their own module (the format's
  ``writer``: ``writer(ExportJob) -> Writer``); this module only runs the common steps around it.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointMeta, load_checkpoint
from ..data.samples import sample_inputs
from ..errors import UserError
from ..qat import SCHEME as QAT_SCHEME
from ..qat import WEIGHT_RANGE as QAT_WEIGHT_RANGE
from ..qat import FakeQuantized
from ..tasks import get_task
from ..tasks.base import Parity
from ..weights import cache_root, file_sha256
from .formats import (
    EP_META_FILE,
    EP_PROPERTIES_FILE,
    EXTRA,
    FORMAT,
    FORMATS,
    META_KEY,
    PARITY_KEY,
    PRECISION_KEY,
    SUFFIX,
    ExportJob,
    Writer,
    move_into_place,
    onnx_runtimes,
    optional_import,
    require,
    staged,
)
from .onnx_graph import fold_batchnorm, set_properties, to_onnx, to_onnx_qdq
from .openvino_io import from_onnx
from .quantize import INT8_WEIGHTS
from .runtime import RUNNERS, Runner, TorchRunner

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    path: Path
    format: str
    precision: str  # "fp32" or "int8"
    parity: Parity | None  # None: the file cannot run here (``unchecked`` says why; ``details["structure"]``)
    meta: CheckpointMeta
    properties: dict[str, str] = field(default_factory=dict)  # the task's metadata written into the file
    details: dict = field(default_factory=dict)  # e.g. quantizer settings
    unchecked: str = ""  # why parity was not checked on this system (Core ML off macOS)

    @property
    def parity_line(self) -> str:
        """The parity report in one line, or why there is none."""
        if self.parity is not None:
            return str(self.parity)
        checked = self.details.get("structure", {})
        return (f"parity not checked: {self.unchecked}; structure checked: "
                + ", ".join(f"{k} {v}" for k, v in checked.items()))


def export_model(model: nn.Module, meta: CheckpointMeta, out: str | os.PathLike, fmt: str = "onnx", *,
                 dynamic_batch: bool = False, batch: int = 1, parity_data: str | None = None,
                 parity_n: int | None = None,
                 tolerance: float | None = None, min_agreement: float | None = None,
                 int8: bool = False, calibration_data: str | None = None, calibration_n: int = 300,
                 int8_weights: str | None = None, nhwc: bool = False) -> ExportResult:
    """Write ``model`` (of task ``meta.task``) to ``out`` in format ``fmt``; refuse (UserError, nothing
    written) when parity fails.

    ``parity_n`` inputs (default 16 for fp32, 200 for int8, whose agreement is a fraction) are compared by the
    task; ``tolerance`` and ``min_agreement`` override the task's defaults. int8 calibrates on
    ``calibration_n`` images of ``calibration_data`` (the training split) and checks parity on the same source
    (the test split) unless ``parity_data`` says otherwise. ``nhwc``: the file takes (N, H, W, C) images (formats
    with ``channels_last``: LiteRT); the parity check feeds it the same images transposed, through its runner.
    ``int8_weights`` ("7bit", the default, or "8bit"): the weight range of the ONNX Runtime and NNCF quantizers
    (:mod:`.quantize`: 7-bit weights cannot saturate on CPUs without VNNI); refused for formats whose int8 has no
    such setting.
    """
    if batch < 1:
        raise UserError(f"--batch {batch} must be at least 1")
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    spec = FORMAT[fmt]
    out = Path(out)
    if out.suffix != SUFFIX[fmt]:
        raise UserError(f"--out {out} must end in {SUFFIX[fmt]} for --format {fmt}")
    if out.is_dir() and not spec.folder:
        raise UserError(f"--out {out} is a folder; pass a file name ending in {SUFFIX[fmt]}")
    if out.exists() and spec.folder and not out.is_dir():
        raise UserError(f"--out {out} is a file, but --format {fmt} writes a folder; remove it or choose another "
                        "--out")
    _check_writable(out)
    if dynamic_batch and not spec.dynamic_batch:
        raise UserError(f"--dynamic-batch is not available for --format {fmt} (the file has a fixed batch); drop "
                        "it, or pass --batch N")
    if nhwc and not spec.channels_last:
        raise UserError(f"--nhwc is not available for --format {fmt} (its input is NCHW); it is offered by --format "
                        f"{', '.join(f.name for f in FORMAT.values() if f.channels_last)}")
    if int8 and spec.int8 is None:
        raise UserError(f"--int8 is not available for --format {fmt}; int8 is written by --format "
                        f"{', '.join(f.name for f in FORMAT.values() if f.int8)}")
    if int8_weights is not None and not (int8 and spec.int8_weights):
        raise UserError(f"--int8-weights is for --int8 with --format "
                        f"{', '.join(f.name for f in FORMAT.values() if f.int8_weights)}"
                        + ("" if not int8 else f"; --format {fmt}'s int8 ({spec.int8}) does not saturate on any "
                           "CPU and has no such setting") + ": drop it")
    int8_weights = int8_weights or INT8_WEIGHTS[0]
    _check_dependencies(fmt, int8)
    learned = None  # a quantization-aware checkpoint's int8 graph, written with its learned scales
    if isinstance(model, FakeQuantized):
        if int8 and spec.learned_int8:
            learned = model.eval().int8_program()
        else:  # fp32, or an int8 that can only re-calibrate: the fine-tuned weights without fake quantization
            if int8:
                log.warning("--format %s's int8 (%s) cannot take the learned scales of a quantization-aware "
                            "checkpoint: it re-calibrates the fine-tuned weights on --calibration-data", fmt,
                            spec.int8)
            model = model.eval().float_model()
    if int8 and learned is None and calibration_data is None:
        raise UserError("--int8 needs --calibration-data fashion-mnist|DIR (real images to calibrate on)")
    if int8:  # int8 parity on real images where there are some (a quantization-aware model needs none to calibrate)
        parity_data = parity_data or calibration_data
    task = get_task(meta.task)
    model = model.eval()
    module = task.export_module(model).eval()
    if learned is not None:  # what the file holds is the int8 graph: parity compares runtimes with it in PyTorch
        module = learned
    task_properties = task.export_properties(model)
    output_names = task.output_names(task_properties)
    precision = "int8" if int8 else "fp32"
    properties = {META_KEY: meta.to_json(), PRECISION_KEY: precision, **task_properties}
    details: dict = {}
    if learned is not None:
        details.update({"scheme": "quantization-aware (learned scales)", "quantizer": QAT_SCHEME,
                        "weights": f"int8 symmetric per-channel, -{QAT_WEIGHT_RANGE}..{QAT_WEIGHT_RANGE}",
                        "activations": "int8 (static)"})

    x_parity = task.parity_inputs(meta, parity_n or (200 if int8 else 16), parity_data)
    reference = _eager_outputs(module, x_parity)

    def check(runner: Runner) -> Parity:
        got = runner.outputs(x_parity)  # a fixed-batch runner feeds the batch in slices
        parity = task.compare(reference, got, inputs=parity_data or "random", int8=int8,
                              properties=task_properties, tolerance=tolerance, min_agreement=min_agreement)
        log.debug("%s", parity)
        if not parity.passed and int8:
            raise UserError(f"refusing to write {out}: int8 changes too many predictions ({parity}); calibrate on "
                            "more, representative images (--calibration-samples, --calibration-data) or keep fp32")
        if not parity.passed:
            raise UserError(f"refusing to write {out}: the exported model does not match eager PyTorch ({parity}); "
                            "this is a bug in the export of this model: please report it with the checkpoint")
        return parity

    fused = fold_batchnorm(module) if learned is None else learned
    proto = []

    def onnx_of_fused():
        """The ONNX graph of ``fused`` (made on first call): fp32, or a quantization-aware model's int8 (QDQ)."""
        if not proto:
            proto.append((to_onnx if learned is None else to_onnx_qdq)(
                fused, tuple(meta.preprocessing.input_size), output_names, name=meta.model,
                dynamic_batch=dynamic_batch, batch=batch))
        return proto[0]
    if spec.writer is not None:
        calibration = (sample_inputs(meta.preprocessing, calibration_data, calibration_n, split="train", seed=0)
                       if int8 and learned is None else None)
        job = ExportJob(module=module, fused=fused, meta=meta, outputs=output_names, batch=batch,
                        dynamic_batch=dynamic_batch, int8=int8, nhwc=nhwc, calibration=calibration,
                        int8_weights=int8_weights, learned=learned, onnx=onnx_of_fused, details=details, out=out)
        writer = importlib.import_module(f"{__package__}.{spec.writer}").writer(job)
        parity = _write_checked(out, writer, properties, check, details)
        return ExportResult(path=out, format=fmt, precision=precision, parity=parity, meta=meta,
                            properties=task_properties, details=details, unchecked=writer.unchecked)
    if fmt == "exported-program":
        parity = _write_checked(out, _exported_program(fused, meta, dynamic_batch, batch), properties, check)
    else:
        graph = onnx_of_fused()  # fp32, or a quantization-aware model's int8 as trained
        if int8 and learned is None:
            from .quantize import quantize_onnx, quantize_openvino  # noqa: I001 - nncf / onnxruntime load late

            calibration = sample_inputs(meta.preprocessing, calibration_data, calibration_n, split="train", seed=0)
            quantized, details = (quantize_openvino if fmt == "openvino" else quantize_onnx)(graph, calibration,
                                                                                             int8_weights)
            writer = _ir_writer(quantized) if fmt == "openvino" else _onnx_writer(quantized)
        elif fmt == "onnx":
            writer = _onnx_writer(graph)
        else:
            writer = _ir_writer(from_onnx(graph))
        parity = _write_checked(out, writer, properties, check)
    return ExportResult(path=out, format=fmt, precision=precision, parity=parity, meta=meta,
                        properties=task_properties, details=details)


def cached_onnx(checkpoint: Path) -> Path:
    """The ONNX export of a checkpoint (any task), made once with its parity check and kept in the cache."""
    return cached_export(checkpoint, "onnx")


def cached_export(checkpoint: Path, fmt: str = "onnx") -> Path:
    """The ``fmt`` export of a checkpoint (any task), made once with its parity check and kept in the cache."""
    target = cache_root() / "exports" / f"{file_sha256(checkpoint)[:20]}{SUFFIX[fmt]}"
    if not target.exists():
        model, meta = load_checkpoint(checkpoint)
        log.info("exporting %s to %s", checkpoint, target)
        export_model(model, meta, target, fmt)
    return target


@torch.no_grad()
def _eager_outputs(module: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _check_dependencies(fmt: str, int8: bool) -> None:
    """Fail before any work when a package the export needs is missing (one line naming the extra)."""
    if fmt == "exported-program":
        return
    if FORMAT[fmt].writer is not None:
        for module in FORMAT[fmt].needs:
            require(module, EXTRA[module], f"--format {fmt}")
        return
    optional_import("onnx", "onnx", "ONNX export")
    if fmt == "openvino":
        optional_import("openvino", "openvino", "--format openvino")
    if int8:
        if fmt == "openvino":
            optional_import("nncf", "openvino", "--int8 for OpenVINO")
        else:
            optional_import("onnxruntime", "onnx", "--int8 for ONNX Runtime")
    onnx_runtimes()  # the parity check needs a runtime for the ONNX file


def _check_writable(out: Path) -> None:
    parent = out.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"cannot write {out}: {existing} is a file, not a folder; choose another --out")
    if existing is not None and not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {out}: folder {existing} is not writable; choose another --out")


# ----------------------------------------------------------------------------------------- checked writing
# A writer is ``(save(file, properties), open(file) -> Runner)`` for one model object in one format.

def _write_checked(out: Path, writer, properties: dict[str, str], check, details: dict | None = None
                   ) -> Parity | None:
    """Save with ``writer`` into a staging folder beside ``out``, run ``check`` on the saved file, save again with
    the parity figures inside and move the file into place; nothing reaches ``out`` when ``check`` raises.
    A :class:`~.formats.Writer` that cannot open its file here is structure-checked instead (parity None)."""
    if isinstance(writer, Writer) and writer.open is None:
        with staged(out) as tmp:
            file = tmp / f"model{out.suffix}"
            unchecked = json.dumps({"checked": False, "why": writer.unchecked})
            writer.save(file, {**properties, PARITY_KEY: unchecked})
            structure = writer.inspect(file) if writer.inspect else {}
            if details is not None:
                details["structure"] = structure
            move_into_place(file, out)
        return None
    save, open_file = (writer.save, writer.open) if isinstance(writer, Writer) else writer
    with staged(out) as tmp:
        file = tmp / f"model{out.suffix}"
        save(file, properties)
        parity = check(open_file(file))
        save(file, {**properties, PARITY_KEY: json.dumps(asdict(parity))})  # the figures travel in the file
        move_into_place(file, out)
    return parity


def _onnx_writer(proto):
    import onnx

    def save(file: Path, properties: dict[str, str]) -> None:
        set_properties(proto, properties)
        onnx.save(proto, file)
    return save, RUNNERS[onnx_runtimes()[0]]


def _ir_writer(ov_model):
    from .openvino_io import save_ir
    return (lambda file, properties: save_ir(ov_model, file, properties)), RUNNERS["openvino"]


def _exported_program(fused: nn.Module, meta: CheckpointMeta, dynamic_batch: bool, batch: int):
    example = torch.zeros(max(batch, 2) if dynamic_batch else batch, *meta.preprocessing.input_size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    try:
        program = torch.export.export(fused, (example,), dynamic_shapes=dynamic_shapes)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"torch.export could not export {meta.model} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from e

    def save(file: Path, properties: dict[str, str]) -> None:
        rest = {k: v for k, v in properties.items() if k != META_KEY}
        torch.export.save(program, file, extra_files={EP_META_FILE: properties[META_KEY],
                                                      EP_PROPERTIES_FILE: json.dumps(rest)})
    return save, TorchRunner.from_exported_program
