"""Fashion-MNIST scenes: a detection and segmentation data set that needs no download.

Each scene is a square canvas holding up to ``max_items`` real Fashion-MNIST items, each rescaled (1x to 2.5x,
with a little aspect jitter), tinted, and pasted at a random position over a noisy background. Later items occlude
earlier ones, but a placement is rejected if it would hide more than ``max_occlusion`` of an item already there,
so every object keeps most of its pixels. Ground truth comes from the pasted pixels themselves:

- ``boxes``: tight ``(x1, y1, x2, y2)`` box of each item's *visible* pixels (COCO convention),
- ``labels``: Fashion-MNIST class + 1 (0 is the background),
- ``mask``: per-pixel class (0 background, 1..10 items).

Scene ``i`` of a split is a pure function of ``(seed, split, holdout, i)``: the same index always gives the same
scene, in any process, with no file written. Three splits draw from disjoint items:

- ``test``: Fashion-MNIST's 10,000 test images, never seen in training;
- ``val``: the ``holdout`` share of each class of the 60,000 training images (a seeded stratified split,
  :func:`~.image_folder.stratified_split`, the cut the classification holdout makes), to choose checkpoints on;
- ``train``: the other training images; with ``holdout=0`` (the default, and every training run before
  validation scenes existed) all 60,000.
"""
from __future__ import annotations

import colorsys
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import UserError
from .fashion_mnist import CLASS_NAMES, load_fashion_mnist
from .image_folder import stratified_split

SPLITS = {"train": 0, "test": 1, "val": 2}  # the split's key in each scene's random stream
ITEM_THRESHOLD = 0.1  # an item pixel is foreground when its intensity (0..1) exceeds this
MIN_VISIBLE_PIXELS = 16


@dataclass(frozen=True)
class SceneConfig:
    image_size: int = 128
    min_items: int = 1
    max_items: int = 6
    scale: tuple[float, float] | None = None  # item side / 28 pixels; default (1, 2.5), less on small canvases
    max_occlusion: float = 0.3  # largest share of an earlier item's visible pixels a new item may cover
    empty_fraction: float = 0.05  # share of scenes with no object at all (valid training samples)

    def __post_init__(self):
        if self.image_size < 64:
            raise UserError(f"scene image_size={self.image_size} is too small; use 64 or more")
        if self.scale is None:  # items up to ~55% of the canvas side
            object.__setattr__(self, "scale", (1.0, min(2.5, 0.55 * self.image_size / 28)))
        if not 0 <= self.min_items <= self.max_items:
            raise UserError(f"scene items: min_items={self.min_items}, max_items={self.max_items}; "
                            "need 0 <= min_items <= max_items")
        if not 0 < self.scale[0] <= self.scale[1] or 28 * self.scale[1] > self.image_size:
            raise UserError(f"scene item scale {self.scale} does not fit a {self.image_size}px canvas; "
                            f"use scales in (0, {self.image_size / 28:.2f}]")


