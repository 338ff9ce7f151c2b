"""What ``mobilenets bench`` measures: one :class:`PathSpec` per (model, who, backend, batch), the files it
runs (our exports and the peers') and :func:`load`, which a worker process calls to get the callable to time.

* ``ours``: ``mobilenets.create_model(name)`` exported by :func:`~mobilenets.deploy.export.export_model`
  (BN folded, GlobalAveragePool, parity-checked) and run by the format table's runners
  (:func:`~mobilenets.deploy.open.open_runner`), plus eager PyTorch (batch 1 only: at batch 32 one eager run
  takes seconds on a busy machine).
* ``peer``: torchvision's ``mobilenet_v2`` / ``mobilenet_v3_large`` / ``mobilenet_v3_small`` and timm's
  ``mobilenetv1_100``, ``mobilenetv2_140``, ``mobilenetv4_*`` and ``mobilenetv5_*`` (built by timm, random init:
  nothing is downloaded), exported with plain ``torch.onnx.export`` (its defaults: the dynamo exporter, opset 18)
  and run with the runtimes' default settings apart from the thread count (and fp32 precision for OpenVINO,
  whose default on AVX-512 BF16 CPUs is bf16), plus eager PyTorch.
* ``peer+tuned`` (``tuned_peers=True``): the reference ONNX files run by our runners. Our runner settings are
  the runtimes' defaults made explicit, so this is an A/A control: its spread against ``peer`` is the noise.
* ``ours int8`` (``int8=True``): NNCF int8 on OpenVINO and ONNX Runtime QDQ int8 (batch 1).
* Backends that run a format of their own (ExecuTorch's ``.pte``; any :class:`~mobilenets.deploy.formats.Backend`
  with a ``checkpoint_format`` other than ONNX): ``ours`` is our model exported to that format by the same
  exporter (parity-checked), run by the backend's runner (:func:`~mobilenets.deploy.open.open_runner`), and
  ``ours int8`` its int8 export where the format has one (ExecuTorch: PT2E with the XNNPACK quantizer). They have
  no peer file: the peers are the reference models' ONNX exports.

Random weights: latency does not depend on the values (no sparsity is exploited by these runtimes).
Every model and its peer run at the model's native resolution (the registry's: 224 for V1-V3 and V4 Conv-S, 256
for V4 Conv-M / Hybrid-M, 384 for V4 Conv-L / Hybrid-L) unless ``run_bench(resolution=...)`` sets one for all.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError
from ..formats import BACKEND, FORMAT, ONNX_RUNTIMES, SUFFIX, installed

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")  # the default set
# Benchmark names that are a registry model built with other options (a published width): name -> (model, options)
VARIANTS = {"mobilenet_v2_140": ("mobilenet_v2", {"width_multiplier": 1.4})}
PEERS = {"mobilenet_v1": ("timm", "mobilenetv1_100"), "mobilenet_v2": ("torchvision", "mobilenet_v2"),
         "mobilenet_v2_140": ("timm", "mobilenetv2_140"),
         "mobilenet_v3_large": ("torchvision", "mobilenet_v3_large"),
         "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small"),
         **{f"mobilenet_v4_{v}": ("timm", f"mobilenetv4_{v}") for v in (
             "conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large")},
         **{f"mobilenet_v5_{v}": ("timm", f"mobilenetv5_{v}") for v in ("300m", "300m_enc", "base")}}
INPUT_SIZE = (3, 224, 224)  # ImageNet-sized inputs: V1-V3 as published


def ours(name: str) -> tuple[str, dict]:
    """(registry model, build options) of a benchmark model name."""
    return VARIANTS.get(name, (name, {}))


def input_size(name: str, resolution: int | None = None) -> tuple[int, int, int]:
    """The input of benchmark model ``name``: ``resolution``, or its native one (the registry's)."""
    from ...registry import get_entry
    size = resolution or get_entry(ours(name)[0]).default_resolution
    return (3, size, size)


@dataclass
class PathSpec:
    """One measured path: what the worker process loads."""

    model: str  # our registry name (the row group)
    who: str  # "ours", "peer", "peer+tuned", "ours int8"
    backend: str
    batch: int
    threads: int
    file: str | None = None  # exported file (None: eager torch)
    source: tuple[str, str] | None = None  # ("mobilenets"|"torchvision"|"timm", name) for eager torch
    tuned: bool = True
    input_size: tuple[int, int, int] = INPUT_SIZE

    @property
    def label(self) -> str:
        return f"{self.who} {self.backend}"


def load(spec: PathSpec):
    """A callable running one batch for ``spec`` (called in the path's worker process)."""
    x = np.random.default_rng(0).standard_normal((spec.batch, *spec.input_size), dtype=np.float32)
    if spec.backend == "torch":
        import torch
        torch.set_num_threads(spec.threads)
        assert spec.source is not None, "an eager torch path names its source"
        model = build(*spec.source).eval()
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                model(xt)
        return run
    from ..open import open_runner

    # A peer's ONNX file on ONNX Runtime's default session settings (our OpenVINO settings are its defaults plus
    # fp32 and the thread count, so OpenVINO has no untuned variant).
    options = {"tuned": spec.tuned} if spec.backend == "onnxruntime" else {}
    assert spec.file is not None, "every path but eager torch runs a file"
    runner = open_runner(Path(spec.file), spec.backend, spec.threads, **options)
    return lambda: runner.run(x)


def build(library: str, name: str):
    if library == "mobilenets":
        from ...registry import create_model
        model, options = ours(name)
        return create_model(model, **options)
    if library == "torchvision":
        import torchvision
        return torchvision.models.get_model(name)
    import timm
    return timm.create_model(name)


def specs(name, batch, threads, backends, folder: Path, tuned_peers, int8, calibration,
          resolution: int | None = None) -> list[PathSpec]:
    """Every path of one model at one batch size (exporting the files they run into ``folder``)."""
    out = []
    size = input_size(name, resolution)
    onnx_backends = [b for b in backends if b in ONNX_RUNTIMES]
    own_format = [b for b in backends if b != "torch" and b not in ONNX_RUNTIMES]
    files = export_ours(name, batch, folder, int8, calibration, size) if onnx_backends else {}
    peer = export_peer(name, batch, folder, size) if onnx_backends else None
    if "torch" in backends and batch == 1:  # eager at batch 32 takes seconds a run: batch 1 says enough
        out.append(PathSpec(name, "ours", "torch", batch, threads, source=("mobilenets", name), input_size=size))
        out.append(PathSpec(name, "peer", "torch", batch, threads, source=PEERS[name], input_size=size))
    for b in onnx_backends:
        out.append(PathSpec(name, "ours", b, batch, threads, file=files["fp32"], input_size=size))
        out.append(PathSpec(name, "peer", b, batch, threads, file=peer, tuned=False, input_size=size))
        if tuned_peers:
            out.append(PathSpec(name, "peer+tuned", b, batch, threads, file=peer, input_size=size))
        if f"int8 {b}" in files:
            out.append(PathSpec(name, "ours int8", b, batch, threads, file=files[f"int8 {b}"], input_size=size))
    for b in own_format:
        try:
            own = export_own_format(name, batch, folder, b, int8, calibration, size)
        except UserError as e:  # a converter that cannot take this model: the other paths still run
            logging.getLogger(__name__).warning("skipping %s on %s: %s", name, b, e)
            continue
        for precision, file in own.items():
            who = "ours int8" if precision == "int8" else "ours"
            out.append(PathSpec(name, who, b, batch, threads, file=file, input_size=size))
    return out


def export_own_format(name: str, batch: int, folder: Path, backend: str, int8: bool, calibration: str | None,
                      size: tuple[int, int, int] = INPUT_SIZE) -> dict[str, str]:
    """Our model in ``backend``'s own format (e.g. ExecuTorch .pte), fp32 and, where the format has it, int8."""
    from ..source import meta_for

    fmt = BACKEND[backend].export_format
    model = build("mobilenets", name).eval()
    meta = meta_for(model, *ours(name), resolution=size[-1])
    files = {}
    out = folder / f"{name}_b{batch}{SUFFIX[fmt]}"
    _export_batch(model, meta, out, fmt, batch)
    files["fp32"] = str(out)
    if int8 and FORMAT[fmt].int8:
        out8 = folder / f"{name}_b{batch}_int8{SUFFIX[fmt]}"
        _export_batch(model, meta, out8, fmt, batch, int8=True, calibration=calibration)
        files["int8"] = str(out8)
    return files


def export_ours(name: str, batch: int, folder: Path, int8: bool, calibration: str | None,
                size: tuple[int, int, int] = INPUT_SIZE) -> dict[str, str]:
    from ..source import meta_for

    model = build("mobilenets", name).eval()
    meta = meta_for(model, *ours(name), resolution=size[-1])
    files = {}
    out = folder / f"{name}_b{batch}.onnx"
    _export_batch(model, meta, out, "onnx", batch)
    files["fp32"] = str(out)
    if int8:
        if installed("openvino") and installed("nncf"):
            xml = folder / f"{name}_b{batch}_int8.xml"
            _export_batch(model, meta, xml, "openvino", batch, int8=True, calibration=calibration)
            files["int8 openvino"] = str(xml)
        if installed("onnxruntime"):
            qdq = folder / f"{name}_b{batch}_int8.onnx"
            _export_batch(model, meta, qdq, "onnx", batch, int8=True, calibration=calibration)
            files["int8 onnxruntime"] = str(qdq)
    return files


def _export_batch(model, meta, out: Path, fmt: str, batch: int, int8: bool = False,
                  calibration: str | None = None) -> None:
    """Export at a fixed batch of ``batch`` (a fixed shape lets the runtimes plan every layer ahead). int8
    parity is reported, not enforced: the random-weight benchmark models have no meaningful top-1."""
    from ..export import export_model
    from ..options import ExportOptions

    options = ExportOptions(batch=batch, parity_n=max(batch, 4))
    if int8:
        options = options.replace(int8=True, calibration_data=calibration, min_agreement=0.0,
                                  calibration_n=max(64, batch * 4))
    export_model(model, meta, out, fmt, options)


def export_peer(name: str, batch: int, folder: Path, size: tuple[int, int, int] = INPUT_SIZE) -> str:
    """The reference model exported the plain way: ``torch.onnx.export`` with its defaults."""
    import torch
    library, peer = PEERS[name]
    model = build(library, peer).eval()
    out = folder / f"peer_{peer}_b{batch}.onnx"
    for logger in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    torch.onnx.export(model, (torch.zeros(batch, *size),), str(out), opset_version=18,
                      external_data=False, verbose=False)
    return str(out)
