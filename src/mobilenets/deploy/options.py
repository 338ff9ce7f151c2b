"""``ExportOptions``: what an export is asked for, one frozen record, and ``validate(fmt, options)``, the one place
that checks it against the format table (each :class:`~.formats.Format` row's ``options`` column lists the fields
it accepts, as Ultralytics' export table lists each format's arguments).

Messages name the fields as Python spells them (``batch=0 must be at least 1``); the CLI's flags carry the same
names (``--batch``, ``--int8-weights``), so one message fits both callers.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, fields

from ..errors import UserError
from .formats import FORMAT, FORMATS, Format
from .quantize import INT8_WEIGHTS


@dataclass(frozen=True)
class ExportOptions:
    """Everything an export takes besides the model and where it goes; every field's default is "not asked for".

    ``parity_n`` inputs (default 16 for fp32, 200 for int8, whose agreement is a fraction) are compared by the
    task; ``tolerance`` and ``min_agreement`` override the task's defaults. int8 calibrates on ``calibration_n``
    images of ``calibration_data`` (the training split) and checks parity on the same source (the test split)
    unless ``parity_data`` says otherwise. ``nhwc``: the file takes (N, H, W, C) images (LiteRT); the parity
    check feeds it the same images transposed, through its runner. ``int8_weights`` ("7bit", the default, or
    "8bit"): the weight range of the ONNX Runtime and NNCF quantizers (:mod:`.quantize`).
    """

    batch: int = 1
    dynamic_batch: bool = False
    parity_data: str | None = None
    parity_n: int | None = None
    tolerance: float | None = None
    min_agreement: float | None = None
    int8: bool = False
    calibration_data: str | None = None
    calibration_n: int = 300
    int8_weights: str | None = None
    nhwc: bool = False

    def asked(self) -> list[str]:
        """The fields set to something other than their default, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) != f.default]

    def replace(self, **changes) -> ExportOptions:
        return dataclasses.replace(self, **changes)


NAMES = tuple(f.name for f in fields(ExportOptions))
# What a Triton repository entry takes (:mod:`.triton`): its max_batch sets the batch, its int8 weights are 7-bit.
TRITON_OPTIONS = ("parity_data", "parity_n", "min_agreement", "int8", "calibration_data", "calibration_n")


def validate(fmt: str, options: ExportOptions, *, triton: bool = False) -> Format:
    """The format row of ``fmt`` once ``options`` fit it (and a Triton repository entry, with ``triton``); else
    one-line UserError naming the field."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format fmt={fmt!r}; use one of {', '.join(FORMATS)}")
    spec = FORMAT[fmt]
    for name in ("batch", "parity_n", "calibration_n"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UserError(f"{name}={value} must be at least 1")
    if options.int8_weights is not None and options.int8_weights not in INT8_WEIGHTS:
        raise UserError(f"int8_weights={options.int8_weights!r}: use {' or '.join(map(repr, INT8_WEIGHTS))}")
    if triton:
        refused = [name for name in options.asked() if name not in TRITON_OPTIONS]
        if refused:
            raise UserError(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to a Triton "
                            "repository (its backend sets the format, max_batch the batch, int8 weights are 7-bit); "
                            "drop them")
    refused = [name for name in options.asked() if name not in spec.options]
    if refused:
        name = refused[0]
        offered = ", ".join(f.name for f in FORMAT.values() if name in f.options)
        raise UserError(f"{name} is not available for fmt={fmt!r}{_why(spec, name)}; drop it"
                        + (f" or use a format that offers it ({offered})" if offered else ""))
    if options.int8_weights is not None and not options.int8:
        raise UserError("int8_weights is for int8=True; add int8 or drop it")
    if options.calibration_data is not None and not options.int8:
        raise UserError("calibration_data is only used with int8=True; add int8 or drop it")
    return spec


def _why(spec: Format, name: str) -> str:
    if name == "dynamic_batch":
        return " (the file has a fixed batch; pass batch=N)"
    if name == "nhwc":
        return " (its input is NCHW)"
    if name == "int8_weights" and spec.int8:
        return f" (its int8, {spec.int8}, does not saturate on any CPU and has no such setting)"
    return ""


def from_keywords(record, keywords: dict, caller: str, parameter: str = "options", stacklevel: int = 3,
                  cls: type = ExportOptions):
    """``record``, or the deprecated keyword arguments of ``caller`` mapped onto a ``cls`` record (with a
    DeprecationWarning naming them and ``parameter``, what replaces them); both at once is refused."""
    if not keywords:
        return record if record is not None else cls()
    names = [f.name for f in fields(cls)]
    unknown = [k for k in keywords if k not in names]
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {', '.join(unknown)}")
    if record is not None:
        raise TypeError(f"{caller}() takes {parameter}={cls.__name__}(...) or the deprecated keywords "
                        f"({', '.join(keywords)}), not both")
    warnings.warn(f"{caller}({', '.join(f'{k}=' for k in keywords)}...) is deprecated; pass "
                  f"{parameter}={cls.__name__}({', '.join(f'{k}=...' for k in keywords)})", DeprecationWarning,
                  stacklevel=stacklevel)
    return cls(**keywords)