class FashionScenes(Dataset):
    """``(image, target)`` pairs: image ``tv_tensors.Image`` float (3, S, S) in [0, 1]; target ``boxes``
    (``tv_tensors.BoundingBoxes`` XYXY), ``labels`` int64, ``mask`` (``tv_tensors.Mask`` (S, S) int64),
    ``image_id`` int. ``targets`` "detect" keeps boxes and labels only, "segment" the mask only (transforms.v2's
    SanitizeBoundingBoxes would filter a semantic mask like an instance mask). ``transforms``
    (torchvision.transforms.v2) are applied to ``(image, target)``.

    ``holdout`` (0 <= h < 1): the share of each class of the training images that "train" scenes never draw and
    "val" scenes draw from, cut with ``seed``; "train" and "val" scenes of the same ``seed`` and ``holdout`` never
    share an item. "val" needs ``holdout > 0``; "test" ignores it.

    ``cache=True`` keeps every rendered scene in memory as 8-bit (about 65 kB a scene at 128 px), so that the
    epochs after the first skip the rendering (3-4 ms a scene, a third of an SSDLite training step on one core);
    its images are the renders rounded to 8 bits, as a stored photo would be, from the first epoch on. Each
    DataLoader worker process would hold its own copy: use it with ``workers=0``."""

    class_names = list(CLASS_NAMES)  # object classes; label i + 1 is class_names[i]

    def __init__(self, split: str = "train", num_scenes: int | None = None, config: SceneConfig | None = None,
                 seed: int = 0, root: str | os.PathLike | None = None, transforms=None, targets: str = "both",
                 cache: bool = False, holdout: float = 0.0):
        if split not in SPLITS:
            raise UserError(f"unknown scenes split {split!r}; use 'train', 'val' or 'test'")
        if not 0.0 <= holdout < 1.0 or (split == "val" and holdout == 0.0):
            raise UserError(f"scenes split {split!r} with holdout={holdout:g} (val_fraction): the held-out share "
                            "of the training items must lie in [0, 1), and above 0 for the 'val' split")
        self.split = split
        self.num_scenes = num_scenes if num_scenes is not None else (10000 if split == "train" else 1000)
        if self.num_scenes < 1:
            raise UserError(f"num_scenes={num_scenes}; need at least 1 scene")
        self.config = config or SceneConfig()
        self.seed = int(seed)
        self.holdout = float(holdout) if split != "test" else 0.0
        images, labels, _ = load_fashion_mnist("test" if split == "test" else "train", root)
        self.item_indices = held_out_items(labels, self.holdout, self.seed, split)  # None: every item
        if self.item_indices is not None:
            images, labels = images[self.item_indices], labels[self.item_indices]
        self.items = images  # (N, 28, 28) uint8
        self.item_labels = labels
        self.transforms = transforms
        if targets not in ("detect", "segment", "both"):
            raise ValueError(f"targets={targets!r}")
        self.targets = targets
        self._cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_scenes:
            raise IndexError(index)
        image, boxes, labels, mask = self.render(index) if self._cache is None else self._cached(index)
        s = self.config.image_size
        target: dict[str, Any] = {"image_id": index}
        if self.targets != "segment":
            target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(s, s))
            target["labels"] = labels
        if self.targets != "detect":
            target["mask"] = tv_tensors.Mask(mask)
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _cached(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = self._cache
        assert cache is not None  # (called only with the cache on)
        if index not in cache:
            image, boxes, labels, mask = self.render(index)
            cache[index] = ((image * 255).round_().to(torch.uint8), boxes, labels, mask.to(torch.uint8))
        image, boxes, labels, mask = cache[index]
        return image.float().div_(255), boxes, labels, mask.long()

    def annotation(self, index: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Boxes (N, 4) XYXY, labels (N,) and (height, width) of scene ``index``."""
        _, boxes, labels, _ = self.render(index)
        return boxes, labels, (self.config.image_size, self.config.image_size)

    def describe(self) -> dict:
        return {"kind": "fashion_scenes", "split": self.split, "num_scenes": self.num_scenes, "seed": self.seed,
                "holdout": self.holdout, **asdict(self.config)}

    # -- the generator ----------------------------------------------------------------------------------------
    def render(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scene ``index``: image (3, S, S) float, boxes (N, 4) float, labels (N,) int64, mask (S, S) int64."""
        cfg = self.config
        s = cfg.image_size
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        image = _background(rng, s)
        instance = torch.full((s, s), -1, dtype=torch.int64)  # which pasted item owns each pixel
        labels: list[int] = []
        n_items = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(cfg.min_items, cfg.max_items + 1))
        for _ in range(n_items):
            k = int(rng.integers(len(self.items)))
            item, fg = _item(self.items[k], rng, cfg)
            placed = _place(instance, fg, rng, cfg.max_occlusion)
            if placed is None:
                continue
            y0, x0 = placed
            h, w = fg.shape
            colour = torch.tensor(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.7, 1.0)),
                                  dtype=torch.float32)
            # keep the item's own texture: shade the tint by its intensity
            patch = colour[:, None, None] * (0.35 + 0.65 * item)[None]  # (3, h, w)
            region = (slice(y0, y0 + h), slice(x0, x0 + w))
            image[:, region[0], region[1]] = torch.where(fg[None], patch, image[:, region[0], region[1]])
            instance[region] = torch.where(fg, torch.tensor(len(labels)), instance[region])
            labels.append(int(self.item_labels[k]) + 1)
        boxes, kept, mask = [], [], torch.zeros((s, s), dtype=torch.int64)
        for j, label in enumerate(labels):
            ys, xs = torch.where(instance == j)
            if ys.numel() < MIN_VISIBLE_PIXELS:  # hidden behind later items: it is background now
                instance[instance == j] = -1
                continue
            boxes.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
            kept.append(label)
            mask[instance == j] = label
        return (image.clamp_(0, 1), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                torch.tensor(kept, dtype=torch.int64), mask)


