"""ONNX Runtime's mobile format, ``.ort``: our ONNX export (fp32, or ONNX Runtime QDQ int8) converted by
``onnxruntime.tools.convert_onnx_models_to_ort``, with the required-operators config beside it.

* The ``.ort`` file is what a minimal, reduced-operator ONNX Runtime build loads (Android / iOS / embedded); the
  full ``onnxruntime`` package loads it too, which is how the parity check runs here
  (:class:`.onnx.OnnxRuntimeRunner`).
* ``NAME.required_operators.config`` lists the operators the model uses, the input of such a build
  (``build.sh --include_ops_by_config NAME.required_operators.config``).
* Graph optimizations are applied at conversion ("Fixed" style, all levels) for :data:`TARGET_PLATFORM` (arm,
  the phones): no x86-only NCHWc kernels in the file. The target is stored in the file
  (``mobilenets.ort_target``).
* Metadata: the ONNX ``metadata_props`` carry over into the ``.ort`` file (the ONNX Runtime session's
  ``custom_metadata_map``), so it holds the same keys as an ONNX export.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from ...errors import UserError
from ..files import failing_as, require
from ..keys import PROPERTY_PREFIX
from .base import COMMON_OPTIONS, INT8_OPTIONS, ExportJob, Writer
from .onnx import OnnxRuntimeRunner, quantized

TARGET_PLATFORM = "arm"
CONFIG_SUFFIX = ".required_operators.config"
TARGET_KEY = f"{PROPERTY_PREFIX}ort_target"
NEEDS = ("onnx", "onnxruntime")
OPTIONS = (*COMMON_OPTIONS, "dynamic_batch", *INT8_OPTIONS, "int8_weights")


def check(int8: bool) -> None:
    for module in NEEDS:
        require(module, what="fmt='ort'")


def writer(job: ExportJob) -> Writer:
    """The ``.ort`` of ``job``'s ONNX export (quantized first for int8)."""
    import onnx

    from ..onnx_graph import set_properties

    proto = quantized(job)  # fp32, a quantization-aware model's int8 as trained, or ONNX Runtime QDQ
    job.details.update({"ort_target": TARGET_PLATFORM, "optimization": "Fixed, all levels"})

    def save(file: Path, properties: dict[str, str]) -> None:
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

        model = onnx.ModelProto()
        model.CopyFrom(proto)
        set_properties(model, {**properties, TARGET_KEY: TARGET_PLATFORM})
        with tempfile.TemporaryDirectory(prefix=".ort-", dir=file.parent) as tmp:
            source = Path(tmp) / f"{file.stem}.onnx"
            onnx.save(model, source)
            with failing_as(f"onnxruntime could not convert {job.meta.model} to the ORT format"), \
                    contextlib.redirect_stdout(io.StringIO()):  # the converter prints its progress
                convert_onnx_models_to_ort(source, Path(tmp), [OptimizationStyle.Fixed],
                                           target_platform=TARGET_PLATFORM)
            written = Path(tmp) / f"{file.stem}.ort"
            config = Path(tmp) / f"{file.stem}{CONFIG_SUFFIX}"
            if not written.is_file() or not config.is_file():
                raise UserError(f"onnxruntime wrote no ORT file for {job.meta.model}; check the onnxruntime "
                                "version (needs >= 1.18)")
            # The config names the temporary file it was made from; name the model file instead.
            lines = [f"# - {(job.out or file).name}" if line.startswith("# - ") else line
                     for line in config.read_text().splitlines()]
            config.write_text("\n".join(lines) + "\n")
            os.replace(config, file.with_suffix(CONFIG_SUFFIX))
            os.replace(written, file)

    return Writer(save=save, open=OnnxRuntimeRunner)


def required_operators(path: Path) -> list[str]:
    """The operators a ``.ort`` file's config lists, ``domain;opset;op`` per entry (for reports and tests)."""
    config = Path(path).with_suffix(CONFIG_SUFFIX)
    ops = []
    for line in config.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, opset, names = line.split(";")
            ops += [f"{domain};{opset};{name}" for name in names.split(",")]
    return ops
