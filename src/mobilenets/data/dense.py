"""The data of the dense tasks (detection, segmentation): the built-in Fashion-MNIST scenes, a COCO folder or a
VOC-style mask folder, split into training and validation data, and the model input of raw images.

Scenes: training validates (and keeps ``best.safetensors``) on scenes of the training items held out from the
training scenes (``val_fraction`` of each class, cut with the seed; :mod:`.scenes`); ``mobilenets eval`` reports
the fixed test set, the first 1,000 scenes of the test split at seed 0 (``--limit-val N``: the first N) on the
checkpoint's canvas. Runs written before this (``scenes_val="test"``) validated on the test scenes and trained on
every training item, and resume so.

Folders: ``DATA/train`` and ``DATA/val`` subfolders are the two splits when present, else ``val_data``; without
either the metrics are measured on the training images (and a warning says so).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from ..checkpoint import CheckpointMeta
from ..errors import UserError
from ..preprocessing import INCEPTION_MEAN, INCEPTION_STD
from .loaders import VAL_SPLITS, DataConfig

log = logging.getLogger(__name__)

SCENES = "scenes"  # --data value of the built-in Fashion-MNIST scenes
# SSDLite / LR-ASPP inputs: (x - 0.5) / 0.5 of [0, 1] images, as torchvision's
MEAN, STD = INCEPTION_MEAN, INCEPTION_STD
DEFAULT_TRAIN_SCENES = 10_000
DEFAULT_VAL_SCENES = 1_000
DEFAULT_SCENE_SIZE = 128
TEST_SCENES = 1_000  # the test set of ``mobilenets eval``: the first 1,000 test scenes at TEST_SEED
TEST_SEED = 0


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
    """The ``split`` of the built-in Fashion-MNIST scenes: "train" and "val" (training and its validation, as
    ``cfg.scenes_val`` says), or "test" (the fixed test set of ``mobilenets eval``; ``trained``, a checkpoint's
    data record, gives the canvas size). Training scenes are rendered once and kept in memory when no DataLoader
    workers would each need a copy."""
    from .scenes import FashionScenes, SceneConfig

    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}")
    if cfg.scenes_val not in VAL_SPLITS:
        raise UserError(f"scenes_val={cfg.scenes_val!r} is not one of {', '.join(VAL_SPLITS)}")
    size = cfg.scene_size or (trained or {}).get("image_size") or DEFAULT_SCENE_SIZE
    config = SceneConfig(image_size=size)
    if split == "test":
        return FashionScenes("test", cfg.limit_val or TEST_SCENES, config, seed=TEST_SEED, transforms=transforms,
                             targets=targets)
    holdout = cfg.val_fraction if cfg.scenes_val == "holdout" else 0.0
    if split == "train":
        return FashionScenes("train", cfg.scenes or cfg.limit_train or DEFAULT_TRAIN_SCENES, config, seed=cfg.seed,
                             transforms=transforms, targets=targets, cache=not cfg.num_workers, holdout=holdout)
    return FashionScenes("val" if holdout else "test", cfg.limit_val or DEFAULT_VAL_SCENES, config, seed=cfg.seed,
                         transforms=transforms, targets=targets, holdout=holdout)


def split_folder(cfg: DataConfig, split: str) -> Path:
    """The folder of ``split`` ("train" / "val") of a dense data folder."""
    root = Path(cfg.data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / split
    if split == "val" and cfg.val_data:
        return Path(cfg.val_data)
    if split == "val":
        log.warning("%s has no train/ and val/ subfolders and no val_data was given: the metrics are measured "
                    "on the training images", root)
    return root


def scenes_meta(train, val, input_size: int) -> dict:
    """What a dense checkpoint records about scene data: the canvas (``mobilenets eval`` renders its test scenes
    on it) and which scenes chose the checkpoint (``val_split`` "holdout": held-out training items; "test": the
    test scenes, as every run before validation scenes existed)."""
    return {"data": SCENES, "seed": train.seed, "image_size": train.config.image_size, "train_scenes": len(train),
            "val_scenes": len(val), "val_split": "holdout" if val.split == "val" else "test",
            "val_fraction": val.holdout, "input_size": input_size}


def scene_inputs(meta: CheckpointMeta, n: int = 4) -> np.ndarray:
    """Parity inputs of a dense model: test scenes for a model trained on the Fashion-MNIST scenes (real inputs),
    else seeded noise."""
    c, h, w = meta.preprocessing.input_size
    data = meta.data_record()
    if data.get("data") == SCENES and c == 3:
        from .scenes import FashionScenes, SceneConfig

        scenes = FashionScenes("test", n, SceneConfig(image_size=data.get("image_size", h)), seed=data.get("seed", 0))
        return model_inputs([scenes.render(i)[0] for i in range(n)], h).numpy()
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0)).numpy()
