"""``--freeze backbone|none|STAGE``: fix the parameters *and* the BN statistics of the first part of a model.

- ``none``: everything trains;
- ``backbone``: stem, every stage and the final conv are frozen; the pooled head (V3's 1x1 head conv) and the
  classifier train;
- ``STAGE`` (an integer k): the stem and stages 0..k are frozen.

Frozen parts stay in eval mode during training (see :func:`keep_frozen_eval`), so their BN layers use and keep
their running statistics; ``requires_grad=False`` alone would still update those statistics.
"""
from __future__ import annotations

from torch import nn

from ..errors import UserError


def freeze(model: nn.Module, spec: str) -> list[nn.Module]:
    """Freeze the part of ``model`` that ``spec`` names; return the frozen sub-modules."""
    if spec == "none":
        return []
    stages = model.stages
    if spec == "backbone":
        parts = [model.stem, *stages, model.final_conv]
    else:
        try:
            k = int(spec)
        except ValueError:
            raise UserError(f"--freeze {spec!r}: use backbone, none or a stage index 0..{len(stages) - 1}") from None
        if not 0 <= k < len(stages):
            raise UserError(f"--freeze {k}: the model has stages 0..{len(stages) - 1}; use one of those, "
                            "backbone or none")
        parts = [model.stem, *stages[:k + 1]]
    for part in parts:
        part.requires_grad_(False)
    return parts


def keep_frozen_eval(parts: list[nn.Module]) -> None:
    """Call after ``model.train()``: frozen parts go back to eval mode (BN uses running statistics)."""
    for part in parts:
        part.eval()
