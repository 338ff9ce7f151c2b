"""What the detection and segmentation entry points (``detect.py``, ``segment.py``) share: their command-line
options, the model name resolution, the optimizer and schedule, the time-boxed epoch loop, and run files.

The options the classification task already defines (``--model``, ``--data``, ``--epochs``, ``--lr`` ...) are
read from ``args`` as they are; options only added here are skipped when another task module added them first,
so every task module can be loaded into the same sub-parser.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

log = logging.getLogger(__name__)

SCENES = "scenes"  # --data value of the built-in Fashion-MNIST scenes
MEAN = (0.5, 0.5, 0.5)  # SSDLite / LR-ASPP inputs: (x - 0.5) / 0.5 of [0, 1] images, as torchvision's
STD = (0.5, 0.5, 0.5)


def add_option(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """``parser.add_argument`` unless one of ``flags`` is already taken (by another task module)."""
    taken = parser._option_string_actions  # argparse has no public lookup for this
    if any(f in taken for f in flags):
        return
    parser.add_argument(*flags, **kwargs)


def add_dense_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Options common to detection and segmentation."""
    if command == "train":
        add_option(parser, "--backbone", default=None,
                   help="detect/segment: zoo backbone of the task model (default: --model when it is a "
                        "classification model)")
        add_option(parser, "--scenes", type=int, default=None,
                   help="detect/segment on --data scenes: number of training scenes (default 10000)")
        add_option(parser, "--time-limit", type=float, default=None,
                   help="detect/segment: stop training after this many minutes, then evaluate")
        add_option(parser, "--val-data", default=None,
                   help="detect/segment: validation data (default: the test split of scenes, or DATA/val)")
    if command in ("train", "eval"):
        add_option(parser, "--scene-size", type=int, default=None,
                   help="detect/segment: canvas size of the Fashion-MNIST scenes (default 128)")
        add_option(parser, "--annotations", default=None,
                   help="detect: COCO instances JSON of --data (default: DATA/instances.json)")
    if command == "predict":
        add_option(parser, "--out", type=Path, default=None,
                   help="detect/segment: folder for the drawn predictions (PNG), default predictions/")
        add_option(parser, "--score-thresh", type=float, default=0.3,
                   help="detect: draw and list detections scoring at least this (default 0.3)")


def resolve_model(args: argparse.Namespace, task: str, generic: str) -> tuple[str, dict]:
    """Registry name and options of the task model: ``--model`` if it is a ``task`` model, else ``generic``
    on the backbone ``--backbone`` or ``--model``."""
    from ..registry import get_entry

    name = getattr(args, "model", None) or generic
    entry = get_entry(name)
    options: dict = {}
    backbone = getattr(args, "backbone", None)
    if entry.task == "classify":
        options["backbone"] = backbone or name
        name = generic
    elif entry.task != task:
        raise UserError(f"--model {name} is a {entry.task} model; pass a {task} model "
                        f"(e.g. {generic}) or a classification backbone")
    elif backbone is not None:
        options["backbone"] = backbone
    for key, attr in (("width_multiplier", "width"), ("output_stride", "output_stride"),
                      ("norm_layer", "norm_layer")):
        value = getattr(args, attr, None)
        if value is not None:
            options[key] = value
    return name, options


def no_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv / linear weights only, not on norm parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, args: argparse.Namespace, *, lr: float, weight_decay: float
                    ) -> torch.optim.Optimizer:
    opt = getattr(args, "opt", None) or "adamw"
    lr = getattr(args, "lr", None) or lr
    wd = getattr(args, "wd", None)
    wd = weight_decay if wd is None else wd
    groups = no_decay_groups(model, wd)
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    momentum = getattr(args, "momentum", None) or 0.9
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, alpha=0.9, eps=0.0316)
    raise UserError(f"--opt {opt} is not supported for dense tasks; use adamw, sgd or rmsprop")


class Deadline:
    """``--time-limit`` minutes from now (None: no limit)."""

    def __init__(self, minutes: float | None):
        self.start = time.monotonic()
        self.seconds = None if minutes is None else 60.0 * minutes

    def fraction(self) -> float:
        """Share of the time budget used (0 without a limit)."""
        return 0.0 if self.seconds is None else (time.monotonic() - self.start) / self.seconds

    def passed(self) -> bool:
        return self.fraction() >= 1.0


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  deadline: Deadline | None = None):
    """Linear warm-up then cosine decay to 1% of the peak. With a time limit, the decay follows whichever of
    steps and time runs out first, so a time-boxed run still ends at the low learning rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if deadline is not None:
            t = max(t, deadline.fraction())
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise UserError(f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower --lr "
                        "(the data passed validation, so this is an unstable learning rate)")


LOG_EVERY = 200  # training steps between progress log lines
TRAIN_BN_MOMENTUM = 0.1
RECALIBRATION_BATCHES = 8


def set_bn_momentum(model: nn.Module, momentum: float = TRAIN_BN_MOMENTUM) -> None:
    """Short from-scratch schedules move the weights fast; V3's TF momentum (0.01) lets the running statistics
    lag so far behind that the eval-mode network ignores its input. 0.1 (PyTorch's default) keeps up."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, channels_last: bool = False) -> None:
    """Precise BN (Wu & Johnson, arXiv:2105.07576): recompute the running statistics of ``model`` (the EMA
    weights, whose averaged statistics belong to no single set of weights) as a plain average over a few
    training batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for x in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
    model.train(was_training)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


def load_initial_weights(model: nn.Module, weights: str | None) -> None:
    """``--weights PATH``: start from a checkpoint of the same task model (same options), e.g. to continue a
    time-boxed run, or from a torchvision detection / segmentation checkpoint (mapped by load_weights)."""
    if not weights:
        return
    if weights in ("torchvision", "timm"):
        raise UserError(f"--weights {weights} names ImageNet classification weights; for --task detect/segment pass "
                        "the PATH of a checkpoint of the same model")
    from ..weights import load_weights

    load_weights(model, weights)
    log.info("initialised from %s", weights)


def set_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def prepare_out(args: argparse.Namespace) -> Path:
    if getattr(args, "resume", None):
        raise UserError("--resume is not supported for detect/segment runs yet; start a new run with --out")
    out = getattr(args, "out", None)
    if out is None:
        raise UserError("train needs --out RUN_DIR (the folder for checkpoints and metrics)")
    out = Path(out)
    if (out / "last.safetensors").exists():
        raise UserError(f"{out} already holds a run; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a (3, H, W) uint8 tensor as PNG (Pillow: torchvision.io's encoders are deprecated)."""
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)
