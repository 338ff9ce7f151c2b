"""Semantic segmentation: the built-in Fashion-MNIST scenes (11 classes, the background first) or a VOC-style
folder of images and PNG masks; cross-entropy (plus torchvision's 0.5-weighted aux term where the model has an
aux head); mean IoU over the classes present (in the labels or the predictions) and pixel accuracy, on the masks
as given (logits are upsampled back to the mask size); 255 in a mask is ignored. The exported graph's output is
the logits at the input size; the class map is their arg-max."""
from __future__ import annotations

from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from ..data.dense import MEAN, STD, split_folder
from ..data.masks import IGNORE_INDEX
from ..data.scenes import FashionScenes
from .base import Parity, default_min_agreement, relative_tolerance
from .dense import DenseTask

AUX_WEIGHT = 0.5  # torchvision's segmentation recipe
MASK_PIXELS = 4_000_000  # postprocess: the largest class map computed from bilinear logits


def confusion_metrics(confusion: Tensor) -> dict:
    """mIoU (classes present in labels or predictions), pixel accuracy and per-class IoU of a (C, C) matrix
    indexed [label, prediction]."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    total = confusion.sum()
    return {"miou": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
            "per_class_iou": [float(v) for v in iou]}


class ConfusionTally:
    """The (classes, classes) confusion of a segmenter's arg-max against the masks, at the masks' resolution."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.c = c = cast(int, model.num_classes)
        self.confusion = torch.zeros(c, c, dtype=torch.int64)
        self.images = 0

    def add(self, samples, x):
        c = self.c
        for (_, target), lg in zip(samples, self.model(x).cpu()):
            mask = target["mask"].as_subclass(Tensor).long()
            if tuple(lg.shape[-2:]) != tuple(mask.shape):
                lg = F.interpolate(lg[None], size=mask.shape, mode="bilinear", align_corners=False)[0]
            pred = lg.argmax(0)
            valid = mask != IGNORE_INDEX
            self.confusion += torch.bincount(mask[valid] * c + pred[valid], minlength=c * c).view(c, c)
            self.images += 1

    def metrics(self) -> dict:
        return {**confusion_metrics(self.confusion), "images": self.images}


def colour(index: int) -> tuple[int, int, int]:
    """VOC's colour map: the bits of the class index spread over the high bits of R, G and B."""
    r = g = b = 0
    for shift in range(8):
        r |= ((index >> 0) & 1) << (7 - shift)
        g |= ((index >> 1) & 1) << (7 - shift)
        b |= ((index >> 2) & 1) << (7 - shift)
        index >>= 3
    return r, g, b


