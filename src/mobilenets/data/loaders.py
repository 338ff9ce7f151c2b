"""One builder for the batches that training and evaluation read, whatever ``--data`` names.

- ``fashion-mnist`` (or a folder holding its idx files): the uint8 images stay in memory as one tensor and
  batches are sliced from it (:class:`TensorBatches`); augmentation runs on the batch.
- any other folder: an image-folder tree (:mod:`.image_folder`) read through a ``DataLoader``.

Training order comes from ``DistributedSampler`` (seeded, ``set_epoch`` per epoch) in both cases, also in a
single process: with the same seed, one process with batch B sees exactly the global batches that N processes
with batch B/N see together.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ..errors import UserError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, crop_resize
from . import fashion_mnist
from .image_folder import ImageFolderDataset, collate_skip_bad, find_splits, stratified_split
from .transforms import TensorAugment, folder_transforms, preprocess

FASHION = "fashion-mnist"


def data_kind(data: str) -> tuple[str, Path | None]:
    """``("fashion", root or None)`` or ``("folder", path)`` for a ``--data`` value."""
    if data == FASHION:
        return "fashion", None
    path = Path(data)
    if not path.exists():
        raise UserError(f"data={data} does not exist; pass {FASHION} (Debian package "
                        f"{fashion_mnist.DEBIAN_PACKAGE}) or a folder of images with one subfolder per class")
    if path.is_dir() and fashion_mnist.is_fashion_mnist_dir(path):
        return "fashion", path
    return "folder", path


def default_preprocessing(data: str, img_size: int, in_chans: int) -> Preprocessing:
    """Fashion-MNIST: resize the 28x28 image to ``img_size`` (no crop) with the data set's statistics.
    Image folders: ImageNet-style resize to :func:`~mobilenets.preprocessing.crop_resize` and centre crop."""
    kind, _ = data_kind(data)
    if kind == "fashion":
        return Preprocessing(input_size=(in_chans, img_size, img_size), resize=img_size,
                             mean=(fashion_mnist.MEAN,) * in_chans, std=(fashion_mnist.STD,) * in_chans)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.449,), (0.226,))
    return Preprocessing(input_size=(in_chans, img_size, img_size), resize=crop_resize(img_size),
                         mean=mean, std=std)


class SampledBatches:
    """What both batch kinds share: the class names, the sample count and the training order, a
    ``DistributedSampler`` (seeded, shuffled, the last incomplete global batch dropped) whose ``set_epoch`` the
    trainer calls before each epoch. Evaluation batches have no sampler: every rank reads every sample in order."""

    def __init__(self, dataset, class_names: list[str], *, train: bool, seed: int, rank: int, world_size: int):
        self.class_names, self.train, self.num_samples = class_names, train, len(dataset)
        self.sampler: DistributedSampler | None
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True) if train else None

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)


class TensorBatches(SampledBatches):
    """Batches sliced from in-memory uint8 images (N, C, H, W), transformed as a batch."""

    bad = 0  # nothing to skip: the idx files were checked when read

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], batch_size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor], *, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        # (the sampler reads only the length; TensorDataset wraps without a copy)
        super().__init__(TensorDataset(images), class_names, train=train, seed=seed, rank=rank,
                         world_size=world_size)
        self.images, self.labels = images, labels
        self.batch_size, self.transform = batch_size, transform

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.images)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(self.sampler)) if self.sampler is not None else torch.arange(len(self.images))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.transform(self.images[idx]), self.labels[idx]


class FolderBatches(SampledBatches):
    """Batches of a data set through a DataLoader over the sampler (the same global batches for any number of
    ranks); counts files skipped with ``--skip-bad``. ``collate`` returns ``(inputs, targets, skipped file
    names)``: image folders' :func:`collate_skip_bad`, or the dense tasks' collates."""

    def __init__(self, dataset, class_names: list[str], batch_size: int, *, train: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 collate: Callable = collate_skip_bad):
        super().__init__(dataset, class_names, train=train, seed=seed, rank=rank, world_size=world_size)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, shuffle=False,
                                 num_workers=num_workers, collate_fn=collate, drop_last=train,
                                 persistent_workers=num_workers > 0)
        self.bad_files: set[str] = set()

    @property
    def bad(self) -> int:
        """Distinct files skipped so far (``--skip-bad``)."""
        return len(self.bad_files)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, bad in self.loader:
            self.bad_files.update(bad)
            if len(x):
                yield x, y


@dataclass
class DataConfig:
    """What ``--data`` and friends resolve to; stored in the run's config and the checkpoint."""

    data: str
    batch_size: int = 128
    augment: str = "basic"
    erase: float | None = None  # random-erasing probability (None: the augmentation level's own)
    seed: int = 0
    val_fraction: float = 0.1
    # Fashion-MNIST / idx data: "holdout" validates on val_fraction of the training split (stratified, seeded),
    # so that best.safetensors is not chosen on the test split; "test" validates on the test split (what runs
    # written before this field did; nothing may be chosen on it: report last.safetensors)
    val_split: str = "holdout"
    num_workers: int = 0
    skip_bad: bool = False
    limit_train: int | None = None  # first N samples only (smoke tests)
    limit_val: int | None = None
    # detection / segmentation (mobilenets.data.dense)
    scenes: int | None = None  # --data scenes: training scenes (default 10,000)
    # --data scenes: "holdout" validates on scenes of val_fraction of the training items, which the training scenes
    # never draw; "test" on the test scenes, training on every item (what runs written before this field did)
    scenes_val: str = "holdout"
    scene_size: int | None = None  # canvas of the scenes (default 128)
    annotations: str | None = None  # COCO instances JSON of --data (default DATA/instances.json)
    val_data: str | None = None  # validation folder when --data has no train/ and val/


