"""SSD default boxes (anchors), box coding and anchor-to-object matching.

Default boxes follow section 2.2 of the SSD paper (arXiv:1512.02325): feature map ``k`` of ``m`` gets the scale
``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)`` (eq. 4), one box per aspect ratio ``a`` with
``w = s_k sqrt(a)``, ``h = s_k / sqrt(a)`` and an extra square box of scale ``sqrt(s_k s_{k+1})``. Centres sit at
``((i + 0.5) / |f_k|, (j + 0.5) / |f_k|)`` of the *real* feature-map size, so any input size works. The layout
(order of boxes, clipping of the relative sizes to [0, 1]) is the one of torchvision's ``DefaultBoxGenerator``,
which is what its SSDLite checkpoint was trained with.

Box coding is the Faster R-CNN parameterisation used by SSD (eq. 2) with the variances (10, 10, 5, 5).

Why not torchvision's own classes: ``DefaultBoxGenerator.forward`` takes an ``ImageList`` (torchvision's detection
transform) and returns one anchor tensor per image, and ``BoxCoder`` lives in the private
``torchvision.models.detection._utils``; our detector needs one (A, 4) tensor per input size inside an exported
graph, from a batch tensor. tests/heads/test_heads.py pins the anchors and the box coding equal to torchvision's.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou


class DefaultBoxes:
    """Anchors of SSD in pixel ``(x1, y1, x2, y2)`` for a list of feature-map sizes and an image size."""

    def __init__(self, aspect_ratios: list[list[float]], min_ratio: float = 0.2, max_ratio: float = 0.95,
                 clip: bool = True):
        m = len(aspect_ratios)
        if m < 1:
            raise ValueError("need at least one feature map")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.clip = clip
        if m > 1:  # eq. 4, plus s_{m+1} = 1 for the extra square box of the last map
            self.scales = [min_ratio + (max_ratio - min_ratio) * k / (m - 1.0) for k in range(m)] + [1.0]
        else:
            self.scales = [min_ratio, max_ratio]
        self._wh = []  # per map: (boxes per location, 2) relative (w, h)
        for k in range(m):
            s_k = self.scales[k]
            s_extra = math.sqrt(s_k * self.scales[k + 1])
            pairs = [[s_k, s_k], [s_extra, s_extra]]
            for a in self.aspect_ratios[k]:
                pairs += [[s_k * math.sqrt(a), s_k / math.sqrt(a)], [s_k / math.sqrt(a), s_k * math.sqrt(a)]]
            wh = torch.tensor(pairs, dtype=torch.float32)
            self._wh.append(wh.clamp(0, 1) if clip else wh)

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def __call__(self, feature_sizes: list[tuple[int, int]], image_size: tuple[int, int],
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """(A, 4) anchors; A = sum over maps of H_k * W_k * boxes per location, in the heads' output order."""
        if len(feature_sizes) != len(self._wh):
            raise ValueError(f"{len(feature_sizes)} feature maps for {len(self._wh)} anchor settings")
        out = []
        for (fh, fw), wh in zip(feature_sizes, self._wh):
            cx = (torch.arange(fw, device=device, dtype=dtype) + 0.5) / fw
            cy = (torch.arange(fh, device=device, dtype=dtype) + 0.5) / fh
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            centres = torch.stack((cx.reshape(-1), cy.reshape(-1)), dim=-1)  # (H*W, 2)
            n = wh.shape[0]
            centres = centres[:, None, :].expand(-1, n, -1)  # (H*W, n, 2): location-major, like the heads
            sizes = wh.to(device=device, dtype=dtype)[None].expand(centres.shape[0], -1, -1)
            out.append(torch.cat((centres, sizes), dim=-1).reshape(-1, 4))
        cxcywh = torch.cat(out)
        scale = torch.tensor([image_size[1], image_size[0]], device=device, dtype=dtype)
        return torch.cat(((cxcywh[:, :2] - 0.5 * cxcywh[:, 2:]) * scale,
                          (cxcywh[:, :2] + 0.5 * cxcywh[:, 2:]) * scale), dim=-1)

    def __repr__(self) -> str:
        return f"DefaultBoxes(aspect_ratios={self.aspect_ratios}, scales={[round(s, 4) for s in self.scales]})"


class BoxCoder:
    """SSD box offsets (eq. 2 of arXiv:1512.02325) with the usual variances 1/10 (centre) and 1/5 (size)."""

    def __init__(self, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 clip_log_size: float = math.log(1000.0 / 16)):
        self.weights = weights
        self.clip_log_size = clip_log_size  # keeps exp() finite for untrained regressors

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """(N, 4) xyxy objects relative to (N, 4) xyxy anchors -> (N, 4) offsets."""
        wx, wy, ww, wh = self.weights
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
        return torch.stack((wx * (bx - ax) / aw, wy * (by - ay) / ah,
                            ww * torch.log(bw / aw), wh * torch.log(bh / ah)), dim=-1)

    def decode(self, codes: Tensor, anchors: Tensor) -> Tensor:
        """(..., A, 4) offsets and (A, 4) xyxy anchors -> (..., A, 4) xyxy boxes."""
        wx, wy, ww, wh = self.weights
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
        cx = codes[..., 0] / wx * aw + ax
        cy = codes[..., 1] / wy * ah + ay
        w = torch.exp((codes[..., 2] / ww).clamp(max=self.clip_log_size)) * aw
        h = torch.exp((codes[..., 3] / wh).clamp(max=self.clip_log_size)) * ah
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def match_anchors(boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Index of the object each anchor is assigned to, or -1 for background (SSD section 2.2, "matching").

    Every object first takes the anchor it overlaps most (so no object is left without one), then every anchor
    with IoU >= ``iou_threshold`` to some object takes its best object.
    """
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    if boxes.numel() == 0:
        return matched
    iou = box_iou(boxes, anchors)  # (G, A)
    best_iou, best_obj = iou.max(dim=0)
    matched = torch.where(best_iou >= iou_threshold, best_obj, matched)
    matched[iou.argmax(dim=1)] = torch.arange(boxes.shape[0], device=anchors.device)
    return matched
