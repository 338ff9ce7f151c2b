"""One training epoch and one evaluation pass. No files, no printing: the caller decides what to keep."""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import distributed
from .distributed import World
from .freeze import keep_frozen_eval


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss is {value} at epoch {epoch + 1}, step {step + 1}")
        self.epoch, self.step, self.value = epoch, step, value


def to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, scheduler, criterion: nn.Module,
                    *, epoch: int, world: World, ema=None, frozen: list[nn.Module] = (),
                    channels_last: bool = False, progress: bool = True, max_steps: int | None = None,
                    size: int | None = None) -> dict:
    """Train over ``batches`` once; returns mean loss, accuracy, images/s. Raises :class:`Diverged`.

    ``size``: resize each batch to size x size pixels first (bilinear, antialiased), for ``--progressive-resize``.
    """
    model.train()
    keep_frozen_eval(list(frozen))
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = seen = 0
    steps = len(batches) if max_steps is None else min(max_steps, len(batches))
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
               disable=not (progress and world.is_main))
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        if step >= steps:
            break
        x = x.to(world.device, non_blocking=True)
        if size is not None and tuple(x.shape[-2:]) != (size, size):  # on the device, where the step runs
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x, y = to_input(x, world.device, channels_last), y.to(world.device, non_blocking=True)
        logits = model(x)
        loss = criterion(logits, y)
        bad = not math.isfinite(loss.item())
        if distributed.any_flag(bad, world):
            raise Diverged(epoch, step, loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(_unwrap(model))
        total_loss += loss.detach().double() * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    # Figures of this rank's shard (each rank sees the same number of samples).
    return {"train_loss": float(total_loss) / max(seen, 1), "train_acc": correct / max(seen, 1),
            "train_images_per_s": seen * world.world_size / max(elapsed, 1e-9), "train_seconds": elapsed}


class FlipAverage(nn.Module):
    """Test-time augmentation: the log of the mean class probabilities of each image and its mirror image.

    Returns log-probabilities, so ``argmax`` and ``cross_entropy`` work on it as on logits. Only for data whose
    classes are unchanged by a horizontal flip (the training augmentation flips too); figures obtained with it
    are reported as such (``"tta": "flip"``), never as the plain single-view accuracy."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = torch.stack([self.model(x).float().log_softmax(1), self.model(x.flip(-1)).float().log_softmax(1)])
        return views.logsumexp(0) - math.log(2)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    confusion: torch.Tensor  # (classes, classes): rows true class, columns predicted
    class_names: list[str] = field(default_factory=list)

    @property
    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count,
                "per_class": dict(zip(self.class_names, self.per_class)),
                "confusion": self.confusion.tolist()}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, num_classes: int, class_names: list[str], *,
             device: torch.device = torch.device("cpu"), channels_last: bool = False,
             progress: bool = True, desc: str = "eval") -> EvalResult:
    """Top-1/top-5 accuracy, mean cross-entropy and the confusion matrix over ``batches``."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5 = 0
    loss = torch.zeros((), dtype=torch.float64)
    k = min(5, num_classes)
    for x, y in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        logits = model(to_input(x, device, channels_last)).float().cpu()
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes ** 2).view(num_classes, -1)
        top5 += int((logits.topk(k, 1).indices == y[:, None]).any(1).sum())
    count = int(confusion.sum())
    return EvalResult(top1=int(confusion.diag().sum()) / max(count, 1), top5=top5 / max(count, 1),
                      loss=float(loss) / max(count, 1), count=count, confusion=confusion,
                      class_names=list(class_names))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, num_batches: int, *, frozen: tuple[str, ...] = (),
                   device: torch.device = torch.device("cpu"), channels_last: bool = False) -> None:
    """Re-estimate BN running statistics of ``model`` from ``num_batches`` training batches (cumulative average,
    as ``torch.optim.swa_utils.update_bn`` does), leaving BN layers under the ``frozen`` module names alone.

    Why: running statistics with a small momentum (V3: 0.01) lag far behind weights that still move quickly, and
    an EMA model's averaged statistics do not belong to its averaged weights; in short runs either makes the
    eval-mode network much worse than the train-mode one (observed: 0.10 vs 0.76 accuracy after one epoch).
    """
    bns = [m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and not any(name == f or name.startswith(f + ".") for f in frozen)]
    if not bns or num_batches <= 0:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches below
    was_training = model.training
    model.train()
    for frozen_module in (m for name, m in model.named_modules() if name in frozen):
        frozen_module.eval()
    for i, (x, _) in enumerate(batches):
        if i >= num_batches:
            break
        model(to_input(x, device, channels_last))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)
