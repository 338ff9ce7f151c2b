"""Image-folder data sets: one subfolder per class, as torchvision's ``ImageFolder`` reads them.

Accepted layouts of ``--data DIR``::

    DIR/train/<class>/*.png  +  DIR/val/<class>/...  (or DIR/test/<class>/...)
    DIR/<class>/*.jpg        (a validation part is split off with --val-fraction)

Images are decoded per sample with :func:`mobilenets.data.transforms.decode_image`. With ``skip_bad`` a file that
cannot be decoded is dropped from its batch and counted (see :func:`collate_skip_bad`); without it the error names
the file.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset

from ..errors import UserError
from .transforms import IMAGE_SUFFIXES, decode_image

log = logging.getLogger(__name__)

VAL_NAMES = ("val", "test")

Sample = tuple[str, int]


def scan(root: str | os.PathLike) -> tuple[list[Sample], list[str]]:
    """``(samples [(path, class index)], class names)`` of one split folder."""
    root = Path(root)
    try:
        class_names, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMAGE_SUFFIXES)
    except FileNotFoundError as e:
        raise UserError(f"no usable class folders in {root} ({e}); an image folder needs one subfolder per class "
                        f"holding {'/'.join(IMAGE_SUFFIXES)} files (optionally under train/ and val/)") from e
    return samples, class_names


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` indices of ``labels``: a reproducible random split, stratified so every class keeps the
    same fraction (at least one validation item for a class of two or more). Image folders and Fashion-MNIST /
    idx training splits are cut by it."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction={val_fraction:g} must lie strictly between 0 and 1 (the share of the "
                        "training images held out for validation)")
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train, val = [], []
    for label in sorted(by_class):
        group = by_class[label]
        order = torch.randperm(len(group), generator=g).tolist()
        n_val = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """An image folder without val/: :func:`stratified_split` of its samples."""
    train, val = stratified_split([s[1] for s in samples], val_fraction, seed)
    return [samples[i] for i in train], [samples[i] for i in val]


def find_splits(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0
                ) -> tuple[list[Sample], list[Sample], list[str]]:
    """``(train samples, val samples, class names)`` of an image-folder tree (layouts in the module notes)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data={root} is not a folder; pass fashion-mnist or a folder with one subfolder per "
                        "class (optionally under train/ and val/)")
    if (root / "train").is_dir():
        train, class_names = scan(root / "train")
        val_dir = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
        if val_dir is None:
            train, val = split_samples(train, val_fraction, seed)
        else:
            val, val_names = scan(val_dir)
            if val_names != class_names:
                raise UserError(f"class folders of {val_dir} ({', '.join(val_names)}) differ from those of "
                                f"{root / 'train'} ({', '.join(class_names)}); make them the same")
    else:
        samples, class_names = scan(root)
        train, val = split_samples(samples, val_fraction, seed)
    if len(class_names) < 2:
        raise UserError(f"{root} has {len(class_names)} class folder(s); a classifier needs at least 2")
    return train, val, class_names


class BadSample(NamedTuple):
    """Stands in for an undecodable file when ``skip_bad``; the collate function drops it."""

    path: str


class ImageFolderDataset(Dataset):
    """``(image tensor, label)`` per sample; a :class:`BadSample` for an undecodable file when ``skip_bad``."""

    def __init__(self, samples: list[Sample], transform: Callable[[torch.Tensor], torch.Tensor], in_chans: int,
                 skip_bad: bool = False):
        self.samples = samples
        self.transform = transform
        self.in_chans = in_chans
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = decode_image(path, self.in_chans)
        except UserError as e:
            if not self.skip_bad:
                raise
            log.debug("skipping %s: %s", path, e)
            return BadSample(path)
        return self.transform(image), label


def collate_skip_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the good samples; the third value lists the skipped files (collected by the caller, so it also
    works with DataLoader worker processes)."""
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b.path for b in batch if isinstance(b, BadSample)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad
