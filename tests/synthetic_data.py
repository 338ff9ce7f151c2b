"""A tiny, learnable stand-in for Fashion-MNIST written as real idx files (so the tests also exercise the idx
reader) and small image-folder trees. Shared by test_data / test_train / test_predict / test_distributed."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k: a bright 4-pixel-wide bar whose position and orientation encode k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        pos = 2 + 5 * (k % 5)
        if k < 5:
            images[i, pos:pos + 4, 4:24] = 230
        else:
            images[i, 4:24, pos:pos + 4] = 230
    return images, labels


def write_fashion(root: Path, n_train: int = 512, n_test: int = 256, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_images(n, seed)
        for stem, arr in zip(STEMS[split], (images, labels)):
            data = idx_bytes(arr)
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (root / stem).write_bytes(data)
    return root


def write_folder(root: Path, classes=("cat", "dog", "fish"), per_class: int = 6, size: int = 40) -> Path:
    """root/<class>/<i>.png, RGB, a colour per class."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 50, (size, size, 3)).astype(np.uint8)
            a[:, :, c % 3] += 150
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root