def _limit(n: int | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tensors if n is None else tuple(t[:n] for t in tensors)


VAL_SPLITS = ("holdout", "test")


def holdout_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held out)`` indices of a training split: :func:`~.image_folder.stratified_split` (``fraction`` of
    each class, drawn with ``seed``: the same split on every rank and at every resume), both in ascending order."""
    keep, held = stratified_split(labels.tolist(), fraction, seed)
    return torch.tensor(sorted(keep), dtype=torch.long), torch.tensor(sorted(held), dtype=torch.long)


def build_train_val(cfg: DataConfig, pre: Preprocessing, rank: int = 0, world_size: int = 1):
    """``(train batches, val batches, class names)``; val batches are complete on every rank."""
    kind, root = data_kind(cfg.data)
    if cfg.val_split not in VAL_SPLITS:
        raise UserError(f"val_split={cfg.val_split!r} is not one of {', '.join(VAL_SPLITS)}")
    if kind == "fashion":
        x_tr, y_tr, names = fashion_mnist.load_fashion_mnist("train", root)
        if cfg.val_split == "holdout":
            keep, held = holdout_indices(y_tr, cfg.val_fraction, cfg.seed)
            x_va, y_va = x_tr[held], y_tr[held]
            x_tr, y_tr = x_tr[keep], y_tr[keep]
        else:
            x_va, y_va, _ = fashion_mnist.load_fashion_mnist("test", root)
        x_tr, y_tr = _limit(cfg.limit_train, x_tr.unsqueeze(1), y_tr)
        x_va, y_va = _limit(cfg.limit_val, x_va.unsqueeze(1), y_va)
        augment: Callable[[torch.Tensor], torch.Tensor]
        augment = TensorAugment(pre, cfg.augment, (x_tr.shape[-2], x_tr.shape[-1]), erase=cfg.erase)
        train: TensorBatches | FolderBatches
        val: TensorBatches | FolderBatches
        train = TensorBatches(x_tr, y_tr, names, cfg.batch_size, augment, train=True, seed=cfg.seed, rank=rank,
                              world_size=world_size)
        val = TensorBatches(x_va, y_va, names, cfg.batch_size, lambda b: preprocess(b, pre), train=False)
        return train, val, names
    assert root is not None  # data_kind gives folders their path
    train_s, val_s, names = find_splits(root, cfg.val_fraction, cfg.seed)  # (val_split: Fashion-MNIST / idx only)
    train_s, val_s = train_s[:cfg.limit_train], val_s[:cfg.limit_val]
    in_chans = pre.input_size[0]
    augment = folder_transforms(pre, cfg.augment, cfg.erase)
    train = FolderBatches(ImageFolderDataset(train_s, augment, in_chans, cfg.skip_bad), names, cfg.batch_size,
                          train=True, seed=cfg.seed, rank=rank, world_size=world_size, num_workers=cfg.num_workers)
    val = FolderBatches(ImageFolderDataset(val_s, folder_transforms(pre, "none"), in_chans, cfg.skip_bad),
                        names, cfg.batch_size, train=False, num_workers=cfg.num_workers)
    return train, val, names


def build_eval(cfg: DataConfig, pre: Preprocessing):
    """Evaluation batches: Fashion-MNIST's 10,000 test images (whatever training validated on), or an image
    folder's val split (the same split that training used when it was cut with --val-fraction and --seed)."""
    kind, root = data_kind(cfg.data)
    if kind == "fashion":
        x, y, names = fashion_mnist.load_fashion_mnist("test", root)
        x, y = _limit(cfg.limit_val, x.unsqueeze(1), y)
        return TensorBatches(x, y, names, cfg.batch_size, lambda b: preprocess(b, pre), train=False), names
    assert root is not None  # data_kind gives folders their path
    _, val_s, names = find_splits(root, cfg.val_fraction, cfg.seed)
    val_s = val_s[:cfg.limit_val]
    ds = ImageFolderDataset(val_s, folder_transforms(pre, "none"), pre.input_size[0], cfg.skip_bad)
    return FolderBatches(ds, names, cfg.batch_size, train=False, num_workers=cfg.num_workers), names

