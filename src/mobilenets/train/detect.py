"""Object detection: ``train``, ``evaluate`` and ``predict`` entry points of the CLI (``--task detect``).

Data: ``--data scenes`` (the built-in Fashion-MNIST scenes, :mod:`mobilenets.data.scenes`) or a folder with
images and a COCO instances JSON (:mod:`mobilenets.data.coco`; ``DATA/train`` and ``DATA/val`` subfolders are
used as the two splits when present, else ``--val-data``).
Model: ``--model`` names a detection model (``ssdlite_mobilenet_v3_large`` ...) or a classification backbone,
which gets an SSDLite head (``--backbone`` overrides the backbone of ``ssdlite``).
Input: every image is resized to ``--img-size`` squared (default: the scene size, 320 for COCO folders), as
torchvision's SSDLite320 does, then normalised to [-1, 1]; boxes are mapped back to the original image.
Metrics: COCO box mAP@[.5:.95] and mAP@.5 from pycocotools, on the original image coordinates.

The training loop, the run folder (``best.safetensors`` by val mAP) and ``--resume`` are :func:`dense.fit`'s.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from ..errors import UserError
from . import dense
from .dense import MEAN, SCENES, STD, save_png

log = logging.getLogger(__name__)

GENERIC_MODEL = "ssdlite"


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    dense.add_dense_arguments(parser, command)


# -- data ----------------------------------------------------------------------------------------------------

def train_transforms(size: int, photometric: bool = True) -> v2.Compose:
    """Flip and photometric distortion (SSD section 3.6), resize to the model input, drop boxes the resize made
    degenerate, normalise. Boxes move with the image (transforms.v2 with tv_tensors). The scenes skip the
    photometric distortion: their colours are random already, and it would double the data loading time."""
    colour = [v2.RandomPhotometricDistort(p=0.5)] if photometric else []
    return v2.Compose([v2.RandomHorizontalFlip(), *colour, v2.Resize((size, size), antialias=True),
                       v2.SanitizeBoundingBoxes(min_size=1), v2.Normalize(MEAN, STD)])


def collate_train(batch):
    images = torch.stack([im.as_subclass(Tensor) for im, _ in batch])
    targets = [{"boxes": t["boxes"].as_subclass(Tensor).float(), "labels": t["labels"]} for _, t in batch]
    return images, targets


def open_split(data: str | None, split: str, args: argparse.Namespace, transforms, scene_cfg: dict | None = None,
               class_names: list[str] | None = None):
    """The ``split`` ("train" / "val") of ``--data``: scenes or a COCO folder (whose JSON names the classes, so
    ``class_names`` is not needed)."""
    from ..data.coco import open_coco

    skip = bool(getattr(args, "skip_bad", False))
    if data in (None, SCENES):
        return dense.open_scenes(args, split, transforms, scene_cfg, "detect")
    root = Path(data)
    annotations = getattr(args, "annotations", None)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return open_coco(root / split, None, transforms, skip)
    if split == "val" and getattr(args, "val_data", None):
        return open_coco(args.val_data, None, transforms, skip)
    if split == "val":
        log.warning("%s has no train/ and val/ subfolders and no --val-data was given: the metrics are measured "
                    "on the training images", root)
    return open_coco(root, annotations, transforms, skip)


# -- evaluation ----------------------------------------------------------------------------------------------

def coco_map(gts: list[dict], detections: list[dict], num_classes: int) -> dict:
    """mAP@[.5:.95], mAP@.5 and per-class AP with pycocotools.

    ``gts[i]``: ``boxes`` (N, 4) XYXY, ``labels``, ``size`` (H, W); ``detections[i]``: ``boxes``, ``scores``,
    ``labels`` in the same coordinates.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise UserError("detection metrics need pycocotools: pip install 'mobilenets[detection]'") from e
    images, annotations, results = [], [], []
    for i, (gt, det) in enumerate(zip(gts, detections)):
        h, w = gt["size"]
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for box, label in zip(gt["boxes"].tolist(), gt["labels"].tolist()):
            bw, bh = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                "bbox": [box[0], box[1], bw, bh], "area": bw * bh, "iscrowd": 0})
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            results.append({"image_id": i + 1, "category_id": int(label), "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    categories = [{"id": c} for c in range(1, num_classes)]
    if not annotations or not results:
        return {"map": 0.0, "map50": 0.0, "per_class_ap": [0.0] * (num_classes - 1)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports with print()
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall, class) at area all, 100 dets
    per_class = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else 0.0)
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "per_class_ap": per_class}


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset, size: int, *, batch_size: int = 32, progress: bool = False,
                      channels_last: bool = False) -> dict:
    """COCO mAP of ``model`` on ``dataset`` (raw, untransformed samples), boxes in original coordinates."""
    model.eval()
    gts, dets = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=lambda b: b)
    start = time.perf_counter()
    for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
        x = dense.model_inputs([im for im, _ in batch], size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        preds = model.predict(x)
        for (im, target), pred in zip(batch, preds):
            h, w = im.shape[-2:]
            scale = torch.tensor([w / size, h / size, w / size, h / size])
            dets.append({"boxes": pred["boxes"] * scale, "scores": pred["scores"], "labels": pred["labels"]})
            gts.append({"boxes": target["boxes"].as_subclass(Tensor), "labels": target["labels"], "size": (h, w)})
    seconds = time.perf_counter() - start
    result = coco_map(gts, dets, model.num_classes)
    result.update(images=len(gts), objects=int(sum(len(g["labels"]) for g in gts)), eval_seconds=seconds)
    return result


# -- train ---------------------------------------------------------------------------------------------------

def open_data(args: argparse.Namespace, data: str) -> dense.DenseData:
    val_ds = open_split(data, "val", args, None)
    size = getattr(args, "img_size", None) or (val_ds.config.image_size if data == SCENES else 320)
    train_ds = open_split(data, "train", args, train_transforms(size, photometric=data != SCENES))
    if data == SCENES:
        meta = {"data": SCENES, "seed": train_ds.seed, "image_size": train_ds.config.image_size,
                "train_scenes": len(train_ds), "val_scenes": len(val_ds), "input_size": size}
    else:
        meta = {"data": str(data), "train": train_ds.describe(), "val": val_ds.describe(), "input_size": size,
                "skipped_annotations": dict(train_ds.skipped)}
    return dense.DenseData(train_ds, val_ds, ["background"] + list(train_ds.class_names), size, meta)


def losses(model: nn.Module, x: Tensor, targets: list[dict]) -> dict[str, Tensor]:
    terms = model.loss(model(x), targets)
    return {"loss_box": terms["bbox_regression"], "loss_cls": terms["classification"]}


TASK = dense.DenseTask(name="detect", generic_model=GENERIC_MODEL, open_data=open_data, open_split=open_split,
                       collate=collate_train, losses=losses, evaluate=evaluate_detector, metric="map",
                       headline=("map", "map50"), per_class="per_class_ap", per_class_label="AP",
                       summary=lambda m: f"mAP@[.5:.95] {m['map']:.4f}  mAP@.5 {m['map50']:.4f}")


def train(args: argparse.Namespace) -> dict:
    """``mobilenets train --task detect``: fit a detector; returns the last epoch's record."""
    return dense.fit(TASK, args)


# -- eval / predict ------------------------------------------------------------------------------------------

def evaluate(args: argparse.Namespace) -> dict:
    """``mobilenets eval --task detect``: COCO mAP of a checkpoint."""
    return dense.evaluate(TASK, args)


def predict(args: argparse.Namespace) -> list[dict]:
    """``mobilenets predict --task detect``: boxes per image, drawn into ``--out``/<name>.png."""
    from torchvision.utils import draw_bounding_boxes

    from ..data.transforms import decode_image

    from ..heads.export import POSTPROCESS_KEY
    from ..heads.ssdlite import postprocess_detections

    run, meta, properties = dense.open_network(args.checkpoint, "detect", getattr(args, "backend", "torch"),
                                               getattr(args, "threads", None))
    settings = json.loads(properties[POSTPROCESS_KEY])
    size = meta.preprocessing.input_size[-1]
    out = Path(getattr(args, "out", None) or "predictions")
    out.mkdir(parents=True, exist_ok=True)
    thresh = getattr(args, "score_thresh", 0.3)
    results = []
    for path in args.images:
        image = decode_image(path, 3)
        h, w = image.shape[-2:]
        boxes, scores = run(dense.model_inputs([image], size))
        pred = postprocess_detections(boxes[0], scores[0], (size, size), **settings)
        keep = pred["scores"] >= thresh
        boxes = pred["boxes"][keep] * torch.tensor([w / size, h / size, w / size, h / size])
        scores, labels = pred["scores"][keep], pred["labels"][keep]
        names = [meta.class_names[i] if i < len(meta.class_names) else str(i) for i in labels.tolist()]
        drawn = draw_bounding_boxes((image * 255).round().to(torch.uint8), boxes,
                                    [f"{n} {s:.2f}" for n, s in zip(names, scores.tolist())], colors="yellow")
        target = out / (Path(path).stem + ".png")
        save_png(drawn, target)
        results.append({"image": str(path), "drawn": str(target),
                        "detections": [{"class": n, "label": int(lab), "score": round(float(s), 4),
                                        "box": [round(v, 1) for v in b]}
                                       for n, lab, s, b in zip(names, labels.tolist(), scores.tolist(),
                                                               boxes.tolist())]})
    if getattr(args, "json", False):
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
            print(f"{r['image']}: {found} -> {r['drawn']}")
    return results
