"""DeepLabV3 on a MobileNet backbone ("Mobile DeepLabv3"), with or without ASPP.

DeepLabV3 (arXiv:1706.05587, section 3.3): Atrous Spatial Pyramid Pooling = a 1x1 conv, three 3x3 atrous convs
and an image-level pooling branch, concatenated and projected to 256 channels, then a 3x3 conv and the classifier.
Section 6.3 and Table 7 of MobileNetV2 (arXiv:1801.04381): on MobileNets the ASPP atrous branches cost much and
give little; ``aspp=False`` keeps only the 1x1 and image-pooling branches. The image-pooling branch is a global
average, so any input size works.

Layout and defaults (atrous rates 12/24/36 at output stride 16, optional FCN auxiliary head on the stride-8 stage
entry) follow torchvision's ``deeplabv3_mobilenet_v3_large``, whose checkpoints this model loads.
``num_classes`` counts the background (class 0). ``forward`` returns logits ``(B, num_classes, H, W)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..model import LAST, Location, MobileNet, Select
from ..registry import register_model
from .backbones import build_backbone, channels_of, torchvision_segmenter_map

AUX_TAP = Select(Location.BLOCK, 8)  # the FCN aux head's map (torchvision's stage_indices[-4])

PAPER = "DeepLabV3: arXiv:1706.05587; Mobile DeepLabv3: section 6.3 and Table 7 of arXiv:1801.04381"


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, 1x1 conv + BN + ReLU, broadcast back to the map size."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Section 3.3 of arXiv:1706.05587: parallel branches, concatenated, projected to ``out_channels``."""

    def __init__(self, cin: int, atrous_rates: tuple[int, ...], out_channels: int = 256):
        super().__init__()
        branches = [nn.Sequential(*_conv_bn_relu(cin, out_channels))]
        branches += [nn.Sequential(*_conv_bn_relu(cin, out_channels, 3, r)) for r in atrous_rates]
        branches.append(ASPPPooling(cin, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * out_channels, out_channels), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, then (``head_conv``: torchvision's extra 3x3 conv + BN + ReLU) the 1x1 classifier."""

    def __init__(self, cin: int, num_classes: int, atrous_rates: tuple[int, ...], head_conv: bool = True):
        conv = _conv_bn_relu(256, 256, 3) if head_conv else []
        super().__init__(ASPP(cin, atrous_rates), *conv, nn.Conv2d(256, num_classes, 1))


class FCNHead(nn.Sequential):
    """Auxiliary head of the training recipe (weight 0.5 on its loss): 3x3 conv to C/4, BN, ReLU, 1x1."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__(*_conv_bn_relu(cin, cin // 4, 3), nn.Dropout(0.1), nn.Conv2d(cin // 4, num_classes, 1))


class DeepLabV3(nn.Module):
    def __init__(self, backbone: MobileNet, num_classes: int, atrous_rates: tuple[int, ...] = (12, 24, 36),
                 aux_loss: bool = False, head_conv: bool = True):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes={num_classes}: segmentation needs the background plus at least one class")
        self.num_classes = num_classes
        self.features = backbone  # features_only: [last map] or [last map, aux map]
        channels = channels_of(backbone)
        self.head = DeepLabHead(channels[0], num_classes, tuple(atrous_rates), head_conv)
        self.aux_head = FCNHead(channels[1], num_classes) if aux_loss else None

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        feats = self.features(x)
        size = x.shape[-2:]
        out = F.interpolate(self.head(feats[0]), size=size, mode="bilinear", align_corners=False)
        aux = None
        if self.aux_head is not None and self.training:
            aux = F.interpolate(self.aux_head(feats[1]), size=size, mode="bilinear", align_corners=False)
        return out, aux

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_aux(x)[0]

    def foreign_module_map(self, source_keys) -> dict[str, str] | None:
        """Module map onto torchvision's ``deeplabv3_mobilenet_v3_large`` (``backbone.N`` over its ``features``,
        ``classifier``); used by :func:`mobilenets.load_weights` (:class:`~mobilenets.weights.ForeignWeights`). None
        for our own checkpoints."""
        return torchvision_segmenter_map(self, source_keys, {"head.": "classifier.", "aux_head.": "aux_classifier."})


@register_model("deeplabv3", task="segment", default_resolution=512, paper=PAPER,
                summary="DeepLabV3 on any zoo backbone (backbone=..., aspp=True|False)")
@register_model("deeplabv3_mobilenet_v3_large", task="segment", default_resolution=512, paper=PAPER,
                summary="DeepLabV3 MobileNetV3-Large with aux head (torchvision's deeplabv3_mobilenet_v3_large)",
                backbone="mobilenet_v3_large", aux_loss=True)
@register_model("deeplabv3_mobilenet_v2", task="segment", default_resolution=512, paper=PAPER,
                summary="Mobile DeepLabv3: MobileNetV2 to its 320-channel layer, no ASPP (Table 7 of "
                        "arXiv:1801.04381, 2.11 M parameters)",
                backbone="mobilenet_v2", aspp=False, final_conv=False, head_conv=False)
def deeplabv3(*, backbone: str = "mobilenet_v3_large", num_classes: int = 21, width_multiplier: float = 1.0,
              output_stride: int = 16, reduced_tail: bool | None = None, in_chans: int = 3,
              norm_layer: str | None = None, dilation_policy: str = "torchvision", aspp: bool = True,
              atrous_rates: tuple[int, ...] = (12, 24, 36), aux_loss: bool = False, final_conv: bool = True,
              head_conv: bool = True) -> DeepLabV3:
    """DeepLabV3 on ``backbone``.

    ``aspp=False`` keeps only the 1x1 and image-pooling branches; ``final_conv=False`` reads the last stage instead
    of the backbone's final 1x1 conv (DeepLab's MobileNetV2 feature extractor); ``head_conv=False`` drops
    torchvision's 3x3 conv between ASPP and the classifier. All three off is Mobile DeepLabv3 of MobileNetV2.
    """
    taps = [LAST if final_conv else Select(Location.STAGE)] + ([AUX_TAP] if aux_loss else [])
    body = build_backbone(backbone, taps, width_multiplier=width_multiplier, reduced_tail=reduced_tail,
                          in_chans=in_chans, norm_layer=norm_layer, output_stride=output_stride,
                          dilation_policy=dilation_policy)
    return DeepLabV3(body, num_classes, tuple(atrous_rates) if aspp else (), aux_loss, head_conv)
