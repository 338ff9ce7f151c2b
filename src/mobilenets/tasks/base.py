"""What a task is: the one object that knows what differs between classification, detection and segmentation.

The trainer (:func:`mobilenets.train.trainer.fit`), the exporter and the runners (:mod:`mobilenets.deploy`)
and the commands take a :class:`Task` and never ask for a task's name. A task owns:

- its data: :meth:`Task.open_data` -> :class:`TaskData` (training batches, validation data, class names,
  preprocessing, what to record about the data);
- its model: :meth:`Task.build_model` (a registry model, a classification backbone wrapped in the task's
  generic head);
- its loss and training statistics (:meth:`Task.loss`), metric (:meth:`Task.evaluate`, :attr:`Task.metric`
  picks ``best.safetensors``) and the per-epoch record;
- its export: the module the exporter writes (:meth:`Task.export_module`, outputs :attr:`Task.outputs`),
  metadata that travels with it (:meth:`Task.export_properties`) and how an export is compared with eager
  PyTorch (:meth:`Task.compare`);
- its results for a person: :meth:`Task.postprocess` of a network's outputs for one image and :meth:`Task.draw`.

Adding a task is one module here plus its head in :mod:`mobilenets.heads`.
"""
from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointMeta
from ..data.loaders import DataConfig
from ..preprocessing import Preprocessing


