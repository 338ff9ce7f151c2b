"""Fashion-MNIST read straight from its four idx files (``.gz`` or raw) into memory.

The whole set is 60,000 + 10,000 images of 28x28 uint8 (about 55 MB), so it is held as one tensor and batches are
sliced from it; nothing is decoded per sample. The Debian package ``dataset-fashion-mnist`` installs the files
into :data:`DEFAULT_ROOT`; any folder holding the same four files works (``--data DIR``).

Format (http://yann.lecun.com/exdb/mnist/): big-endian int32 magic ``0x00000803`` (uint8, 3 dims) or
``0x00000801`` (uint8, 1 dim), then one big-endian int32 per dimension, then the data.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch

from ..errors import UserError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Pixel statistics of the 60,000 training images (scaled to [0, 1]).
MEAN = 0.2860
STD = 0.3530
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_UINT8_CODE = 0x08


def find_file(root: Path, stem: str) -> Path | None:
    """``root/stem`` or ``root/stem.gz``, whichever exists."""
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def is_fashion_mnist_dir(root: str | os.PathLike) -> bool:
    root = Path(root)
    return all(find_file(root, stem) is not None for pair in _FILES.values() for stem in pair)


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The folder holding the idx files; one-line error naming the package, the folder and ``--data``."""
    root = Path(root) if root is not None else Path(os.environ.get("MOBILENETS_FASHION_MNIST", DEFAULT_ROOT))
    if not is_fashion_mnist_dir(root):
        raise UserError(f"Fashion-MNIST not found in {root} (expected train-images-idx3-ubyte[.gz] and the "
                        f"other 3 idx files); install the Debian package {DEBIAN_PACKAGE} "
                        f"(apt-get install {DEBIAN_PACKAGE}) or set data to a folder with the idx files")
    return root


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read one uint8 idx file (gzip-compressed or raw) into a tensor of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read idx file {path}: {e}; reinstall {DEBIAN_PACKAGE} or pass another data "
                        "folder") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UINT8_CODE:
        raise UserError(f"{path} is not a uint8 idx file (bad magic number {data[:4].hex()}); "
                        f"reinstall {DEBIAN_PACKAGE} or pass another data folder")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for s in shape:
        count *= s
    if len(data) != header + count:
        raise UserError(f"{path} is truncated or corrupt ({len(data) - header} data bytes, header says "
                        f"{count}); reinstall {DEBIAN_PACKAGE} or pass another data folder")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def load_fashion_mnist(split: str, root: str | os.PathLike | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images uint8 (N, 28, 28), labels int64 (N,), class_names)`` of ``split`` ("train" or "test")."""
    if split not in _FILES:
        raise UserError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    root = resolve_root(root)
    images_stem, labels_stem = _FILES[split]
    images_path, labels_path = find_file(root, images_stem), find_file(root, labels_stem)
    assert images_path is not None and labels_path is not None  # resolve_root found all four files
    images = read_idx(images_path)
    labels = read_idx(labels_path).long()
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"Fashion-MNIST files in {root} do not match: images {tuple(images.shape)}, "
                        f"labels {tuple(labels.shape)}; reinstall {DEBIAN_PACKAGE}")
    if int(labels.max()) >= len(CLASS_NAMES):
        raise UserError(f"labels in {root} go up to {int(labels.max())}, Fashion-MNIST has 10 classes")
    return images, labels, list(CLASS_NAMES)
