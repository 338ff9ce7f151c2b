"""Export a classifier to ONNX, a ``torch.export`` ExportedProgram or OpenVINO IR, checked against eager PyTorch.

What every export does:

* BatchNorm is folded into the preceding convolution (``torch.fx`` conv-bn fusion on a copy of the model), so
  the file holds plain ``Conv`` nodes; h-swish / h-sigmoid become the native ONNX ``HardSwish`` /
  ``HardSigmoid`` (opset >= 14), which ONNX Runtime and OpenVINO fuse into the convolution.
* ONNX: ``torch.onnx.export`` at opset :data:`OPSET` (see :func:`to_onnx` for the exporter choice); global
  average pooling is ``GlobalAveragePool`` (a ``ReduceMean`` over H, W is rewritten), which ONNX Runtime keeps
  in its blocked NCHWc layout; the dynamo exporter's ``ReduceMean`` makes it convert layouts back and forth
  around every squeeze-excite block.
* The :class:`~mobilenets.checkpoint.CheckpointMeta` travels inside the file (ONNX ``metadata_props``,
  ExportedProgram extra file, OpenVINO ``rt_info``), so :func:`mobilenets.deploy.open_runner` knows classes and
  preprocessing.
* A parity check runs the written file on ``parity_n`` inputs (real images when a data set is given) and
  compares with eager PyTorch; a file that fails is deleted before it ever reaches ``out``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointMeta
from ..errors import UserError
from ..data.samples import sample_inputs

log = logging.getLogger(__name__)

FORMATS = ("onnx", "exported-program", "openvino")
SUFFIX = {"onnx": ".onnx", "exported-program": ".pt2", "openvino": ".xml"}
OPSET = 18
META_KEY = "mobilenets.meta"  # ONNX metadata_props key / OpenVINO rt_info key / ExportedProgram extra file
PARITY_KEY = "mobilenets.parity"
PRECISION_KEY = "mobilenets.precision"
EP_META_FILE = "mobilenets_meta.json"


@dataclass
class ParityReport:
    """Exported file vs eager PyTorch on the same ``n`` inputs."""

    n: int
    inputs: str  # "random" or the data set the inputs came from
    max_abs_diff: float
    top1_agreement: float  # fraction of inputs whose arg-max class matches
    tolerance: float | None  # max_abs_diff must stay below this (fp32); None for int8
    min_agreement: float
    passed: bool = field(init=False)

    def __post_init__(self):
        ok_diff = self.tolerance is None or self.max_abs_diff <= self.tolerance
        self.passed = bool(ok_diff and self.top1_agreement >= self.min_agreement)

    def __str__(self) -> str:
        tol = f" (tolerance {self.tolerance:.1e})" if self.tolerance is not None else ""
        return (f"parity vs eager PyTorch on {self.n} {self.inputs} inputs: max |diff| {self.max_abs_diff:.2e}{tol}, "
                f"top-1 agreement {self.top1_agreement:.1%} (needs {self.min_agreement:.0%}): "
                f"{'PASS' if self.passed else 'FAIL'}")


@dataclass
class ExportResult:
    path: Path
    format: str
    precision: str  # "fp32" or "int8"
    parity: ParityReport
    meta: CheckpointMeta
    details: dict = field(default_factory=dict)  # e.g. quantizer settings


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair fused into one Conv2d.

    Pairs are found structurally, without tracing: consecutive children of an ``nn.Sequential`` (torchvision's
    ``Conv2dNormActivation``) and ``conv`` / ``bn`` attributes of one module (our ``ConvNormAct``). Only plain
    ``nn.BatchNorm2d`` is folded (timm's ``BatchNormAct2d`` carries its activation; the ONNX exporter's constant
    folding handles it). The parity check after export catches any pair that was not really consecutive.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        children = list(parent.named_children())
        pairs = []
        if isinstance(parent, nn.Sequential):
            pairs = [(a, b) for (a, ma), (b, mb) in zip(children, children[1:])
                     if isinstance(ma, nn.Conv2d) and type(mb) is nn.BatchNorm2d]
        elif (isinstance(getattr(parent, "conv", None), nn.Conv2d)
              and type(getattr(parent, "bn", None)) is nn.BatchNorm2d):
            pairs = [("conv", "bn")]
        for conv_name, bn_name in pairs:
            fused = fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name))
            setattr(parent, conv_name, fused)
            setattr(parent, bn_name, nn.Identity())
    left = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    log.debug("folded BatchNorm into convolutions; %d BatchNorm2d left to the exporter", left)
    return model


def export_model(model: nn.Module, meta: CheckpointMeta, out: str | os.PathLike, fmt: str = "onnx", *,
                 dynamic_batch: bool = False, batch: int = 1, parity_data: str | None = None,
                 parity_n: int | None = None,
                 tolerance: float | None = None, min_agreement: float | None = None,
                 int8: bool = False, calibration_data: str | None = None, calibration_n: int = 300
                 ) -> ExportResult:
    """Write ``model`` to ``out`` in format ``fmt``; refuse (UserError, nothing written) when parity fails.

    ``parity_n`` inputs (default 16 for fp32, 200 for int8, whose agreement is a fraction) are compared.
    ``tolerance`` defaults to ``5e-4 * max(1, max |logit|)`` for fp32; int8 is judged by top-1 agreement alone
    (``min_agreement``, default 0.9, on real images: calibration and parity use the same data source, the
    training split for calibration and the test split for parity).
    """
    if batch < 1:
        raise UserError(f"--batch {batch} must be at least 1")
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.suffix != SUFFIX[fmt]:
        raise UserError(f"--out {out} must end in {SUFFIX[fmt]} for --format {fmt}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass a file name ending in {SUFFIX[fmt]}")
    _check_writable(out)
    _check_dependencies(fmt, int8)
    if int8:
        if fmt == "exported-program":
            raise UserError("--int8 writes an ONNX (ONNX Runtime QDQ) or OpenVINO (NNCF) model; use --format onnx "
                            "or --format openvino")
        if calibration_data is None:
            raise UserError("--int8 needs --calibration-data fashion-mnist|DIR (real images to calibrate on)")
        parity_data = parity_data or calibration_data
    model = model.eval()
    pre = meta.preprocessing
    parity_n = parity_n or (200 if int8 else 16)
    x_parity = sample_inputs(pre, parity_data, parity_n, split="test", seed=1)
    with torch.no_grad():
        reference = model(torch.from_numpy(x_parity)).numpy()
    if min_agreement is None:
        min_agreement = 0.9 if int8 else 0.99
    if tolerance is None and not int8:
        tolerance = 5e-4 * max(1.0, float(np.abs(reference).max()))
    inputs_name = parity_data or "random"
    precision = "int8" if int8 else "fp32"
    details: dict = {}

    def check(runner) -> ParityReport:
        got = runner.run(x_parity)  # a fixed-batch runner feeds the batch in slices
        agree = got.argmax(1) == reference.argmax(1)
        if tolerance is not None:
            # Near-ties cannot be decided in fp32: count agreement where the reference's top-2 margin exceeds
            # twice the tolerance (all inputs, for any model with well separated logits).
            top2 = np.sort(reference, axis=1)[:, -2:]
            decisive = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
            agree = agree[decisive] if decisive.any() else np.ones(1, bool)
        report = ParityReport(n=len(x_parity), inputs=inputs_name,
                              max_abs_diff=float(np.abs(got - reference).max()),
                              top1_agreement=float(agree.mean()), tolerance=tolerance, min_agreement=min_agreement)
        log.debug("%s", report)
        if not report.passed and int8:
            raise UserError(f"refusing to write {out}: int8 changes too many predictions ({report}); calibrate on "
                            "more, representative images (--calibration-samples, --calibration-data) or keep fp32")
        if not report.passed:
            raise UserError(f"refusing to write {out}: the exported model does not match eager PyTorch ({report}); "
                            "this is a bug in the export of this model: please report it with the checkpoint")
        return report

    fused = fold_batchnorm(model)
    if fmt == "exported-program":
        report = _write_exported_program(fused, meta, out, dynamic_batch, batch, check)
    else:
        onnx_model = to_onnx(fused, meta, dynamic_batch=dynamic_batch, batch=batch)
        if int8:
            from .quantize import quantize
            calib = sample_inputs(pre, calibration_data, calibration_n, split="train", seed=0)
            report, details = quantize(onnx_model, meta, out, fmt, calib, check)
        elif fmt == "onnx":
            report = write_onnx(onnx_model, out, check, meta=meta, precision=precision)
        else:
            from .openvino_io import write_openvino
            report = write_openvino(onnx_model, out, check, meta=meta, precision=precision)
    return ExportResult(path=out, format=fmt, precision=precision, parity=report, meta=meta, details=details)


def _check_dependencies(fmt: str, int8: bool) -> None:
    """Fail before any work when a package the export needs is missing (one line naming the extra)."""
    if fmt == "exported-program":
        return
    _require("onnx", "onnx", "ONNX export")
    if fmt == "openvino":
        _require("openvino", "openvino", "--format openvino")
    if int8:
        if fmt == "openvino":
            _require("nncf", "openvino", "--int8 for OpenVINO")
        else:
            _require("onnxruntime", "onnx", "--int8 for ONNX Runtime")
    from .runtime import onnx_backends
    onnx_backends()  # the parity check needs a runtime for the ONNX file


def _check_writable(out: Path) -> None:
    parent = out.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"cannot write {out}: {existing} is a file, not a folder; choose another --out")
    if existing is not None and not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {out}: folder {existing} is not writable; choose another --out")


# --------------------------------------------------------------------------------------------------- ONNX
def _require(module: str, extra: str, what: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{what} needs {module}, which is not installed; install the extra: "
                        f"pip install 'mobilenets[{extra}]'") from e


def to_onnx(fused: nn.Module, meta: CheckpointMeta, *, dynamic_batch: bool = False, batch: int = 1):
    """An ``onnx.ModelProto`` of ``fused`` (BN already folded), input ``input`` (N, C, H, W), output ``logits``;
    N is ``batch``, or any size with ``dynamic_batch``.

    Uses torch.onnx's TorchScript exporter (``dynamo=False``): for these feed-forward networks it writes the same
    graph as the dynamo exporter (native HardSwish / HardSigmoid, BN folded by constant folding as a second line
    of defence) in about a tenth of the time (2 s instead of 15-20 s for V3-Small on 2 busy cores), and pools as
    ``GlobalAveragePool`` directly. torch 2.14 flags it as deprecated; switching is ``dynamo=True`` plus
    ``dynamic_shapes`` instead of ``dynamic_axes``, with the same parity check.
    """
    onnx = _require("onnx", "onnx", "ONNX export")
    shape = tuple(meta.preprocessing.input_size)
    example = torch.zeros(batch, *shape)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings on shape checks
            torch.onnx.export(fused, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
                              output_names=["logits"], do_constant_folding=True,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the model is what the user gave us
        raise UserError(f"torch.onnx could not export {meta.model} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "export supports mobilenets, torchvision and timm MobileNets") from e
    proto = onnx.load_from_string(buffer.getvalue())
    _global_pool(proto)
    _drop_identities(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops, "BN survived folding"
    onnx.checker.check_model(proto)
    return proto


def _drop_identities(proto) -> None:
    """Remove the ``Identity`` nodes the TorchScript exporter adds for shared constants (rewire their readers)."""
    graph_outputs = {o.name for o in proto.graph.output}
    alias = {n.output[0]: n.input[0] for n in proto.graph.node
             if n.op_type == "Identity" and n.output[0] not in graph_outputs}
    if not alias:
        return
    nodes = [n for n in proto.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in nodes:
        for i, name in enumerate(n.input):
            while name in alias:
                name = alias[name]
            n.input[i] = name
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _global_pool(proto) -> None:
    """Rewrite ``ReduceMean(x, axes=[2, 3] or [-2, -1], keepdims=1)`` on 4-D tensors into ``GlobalAveragePool``
    (identical maths; ONNX Runtime runs it in its NCHWc layout, see the module docstring)."""
    from onnx import helper, numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    nodes = []
    for n in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axes = consts.get(n.input[1]) if n.op_type == "ReduceMean" and len(n.input) > 1 else None
        if (axes is not None and sorted(int(a) % 4 for a in axes.ravel()) == [2, 3]
                and attrs.get("keepdims", 1) == 1 and not attrs.get("noop_with_empty_axes", 0)):
            n = helper.make_node("GlobalAveragePool", [n.input[0]], list(n.output), name=n.name)
        nodes.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def set_onnx_meta(proto, meta: CheckpointMeta, precision: str, report: ParityReport | None = None) -> None:
    props = {META_KEY: meta.to_json(), PRECISION_KEY: precision}
    if report is not None:
        props[PARITY_KEY] = json.dumps(asdict(report))
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def write_onnx(proto, out: Path, check, *, meta: CheckpointMeta, precision: str) -> ParityReport:
    """Save ``proto`` to ``out`` after ``check(runner)`` passed on a temporary copy beside it."""
    import onnx

    from .runtime import OnnxRuntimeRunner, OpenVinoRunner, onnx_backends

    runner_cls = OnnxRuntimeRunner if onnx_backends()[0] == "onnxruntime" else OpenVinoRunner
    with staged(out) as tmp:
        set_onnx_meta(proto, meta, precision)
        onnx.save(proto, tmp / "model.onnx")
        report = check(runner_cls(tmp / "model.onnx"))
        set_onnx_meta(proto, meta, precision, report)  # record the parity figures inside the file too
        onnx.save(proto, tmp / "model.onnx")
        os.replace(tmp / "model.onnx", out)
    return report


# --------------------------------------------------------------------------------------------------- torch.export
def _write_exported_program(fused: nn.Module, meta: CheckpointMeta, out: Path, dynamic_batch: bool, batch: int,
                            check) -> ParityReport:
    from .runtime import TorchRunner

    example = torch.zeros(max(batch, 2) if dynamic_batch else batch, *meta.preprocessing.input_size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    try:
        program = torch.export.export(fused, (example,), dynamic_shapes=dynamic_shapes)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"torch.export could not export {meta.model} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from e
    with staged(out) as tmp:
        torch.export.save(program, tmp / "model.pt2", extra_files={EP_META_FILE: meta.to_json()})
        report = check(TorchRunner.from_exported_program(tmp / "model.pt2"))
        os.replace(tmp / "model.pt2", out)
    return report


def replace_pair(tmp_dir: Path, out: Path) -> None:
    """Move ``tmp_dir/model.xml`` + ``model.bin`` onto ``out`` (.xml) and its .bin, the .bin first so a reader never
    sees an .xml without its weights; on failure neither is left half-moved."""
    bin_out = out.with_suffix(".bin")
    os.replace(tmp_dir / "model.bin", bin_out)
    try:
        os.replace(tmp_dir / "model.xml", out)
    except BaseException:
        bin_out.unlink(missing_ok=True)
        raise


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
