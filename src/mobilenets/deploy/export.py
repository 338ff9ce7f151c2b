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
  travel inside the file (:mod:`.keys`), so a runner knows classes and preprocessing.
* Parity: the written file is run on ``parity_n`` inputs (:meth:`~mobilenets.tasks.base.Task.parity_inputs`: real
  images when a data set is given) and the task compares its outputs with eager PyTorch's
  (:meth:`~mobilenets.tasks.base.Task.compare`); a file that fails is deleted before it ever reaches ``out``.
  A file that cannot run on this system (Core ML off macOS) is checked for structure instead, and says so.
* Every format is written by its own module (:mod:`.formats`: the row's ``writer(ExportJob) -> Writer``); this
  module validates the :class:`~.options.ExportOptions` against the format's row once, checks its dependencies,
  and runs the common steps around the writer: one track for every format.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..checkpoint import CheckpointMeta, load_checkpoint
from ..data.loaders import FASHION
from ..data.samples import sample_inputs
from ..errors import UserError
from ..files import cache_root, file_sha256
from ..qat import SCHEME as QAT_SCHEME
from ..qat import WEIGHT_RANGE as QAT_WEIGHT_RANGE
from ..qat import FakeQuantized
from ..tasks import get_task
from ..tasks.base import Parity
from .files import check_writable, move_into_place, staged
from .formats import SUFFIX, ExportJob, Format, Writer
from .keys import META_KEY, PARITY_KEY, PRECISION_KEY
from .onnx_graph import fold_batchnorm, to_onnx, to_onnx_qdq
from .options import ExportOptions, from_keywords, validate
from .quantize import INT8_WEIGHTS

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


def export_model(model: nn.Module, meta: CheckpointMeta, out: str | os.PathLike, fmt: str = "onnx",
                 options: ExportOptions | None = None, **deprecated) -> ExportResult:
    """Write ``model`` (of task ``meta.task``) to ``out`` in format ``fmt`` as ``options`` ask
    (:class:`~.options.ExportOptions`: batch, int8, parity data, ...); refuse (UserError, nothing written) when
    an option does not fit the format or parity fails.

    The keyword arguments of earlier releases (``batch=``, ``int8=``, ...) still work for this release: they are
    mapped onto ``options`` with a DeprecationWarning.
    """
    options = from_keywords(options, deprecated, "export_model")
    spec = validate(fmt, options)
    out = Path(out)
    _check_out(out, fmt, spec)
    spec.check(options.int8)
    learned = None  # a quantization-aware checkpoint's int8 graph, written with its learned scales
    if isinstance(model, FakeQuantized):
        if options.int8 and spec.learned_int8:
            learned = model.eval().int8_program()
        else:  # fp32, or an int8 that can only re-calibrate: the fine-tuned weights without fake quantization
            if options.int8:
                log.warning("fmt=%r's int8 (%s) cannot take the learned scales of a quantization-aware checkpoint: "
                            "it re-calibrates the fine-tuned weights on calibration_data", fmt, spec.int8)
            model = model.eval().float_model()
    calibrates = options.int8 and learned is None
    if calibrates and options.calibration_data is None:
        raise UserError(f"int8=True needs calibration_data={FASHION!r} or a folder of real images to calibrate on")
    # int8 parity on real images where there are some (a quantization-aware model needs none to calibrate)
    parity_data = options.parity_data or (options.calibration_data if options.int8 else None)
    task = get_task(meta.task)
    model = model.eval()
    module = task.export_module(model).eval() if learned is None else learned  # what the file computes
    task_properties = task.export_properties(model)
    output_names = task.output_names(task_properties)
    precision = "int8" if options.int8 else "fp32"
    properties = {META_KEY: meta.to_json(), PRECISION_KEY: precision, **task_properties}
    details: dict = {}
    if learned is not None:
        details.update({"scheme": "quantization-aware (learned scales)", "quantizer": QAT_SCHEME,
                        "weights": f"int8 symmetric per-channel, -{QAT_WEIGHT_RANGE}..{QAT_WEIGHT_RANGE}",
                        "activations": "int8 (static)"})
    fused = fold_batchnorm(module) if learned is None else learned

    @functools.cache
    def onnx_of_fused():
        """The ONNX graph of ``fused`` (made on first call): fp32, or a quantization-aware model's int8 (QDQ)."""
        return (to_onnx if learned is None else to_onnx_qdq)(
            fused, tuple(meta.preprocessing.input_size), output_names, name=meta.model,
            dynamic_batch=options.dynamic_batch, batch=options.batch)

    calibration = (sample_inputs(meta.preprocessing, options.calibration_data, options.calibration_n,
                                 split="train", seed=0) if calibrates else None)
    job = ExportJob(module=module, fused=fused, meta=meta, outputs=output_names, batch=options.batch,
                    dynamic_batch=options.dynamic_batch, int8=options.int8, nhwc=options.nhwc,
                    calibration=calibration, int8_weights=options.int8_weights or INT8_WEIGHTS[0],
                    learned=learned, onnx=onnx_of_fused, details=details, out=out)
    x_parity = task.parity_inputs(meta, options.parity_n or (200 if options.int8 else 16), parity_data)
    reference = job.reference(x_parity)

    def check(runner) -> Parity:
        got = runner.outputs(x_parity)  # a fixed-batch runner feeds the batch in slices
        parity = task.compare(reference, got, inputs=parity_data or "random", int8=options.int8,
                              properties=task_properties, tolerance=options.tolerance,
                              min_agreement=options.min_agreement)
        log.debug("%s", parity)
        if not parity.passed and options.int8:
            raise UserError(f"refusing to write {out}: int8 changes too many predictions ({parity}); calibrate on "
                            "more, representative images (calibration_n, calibration_data) or keep fp32")
        if not parity.passed:
            raise UserError(f"refusing to write {out}: the exported model does not match eager PyTorch ({parity}); "
                            "this is a bug in the export of this model: please report it with the checkpoint")
        return parity

    writer = spec.writer(job)
    parity = _write_checked(out, spec, writer, properties, check, details)
    return ExportResult(path=out, format=fmt, precision=precision, parity=parity, meta=meta,
                        properties=task_properties, details=details, unchecked=writer.unchecked)


def cached_export(checkpoint: Path, fmt: str = "onnx", *, dynamic_batch: bool = False) -> Path:
    """The ``fmt`` export of a checkpoint (any task), made once with its parity check and kept in the cache;
    ``dynamic_batch``: any batch size (what the server batches requests into), else batch 1."""
    tag = "_dynamic" if dynamic_batch else ""
    target = cache_root() / "exports" / f"{file_sha256(checkpoint)[:20]}{tag}{SUFFIX[fmt]}"
    if not target.exists():
        model, meta = load_checkpoint(checkpoint)
        log.info("exporting %s to %s%s", checkpoint, target, " (dynamic batch)" if dynamic_batch else "")
        export_model(model, meta, target, fmt, ExportOptions(dynamic_batch=dynamic_batch))
    return target


def _check_out(out: Path, fmt: str, spec: Format) -> None:
    if out.suffix != spec.suffix:
        raise UserError(f"out={out} must end in {spec.suffix} for fmt={fmt!r}")
    if out.is_dir() and not spec.folder:
        raise UserError(f"out={out} is a folder; pass a file name ending in {spec.suffix}")
    if out.exists() and spec.folder and not out.is_dir():
        raise UserError(f"out={out} is a file, but fmt={fmt!r} writes a folder; remove it or choose another out")
    check_writable(out, "out")


def _write_checked(out: Path, spec: Format, writer: Writer, properties: dict[str, str], check, details: dict
                   ) -> Parity | None:
    """Save with ``writer`` into a staging folder beside ``out``, run ``check`` on the saved file, save again with
    the parity figures inside and move the file into place; nothing reaches ``out`` when ``check`` raises.
    A writer that cannot open its file here is structure-checked instead (parity None)."""
    with staged(out) as tmp:
        file = tmp / f"model{out.suffix}"
        if writer.open is None:
            writer.save(file, {**properties, PARITY_KEY: json.dumps({"checked": False, "why": writer.unchecked})})
            details["structure"] = writer.inspect(file) if writer.inspect else {}
            parity = None
        else:
            writer.save(file, properties)
            parity = check(writer.open(file))
            writer.save(file, {**properties, PARITY_KEY: json.dumps(asdict(parity))})  # the figures travel inside
        move_into_place(file, out, spec.companions)
    return parity
