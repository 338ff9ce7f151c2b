"""Semantic segmentation: ``train``, ``evaluate`` and ``predict`` entry points of the CLI (``--task segment``).

Data: ``--data scenes`` (the built-in Fashion-MNIST scenes, :mod:`mobilenets.data.scenes`: 11 classes, the
background first) or a VOC-style folder of images and PNG masks (:mod:`mobilenets.data.masks`; ``DATA/train``
and ``DATA/val`` subfolders are used as the two splits when present, else ``--val-data``).
Model: ``--model`` names a segmentation model (``lraspp_mobilenet_v3_large``, ``deeplabv3`` ...) or a
classification backbone, which gets an LR-ASPP head (``--backbone`` overrides the backbone of a generic model).
Input: images are resized to ``--img-size`` squared and normalised to [-1, 1]; logits are upsampled back to the
original mask size before the metrics, so they are measured on the labels as given.
Metrics: mean IoU over the classes present (in the labels or the predictions) and pixel accuracy; 255 in a mask
is ignored.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from ..data.masks import IGNORE_INDEX
from . import dense
from .dense import MEAN, SCENES, STD, save_png

log = logging.getLogger(__name__)

GENERIC_MODEL = "lraspp"
AUX_WEIGHT = 0.5  # torchvision's segmentation recipe


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    dense.add_dense_arguments(parser, command)


# -- data ----------------------------------------------------------------------------------------------------

def train_transforms(size: int, scenes: bool) -> v2.Compose:
    """Masks move with the image (transforms.v2 with tv_tensors; masks are resized with nearest neighbour).
    Image folders get random resized crops and photometric distortion; the scenes, random by construction
    (positions, scales, colours), only flips."""
    if scenes:
        steps = [v2.Resize((size, size), antialias=True)]
    else:
        steps = [v2.RandomPhotometricDistort(p=0.5), v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)]
    return v2.Compose([v2.RandomHorizontalFlip(), *steps, v2.Normalize(MEAN, STD)])


def collate_train(batch):
    images = torch.stack([im.as_subclass(Tensor) for im, _ in batch])
    masks = torch.stack([t["mask"].as_subclass(Tensor) for _, t in batch]).long()
    return images, masks


def open_split(data: str | None, split: str, args: argparse.Namespace, transforms, scene_cfg: dict | None = None,
               class_names: list[str] | None = None):
    from ..data.masks import SegmentationFolder

    skip = bool(getattr(args, "skip_bad", False))
    if data in (None, SCENES):
        ds = dense.open_scenes(args, split, transforms, scene_cfg, "segment")
        ds.segment_class_names = ["background"] + ds.class_names
        return ds
    root = Path(data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        ds = SegmentationFolder(root / split, class_names, transforms, skip)
    elif split == "val" and getattr(args, "val_data", None):
        ds = SegmentationFolder(args.val_data, class_names, transforms, skip)
    else:
        if split == "val":
            log.warning("%s has no train/ and val/ subfolders and no --val-data was given: the metrics are "
                        "measured on the training images", root)
        ds = SegmentationFolder(root, class_names, transforms, skip)
    ds.segment_class_names = ds.class_names
    return ds


# -- evaluation ----------------------------------------------------------------------------------------------

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


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset, size: int, *, batch_size: int = 32, progress: bool = False,
                       channels_last: bool = False) -> dict:
    """mIoU and pixel accuracy of ``model`` on ``dataset`` (raw samples), at the masks' own resolution."""
    model.eval()
    c = model.num_classes
    confusion = torch.zeros(c, c, dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=lambda b: b)
    start, images = time.perf_counter(), 0
    for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
        x = dense.model_inputs([im for im, _ in batch], size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
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


# -- train ---------------------------------------------------------------------------------------------------

def open_data(args: argparse.Namespace, data: str) -> dense.DenseData:
    val_ds = open_split(data, "val", args, None)
    class_names = val_ds.segment_class_names
    size = getattr(args, "img_size", None) or (val_ds.config.image_size if data == SCENES else 512)
    train_ds = open_split(data, "train", args, train_transforms(size, data == SCENES), class_names=class_names)
    if data == SCENES:
        meta = {"data": SCENES, "seed": train_ds.seed, "image_size": train_ds.config.image_size,
                "train_scenes": len(train_ds), "val_scenes": len(val_ds), "input_size": size}
    else:
        meta = {"data": str(data), "train": train_ds.describe(), "val": val_ds.describe(), "input_size": size,
                "skipped_images": dict(train_ds.skipped)}
    return dense.DenseData(train_ds, val_ds, list(class_names), size, meta)


def losses(model: nn.Module, x: Tensor, masks: Tensor) -> dict[str, Tensor]:
    logits, aux = model.forward_with_aux(x)
    terms = {"loss_main": F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)}
    if aux is not None:
        terms["loss_aux"] = AUX_WEIGHT * F.cross_entropy(aux, masks, ignore_index=IGNORE_INDEX)
    return terms


