"""Segmentation data in the Pascal VOC style: images and one PNG mask per image holding class indices.

Layout::

    DATA/images/<name>.<png|jpg|jpeg|bmp>
    DATA/masks/<name>.png         palette ("P") or grayscale ("L") PNG; pixel = class index, 255 = ignore
    DATA/classes.txt              optional, one class name per line, the first is the background

Every mask is checked when the data set is opened (PNG headers and pixel values; images only by their header),
so a bad file stops the run before training with a message naming it: a mask whose size differs from its image,
a class index >= the number of classes (other than 255), an RGB mask, an image without mask. ``skip_invalid``
(the CLI's ``--skip-bad``) drops such images instead and counts them by reason in ``dataset.skipped``.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import UserError
from .transforms import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

IGNORE_INDEX = 255


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices of a palette or grayscale PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(f"mask {path} is a {im.mode} image; masks must be palette (P) or grayscale (L) PNGs "
                                "whose pixel values are class indices")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UserError(f"cannot read mask {path}: {e}; replace the file or pass skip_bad=True") from e


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {e}; replace the file or pass skip_bad=True") from e


class SegmentationFolder(Dataset):
    """``(image, target)``: ``tv_tensors.Image`` float (3, H, W) in [0, 1]; target ``mask``
    (``tv_tensors.Mask`` (H, W) int64, 255 = ignore) and ``image_id``."""

    def __init__(self, root: str | os.PathLike, class_names: list[str] | None = None, transforms=None,
                 skip_invalid: bool = False):
        self.root = Path(root)
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        if not images_dir.is_dir() or not masks_dir.is_dir():
            raise UserError(f"{self.root} needs images/ and masks/ subfolders (VOC style: masks/<name>.png per "
                            "images/<name>.jpg); set data to a folder with that layout, or to 'scenes'")
        if class_names is None:
            names_file = self.root / "classes.txt"
            if not names_file.is_file():
                raise UserError(f"{names_file} not found; write one class name per line (background first)")
            class_names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
        self.class_names = list(class_names)
        self.transforms = transforms
        self.skip_invalid = skip_invalid
        self.skipped: Counter = Counter()
        self.samples: list[tuple[Path, Path]] = []
        for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            mask = masks_dir / (image.stem + ".png")
            problem = self._check(image, mask)
            if problem is None:
                self.samples.append((image, mask))
            elif skip_invalid:
                self.skipped[problem[0]] += 1
            else:
                raise UserError(f"{problem[1]}; fix the file or pass skip_bad=True to skip such images")
        if self.skipped:
            log.warning("%s: skipped %s", self.root, ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())))
        if not self.samples:
            raise UserError(f"no usable image/mask pairs in {self.root}")

    def _check(self, image: Path, mask: Path) -> tuple[str, str] | None:
        if not mask.is_file():
            return "images without mask", f"image {image} has no mask {mask}"
        try:
            values = read_mask(mask)
            size = _image_size(image)
        except UserError as e:
            return "unreadable files", str(e)
        if values.shape != size:
            return ("masks whose size does not match the image",
                    f"mask {mask} is {values.shape[1]}x{values.shape[0]} but image {image} is {size[1]}x{size[0]}")
        bad = values[(values >= len(self.class_names)) & (values != IGNORE_INDEX)]
        if bad.size:
            return ("masks with unknown class ids",
                    f"mask {mask} holds class id {int(bad.max())} but there are {len(self.class_names)} classes "
                    f"({', '.join(self.class_names[:5])}...); use ids 0..{len(self.class_names) - 1} or "
                    f"{IGNORE_INDEX} for ignore, or list the classes in classes.txt")
        return None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from .transforms import decode_image

        image_path, mask_path = self.samples[index]
        image = tv_tensors.Image(decode_image(image_path, 3))
        mask = tv_tensors.Mask(torch.from_numpy(read_mask(mask_path).astype(np.int64)))
        target = {"mask": mask, "image_id": index}
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def describe(self) -> dict:
        return {"kind": "masks", "root": str(self.root)}