class Batches(Protocol):
    """Training batches (and classification's validation batches): ``(inputs, targets)`` pairs, their number,
    per-epoch shuffling identical on every rank, and the count of images skipped as unreadable (``skip_bad``)."""

    def __iter__(self) -> Iterator[tuple[Tensor, Any]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    @property
    def bad(self) -> int: ...


class Samples(Protocol):
    """The dense tasks' validation data: raw ``(image, target)`` samples by index (the image float (3, H, W) in
    [0, 1] at its own size, the target in its coordinates)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, dict]: ...


@dataclass
class TaskData:
    """What a task's data gives the trainer: ``train`` batches, ``val`` (what :meth:`Task.evaluate` reads),
    the class names and preprocessing; ``meta`` goes into the checkpoints."""

    train: Batches
    val: Batches | Samples
    class_names: list[str]
    preprocessing: Preprocessing
    meta: dict = field(default_factory=dict)
    num_train: int = 0
    num_val: int = 0


@dataclass
class Parity:
    """An exported file against eager PyTorch on the same ``n`` inputs."""

    n: int
    inputs: str  # "random" or where the inputs came from
    max_abs_diff: float  # over the outputs the task compares (its units: logits, pixels, ...)
    agreement: float  # the task's decision agreement: top-1 classes, matched detections, pixels
    tolerance: float | None  # max_abs_diff must stay at or below it; None: judged on agreement alone (int8)
    min_agreement: float
    what: str = "top-1 agreement"
    passed: bool = field(init=False)

    def __post_init__(self):
        ok_diff = self.tolerance is None or self.max_abs_diff <= self.tolerance
        self.passed = bool(ok_diff and self.agreement >= self.min_agreement)

    @property
    def top1_agreement(self) -> float:  # the name classification reports have always used
        return self.agreement

    def __str__(self) -> str:
        tol = f" (tolerance {self.tolerance:.1e})" if self.tolerance is not None else ""
        return (f"parity vs eager PyTorch on {self.n} {self.inputs} inputs: max |diff| {self.max_abs_diff:.2e}{tol}, "
                f"{self.what} {self.agreement:.1%} (needs {self.min_agreement:.0%}): "
                f"{'PASS' if self.passed else 'FAIL'}")


class Task(abc.ABC):
    """Base of the three tasks. The abstract methods are what the trainer, the exporter, the server and the commands
    call, so a task that lacks one cannot be instantiated; the others are optional hooks with a default."""

    name: ClassVar[str]
    metric: ClassVar[str]  # the evaluate() key that picks best.safetensors (higher is better)
    outputs: ClassVar[tuple[str, ...]]  # names of the exported graph's outputs
    default_recipe: ClassVar[str]
    default_bn_recalibrate: ClassVar[int]  # training batches that re-estimate BN statistics before evaluation
    curves: ClassVar[tuple]  # training_curves.png panels (mobilenets.plots.Panels)
    distillation: ClassVar[bool] = False  # its loss can take teachers' soft targets (TrainConfig.teachers)
    quantization_aware: ClassVar[bool] = False  # it can fine-tune with fake quantization (TrainConfig.qat)
    default_data: ClassVar[str | None] = None  # the data when none is given (None: it must be given)
    resizable_inputs: ClassVar[bool] = False  # progressive resizing may resize training batches (no targets move)

    # -- data and model ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def open_data(self, cfg: DataConfig, *, img_size: int | None, in_chans: int | None, rank: int = 0,
                  world_size: int = 1) -> TaskData:
        """Training and validation data of ``cfg`` for this rank."""

    @abc.abstractmethod
    def build_model(self, model: str, *, num_classes: int, in_chans: int, options: dict,
                    backbone: str | None = None, weights: str | None = None) -> nn.Module:
        """The network to train: a registry model (or a backbone in the task's generic head)."""

    # -- training --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, model: nn.Module, inputs: Tensor, targets, label_smoothing: float = 0.0,
             soft_targets: tuple[Tensor, float, float] | None = None
             ) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
        """``(loss to minimise, named loss terms to log, counts to sum over the epoch)`` of one batch.
        ``soft_targets`` (teacher probabilities at temperature T, T, weight) reaches only tasks whose
        ``distillation`` is True; the others refuse teachers before training starts."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, val: Any, *, preprocessing: Preprocessing, class_names: list[str],
                 device: torch.device, channels_last: bool = False, progress: bool = False) -> dict:
        """The task's metrics on validation data (``TaskData.val`` of :meth:`open_data`, or what
        :meth:`open_eval_data` returns)."""

    @abc.abstractmethod
    def epoch_record(self, epoch: int, step: int, train: dict, metrics: dict, lr: float) -> dict:
        """The metrics.jsonl record of an epoch from the training statistics and the evaluation."""

    @abc.abstractmethod
    def summary(self, metrics: dict) -> str:
        """One line of the metrics, for logs."""

    @abc.abstractmethod
    def checkpoint_extra(self, metrics: dict, record: dict) -> dict:
        """What a checkpoint records about its evaluation."""

    def figures(self, run, history: list[dict], metrics: dict, class_names: list[str], title: str) -> None:
        """Task-specific figures of the run folder (the trainer draws the curves); default: none."""

    # -- evaluation of a checkpoint ------------------------------------------------------------------------
    @abc.abstractmethod
    def open_eval_data(self, meta: CheckpointMeta, cfg: DataConfig) -> Any:
        """Validation data for ``mobilenets eval`` of a checkpoint (default: the data it was trained with)."""

    @abc.abstractmethod
    def eval_defaults(self, trained: dict) -> dict:
        """DataConfig fields ``mobilenets eval`` takes from the checkpoint's data record (``trained``)."""

    @abc.abstractmethod
    def report(self, metrics: dict, class_names: list[str]) -> dict:
        """The JSON report of ``mobilenets eval`` (per-class values named)."""

    @abc.abstractmethod
    def report_lines(self, report: dict) -> list[str]:
        """The report as lines for a person (commands/ prints them): first what was counted ("10000 images"),
        then the metrics."""

    # -- export ----------------------------------------------------------------------------------------------
    def output_names(self, properties: dict[str, str]) -> tuple[str, ...]:
        """Names of the exported graph's outputs for a model whose :meth:`export_properties` (or a file's
        properties) are ``properties``: :attr:`outputs` unless the task's models differ (an end-to-end detector)."""
        return self.outputs

    def export_module(self, model: nn.Module) -> nn.Module:
        """What the exporters write: a normalised (N, C, H, W) batch in, :attr:`outputs` out."""
        return model.eval()

    def export_properties(self, model: nn.Module) -> dict[str, str]:
        """String metadata written beside the checkpoint metadata (e.g. a detector's NMS settings)."""
        return {}

    @abc.abstractmethod
    def compare(self, reference: list[np.ndarray], got: list[np.ndarray], *, inputs: str, int8: bool,
                properties: dict[str, str], tolerance: float | None = None,
                min_agreement: float | None = None) -> Parity:
        """An export's outputs ``got`` against eager PyTorch's ``reference`` on the same inputs."""

    def parity_inputs(self, meta: CheckpointMeta, n: int, source: str | None = None, seed: int = 1) -> np.ndarray:
        """Inputs for the parity check of an export: ``source`` images when given, else what the task knows of
        the model's data, else seeded noise."""
        from ..data.samples import sample_inputs
        return sample_inputs(meta.preprocessing, source, n, split="test", seed=seed)

    # -- results for a person --------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, path: str | Path, meta: CheckpointMeta) -> tuple[Tensor, Tensor]:
        """``(image, input)``: an image file decoded (float (C, H, W) in [0, 1], for drawing) and the network's
        (1, C, H, W) input made from it as the checkpoint's preprocessing says."""

    @abc.abstractmethod
    def inputs(self, image: Tensor, meta: CheckpointMeta) -> Tensor:
        """The network's (1, C, H, W) input for a decoded image (float (C, H, W) in [0, 1], the checkpoint's
        channel count), as :meth:`load` makes it; the server calls it on uploaded images."""

    @abc.abstractmethod
    def postprocess(self, outputs: list[Tensor], meta: CheckpointMeta, properties: dict[str, str],
                    image_size: tuple[int, int], **options) -> dict:
        """The network's outputs for one image -> a JSON-able result."""

    def draw(self, image: Tensor, result: dict, meta: CheckpointMeta) -> Tensor | None:
        """The result drawn over the image (uint8 (3, H, W)), or None for tasks that draw nothing."""
        return None

    # -- what the commands ask of a task (optional hooks) ----------------------------------------------------
    def default_img_size(self, data: str) -> int | None:
        """The input size of training on ``data`` when ``img_size`` is not given; None (the default): not known
        before the data is open."""
        return None

    def has_test_split(self, data: str) -> bool:
        """Whether ``data`` has a test split apart from its training side, so that validation may choose between
        a held-out part of training (``val_split='holdout'``) and that test split; False (the default): the data
        brings its own val folder."""
        return False

    def flip_averaged(self, model: nn.Module) -> nn.Module | None:
        """``model`` under flip test-time augmentation (``mobilenets eval --tta flip``), or None (the default)
        where the task has none."""
        return None

    @abc.abstractmethod
    def result_line(self, result: dict) -> str:
        """A result in one line, for a person."""


def relative_tolerance(reference: np.ndarray, k: float) -> float:
    """A parity tolerance of ``k`` relative to the reference's scale: ``k * max(1, max |reference|)``."""
    return k * max(1.0, float(np.abs(reference).max()))


def default_min_agreement(int8: bool) -> float:
    """The decision agreement an export needs unless told otherwise: 99% (fp32 and fp16), 90% (int8)."""
    return 0.9 if int8 else 0.99


def to_input(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    """A batch on ``device``, in channels-last memory format when asked (training and evaluation alike)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def save_png(image: Tensor, path: Path) -> None:
    """Write a (3, H, W) uint8 tensor as PNG (Pillow: torchvision.io's encoders are deprecated)."""
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
