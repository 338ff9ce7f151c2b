"""YOLO: a YOLOv8-style detection head on a MobileNet backbone.

"YOLO" here means what it means to users today, YOLOv8's head (Ultralytics, 2023): anchor-free, decoupled class
and box branches on three levels (strides 8/16/32), boxes as distances to the four sides with each distance a
discrete distribution over ``reg_max`` bins (Distribution Focal Loss, arXiv:2006.04388), the task-aligned assigner
of TOOD (arXiv:2108.07755) with YOLOv8's settings (top-k 10, alpha 0.5, beta 6.0), BCE against its soft targets for
the classes and CIoU (arXiv:1911.08287) + DFL for the boxes, gains 7.5 / 1.5 / 0.5 (box / DFL / class, the order
:class:`YOLO` takes them in). Written from those papers and the behaviour they describe, not from Ultralytics'
code; the figures this project reports are its own.

Differences from YOLOv8, on purpose:
- the neck is a depthwise PAN (FPN top-down + PAN bottom-up, every conv depthwise separable), as PP-PicoDet,
  NanoDet-Plus and YOLOX-Nano use on mobile backbones, not YOLOv8's C2f blocks; its width follows the backbone
  (:func:`neck_width_for`);
- each branch of the head is one depthwise separable unit then a 1x1 output (YOLO11's class-branch form) rather
  than two full 3x3 convs;
- the class bias starts at a prior probability of 0.01 (RetinaNet / PicoDet) instead of YOLOv8's per-level
  object-density formula, which would need the input size at construction.

Taps: the last map of the stages at strides 8, 16 and 32 (``Select(Location.STAGE, r, deepest=True)``), the P3-P5
of YOLO necks. At stride 32 the stage output, not the FINAL 1x1 conv: that conv (V2's 1280, V3-Small's 288, V4's
960 channels) widens the map for the pooled classifier and the neck's 1x1 lateral would squeeze it straight back to
the neck width; skipping it keeps its parameters out (410 k on V2) and treats MobileNetV1, which has none, alike.
MobileNetV3 defaults to the reduced tail, the paper's detection setting (Table 6 of arXiv:1905.02244), as SSDLite.

Classes: ``num_classes`` counts a background class 0, as for SSDLite (the data and metric code use that
convention: labels 1..num_classes-1). The head predicts the ``num_classes - 1`` object classes with independent
sigmoids; :meth:`YOLO.decode` prepends a zero score column for the background, so the scores are ``(B, A,
num_classes)`` like SSDLite's and :func:`~mobilenets.heads.detection.postprocess_detections` (class-wise NMS,
labels 1..C-1) works unchanged.

End-to-end (``end_to_end=True``): YOLOv10's consistent dual assignment (arXiv:2405.14458, section 3.1). A second
head of the same form (the one-to-one head) reads the neck's maps detached, so its loss trains only itself; it learns
against the same task-aligned metric with top-1 targets (one positive per box), and the loss is the plain sum of
both heads' terms. Inference reads the one-to-one head alone and decodes it with two top-k and no IoU
(:func:`select_one_to_one`), so the graph ends in the final detections. :attr:`YOLO.one_to_one` set to False reads
the one-to-many head with NMS instead (``mobilenets eval --nms``).

Input: a normalised batch ``(B, 3, H, W)`` of any size. ``forward`` returns the raw outputs and the grid points of
this input size; everything through :meth:`YOLO.decode` has static shapes given the input size and no
data-dependent control flow, so the decoded graph exports as is. NMS stays outside the graph with the stored
settings (Ultralytics' validation settings: score 0.001, IoU 0.7, 300 detections per image; pycocotools scores
the best 100, so anything above 100 leaves COCO mAP unchanged).
"""
from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, clip_boxes_to_image, complete_box_iou, complete_box_iou_loss

from ..errors import UserError
from ..layers import make_divisible, norm_factory
from ..model import Location, MobileNet, Select
from ..registry import register_model
from .backbones import build_backbone, channels_of
from .detection import Detector

STRIDES = (8, 16, 32)
TAPS = tuple(Select(Location.STAGE, s, deepest=True) for s in STRIDES)

