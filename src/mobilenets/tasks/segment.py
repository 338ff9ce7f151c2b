"""Semantic segmentation: the built-in Fashion-MNIST scenes (11 classes, the background first) or a VOC-style
folder of images and PNG masks; cross-entropy (plus torchvision's 0.5-weighted aux term where the model has an
aux head); mean IoU over the classes present (in the labels or the predictions) and pixel accuracy, on the masks
as given (logits are upsampled back to the mask size); 255 in a mask is ignored. The exported graph's output is
the logits at the input size; the class map is their arg-max."""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from ..data.dense import MEAN, SCENES, STD, model_inputs, open_scenes, split_folder
from ..data.masks import IGNORE_INDEX
from ..data.scenes import FashionScenes
from .base import Parity, to_input
from .dense import DenseTask
from .detect import scene_inputs

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


def collate_train(batch):
    images = torch.stack([im.as_subclass(Tensor) for im, _ in batch])
    masks = torch.stack([t["mask"].as_subclass(Tensor) for _, t in batch]).long()
    return images, masks, []


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

    def collate(self, batch):
        return collate_train(batch)

    def open_split(self, cfg, split, transforms, class_names=None, trained=None):
        from ..data.masks import SegmentationFolder

        if cfg.data in (None, SCENES):
            return open_scenes(cfg, split, transforms, "segment", trained)
        return SegmentationFolder(split_folder(cfg, split), class_names, transforms, cfg.skip_bad)

    def class_names_of(self, dataset) -> list[str]:
        # the scenes name their object classes; a mask folder names every class, the background first
        if isinstance(dataset, FashionScenes):
            return ["background"] + list(dataset.class_names)
        return list(dataset.class_names)

    def skipped_record(self, dataset) -> dict:
        return {"skipped_images": dict(dataset.skipped)}

    # -- training and evaluation ---------------------------------------------------------------------------
    def loss(self, model, inputs, targets, label_smoothing=0.0):
        logits, aux = model.forward_with_aux(inputs)
        terms = {"loss_main": F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)}
        if aux is not None:
            terms["loss_aux"] = AUX_WEIGHT * F.cross_entropy(aux, targets, ignore_index=IGNORE_INDEX)
        return sum(terms.values()), terms, {}

    @torch.no_grad()
    def evaluate(self, model, val, *, preprocessing, class_names, device, channels_last=False, progress=False,
                 batch_size=32):
        """mIoU and pixel accuracy on raw samples, at the masks' own resolution."""
        size = preprocessing.input_size[-1]
        model.eval()
        c = model.num_classes
        confusion = torch.zeros(c, c, dtype=torch.int64)
        loader = DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=lambda b: b)
        start, images = time.perf_counter(), 0
        for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
            x = to_input(model_inputs([im for im, _ in batch], size), device, channels_last)
            logits = model(x).cpu()
            for (_, target), lg in zip(batch, logits):
                mask = target["mask"].as_subclass(Tensor).long()
                if tuple(lg.shape[-2:]) != tuple(mask.shape):
                    lg = F.interpolate(lg[None], size=mask.shape, mode="bilinear", align_corners=False)[0]
                pred = lg.argmax(0)
                valid = mask != IGNORE_INDEX
                confusion += torch.bincount(mask[valid] * c + pred[valid], minlength=c * c).view(c, c)
                images += 1
        result = confusion_metrics(confusion)
        result.update(images=images, eval_seconds=time.perf_counter() - start)
        return result

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
            tolerance = 1e-3 * max(1.0, float(np.abs(ref).max()))
        agree = float((out.argmax(1) == ref.argmax(1)).mean())
        return Parity(n=len(ref), inputs=inputs, max_abs_diff=float(np.abs(out - ref).max()), agreement=agree,
                      tolerance=tolerance, min_agreement=min_agreement if min_agreement is not None
                      else (0.9 if int8 else 0.99), what="pixel agreement")

    def parity_inputs(self, meta, n, source=None, seed=1):
        return scene_inputs(meta, n) if source is None else super().parity_inputs(meta, n, source, seed)

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
