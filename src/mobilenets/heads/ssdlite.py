"""SSDLite: SSD with depthwise separable prediction layers on a MobileNet backbone.

Section 6.2 of MobileNetV2 (arXiv:1801.04381): every regular conv of the SSD prediction layers becomes a depthwise
separable one; the first map is the expansion of the first stride-32 block (output stride 16), the second the last
layer of the backbone (output stride 32), followed by four extra blocks that halve the resolution.
Section 6.3 of MobileNetV3 (arXiv:1905.02244): same attachment points; "reduced tail" halves the channels of the
last stage (``create_model(..., reduced_tail=True)``, Table 6).

Layout, initialisation and post-processing follow torchvision's ``ssdlite320_mobilenet_v3_large`` so that its
checkpoints load with :func:`mobilenets.load_weights` (see :meth:`SSDLite.foreign_module_map`) and give the same
detections.

Classes: ``num_classes`` counts the background, which is class 0 (torchvision's convention: 91 for COCO).

Input: a normalised batch ``(B, C, H, W)`` of any size (SSDLite320 expects ``(x - 0.5) / 0.5`` of [0, 1] images at
320x320). ``forward`` returns the raw head outputs and the anchors of this input size; :meth:`SSDLite.loss`
and :meth:`SSDLite.postprocess` turn them into the training loss or the final detections.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from ..errors import UserError
from ..model import LAST, Location, MobileNet, Select
from ..registry import register_model
from .anchors import BoxCoder, DefaultBoxes, match_anchors
from .backbones import build_backbone, channels_of, leaf_modules, rename_prefixes, torchvision_backbone_map
from .detection import Detector

# The two backbone maps SSDLite reads: the expansion of the first stride-32 block (at stride 16) and the last map;
# MobileNetV1 has no expansion and gives its stride-16 output (conv11 of the SSD-MobileNet reference).
TAPS = (Select(Location.EXPANSION, 16, fallback=Select(Location.STAGE, 16)), LAST)

PAPER = "SSDLite: section 6.2 of arXiv:1801.04381; Table 6 and section 6.3 of arXiv:1905.02244"

# BN of the SSDLite layers in torchvision's reference (TF's decay 0.97 == PyTorch momentum 0.03).
SSDLITE_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


class PredictionBlock(nn.Sequential):
    """Depthwise separable replacement of SSD's 3x3 prediction conv: 3x3 depthwise + BN + ReLU6, then 1x1."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer=SSDLITE_NORM):
        super().__init__(
            Conv2dNormActivation(in_channels, in_channels, 3, groups=in_channels, norm_layer=norm_layer,
                                 activation_layer=nn.ReLU6),
            nn.Conv2d(in_channels, out_channels, 1),
        )