PAPER = ("YOLOv8-style head (Ultralytics 2023): DFL arXiv:2006.04388, TAL arXiv:2108.07755, CIoU arXiv:1911.08287;"
         " depthwise PAN as PP-PicoDet arXiv:2111.00902")

ACT = nn.Hardswish  # PicoDet's choice on mobile backbones; exports to every runtime the project targets


def neck_width_for(channels: list[int]) -> int:
    """The neck width from the backbone's taps: 1.5x the stride-16 map's channels, a multiple of 16, within
    [32, 128] (64 for MobileNetV3-Small's 40, 128 for V3-Large / V2 / V1 / V4-Conv-S). MobileNets' stage outputs
    are thin linear bottlenecks, so the neck is wider than the taps it reads; 96-128 is PicoDet / NanoDet-Plus's
    width on backbones of 1-4 M parameters."""
    return min(128, max(32, make_divisible(1.5 * channels[1], 16)))


# -- grid points and distributions (the parts torchvision does not have) -------------------------------------
def grid_points(sizes: list[tuple[int, int]], strides: tuple[int, ...], *, device=None, dtype=torch.float32
                ) -> tuple[Tensor, Tensor]:
    """Cell centres ``(A, 2)`` (x, y in input pixels, offset 0.5) of every level's ``(h, w)`` map, row-major per
    level, levels in order; and each point's stride ``(A,)``. The order is that of :meth:`YOLOHead.forward`."""
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((x, y), -1).reshape(-1, 2))
        point_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(point_strides)


def dfl_targets(distances: Tensor, reg_max: int) -> Tensor:
    """Distances ``(...)`` in stride units -> ``(..., reg_max)`` two-bin soft targets (DFL, eq. 6 of
    arXiv:2006.04388): weight ``right - d`` on ``floor(d)`` and ``d - left`` on the next bin, so that the
    expectation over the bins is ``d``. Distances are clamped to ``[0, reg_max - 1 - 0.01]`` (the last bin is the
    farthest a side can reach)."""
    d = distances.clamp(0, reg_max - 1 - 0.01)
    left = d.floor().long()
    w_right = d - left
    target = torch.zeros(*d.shape, reg_max, dtype=d.dtype, device=d.device)
    target.scatter_(-1, left.unsqueeze(-1), (1 - w_right).unsqueeze(-1))
    target.scatter_(-1, (left + 1).unsqueeze(-1), w_right.unsqueeze(-1))
    return target


def expected_distance(probabilities: Tensor) -> Tensor:
    """``(..., reg_max)`` bin probabilities -> their expectation ``(...)`` in stride units (bins 0..reg_max-1)."""
    bins = torch.arange(probabilities.shape[-1], dtype=probabilities.dtype, device=probabilities.device)
    return (probabilities * bins).sum(-1)


def distances_to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """``(A, 2)`` points and ``(..., A, 4)`` left/top/right/bottom distances (pixels) -> xyxy boxes."""
    return torch.cat((points - distances[..., :2], points + distances[..., 2:]), -1)


def boxes_to_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """The inverse of :func:`distances_to_boxes`: ``(..., A, 4)`` xyxy -> left/top/right/bottom."""
    return torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), -1)


