"""The data of the dense tasks (detection, segmentation): the built-in Fashion-MNIST scenes, a COCO folder or a
VOC-style mask folder, split into training and validation data, and the model input of raw images.

``DATA/train`` and ``DATA/val`` subfolders are the two splits when present, else ``val_data``; without either the
metrics are measured on the training images (and a warning says so).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from .loaders import DataConfig

log = logging.getLogger(__name__)

SCENES = "scenes"  # --data value of the built-in Fashion-MNIST scenes
MEAN = (0.5, 0.5, 0.5)  # SSDLite / LR-ASPP inputs: (x - 0.5) / 0.5 of [0, 1] images, as torchvision's
STD = (0.5, 0.5, 0.5)
DEFAULT_TRAIN_SCENES = 10_000
DEFAULT_VAL_SCENES = 1_000
DEFAULT_SCENE_SIZE = 128


def model_inputs(images: list[Tensor], size: int) -> Tensor:
    """The model's input batch for raw images (float (3, H, W) in [0, 1], any sizes): each stretched to ``size``
    squared (bilinear, antialiased), then normalised to [-1, 1] -- evaluation, predict and export use it alike."""
    out = []
    for im in images:
        im = im.as_subclass(Tensor)
        if tuple(im.shape[-2:]) != (size, size):
            im = F.interpolate(im[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(im)
    return v2.functional.normalize(torch.stack(out), list(MEAN), list(STD))


def open_scenes(cfg: DataConfig, split: str, transforms, targets: str, trained: dict | None = None):
    """The ``split`` ("train" / "val") of the built-in Fashion-MNIST scenes. ``trained`` (a checkpoint's data
    record) fixes size, seed and count for evaluation. Training scenes are rendered once and kept in memory when
    no DataLoader workers would each need a copy."""
    from .scenes import FashionScenes, SceneConfig

    trained = dict(trained or {})
    size = cfg.scene_size or trained.get("image_size") or DEFAULT_SCENE_SIZE
    if split == "train":
        n = cfg.scenes or cfg.limit_train or DEFAULT_TRAIN_SCENES
    else:
        n = cfg.limit_val or trained.get("val_scenes") or DEFAULT_VAL_SCENES
    seed = trained.get("seed", cfg.seed)
    cache = split == "train" and not cfg.num_workers
    return FashionScenes("train" if split == "train" else "test", n, SceneConfig(image_size=size), seed=seed,
                         transforms=transforms, targets=targets, cache=cache)


def split_folder(cfg: DataConfig, split: str) -> Path:
    """The folder of ``split`` ("train" / "val") of a dense data folder."""
    root = Path(cfg.data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / split
    if split == "val" and cfg.val_data:
        return Path(cfg.val_data)
    if split == "val":
        log.warning("%s has no train/ and val/ subfolders and no --val-data was given: the metrics are measured "
                    "on the training images", root)
    return root


def scenes_meta(train, val, input_size: int) -> dict:
    """What a dense checkpoint records about scene data (``mobilenets eval`` rebuilds the same test scenes)."""
    return {"data": SCENES, "seed": train.seed, "image_size": train.config.image_size, "train_scenes": len(train),
            "val_scenes": len(val), "input_size": input_size}
