"""``--precision fp32|bf16|fp16``: the training step's forward under autocast, and fp16's gradient scaler.

Weights, optimizer state, BN statistics and evaluation stay fp32; only the forward (and so the backward) of the
training step runs in the lower precision, where autocast's op lists put it (convolutions and matrix products;
reductions, norms and losses stay fp32, and the loss is returned in fp32). fp16 needs a gradient scaler (its
exponent range underflows small gradients); its state goes into ``state.pt`` so that ``--resume`` stays exact.
bf16 has fp32's exponent range and needs none.

On the CPUs here fp32 is the fast choice (BENCHMARKS.md: bf16 autocast trained slower on the AVX-512 BF16 EPYC and
on the AMX Xeon); bf16 / fp16 are for GPUs, where they are 2-3x the images per second.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def autocast(precision: str, device: torch.device):
    """The context the training step's forward runs in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's dynamic loss scaler (``None`` for fp32 and bf16)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
