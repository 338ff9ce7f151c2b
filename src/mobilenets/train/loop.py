"""One training epoch of any task, and BN re-estimation. No files, no printing: the caller decides what to keep."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ..tasks.base import to_input
from . import distributed
from .distributed import World
from .freeze import keep_frozen_eval
from .precision import autocast

# Every trainable BatchNorm kind torch has (its public classes; their common base, ``_BatchNorm``, is private):
# the layers whose momentum the trainer sets and whose running statistics recalibrate_bn re-estimates.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d,
               nn.LazyBatchNorm3d, nn.SyncBatchNorm)

if TYPE_CHECKING:
    from ..tasks import Task
    from .distill import Teachers


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss is {value} at epoch {epoch + 1}, step {step + 1}")
        self.epoch, self.step, self.value = epoch, step, value


def to_device(targets, device: torch.device):
    """Class labels, masks or a detector's per-image target dicts, on ``device``."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device, non_blocking=True)
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


@runtime_checkable
class FollowsProgress(Protocol):
    """A module that changes with the share of the run done (an end-to-end YOLO's annealed one-to-one top-k):
    :func:`train_one_epoch` calls it before every step."""

    def set_training_progress(self, fraction: float) -> None: ...


class TrainingStep(nn.Module):
    """The model with its task's loss: ``forward(inputs, targets) -> (loss, terms, counts)``. DDP wraps this, so
    that a task whose loss calls more than ``model.forward`` (a detector's matching, a segmenter's aux head)
    still runs through DDP's forward."""

    teachers: Teachers | None  # (set in __init__ outside the module tree)

    def __init__(self, task: Task, model: nn.Module, label_smoothing: float = 0.0, teachers=None,
                 temperature: float = 4.0, weight: float = 0.5):
        super().__init__()
        self.task, self.model, self.label_smoothing = task, model, label_smoothing
        # --teacher (train/distill.py): kept out of the module tree, so DDP, .train() and .to() leave it alone
        object.__setattr__(self, "teachers", teachers)
        self.temperature, self.weight = temperature, weight

    def forward(self, inputs: torch.Tensor, targets):
        if self.teachers is None:
            return self.task.loss(self.model, inputs, targets, self.label_smoothing)
        soft = (self.teachers.probs(inputs, self.temperature), self.temperature, self.weight)
        return self.task.loss(self.model, inputs, targets, self.label_smoothing, soft_targets=soft)


def train_one_epoch(step: nn.Module, batches, optimizer: torch.optim.Optimizer, scheduler, *, epoch: int,
                    world: World, ema=None, frozen: Sequence[nn.Module] = (), channels_last: bool = False,
                    progress: bool = True, max_steps: int | None = None, size: int | None = None,
                    deadline=None, precision: str = "fp32", scaler=None,
                    run_fraction: Callable[[], float] | None = None) -> dict:
    """Train over ``batches`` once (or until ``deadline`` passes, on every rank alike); returns the mean loss and
    loss terms, the summed task counts, images/s. Raises :class:`Diverged`.

    ``step`` is a :class:`TrainingStep` (possibly DDP-wrapped). ``size``: resize each batch to size x size pixels
    first (bilinear, antialiased), for ``--progressive-resize``. ``precision``: the forward's autocast
    (:mod:`.precision`); ``scaler``: fp16's gradient scaler. ``run_fraction``: the share of the whole run done,
    passed before every step to each module of the model that has a ``set_training_progress`` hook (an end-to-end
    YOLO's annealed one-to-one assigner).
    """
    step.train()
    model = _unwrap(step).model
    hooks = [m for m in _unwrap(step).modules() if isinstance(m, FollowsProgress)]
    keep_frozen_eval(list(frozen))
    total_loss = torch.zeros((), dtype=torch.float64)
    terms_sum: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    seen = 0
    steps = len(batches) if max_steps is None else min(max_steps, len(batches))
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
               disable=not (progress and world.is_main))
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i >= steps:
            break
        x = x.to(world.device, non_blocking=True)
        if size is not None and tuple(x.shape[-2:]) != (size, size):  # on the device, where the step runs
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x, y = to_input(x, world.device, channels_last), to_device(y, world.device)
        if hooks and run_fraction is not None:
            done = run_fraction()
            for hook in hooks:
                hook.set_training_progress(done)
        with autocast(precision, world.device):
            loss, terms, batch_counts = step(x, y)
        loss = loss.float()
        bad = not math.isfinite(loss.item())
        if distributed.any_flag(bad, world):
            raise Diverged(epoch, i, loss.item())
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16: scaled backward; a step whose gradients overflowed is skipped and the scale lowered
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        n = len(x)
        total_loss += loss.detach().double() * n
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, torch.zeros((), dtype=torch.float64)) + v.detach().double() * n
        for k, v in batch_counts.items():
            counts[k] = counts.get(k, 0) + int(v)
        seen += n
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.update()
        if deadline is not None and deadline.seconds is not None and distributed.any_flag(deadline.passed(), world):
            break
    bar.close()
    elapsed = time.perf_counter() - start
    # Figures of this rank's shard (each rank sees the same number of samples).
    return {"loss": float(total_loss) / max(seen, 1), **{k: float(v) / max(seen, 1) for k, v in terms_sum.items()},
            **counts, "seen": seen, "steps": min(i + 1, steps) if seen else 0,
            "images_per_s": seen * world.world_size / max(elapsed, 1e-9), "seconds": elapsed, "size": size}


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)  # DDP's / AveragedModel's wrapped model
    return inner if isinstance(inner, nn.Module) else model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, num_batches: int, *, frozen: tuple[str, ...] = (),
                   device: torch.device = torch.device("cpu"), channels_last: bool = False) -> None:
    """Re-estimate BN running statistics of ``model`` from ``num_batches`` training batches (cumulative average,
    as ``torch.optim.swa_utils.update_bn`` does), leaving BN layers under the ``frozen`` module names alone.

    Why: running statistics with a small momentum (V3: 0.01) lag far behind weights that still move quickly, and
    an EMA model's averaged statistics do not belong to its averaged weights; in short runs either makes the
    eval-mode network much worse than the train-mode one (observed: 0.10 vs 0.76 accuracy after one epoch).
    """
    bns = [m for name, m in model.named_modules() if isinstance(m, BATCH_NORMS)
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