class ExtraBlock(nn.Sequential):
    """SSDLite extra layer: 1x1 to half the channels, 3x3 depthwise stride 2, 1x1 to the output channels."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer=SSDLITE_NORM):
        mid = out_channels // 2
        super().__init__(
            Conv2dNormActivation(in_channels, mid, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
            Conv2dNormActivation(mid, mid, 3, stride=2, groups=mid, norm_layer=norm_layer,
                                 activation_layer=nn.ReLU6),
            Conv2dNormActivation(mid, out_channels, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        )


class PredictionHead(nn.Module):
    """One prediction block per feature map; outputs concatenated to ``(B, anchors, columns)``."""

    def __init__(self, in_channels: list[int], anchors_per_location: list[int], columns: int,
                 norm_layer=SSDLITE_NORM):
        super().__init__()
        self.columns = columns
        self.blocks = nn.ModuleList(PredictionBlock(c, a * columns, norm_layer)
                                    for c, a in zip(in_channels, anchors_per_location))

    def forward(self, features: list[Tensor]) -> Tensor:
        out = []
        for block, f in zip(self.blocks, features):
            y = block(f)  # (B, A*K, H, W)
            b, _, h, w = y.shape
            # -> (B, H, W, A, K) -> (B, H*W*A, K): location-major, the order of DefaultBoxes
            out.append(y.view(b, -1, self.columns, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, self.columns))
        return torch.cat(out, dim=1)


def _normal_init(module: nn.Module, std: float = 0.03) -> None:
    # torchvision's SSDLite initialisation of the layers trained from scratch.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SSDLite(Detector):
    """SSDLite detector: backbone taps + extra blocks + depthwise separable class/box heads."""

    def __init__(self, backbone: MobileNet, num_classes: int, *, extra_channels=(512, 256, 256, 128),
                 aspect_ratios=(2.0, 3.0), min_ratio: float = 0.2, max_ratio: float = 0.95,
                 score_thresh: float = 0.001, nms_thresh: float = 0.55, detections_per_img: int = 300,
                 topk_candidates: int = 300, iou_threshold: float = 0.5, neg_to_pos_ratio: float = 3.0):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes={num_classes}: a detector needs the background plus at least one class")
        self.num_classes = num_classes
        self.features = backbone  # features_only, returning the TAPS maps
        channels = channels_of(backbone)
        extras = []
        for c in extra_channels:
            extras.append(ExtraBlock(channels[-1], c))
            channels.append(c)
        self.extras = nn.ModuleList(extras)
        self.anchor_generator = DefaultBoxes([list(aspect_ratios)] * len(channels), min_ratio, max_ratio)
        per_loc = self.anchor_generator.num_anchors_per_location()
        self.cls_head = PredictionHead(channels, per_loc, num_classes)
        self.box_head = PredictionHead(channels, per_loc, 4)
        _normal_init(self.extras)
        _normal_init(self.cls_head)
        _normal_init(self.box_head)
        self.box_coder = BoxCoder()
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.iou_threshold = iou_threshold
        self.neg_to_pos_ratio = neg_to_pos_ratio

    # -- network ------------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The six maps the heads read: two backbone taps then one per extra block."""
        feats = list(self.features(x))
        y = feats[-1]
        for block in self.extras:
            y = block(y)
            feats.append(y)
        return feats

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.forward_features(x)
        anchors = self.anchor_generator([(f.shape[-2], f.shape[-1]) for f in feats], (x.shape[-2], x.shape[-1]),
                                        device=x.device, dtype=x.dtype)
        return {"cls_logits": self.cls_head(feats),  # (B, A, num_classes)
                "bbox_regression": self.box_head(feats),  # (B, A, 4)
                "anchors": anchors}  # (A, 4) xyxy pixels of this input

    # -- training ------------------------------------------------------------------------------------------
    def loss(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """SSD multibox loss (eq. 1 of arXiv:1512.02325) with hard negative mining at 3:1.

        ``targets[i]`` holds ``boxes`` (N, 4) xyxy in input pixels and ``labels`` (N,) in 1..num_classes-1. Both
        terms are divided by the number of matched anchors (at least 1). An image without objects still trains
        the classifier: it contributes its ``neg_to_pos_ratio`` hardest negatives.
        """
        cls_logits, box_reg, anchors = outputs["cls_logits"], outputs["bbox_regression"], outputs["anchors"]
        cls_targets: list[Tensor] | Tensor
        cls_targets, box_losses, num_pos = [], [], 0
        for logits_i, reg_i, target in zip(cls_logits, box_reg, targets):
            boxes, labels = target["boxes"].to(anchors), target["labels"]
            matched = match_anchors(boxes, anchors, self.iou_threshold)
            fg = torch.where(matched >= 0)[0]
            num_pos += fg.numel()
            encoded = self.box_coder.encode(boxes[matched[fg]], anchors[fg])
            box_losses.append(F.smooth_l1_loss(reg_i[fg], encoded, reduction="sum"))
            t = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
            t[fg] = labels[matched[fg]].to(torch.int64)
            cls_targets.append(t)
        cls_targets = torch.stack(cls_targets)  # (B, A)
        cls_loss = F.cross_entropy(cls_logits.reshape(-1, self.num_classes), cls_targets.reshape(-1),
                                   reduction="none").view_as(cls_targets)
        foreground = cls_targets > 0
        num_neg = (self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)).clamp(min=self.neg_to_pos_ratio)
        negative_loss = cls_loss.detach().masked_fill(foreground, -float("inf"))
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)  # rank of each anchor's loss
        background = (rank < num_neg) & ~foreground
        n = max(1, num_pos)
        return {"bbox_regression": torch.stack(box_losses).sum() / n,
                "classification": (cls_loss[foreground].sum() + cls_loss[background].sum()) / n}

    # -- inference -----------------------------------------------------------------------------------------
    def decode(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Boxes (B, A, 4) xyxy and class probabilities (B, A, num_classes): everything but NMS."""
        boxes = self.box_coder.decode(outputs["bbox_regression"], outputs["anchors"])
        return boxes, F.softmax(outputs["cls_logits"], dim=-1)

    # -- weights -------------------------------------------------------------------------------------------
    def foreign_module_map(self, source_keys) -> dict[str, str] | None:
        """Module map onto torchvision's ``ssdlite320_mobilenet_v3_large`` (used by :func:`mobilenets.load_weights`,
        :class:`~mobilenets.weights.ForeignWeights`; None for our own checkpoints).

        torchvision cuts its backbone in two at the expansion of the first stride-32 block ``c4``:
        ``backbone.features.0`` = blocks ``0..c4-1`` + that block's expansion conv, ``backbone.features.1`` = the
        rest of block ``c4`` (its Sequential keeps the original indices) + the following blocks.
        """
        keys = list(source_keys)
        if not any(k.startswith("backbone.features.") for k in keys):
            return None
        c4 = max(int(k.split(".")[3]) for k in keys if k.startswith("backbone.features.0."))
        mapping = {}
        for ours, theirs in torchvision_backbone_map(self.features, "features").items():
            _, index, rest = theirs.split(".", 2)  # "features", block index, "block.j.tail" / "0" ...
            i = int(index)
            if i < c4:
                mapping[f"features.{ours}"] = f"backbone.features.0.{i}.{rest}"
            elif i > c4:
                mapping[f"features.{ours}"] = f"backbone.features.1.{i - c4}.{rest}"
            else:
                _, j, *tail = rest.split(".")  # "block", layer index within the block, sub-module
                where = f"backbone.features.0.{c4}" if j == "0" else f"backbone.features.1.0.{j}"
                mapping[f"features.{ours}"] = ".".join([where, *tail])
        paths = leaf_modules(self.extras, "extras.") + leaf_modules(self.cls_head, "cls_head.") \
            + leaf_modules(self.box_head, "box_head.")
        mapping.update(rename_prefixes(paths, {"extras.": "backbone.extra.",
                                               "cls_head.blocks.": "head.classification_head.module_list.",
                                               "box_head.blocks.": "head.regression_head.module_list."}))
        return mapping


@register_model("ssdlite", task="detect", default_resolution=320, paper=PAPER,
                summary="SSDLite detector on any zoo backbone (backbone=...)")
@register_model("ssdlite_mobilenet_v3_large", task="detect", default_resolution=320, paper=PAPER,
                summary="SSDLite320 MobileNetV3-Large, reduced tail (torchvision's ssdlite320_mobilenet_v3_large)",
                backbone="mobilenet_v3_large")
@register_model("ssdlite_mobilenet_v3_small", task="detect", default_resolution=320, paper=PAPER,
                summary="SSDLite MobileNetV3-Small, reduced tail (Table 6 of arXiv:1905.02244)",
                backbone="mobilenet_v3_small")
@register_model("ssdlite_mobilenet_v2", task="detect", default_resolution=320, paper=PAPER,
                summary="SSDLite MobileNetV2 (Table 6 of arXiv:1801.04381)", backbone="mobilenet_v2")
def ssdlite(*, backbone: str = "mobilenet_v3_large", num_classes: int = 91, width_multiplier: float = 1.0,
            reduced_tail: bool | None = None, in_chans: int = 3, norm_layer: str | None = None,
            min_ratio: float = 0.2, max_ratio: float = 0.95, score_thresh: float = 0.001,
            nms_thresh: float = 0.55, detections_per_img: int = 300, topk_candidates: int = 300) -> SSDLite:
    """SSDLite on the zoo backbone ``backbone``; ``num_classes`` includes the background.

    ``reduced_tail`` (V3 only) defaults to True, the paper's detection setting (Table 6 of arXiv:1905.02244) and
    torchvision's when the backbone is not ImageNet-pretrained.
    """
    body = build_backbone(backbone, TAPS, width_multiplier=width_multiplier, reduced_tail=reduced_tail,
                          default_reduced_tail=True, in_chans=in_chans, norm_layer=norm_layer, output_stride=32)
    extra = tuple(max(16, int(c * width_multiplier)) for c in (512, 256, 256, 128))
    return SSDLite(body, num_classes, extra_channels=extra, min_ratio=min_ratio, max_ratio=max_ratio,
                   score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                   topk_candidates=topk_candidates)
