"""What detection and segmentation share: the model (a task model, or a classification backbone wrapped in the
task's generic head), the data (scenes, or a folder split into train/val) and the checkpoint evaluation data.

Input: every image is stretched to ``--img-size`` squared (default: the scene size; 320 / 512 for folders, the
torchvision reference models' sizes) and normalised to [-1, 1]; metrics are measured in the original image's
coordinates.
"""
from __future__ import annotations

import abc
import time
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import CheckpointMeta
from ..data.dense import MEAN, SCENES, STD, model_inputs, open_scenes, scene_inputs, scenes_meta
from ..data.loaders import DataConfig, FolderBatches
from ..data.transforms import decode_image
from ..errors import UserError
from ..preprocessing import Preprocessing
from ..registry import create_model, get_entry
from ..weights import load_weights
from .base import Task, TaskData, to_input


class Tally(Protocol):
    """A dense task's evaluation in progress: ``add`` one batch of raw samples with the model's input for them,
    then ``metrics``."""

    def add(self, samples: list[tuple[Tensor, dict]], x: Tensor) -> None: ...

    def metrics(self) -> dict: ...


def _as_list(batch: list) -> list:  # the evaluation DataLoader's collate: raw samples of any sizes
    return batch


class DenseTask(Task):
    """A task whose network input is a whole scene: detection and segmentation."""

    generic_model: ClassVar[str]  # the registry model a bare classification backbone is wrapped in
    folder_size: ClassVar[int]  # input size for data folders (the reference models')
    per_class: ClassVar[str]  # the evaluate() key of the per-class list, kept out of metrics.jsonl
    per_class_label: ClassVar[str]  # its name in eval's table ("AP", "IoU")
    default_recipe = "dense"
    default_data = SCENES
    default_bn_recalibrate = 8

    # -- what each dense task says -------------------------------------------------------------------------
    @abc.abstractmethod
    def open_folder(self, cfg: DataConfig, split: str, transforms, class_names: list[str] | None):
        """The raw dataset of ``split`` ("train" / "val") of a data folder (not the scenes)."""

    @abc.abstractmethod
    def train_transforms(self, size: int, scenes: bool, augment: str = "basic"):
        """The training augmentation to the model input ``size`` (images and their targets move together)."""

    @abc.abstractmethod
    def class_names_of(self, dataset) -> list[str]:
        """The class names of a raw dataset, as the model's outputs count them."""

    @abc.abstractmethod
    def collate_targets(self, targets: list[dict]) -> Any:
        """The training targets of a batch from the transformed samples' targets."""

    @abc.abstractmethod
    def tally(self, model: nn.Module, size: int) -> Tally:
        """An empty evaluation of ``model`` at input ``size``."""

    @abc.abstractmethod
    def counted(self, report: dict) -> str:
        """What :meth:`report` counted, for a person ("100 images, 312 objects")."""

    # -- shared ----------------------------------------------------------------------------------------------
    def open_split(self, cfg: DataConfig, split: str, transforms, class_names: list[str] | None = None,
                   trained: dict | None = None):
        """The raw dataset of ``split`` ("train" / "val"; "test": the scenes' test set); ``trained``: a
        checkpoint's data record."""
        if cfg.data in (None, SCENES):
            return open_scenes(cfg, split, transforms, self.name, trained)
        return self.open_folder(cfg, split, transforms, class_names)

    def collate(self, batch: list[tuple[Tensor, dict]]) -> tuple[Tensor, Any, list[str]]:
        """Transformed samples -> ``(images, targets, skipped file names)`` (:class:`FolderBatches`' contract)."""
        images = torch.stack([im.as_subclass(Tensor) for im, _ in batch])
        return images, self.collate_targets([t for _, t in batch]), []

    @torch.no_grad()
    def evaluate(self, model, val, *, preprocessing, class_names, device, channels_last=False, progress=False,
                 batch_size=32):
        """The task's metrics of ``model`` on raw, untransformed samples, measured in their own coordinates;
        ``eval_seconds`` times the network and the tally, not the metric computation."""
        size = preprocessing.input_size[-1]
        model.eval()
        tally = self.tally(model, size)
        loader = DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=_as_list)
        start = time.perf_counter()
        for batch in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress):
            tally.add(batch, to_input(model_inputs([im for im, _ in batch], size), device, channels_last))
        seconds = time.perf_counter() - start
        return {**tally.metrics(), "eval_seconds": seconds}

    def parity_inputs(self, meta: CheckpointMeta, n: int, source: str | None = None, seed: int = 1) -> np.ndarray:
        """Test scenes for a model trained on the scenes (else seeded noise), or ``source`` images when given."""
        return scene_inputs(meta, n) if source is None else super().parity_inputs(meta, n, source, seed)

    def open_data(self, cfg: DataConfig, *, img_size: int | None, in_chans: int | None, rank: int = 0,
                  world_size: int = 1) -> TaskData:
        if in_chans not in (None, 3):
            raise UserError(f"in_chans={in_chans}: detection and segmentation models read RGB images (3)")
        scenes = cfg.data == SCENES
        val = self.open_split(cfg, "val", None)
        class_names = self.class_names_of(val)
        size = img_size or (val.config.image_size if scenes else self.folder_size)
        raw = self.open_split(cfg, "train", self.train_transforms(size, scenes, cfg.augment), class_names=class_names)
        train = FolderBatches(raw, class_names, cfg.batch_size, train=True, seed=cfg.seed, rank=rank,
                              world_size=world_size, num_workers=cfg.num_workers, collate=self.collate)
        meta = scenes_meta(raw, val, size) if scenes else {
            "data": str(cfg.data), "train": raw.describe(), "val": val.describe(), "input_size": size,
            **self.skipped_record(raw)}
        pre = Preprocessing(input_size=(3, size, size), resize=size, mean=MEAN, std=STD, interpolation="bilinear")
        return TaskData(train, val, list(class_names), pre, meta=meta, num_train=len(raw), num_val=len(val))

    def has_test_split(self, data: str) -> bool:
        return data == SCENES  # the built-in scenes; detection and segmentation folders bring their own val

    def skipped_record(self, dataset) -> dict:
        """What the training record says about samples skipped in ``dataset`` (default: nothing)."""
        return {}

    def report_lines(self, report: dict) -> list[str]:
        values = report[self.per_class]
        width = max(len(n) for n in values)
        return [self.counted(report), self.summary(report),
                *(f"  {n:<{width}}  {self.per_class_label} {v:.4f}" for n, v in values.items())]

    def epoch_record(self, epoch, step, train, metrics, lr):
        return {"epoch": epoch, "step": step, "loss": train["loss"],
                **{k: v for k, v in train.items() if k.startswith("loss_")}, "train_img_s": train["images_per_s"],
                "lr": lr, **{k: v for k, v in metrics.items() if k != self.per_class}}

    def checkpoint_extra(self, metrics, record):
        return {"metrics": {**record, self.per_class: metrics[self.per_class]},
                "resize": "stretch to input_size (no crop)"}

    def build_model(self, model: str, *, num_classes: int, in_chans: int, options: dict,
                    backbone: str | None = None, weights: str | None = None) -> nn.Module:
        """``model`` when it is a model of this task, else the generic head on the backbone ``backbone or
        model``; ``weights``: a checkpoint of the same task model (or torchvision's task weights)."""
        entry = get_entry(model)
        options = dict(options)
        if entry.task == "classify":
            options["backbone"] = backbone or model
            model = self.generic_model
        elif entry.task != self.name:
            raise UserError(f"model={model!r} is a {entry.task} model; pass a {self.name} model "
                            f"(e.g. {self.generic_model}) or a classification backbone")
        elif backbone is not None:
            options["backbone"] = backbone
        built = create_model(model, num_classes=num_classes, **options)
        if weights in ("torchvision", "timm"):
            raise UserError(f"weights={weights!r} names ImageNet classification weights; for task={self.name!r} "
                            "pass the path of a checkpoint of the same model")
        if weights:
            load_weights(built, weights)
        return built

    def open_eval_data(self, meta: CheckpointMeta, cfg: DataConfig):
        """Scenes: the fixed test set (the first 1,000 test scenes at seed 0, or ``--limit-val N``) on the
        checkpoint's canvas, whatever scenes training validated on; folders: their val split."""
        if cfg.data != SCENES:
            return self.open_split(cfg, "val", None, class_names=meta.class_names)
        return self.open_split(cfg, "test", None, class_names=meta.class_names, trained=meta.data_record())

    def eval_defaults(self, trained: dict) -> dict:
        return {"seed": trained.get("seed", 0)}

    def load(self, path, meta):
        image = decode_image(path, 3)
        return image, self.inputs(image, meta)

    def inputs(self, image, meta):
        return model_inputs([image], meta.preprocessing.input_size[-1])

