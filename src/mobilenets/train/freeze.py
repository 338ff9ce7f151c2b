"""``--freeze backbone|none|STAGE``: fix the parameters *and* the BN statistics of the first part of a model.

The part counted is the model's MobileNet backbone (:func:`backbone_of`): the classifier itself, or the
``features_only`` network a detection / segmentation head reads (``model.features``).

- ``none``: everything trains;
- ``backbone``: the backbone's stem, every stage and its final conv (V5: and its fusion neck, the rest of the
  encoder) are frozen. What trains: a classifier's pooled head (V3's 1x1 head conv) and classifier; SSDLite's
  extra blocks and prediction heads; YOLO's neck (the depthwise PAN) and head; the LR-ASPP head; DeepLabV3's ASPP
  head and auxiliary head. A task backbone ends at its deepest tap, so it holds exactly what the head reads and
  nothing else;
- ``STAGE`` (an integer k): the stem and stages 0..k of the backbone are frozen.

Frozen parts stay in eval mode during training (see :func:`keep_frozen_eval`), so their BN layers use and keep
their running statistics; ``requires_grad=False`` alone would still update those statistics.
"""
from __future__ import annotations

from torch import nn

from ..errors import UserError
from ..model import MobileNet


def backbone_of(model: nn.Module) -> MobileNet:
    """The MobileNet that ``--freeze`` counts stages in: ``model`` itself, or the ``features_only`` backbone a
    task model keeps in ``model.features``."""
    if isinstance(model, MobileNet):
        return model
    features = getattr(model, "features", None)
    if isinstance(features, MobileNet):
        return features
    raise UserError(f"freeze: {type(model).__name__} has no MobileNet backbone to freeze; use freeze='none'")


def freeze(model: nn.Module, spec: str) -> list[nn.Module]:
    """Freeze the part of ``model`` that ``spec`` names; return the frozen sub-modules."""
    if spec == "none":
        return []
    body = backbone_of(model)
    stages = body.stages
    last = len(stages) - 1
    if spec == "backbone":  # V5: its fusion neck is part of the encoder (the Gemma 3n weights hold it)
        neck = getattr(body, "neck", None)
        parts = [body.stem, *stages, body.final_conv, *([neck] if isinstance(neck, nn.Module) else [])]
    else:
        try:
            k = int(spec)
        except ValueError:
            raise UserError(f"freeze={spec!r}: use 'backbone', 'none' or a stage index 0..{last}") from None
        if not 0 <= k <= last:
            raise UserError(f"freeze={spec!r}: the {'backbone' if body is not model else 'model'} has stages "
                            f"0..{last}; use one of those, 'backbone' or 'none'")
        parts = [body.stem, *stages[:k + 1]]
    for part in parts:
        part.requires_grad_(False)
    return parts


def keep_frozen_eval(parts: list[nn.Module]) -> None:
    """Call after ``model.train()``: frozen parts go back to eval mode (BN uses running statistics)."""
    for part in parts:
        part.eval()