def held_out_items(labels: torch.Tensor, holdout: float, seed: int, split: str) -> torch.Tensor | None:
    """Indices (ascending) into the Fashion-MNIST training images that ``split`` draws from: the ``holdout``
    share of each class for "val", the rest for "train"; None (every item of its split) without a holdout."""
    if split == "test" or holdout == 0.0:
        return None
    keep, held = stratified_split(labels.tolist(), holdout, seed)
    return torch.tensor(sorted(held if split == "val" else keep), dtype=torch.long)


def _background(rng: np.random.Generator, s: int) -> torch.Tensor:
    """Dark tinted canvas with a smooth gradient and pixel noise, so 'not black' does not mean 'object'."""
    base = torch.tensor(rng.uniform(0.0, 0.35, size=3), dtype=torch.float32)
    ramp = torch.linspace(-1, 1, s)
    direction = rng.uniform(-1, 1, size=2) * 0.1
    gradient = direction[0] * ramp[None, :] + direction[1] * ramp[:, None]  # (s, s)
    noise = torch.from_numpy(rng.normal(0.0, 0.04, size=(3, s, s)).astype(np.float32))
    return base[:, None, None] + gradient[None].float() + noise


def _item(item: torch.Tensor, rng: np.random.Generator, cfg: SceneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescaled item intensities (h, w) in [0, 1] and its foreground mask, cropped to the foreground."""
    assert cfg.scale is not None  # SceneConfig.__post_init__ fills in the default
    side = 28 * rng.uniform(*cfg.scale)
    aspect = float(np.exp(rng.uniform(-0.15, 0.15)))
    h = int(min(cfg.image_size, max(8, round(side * aspect))))
    w = int(min(cfg.image_size, max(8, round(side / aspect))))
    x = F.interpolate(item[None, None].float() / 255.0, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if rng.random() < 0.5:
        x = x.flip(-1)
    fg = x > ITEM_THRESHOLD
    if not fg.any():  # a blank item (does not occur in Fashion-MNIST, but never divide by it)
        fg = torch.ones_like(fg)
    ys, xs = torch.where(fg)
    crop = (slice(ys.min().item(), ys.max().item() + 1), slice(xs.min().item(), xs.max().item() + 1))
    return x[crop], fg[crop]


def _place(instance: torch.Tensor, fg: torch.Tensor, rng: np.random.Generator, max_occlusion: float,
           tries: int = 20) -> tuple[int, int] | None:
    """Top-left corner where ``fg`` hides at most ``max_occlusion`` of every item already placed, or None."""
    s = instance.shape[0]
    h, w = fg.shape
    visible = torch.bincount(instance[instance >= 0], minlength=1) if (instance >= 0).any() else None
    for _ in range(tries):
        y0, x0 = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        if visible is None:
            return y0, x0
        covered = instance[y0:y0 + h, x0:x0 + w][fg]
        covered = covered[covered >= 0]
        if covered.numel() == 0:
            return y0, x0
        hidden = torch.bincount(covered, minlength=len(visible)).float()
        if bool((hidden <= max_occlusion * visible.float()).all()):
            return y0, x0
    return None


def export_scenes(dataset: FashionScenes, out_dir: str | os.PathLike, limit: int | None = None) -> Path:
    """Write scenes as files: ``images/*.png``, ``masks/*.png`` (VOC style), ``instances.json`` (COCO) and
    ``classes.txt``, readable back by :mod:`mobilenets.data.coco` and :mod:`mobilenets.data.masks`."""
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        image, boxes, labels, mask = dataset.render(i)
        name = f"{dataset.split}_{i:06d}.png"
        Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(out / "images" / name)
        Image.fromarray(mask.to(torch.uint8).numpy()).save(out / "masks" / name)
        s = image.shape[-1]
        images.append({"id": i + 1, "file_name": name, "width": s, "height": s})
        for box, label in zip(boxes.tolist(), labels.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(dataset.class_names)]
    (out / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                    "categories": categories}))
    (out / "classes.txt").write_text("\n".join(["background"] + dataset.class_names) + "\n")
    return out