TASK = dense.DenseTask(name="segment", generic_model=GENERIC_MODEL, open_data=open_data, open_split=open_split,
                       collate=collate_train, losses=losses, evaluate=evaluate_segmenter, metric="miou",
                       headline=("miou", "pixel_acc"), per_class="per_class_iou", per_class_label="IoU",
                       summary=lambda m: f"mIoU {m['miou']:.4f}  pixel accuracy {m['pixel_acc']:.4f}")


def train(args: argparse.Namespace) -> dict:
    """``mobilenets train --task segment``: fit a segmentation model; returns the last epoch's record."""
    return dense.fit(TASK, args)


# -- eval / predict ------------------------------------------------------------------------------------------

def evaluate(args: argparse.Namespace) -> dict:
    """``mobilenets eval --task segment``: mIoU and pixel accuracy of a checkpoint."""
    return dense.evaluate(TASK, args)


def predict(args: argparse.Namespace) -> list[dict]:
    """``mobilenets predict --task segment``: class masks drawn over each image into ``--out``/<name>.png."""
    from torchvision.utils import draw_segmentation_masks

    from ..data.transforms import decode_image

    run, meta, _ = dense.open_network(args.checkpoint, "segment", getattr(args, "backend", "torch"),
                                      getattr(args, "threads", None))
    size = meta.preprocessing.input_size[-1]
    out = Path(getattr(args, "out", None) or "predictions")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.images:
        image = decode_image(path, 3)
        h, w = image.shape[-2:]
        logits = run(dense.model_inputs([image], size))[0]
        pred = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
        classes = [c for c in pred.unique().tolist() if c != 0]
        drawn = (image * 255).round().to(torch.uint8)
        if classes:
            drawn = draw_segmentation_masks(drawn, torch.stack([pred == c for c in classes]), alpha=0.55,
                                            colors=[_colour(c) for c in classes])
        target = out / (Path(path).stem + ".png")
        save_png(drawn, target)
        pixels = torch.bincount(pred.flatten(), minlength=len(meta.class_names))
        results.append({"image": str(path), "drawn": str(target),
                        "classes": {meta.class_names[c]: round(float(pixels[c]) / pred.numel(), 4)
                                    for c in classes}})
    if getattr(args, "json", False):
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            found = ", ".join(f"{n} {share:.1%}" for n, share in r["classes"].items()) or "background only"
            print(f"{r['image']}: {found} -> {r['drawn']}")
    return results


def _colour(index: int) -> tuple[int, int, int]:
    # VOC's colour map: the bits of the class index spread over the high bits of R, G and B
    r = g = b = 0
    for shift in range(8):
        r |= ((index >> 0) & 1) << (7 - shift)
        g |= ((index >> 1) & 1) << (7 - shift)
        b |= ((index >> 2) & 1) << (7 - shift)
        index >>= 3
    return r, g, b