# -- the task-aligned assigner ---------------------------------------------------------------------------
class TaskAlignedAssigner(nn.Module):
    """TOOD's task-aligned assignment (section 3.2 of arXiv:2108.07755) with YOLOv8's settings.

    For every ground-truth box and every grid point inside it (strictly, by ``eps``): the alignment
    ``t = s ** alpha * u ** beta`` of the predicted score ``s`` of the box's class and the CIoU ``u`` (clamped at 0)
    of the predicted box with it. Each box takes the ``topk`` points of highest ``t`` among those inside it; a point
    taken by several boxes keeps the one its prediction overlaps most. A positive's class target is the soft
    ``t / max_t * max_u`` (``max_t``, ``max_u``: the best alignment and CIoU among the box's positives), so the best
    point of a box is asked for the box's best IoU, not for 1; every other class and every negative gets 0.
    Assignment reads detached predictions and holds no parameters.
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        super().__init__()
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps

    @torch.no_grad()
    def forward(self, scores: Tensor, pred_boxes: Tensor, points: Tensor, gt_labels: Tensor, gt_boxes: Tensor,
                gt_valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``scores`` (B, A, K) class probabilities, ``pred_boxes`` (B, A, 4) xyxy pixels, ``points`` (A, 2);
        ground truth padded to M boxes per image: ``gt_labels`` (B, M) class index 0..K-1, ``gt_boxes`` (B, M, 4),
        ``gt_valid`` (B, M) bool.

        Returns ``target_boxes`` (B, A, 4), ``target_scores`` (B, A, K), ``foreground`` (B, A) bool and
        ``target_gt`` (B, A) (the index of each positive's box).
        """
        b, a, k = scores.shape
        m = gt_boxes.shape[1]
        if m == 0:  # no image of the batch has an object: no positives, every class target 0
            return (torch.zeros_like(pred_boxes), torch.zeros_like(scores),
                    torch.zeros(b, a, dtype=torch.bool, device=scores.device),
                    torch.zeros(b, a, dtype=torch.long, device=scores.device))
        # candidates: points strictly inside a (valid) box -- a zero-area box has none
        inside = boxes_to_distances(points, gt_boxes[:, :, None, :]).amin(-1) > self.eps  # (B, M, A)
        inside &= gt_valid[:, :, None]
        ciou = torch.stack([complete_box_iou(g, p) for g, p in zip(gt_boxes, pred_boxes)])  # (B, M, A)
        # where(), not a product: the CIoU of a padded or zero-area box is NaN (0/0 in its aspect term)
        overlaps = torch.where(inside, ciou.clamp(min=0), 0.0)
        score = scores.gather(2, gt_labels[:, None, :].expand(b, a, m)).transpose(1, 2)  # (B, M, A)
        align = torch.where(inside, score.pow(self.alpha) * overlaps.pow(self.beta), 0.0)

        top = align.topk(min(self.topk, a), dim=-1).indices  # (B, M, topk)
        positive = torch.zeros_like(inside).scatter_(-1, top, True) & inside  # (B, M, A)
        # a point taken by several boxes keeps the box its prediction overlaps most
        best = torch.where(positive, overlaps, -1.0).argmax(1)  # (B, A)
        contested = positive.sum(1) > 1
        positive = torch.where(contested[:, None, :], F.one_hot(best, m).transpose(1, 2).bool(), positive)

        foreground = positive.any(1)  # (B, A)
        target_gt = positive.float().argmax(1)  # (B, A); 0 for negatives (unused)
        target_boxes = gt_boxes.gather(1, target_gt[..., None].expand(b, a, 4))
        target_labels = gt_labels.gather(1, target_gt)  # (B, A)

        align = align * positive
        best_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        best_overlap = (overlaps * positive).amax(-1, keepdim=True)
        soft = (align * best_overlap / (best_align + self.eps)).amax(1)  # (B, A)
        target_scores = F.one_hot(target_labels, k).to(scores.dtype) * (soft * foreground)[..., None]
        return target_boxes, target_scores, foreground, target_gt


ONE_TO_ONE_ANNEAL_END = 0.5  # share of the run by which an annealed one-to-one top-k reaches 1


def annealed_topk(start: int, fraction: float, end: float = ONE_TO_ONE_ANNEAL_END) -> int:
    """``start`` at the run's beginning, falling linearly (rounded) to 1 at ``end`` of it, then 1."""
    return max(1, round(start - (start - 1) * min(max(fraction, 0.0) / end, 1.0)))


