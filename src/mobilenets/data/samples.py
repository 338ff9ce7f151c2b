"""Input batches for parity checks, int8 calibration and the accuracy figure: real images preprocessed the way
the checkpoint says (:class:`~mobilenets.checkpoint.Preprocessing`, through :mod:`mobilenets.data.transforms`),
or seeded random tensors.

``source`` is ``None`` (random normal), ``"fashion-mnist"`` (the idx files, see :mod:`mobilenets.data.fashion_mnist`)
or a folder of image files (searched recursively).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..preprocessing import Preprocessing
from .loaders import FASHION
from .transforms import IMAGE_SUFFIXES


def sample_inputs(pre: Preprocessing, source: str | None, n: int, *, split: str = "test", seed: int = 0
                  ) -> np.ndarray:
    """``n`` preprocessed inputs, float32 (n, C, H, W)."""
    if source is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((n, *pre.input_size), generator=g).numpy()
    if source == FASHION:
        images, _, _ = fashion_mnist_inputs(pre, split, limit=n, seed=seed)
        return images
    return folder_inputs(pre, source, n, seed=seed)


def fashion_mnist_inputs(pre: Preprocessing, split: str, *, limit: int | None = None, seed: int = 0,
                         root: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Preprocessed Fashion-MNIST images (float32 NCHW), labels and class names; ``limit`` picks a seeded
    random subset."""
    from ..data.fashion_mnist import load_fashion_mnist
    from ..data.transforms import preprocess

    images, labels, names = load_fashion_mnist(split, root=root)
    if limit is not None and limit < len(images):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit]
        images, labels = images[idx], labels[idx]
    out = [preprocess(images[i:i + 1000].unsqueeze(1), pre) for i in range(0, len(images), 1000)]
    return torch.cat(out).numpy(), labels.numpy(), names


def folder_inputs(pre: Preprocessing, folder: str, n: int, *, seed: int = 0) -> np.ndarray:
    """Up to ``n`` images found under ``folder`` (a seeded random subset when there are more), preprocessed by
    :func:`mobilenets.data.transforms.load_image`, the same pixels ``predict`` and training see."""
    from ..data.transforms import load_image

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"image data {folder!r} is neither {FASHION!r} nor a folder; pass {FASHION!r} or a "
                        "folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder with at least "
                        f"one image, or {FASHION!r}")
    if len(files) > n:
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        files = [files[i] for i in sorted(order)]
    return torch.stack([load_image(p, pre) for p in files]).numpy()
