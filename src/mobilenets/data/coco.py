"""COCO-format detection data: a folder of images and an instances JSON (``images``, ``annotations``,
``categories``; boxes ``[x, y, width, height]`` in pixels).

Every annotation is checked when the data set is opened, so a bad one stops the run before training, with a
message naming the JSON file, the annotation id and the image file:

- a box that is not four finite numbers, has zero or negative width/height (inverted), or leaves the image by
  more than :data:`BOX_TOLERANCE` pixels (boxes within it are clipped: COCO's own files round outwards);
- a ``category_id`` that is not in ``categories``, or an ``image_id`` that is not in ``images``.

``skip_invalid=True`` (the CLI's ``--skip-bad``) drops such annotations instead and counts them by reason in
``dataset.skipped``. Crowd annotations (``iscrowd: 1``) are not training targets and are left out (counted too).
Images without annotations are kept: they are valid training samples (all background).

Labels are contiguous: the i-th category (sorted by id) is label i + 1; 0 is the background.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import UserError

log = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0  # pixels a box may leave the image by (then it is clipped)


class CocoDetection(Dataset):
    """``(image, target)``: ``tv_tensors.Image`` float (3, H, W) in [0, 1]; target ``boxes``
    (``tv_tensors.BoundingBoxes`` XYXY), ``labels`` int64 (1..K), ``image_id``."""

    def __init__(self, images_dir: str | os.PathLike, annotation_file: str | os.PathLike, transforms=None,
                 skip_invalid: bool = False):
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms
        self.skip_invalid = skip_invalid
        if not self.annotation_file.is_file():
            raise UserError(f"annotation file {self.annotation_file} not found; set annotations to a COCO instances "
                            "JSON file")
        if not self.images_dir.is_dir():
            raise UserError(f"image folder {self.images_dir} not found; set data to the folder holding the images")
        try:
            data = json.loads(self.annotation_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{self.annotation_file} is not valid JSON ({e}); pass a COCO instances file") from e
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise UserError(f"{self.annotation_file} has no '{key}' list; a COCO instances file has images, "
                                "annotations and categories")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.images = {}
        for im in data["images"]:
            self.images[im["id"]] = {"file_name": im["file_name"], "width": int(im["width"]),
                                     "height": int(im["height"]), "boxes": [], "labels": []}
        self.skipped: Counter = Counter()
        for ann in data["annotations"]:
            self._add(ann)
        self.ids = list(self.images)
        if self.skipped:
            log.warning("%s: skipped %s", self.annotation_file,
                        ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())))

    def _add(self, ann: dict) -> None:
        image = self.images.get(ann.get("image_id"))
        where = f"{self.annotation_file}: annotation id {ann.get('id')}"
        if ann.get("iscrowd", 0):
            self.skipped["crowd annotations"] += 1
            return
        problem = None
        if image is None:
            problem = ("unknown image_id", f"image_id {ann.get('image_id')!r} is not in 'images'")
        else:
            where += f" (image {image['file_name']})"
            box = ann.get("bbox")
            if ann.get("category_id") not in self.label_of:
                problem = ("unknown category ids", f"category_id {ann.get('category_id')!r} is not one of the "
                                                   f"categories {self.category_ids}")
            elif (not isinstance(box, (list, tuple)) or len(box) != 4
                  or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
                problem = ("malformed boxes", f"bbox {box!r} is not four finite numbers [x, y, width, height]")
            else:
                x, y, w, h = box
                W, H = image["width"], image["height"]
                if w <= 0 or h <= 0:
                    problem = ("zero-area or inverted boxes", f"bbox {box} has width {w} and height {h}; both must "
                                                              "be > 0")
                elif x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > W + BOX_TOLERANCE or y + h > H + BOX_TOLERANCE:
                    problem = ("boxes outside the image", f"bbox {box} leaves the {W}x{H} image")
                else:
                    x1, y1 = max(0.0, x), max(0.0, y)
                    x2, y2 = min(float(W), x + w), min(float(H), y + h)
                    image["boxes"].append([x1, y1, x2, y2])
                    image["labels"].append(self.label_of[ann["category_id"]])
                    return
        reason, message = problem
        if not self.skip_invalid:
            raise UserError(f"{where}: {message}; fix the annotation or pass skip_bad=True to skip such annotations")
        self.skipped[reason] += 1

    def __len__(self) -> int:
        return len(self.ids)

    def annotation(self, index: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Boxes (N, 4) XYXY, labels (N,) and (height, width) of image ``index``, without decoding it."""
        im = self.images[self.ids[index]]
        return (torch.tensor(im["boxes"], dtype=torch.float32).reshape(-1, 4),
                torch.tensor(im["labels"], dtype=torch.int64), (im["height"], im["width"]))

    def load_image(self, index: int) -> torch.Tensor:
        from .transforms import decode_image

        im = self.images[self.ids[index]]
        path = self.images_dir / im["file_name"]
        image = decode_image(path, 3)
        if tuple(image.shape[-2:]) != (im["height"], im["width"]):
            raise UserError(f"{path} is {image.shape[-1]}x{image.shape[-2]} but {self.annotation_file} says "
                            f"{im['width']}x{im['height']}; fix the 'images' entry of id {self.ids[index]}")
        return image

    def __getitem__(self, index: int):
        boxes, labels, size = self.annotation(index)
        image = tv_tensors.Image(self.load_image(index))
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size), "labels": labels,
                  "image_id": self.ids[index]}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def describe(self) -> dict:
        return {"kind": "coco", "images": str(self.images_dir), "annotations": str(self.annotation_file)}


def find_annotations(data_dir: Path, annotations: str | None) -> Path:
    """``--annotations`` if given, else the single ``*.json`` in ``data_dir`` (``instances.json`` preferred)."""
    if annotations:
        return Path(annotations)
    if (data_dir / "instances.json").is_file():
        return data_dir / "instances.json"
    found = sorted(data_dir.glob("*.json"))
    if len(found) == 1:
        return found[0]
    raise UserError(f"cannot tell which COCO annotation file of {data_dir} to use ({len(found)} JSON files); "
                    "set annotations to the instances JSON file")


def open_coco(data_dir: str | os.PathLike, annotations: str | None = None, transforms=None,
              skip_invalid: bool = False) -> CocoDetection:
    """A folder holding the images (directly or in ``images/``) and the instances JSON."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data={data_dir} is not a folder; pass 'scenes' or a folder with images and a COCO "
                        "instances JSON")
    images_dir = data_dir / "images" if (data_dir / "images").is_dir() else data_dir
    return CocoDetection(images_dir, find_annotations(data_dir, annotations), transforms, skip_invalid)