# -- the one-to-one head's decoding ------------------------------------------------------------------------
def select_one_to_one(boxes: Tensor, scores: Tensor, k: int) -> Tensor:
    """The end-to-end decoding of YOLOv10 (section 3.1 of arXiv:2405.14458), two top-k and no IoU: the ``k`` points
    with the best class score, then the best ``k`` (point, class) pairs among them. ``boxes`` (B, A, 4), ``scores``
    (B, A, C) object-class probabilities -> (B, k', 6) rows ``x1, y1, x2, y2, score, label`` best first, labels
    1..C (class 0 is the background), ``k' = min(k, A)``. Static shapes: the graph exports as is."""
    b, a, c = scores.shape
    k = min(k, a)
    best = scores.amax(-1).topk(k, dim=-1).indices  # (B, k) points
    scores = scores.gather(1, best[..., None].expand(b, k, c))  # (B, k, C)
    boxes = boxes.gather(1, best[..., None].expand(b, k, 4))
    top, flat = scores.flatten(1).topk(k, dim=-1)  # (B, k) over the k * C pairs
    label = flat % c
    # the pair's point: an exact float division of a multiple of c (coremltools turns an integer division's result
    # into floats, which gather then refuses as indices)
    row = ((flat - label).to(scores.dtype) / c).round().long()
    return torch.cat((boxes.gather(1, row[..., None].expand(b, k, 4)), top[..., None],
                      (label + 1).to(boxes.dtype)[..., None]), -1)


def detections_to_dict(detections: Tensor, image_size: tuple[int, int], score_thresh: float) -> dict[str, Tensor]:
    """One image's (K, 6) end-to-end rows -> ``boxes`` (clipped to ``image_size``), ``scores``, ``labels`` above
    ``score_thresh``: the layout :func:`postprocess_detections` returns."""
    keep = detections[:, 4] > score_thresh
    d = detections[keep]
    return {"boxes": clip_boxes_to_image(d[:, :4], image_size), "scores": d[:, 4], "labels": d[:, 5].long()}