class Segment(DenseTask):
    name = "segment"
    metric = "miou"
    per_class = "per_class_iou"
    per_class_label = "IoU"
    outputs = ("logits",)
    generic_model = "lraspp"
    folder_size = 512
    curves = (("loss", "loss", (("loss", "total"), ("loss_main", "main"), ("loss_aux", "aux"))),
              ("val mIoU", "score", (("miou", "mIoU"), ("pixel_acc", "pixel accuracy"))))

    # -- data ------------------------------------------------------------------------------------------------
    def train_transforms(self, size: int, scenes: bool, augment: str = "basic") -> v2.Compose:
        """Masks move with the image (transforms.v2 with tv_tensors; masks are resized with nearest neighbour).
        Image folders get random resized crops and photometric distortion; the scenes, random by construction
        (positions, scales, colours), only flips. ``augment="none"``: resize and normalise only."""
        if scenes or augment == "none":
            steps = [v2.Resize((size, size), antialias=True)]
        else:
            steps = [v2.RandomPhotometricDistort(p=0.5), v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)]
        flip = [] if augment == "none" else [v2.RandomHorizontalFlip()]
        return v2.Compose([*flip, *steps, v2.Normalize(MEAN, STD)])

    def collate_targets(self, targets):
        return torch.stack([t["mask"].as_subclass(Tensor) for t in targets]).long()

    def open_folder(self, cfg, split, transforms, class_names):
        """A VOC-style folder of images and PNG masks."""
        from ..data.masks import SegmentationFolder

        return SegmentationFolder(split_folder(cfg, split), class_names, transforms, cfg.skip_bad)

    def class_names_of(self, dataset) -> list[str]:
        # the scenes name their object classes; a mask folder names every class, the background first
        if isinstance(dataset, FashionScenes):
            return ["background"] + list(dataset.class_names)
        return list(dataset.class_names)

    def skipped_record(self, dataset) -> dict:
        return {"skipped_images": dict(dataset.skipped)}

    # -- training and evaluation ---------------------------------------------------------------------------
    def loss(self, model, inputs, targets, label_smoothing=0.0, soft_targets=None):
        logits, aux = model.forward_with_aux(inputs)
        terms = {"loss_main": F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)}
        if aux is not None:
            terms["loss_aux"] = AUX_WEIGHT * F.cross_entropy(aux, targets, ignore_index=IGNORE_INDEX)
        return sum(terms.values()), terms, {}

    def tally(self, model, size):
        """mIoU and pixel accuracy at the masks' own resolution."""
        return ConfusionTally(model)

    def summary(self, metrics: dict) -> str:
        return f"mIoU {metrics['miou']:.4f}  pixel accuracy {metrics['pixel_acc']:.4f}"

    def report(self, metrics: dict, class_names: list[str]) -> dict:
        return {"miou": metrics["miou"], "pixel_acc": metrics["pixel_acc"], "images": metrics["images"],
                "per_class_iou": dict(zip(class_names, metrics["per_class_iou"]))}

    def counted(self, report: dict) -> str:
        return f"{report['images']} images"

    # -- export ----------------------------------------------------------------------------------------------
    def compare(self, reference, got, *, inputs, int8, properties, tolerance=None, min_agreement=None) -> Parity:
        ref, out = np.asarray(reference[0]), np.asarray(got[0])
        if tolerance is None and not int8:
            tolerance = relative_tolerance(ref, 1e-3)
        agree = float((out.argmax(1) == ref.argmax(1)).mean())
        return Parity(n=len(ref), inputs=inputs, max_abs_diff=float(np.abs(out - ref).max()), agreement=agree,
                      tolerance=tolerance, min_agreement=min_agreement if min_agreement is not None
                      else default_min_agreement(int8), what="pixel agreement")

    # -- results for a person --------------------------------------------------------------------------------
    def postprocess(self, outputs, meta, properties, image_size, **options):
        logits = outputs[0]
        h, w = image_size
        # Upsampled logits cost classes x 4 bytes per pixel (1.8 GB for 11 classes on a 40 MP photo): above
        # MASK_PIXELS the arg-max is taken at MASK_PIXELS and the class map enlarged by nearest neighbour.
        scale = min(1.0, (MASK_PIXELS / (h * w)) ** 0.5)
        at = (max(1, round(h * scale)), max(1, round(w * scale)))
        pred = F.interpolate(logits, size=at, mode="bilinear", align_corners=False)[0].argmax(0)
        if at != (h, w):
            small = torch.uint8 if logits.shape[1] <= 256 else torch.float32
            pred = F.interpolate(pred[None, None].to(small), size=(h, w), mode="nearest")[0, 0].long()
        classes = [c for c in pred.unique().tolist() if c != 0]
        pixels = torch.bincount(pred.flatten(), minlength=len(meta.class_names))
        return {"classes": {meta.class_names[c]: round(float(pixels[c]) / pred.numel(), 4) for c in classes},
                "mask": pred}

    def draw(self, image, result, meta):
        from torchvision.utils import draw_segmentation_masks

        pred = result["mask"]
        classes = [c for c in pred.unique().tolist() if c != 0]
        drawn = (image * 255).round().to(torch.uint8)
        if classes:
            drawn = draw_segmentation_masks(drawn, torch.stack([pred == c for c in classes]), alpha=0.55,
                                            colors=[colour(c) for c in classes])
        return drawn

    def result_line(self, result: dict) -> str:
        return ", ".join(f"{n} {share:.1%}" for n, share in result["classes"].items()) or "background only"
