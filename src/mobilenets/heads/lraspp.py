"""LR-ASPP: the Lite Reduced Atrous Spatial Pyramid Pooling segmentation head of MobileNetV3.

Section 6.4 and Figure 10 of arXiv:1905.02244: on the last feature map (output stride 16, the last stage dilated),
a 1x1 conv + BN + ReLU branch is gated by a squeeze-and-excitation-like branch (global pooling, 1x1 conv,
sigmoid); the product is upsampled to the stride-8 map, classified, and added to a 1x1 classifier of the stride-8
features. Global average pooling replaces the paper's 49x49 pooling window, so any input size works (as in
torchvision's ``lraspp_mobilenet_v3_large``, whose checkpoints this model loads).

``num_classes`` counts the background (class 0). ``forward`` returns logits ``(B, num_classes, H, W)`` at the input
resolution.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..layers import norm_factory
from ..model import LAST, Location, MobileNet, Select
from ..registry import register_model
from .backbones import build_backbone, channels_of, torchvision_segmenter_map

# "low": the output of the block that takes the features to stride 8; "high": the last map (Figure 10 of
# arXiv:1905.02244; torchvision's stage_indices[-4] and [-1]).
TAPS = (Select(Location.BLOCK, 8), LAST)

PAPER = "LR-ASPP: section 6.4, Figure 10 and Table 7 of arXiv:1905.02244"


class LRASPPHead(nn.Module):
    """Figure 10 of arXiv:1905.02244, top to bottom."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128,
                 norm=nn.BatchNorm2d):
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                 norm(inter_channels), nn.ReLU(inplace=True))
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        x = self.cbr(high) * self.scale(high)  # (B, inter, H/16, W/16) gated by (B, inter, 1, 1)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)  # (B, classes, H/8, W/8)


class LRASPP(nn.Module):
    """Backbone (stride-8 stage entry + last map) -> LR-ASPP head -> bilinear upsampling to the input size."""

    def __init__(self, backbone: MobileNet, num_classes: int, inter_channels: int = 128, norm=nn.BatchNorm2d):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes={num_classes}: segmentation needs the background plus at least one class")
        self.num_classes = num_classes
        self.features = backbone  # features_only, returning the TAPS maps
        low, high = channels_of(backbone)
        self.head = LRASPPHead(low, high, num_classes, inter_channels, norm)

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.features(x)
        return F.interpolate(self.head(low, high), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self(x), None

    def foreign_module_map(self, source_keys) -> dict[str, str] | None:
        """Module map onto torchvision's ``lraspp_mobilenet_v3_large`` (``backbone.N`` over its ``features``,
        ``classifier``); used by :func:`mobilenets.load_weights` (:class:`~mobilenets.weights.ForeignWeights`). None
        for our own checkpoints."""
        return torchvision_segmenter_map(self, source_keys, {"head.": "classifier."})


@register_model("lraspp", task="segment", default_resolution=512, paper=PAPER,
                summary="LR-ASPP segmentation on any zoo backbone (backbone=...)")
@register_model("lraspp_mobilenet_v3_large", task="segment", default_resolution=512, paper=PAPER,
                summary="LR-ASPP MobileNetV3-Large (torchvision's lraspp_mobilenet_v3_large)",
                backbone="mobilenet_v3_large")
@register_model("lraspp_mobilenet_v3_small", task="segment", default_resolution=512, paper=PAPER,
                summary="LR-ASPP MobileNetV3-Small (Table 7 of arXiv:1905.02244)", backbone="mobilenet_v3_small")
def lraspp(*, backbone: str = "mobilenet_v3_large", num_classes: int = 21, width_multiplier: float = 1.0,
           output_stride: int = 16, reduced_tail: bool | None = None, in_chans: int = 3,
           norm_layer: str | None = None, dilation_policy: str = "torchvision",
           inter_channels: int = 128) -> LRASPP:
    """LR-ASPP on ``backbone``; ``num_classes`` includes the background. ``output_stride`` 16 dilates the last stage.
    ``norm_layer`` applies to the head's BN too (torchvision's default BatchNorm2d when not given)."""
    body = build_backbone(backbone, TAPS, width_multiplier=width_multiplier, reduced_tail=reduced_tail,
                          in_chans=in_chans, norm_layer=norm_layer, output_stride=output_stride,
                          dilation_policy=dilation_policy)
    return LRASPP(body, num_classes, inter_channels, norm_factory(norm_layer) if norm_layer else nn.BatchNorm2d)
