"""What every detector shares: class-wise NMS on decoded boxes, and ``postprocess`` / ``predict`` on top of a
detector's own ``decode``. A detector (SSDLite, YOLO) subclasses :class:`Detector` and provides ``forward`` (its
raw outputs), ``loss(outputs, targets)`` (named terms) and ``decode(outputs) -> (boxes, scores)``: boxes (B, A, 4)
xyxy in input pixels, scores (B, A, num_classes) with column 0 the background (never kept by NMS). The exported
graph ends at ``decode``; NMS runs outside it with the settings the detector stores."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image


def postprocess_detections(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], score_thresh: float,
                           nms_thresh: float, topk_candidates: int, detections_per_img: int) -> dict[str, Tensor]:
    """One image: (A, 4) boxes and (A, C) probabilities -> kept ``boxes``, ``scores``, ``labels`` (1..C-1)."""
    boxes = clip_boxes_to_image(boxes, image_size)
    out_boxes, out_scores, out_labels = [], [], []
    for label in range(1, scores.shape[1]):
        score = scores[:, label]
        keep = score > score_thresh
        score, box = score[keep], boxes[keep]
        score, idx = score.topk(min(topk_candidates, score.numel()))
        out_boxes.append(box[idx])
        out_scores.append(score)
        out_labels.append(torch.full_like(idx, label))
    b, s, lab = torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels)
    keep = batched_nms(b, s, lab, nms_thresh)[:detections_per_img]
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


class Detector(nn.Module):
    """Base of the detectors: NMS settings as attributes, ``postprocess`` and ``predict``."""

    score_thresh: float
    nms_thresh: float
    topk_candidates: int
    detections_per_img: int

    def decode(self, outputs) -> tuple[Tensor, Tensor] | Tensor:
        """(boxes, scores); a head that selects its own detections (YOLO's one-to-one) returns them instead."""
        raise NotImplementedError

    def postprocess(self, outputs, image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Per image: clip, drop scores below ``score_thresh``, top-k per class, class-wise NMS, keep the best."""
        all_boxes, all_scores = self.decode(outputs)
        return [postprocess_detections(b, s, image_size, self.score_thresh, self.nms_thresh,
                                       self.topk_candidates, self.detections_per_img)
                for b, s in zip(all_boxes, all_scores)]

    @torch.no_grad()
    def predict(self, x: Tensor) -> list[dict[str, Tensor]]:
        """Detections (``boxes`` xyxy in input pixels, ``scores``, ``labels``) for a normalised batch."""
        return self.postprocess(self(x), (x.shape[-2], x.shape[-1]))