# -- the network ------------------------------------------------------------------------------------------
def separable(in_ch: int, out_ch: int, norm, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (stride ``stride``) + BN + act, then pointwise 1x1 + BN + act (MobileNetV1's unit)."""
    return nn.Sequential(
        Conv2dNormActivation(in_ch, in_ch, 3, stride=stride, groups=in_ch, norm_layer=norm, activation_layer=ACT),
        Conv2dNormActivation(in_ch, out_ch, 1, norm_layer=norm, activation_layer=ACT))


def fusion(width: int, norm, depth: int) -> nn.Sequential:
    """A neck fusion: ``depth`` separable units, the first mixing the two concatenated maps (``2 * width``) back to
    ``width``. Depth 1 (the default) is one unit, the layout of every checkpoint written before the option; deeper
    fusions stack more units, as YOLOv8's C2f repeats bottlenecks (n, s: 1 repeat per C2f of the neck)."""
    units = [separable(2 * width, width, norm)] + [separable(width, width, norm) for _ in range(depth - 1)]
    return units[0] if depth == 1 else nn.Sequential(*units)


class DepthwisePAN(nn.Module):
    """FPN top-down then PAN bottom-up (arXiv:1803.01534) over three maps, every conv depthwise separable.

    1x1 laterals bring each tap to ``width``; a fusion concatenates two maps of one level and mixes them with a
    separable unit back to ``width``; up-sampling is nearest to the finer map's size (odd sizes included),
    down-sampling a stride-2 depthwise conv (PicoDet's CSP-PAN / NanoDet-Plus's Ghost-PAN, without their CSP and
    ghost branches). ``depth`` separable units per fusion (:func:`fusion`).
    """

    def __init__(self, in_channels: list[int], width: int, norm, depth: int = 1):
        super().__init__()
        self.laterals = nn.ModuleList(Conv2dNormActivation(c, width, 1, norm_layer=norm, activation_layer=ACT)
                                      for c in in_channels)
        self.top_down = nn.ModuleList(fusion(width, norm, depth) for _ in in_channels[1:])
        self.downsample = nn.ModuleList(
            Conv2dNormActivation(width, width, 3, stride=2, groups=width, norm_layer=norm, activation_layer=ACT)
            for _ in in_channels[1:])
        self.bottom_up = nn.ModuleList(fusion(width, norm, depth) for _ in in_channels[1:])

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        lat = [conv(f) for conv, f in zip(self.laterals, features)]
        # top-down: from the coarsest map, each finer level fused with the up-sampled coarser one
        td = [lat[-1]]
        for i in range(len(lat) - 2, -1, -1):
            up = F.interpolate(td[0], size=lat[i].shape[-2:], mode="nearest")
            td.insert(0, self.top_down[i](torch.cat((lat[i], up), 1)))
        # bottom-up: from the finest map, each coarser level fused with the down-sampled finer one
        out = [td[0]]
        for i in range(1, len(td)):
            out.append(self.bottom_up[i - 1](torch.cat((td[i], self.downsample[i - 1](out[-1])), 1)))
        return out  # (B, width, H/8, W/8), (B, width, H/16, W/16), (B, width, H/32, W/32)


class YOLOHead(nn.Module):
    """Decoupled per-level branches (no weights shared across levels, as YOLOv8): a class branch ending in
    ``classes`` logits and a box branch ending in ``4 * reg_max`` distribution logits per point."""

    def __init__(self, width: int, levels: int, classes: int, reg_max: int, norm, prior: float = 0.01):
        super().__init__()
        self.classes, self.reg_max = classes, reg_max
        self.cls_branches = nn.ModuleList(nn.Sequential(separable(width, width, norm), nn.Conv2d(width, classes, 1))
                                          for _ in range(levels))
        self.box_branches = nn.ModuleList(nn.Sequential(separable(width, width, norm),
                                                        nn.Conv2d(width, 4 * reg_max, 1)) for _ in range(levels))
        for branch in self.cls_branches:  # every class starts at probability ``prior`` (RetinaNet section 4.1)
            bias = cast(Tensor, cast(nn.Sequential, branch)[-1].bias)  # its Conv2d's
            nn.init.constant_(bias, -math.log((1 - prior) / prior))

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(B, A, classes)`` class logits and ``(B, A, 4, reg_max)`` side distributions, points row-major per
        level (the order of :func:`grid_points`)."""
        cls, box = [], []
        for f, cls_branch, box_branch in zip(features, self.cls_branches, self.box_branches):
            b = f.shape[0]
            cls.append(cls_branch(f).flatten(2).transpose(1, 2))  # (B, H*W, classes)
            box.append(box_branch(f).flatten(2).transpose(1, 2).reshape(b, -1, 4, self.reg_max))
        return torch.cat(cls, 1), torch.cat(box, 1)


class YOLO(Detector):
    """YOLOv8-style detector: backbone taps at strides 8/16/32 -> depthwise PAN -> decoupled head."""

    def __init__(self, backbone: MobileNet, num_classes: int, *, neck_width: int | None = None, neck_depth: int = 1,
                 reg_max: int = 16, norm=nn.BatchNorm2d, score_thresh: float = 0.001, nms_thresh: float = 0.7,
                 detections_per_img: int = 300, topk_candidates: int = 300, topk: int = 10, alpha: float = 0.5,
                 beta: float = 6.0, gains: tuple[float, float, float] = (7.5, 1.5, 0.5), end_to_end: bool = False,
                 detach_one_to_one: bool = True, one_to_one_topk: int = 1):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"num_classes={num_classes}: a detector needs the background plus at least one class")
        if reg_max < 2:
            raise UserError(f"reg_max={reg_max}: the box distributions need at least 2 bins (YOLOv8: 16)")
        if neck_depth < 1:
            raise UserError(f"neck_depth={neck_depth}: each neck fusion needs at least 1 separable unit")
        if one_to_one_topk < 1:
            raise UserError(f"one_to_one_topk={one_to_one_topk}: the one-to-one assigner needs at least 1 point per "
                            "object (1: YOLOv10's top-1 throughout)")
        self.num_classes = num_classes  # including the background class 0, which the head does not predict
        self.features = backbone  # features_only, returning the TAPS maps
        channels = channels_of(backbone)
        self.neck_width = neck_width or neck_width_for(channels)
        self.strides = STRIDES
        self.reg_max = reg_max
        self.neck_depth = neck_depth
        self.neck = DepthwisePAN(channels, self.neck_width, norm, neck_depth)
        self.head = YOLOHead(self.neck_width, len(STRIDES), num_classes - 1, reg_max, norm)
        self.assigner = TaskAlignedAssigner(topk, alpha, beta)
        self.end_to_end = end_to_end
        if end_to_end:  # YOLOv10's one-to-one head: a copy of the head with top-1 targets (on detached maps by default)
            self.head_o2o = YOLOHead(self.neck_width, len(STRIDES), num_classes - 1, reg_max, norm)
            self.assigner_o2o = TaskAlignedAssigner(1, alpha, beta)
        # True (YOLOv10's and Ultralytics' code): the one-to-one loss trains its own head only. False: its top-1
        # targets also train the neck and backbone (+1.4 end-to-end, -3.9 one-to-many points in BENCHMARKS.md's
        # 40-minute pair): for a model that will only ever run end to end
        self.detach_one_to_one = detach_one_to_one
        # > 1: the one-to-one assigner starts at this top-k and anneals to 1 (set_training_progress); 1: top-1 always
        self.one_to_one_topk = one_to_one_topk
        self.one_to_one = end_to_end  # inference reads the one-to-one head (no NMS); False: the usual head + NMS
        self.box_gain, self.dfl_gain, self.cls_gain = gains
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    # -- network ------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Raw outputs of the one-to-many head (``cls_logits``, ``box_logits``) and, for an end-to-end model, of the
        one-to-one head (``cls_logits_o2o``, ``box_logits_o2o``). Training computes both heads; inference only the
        one it reads (:attr:`one_to_one`), under the first pair of names, so ``decode`` and the exported graph
        hold one head."""
        feats = self.neck(list(self.features(x)))
        points, strides = grid_points([tuple(f.shape[-2:]) for f in feats], self.strides, device=x.device,
                                      dtype=x.dtype)
        out = {"points": points,  # (A, 2) xy pixels of this input
               "strides": strides}  # (A,)
        if self.end_to_end and (self.training or self.one_to_one):
            # by default the one-to-one head learns on detached maps: its top-1 targets leave the neck and backbone
            detach = self.training and self.detach_one_to_one
            cls_o2o, box_o2o = self.head_o2o([f.detach() for f in feats] if detach else feats)
            if not self.training:
                return {"cls_logits": cls_o2o, "box_logits": box_o2o, **out}
            out.update(cls_logits_o2o=cls_o2o, box_logits_o2o=box_o2o)
        cls_logits, box_logits = self.head(feats)
        return {"cls_logits": cls_logits,  # (B, A, num_classes - 1)
                "box_logits": box_logits,  # (B, A, 4, reg_max)
                **out}

    def boxes(self, outputs: dict[str, Tensor], box_logits: Tensor | None = None) -> Tensor:
        """Decoded boxes (B, A, 4) xyxy in input pixels: each side the expectation of its distribution."""
        logits = outputs["box_logits"] if box_logits is None else box_logits
        distances = expected_distance(logits.softmax(-1)) * outputs["strides"][:, None]
        return distances_to_boxes(outputs["points"], distances)

    # -- training ------------------------------------------------------------------------------------------
    def set_training_progress(self, fraction: float) -> None:
        """The trainer's per-step hook (``fraction``: the share of the run done). With ``one_to_one_topk`` K > 1 the
        one-to-one assigner takes the top K points per object at the start, falling linearly to 1 at
        :data:`ONE_TO_ONE_ANNEAL_END` of the run, then 1: the young head gets the one-to-many head's dense class
        signal, and learns to keep one point per object in the second half. Without the hook the assigner stays
        top-1 (YOLOv10)."""
        if self.end_to_end:
            self.assigner_o2o.topk = annealed_topk(self.one_to_one_topk, fraction)

    def loss(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """YOLOv8's loss: ``box`` (1 - CIoU), ``dfl`` and ``cls`` (BCE against the assigner's soft targets), each
        weighted by its gain (7.5 / 1.5 / 0.5) and divided by the sum of the soft targets (at least 1).

        ``targets[i]`` holds ``boxes`` (N, 4) xyxy in input pixels and ``labels`` (N,) in 1..num_classes-1. The box
        terms of a positive are weighted by its soft target. A batch without objects has no positives: its box
        terms are 0 (with a gradient), the class term pushes every score to 0. An end-to-end model adds the
        one-to-one head's terms (``box_o2o``, ``dfl_o2o``, ``cls_o2o``: the same loss against top-1 targets), an
        unweighted sum as YOLOv10's dual assignment.
        """
        gt = self._pad(targets, outputs["cls_logits"])
        terms = self._head_loss(outputs, outputs["cls_logits"], outputs["box_logits"], gt, self.assigner)
        if "cls_logits_o2o" in outputs:  # YOLOv10's consistent dual assignment: the same loss, top-1 targets, summed
            o2o = self._head_loss(outputs, outputs["cls_logits_o2o"], outputs["box_logits_o2o"], gt,
                                  self.assigner_o2o)
            terms.update({f"{k}_o2o": v for k, v in o2o.items()})
        return terms

    def _head_loss(self, outputs: dict[str, Tensor], cls_logits: Tensor, box_logits: Tensor,
                   gt: tuple[Tensor, Tensor, Tensor], assigner: TaskAlignedAssigner) -> dict[str, Tensor]:
        """One head's three terms against ``assigner``'s targets."""
        points, strides = outputs["points"], outputs["strides"]
        gt_labels, gt_boxes, gt_valid = gt
        pred_boxes = self.boxes(outputs, box_logits)  # (B, A, 4)
        target_boxes, target_scores, fg, _ = assigner(cls_logits.detach().sigmoid(), pred_boxes.detach(),
                                                      points, gt_labels, gt_boxes, gt_valid)
        normaliser = target_scores.sum().clamp(min=1)
        cls = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="sum") / normaliser
        weight = target_scores.sum(-1)[fg]  # (P,): each positive's soft target
        # boxes of the positives only: a zero-area box never has a point strictly inside it, so never reaches CIoU
        box = (complete_box_iou_loss(pred_boxes[fg], target_boxes[fg]) * weight).sum() / normaliser
        sides = boxes_to_distances(points, target_boxes) / strides[:, None]  # (B, A, 4) in stride units
        dfl = F.cross_entropy(box_logits[fg].reshape(-1, self.reg_max),
                              dfl_targets(sides[fg], self.reg_max).reshape(-1, self.reg_max),
                              reduction="none").view(-1, 4).mean(-1)
        dfl = (dfl * weight).sum() / normaliser
        return {"box": self.box_gain * box, "dfl": self.dfl_gain * dfl, "cls": self.cls_gain * cls}

    def _pad(self, targets: list[dict[str, Tensor]], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Targets padded to the batch's most boxes: class indices 0..K-1 (B, M), boxes (B, M, 4), valid (B, M).
        Refuses labels outside 1..num_classes-1 in one line."""
        m = max((len(t["labels"]) for t in targets), default=0)
        b = len(targets)
        labels = torch.zeros(b, m, dtype=torch.long, device=like.device)
        boxes = torch.zeros(b, m, 4, dtype=like.dtype, device=like.device)
        valid = torch.zeros(b, m, dtype=torch.bool, device=like.device)
        for i, t in enumerate(targets):
            n = len(t["labels"])
            labels[i, :n] = t["labels"].to(like.device).long() - 1  # label 1..C-1 -> class index 0..C-2
            boxes[i, :n] = t["boxes"].to(like)
            valid[i, :n] = True
        bad = valid & ((labels < 0) | (labels >= self.num_classes - 1))
        if bad.any():
            raise UserError(f"class id {int(labels[bad][0]) + 1} is outside 1..{self.num_classes - 1} (this "
                            f"detector has num_classes={self.num_classes}, background 0 included); build it with "
                            "num_classes = number of object classes + 1, or fix the labels")
        return labels, boxes, valid

    # -- inference -----------------------------------------------------------------------------------------
    def decode(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor] | Tensor:
        """Boxes (B, A, 4) xyxy and scores (B, A, num_classes): the object classes' sigmoids after a zero
        background column, the layout :func:`postprocess_detections` reads. Everything but NMS.

        Reading the one-to-one head (:attr:`one_to_one`): the final detections (B, K, 6) instead, K =
        ``min(detections_per_img, A)`` rows of ``x1, y1, x2, y2, score, label`` best first, label 1..num_classes-1
        (:func:`select_one_to_one`); no NMS follows."""
        scores = outputs["cls_logits"].sigmoid()
        if self.end_to_end and self.one_to_one:
            return select_one_to_one(self.boxes(outputs), scores, self.detections_per_img)
        return self.boxes(outputs), torch.cat((torch.zeros_like(scores[..., :1]), scores), -1)

    def postprocess(self, outputs, image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        if not (self.end_to_end and self.one_to_one):
            return super().postprocess(outputs, image_size)
        return [detections_to_dict(d, image_size, self.score_thresh) for d in self.decode(outputs)]

    def foreign_module_map(self, source_keys) -> None:
        """Declared (:class:`~mobilenets.weights.ForeignWeights`) only to opt out: nobody publishes these heads, so
        every file is ours and keeps our names (None). Without it :func:`mobilenets.load_weights` would guess the
        format from the keys and read our ``features.*`` keys as torchvision's."""
        return None


_VARIANTS = {"mobilenet_v3_small": "MobileNetV3-Small, reduced tail", "mobilenet_v3_large":
             "MobileNetV3-Large, reduced tail", "mobilenet_v2": "MobileNetV2", "mobilenet_v1": "MobileNetV1",
             "mobilenet_v4_conv_small": "MobileNetV4-Conv-S"}


def _register_variants(builder):
    for name, what in _VARIANTS.items():
        builder = register_model(f"yolo_{name}", task="detect", default_resolution=320, paper=PAPER,
                                 summary=f"YOLOv8-style head, depthwise PAN, on {what}", backbone=name)(builder)
    return register_model("yolo", task="detect", default_resolution=320, paper=PAPER,
                          summary="YOLOv8-style head (anchor-free, DFL, TAL) on any zoo backbone (backbone=...)"
                          )(builder)


@_register_variants
def yolo(*, backbone: str = "mobilenet_v3_large", num_classes: int = 81, width_multiplier: float = 1.0,
         reduced_tail: bool | None = None, in_chans: int = 3, norm_layer: str | None = None,
         neck_width: int | None = None, neck_depth: int = 1, reg_max: int = 16, score_thresh: float = 0.001,
         nms_thresh: float = 0.7, detections_per_img: int = 300, topk_candidates: int = 300,
         end_to_end: bool = False, detach_one_to_one: bool = True, one_to_one_topk: int = 1) -> YOLO:
    """The YOLOv8-style detector on the zoo backbone ``backbone``; ``num_classes`` includes the background (81: the
    80 COCO classes). ``neck_width`` defaults to :func:`neck_width_for` the backbone's taps, ``neck_depth`` (separable
    units per neck fusion) to 1; ``norm_layer`` applies to the neck and head too. ``reduced_tail`` (V3 only) defaults
    to True, as for SSDLite. ``end_to_end``: add YOLOv10's one-to-one head and read it at inference, so that the
    decoded graph ends in the final detections (no NMS). ``detach_one_to_one=False`` (end-to-end only) lets the
    one-to-one head's loss train the neck and backbone too: better end to end, worse through the one-to-many head and
    NMS. ``one_to_one_topk`` K > 1 (end-to-end only) anneals the one-to-one assigner from top-K to top-1 over the
    first half of training (:meth:`YOLO.set_training_progress`)."""
    if not detach_one_to_one and not end_to_end:
        raise UserError("detach_one_to_one=False is for an end-to-end model (end_to_end=True), which has a "
                        "one-to-one head; drop it or set end_to_end")
    if one_to_one_topk != 1 and not end_to_end:
        raise UserError(f"one_to_one_topk={one_to_one_topk} is for an end-to-end model (end_to_end=True), which has "
                        "a one-to-one head; drop it or set end_to_end")
    body = build_backbone(backbone, TAPS, width_multiplier=width_multiplier, reduced_tail=reduced_tail,
                          default_reduced_tail=True, in_chans=in_chans, norm_layer=norm_layer, output_stride=32)
    norm = norm_factory(norm_layer) if norm_layer else nn.BatchNorm2d
    return YOLO(body, num_classes, neck_width=neck_width, neck_depth=neck_depth, reg_max=reg_max, norm=norm,
                score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                topk_candidates=topk_candidates, end_to_end=end_to_end, detach_one_to_one=detach_one_to_one,
                one_to_one_topk=one_to_one_topk)
