"""Training recipes: optimizer, learning-rate schedule, label smoothing and EMA as one typed record.

- ``default``: a modern short-budget recipe: AdamW, linear warm-up then cosine decay to zero (stepped every
  iteration), label smoothing 0.1, EMA of the weights with decay warm-up.
- ``sgd``: the same schedule with SGD + Nesterov momentum.
- ``dense``: detection and segmentation from scratch on short budgets: AdamW at a fixed lr 3e-3 (not scaled
  with the batch), weight decay 5e-4, warm-up over 300 steps (at most a tenth of the run), cosine to 1% of the
  peak, EMA 0.999, and BN momentum 0.1 in every BN layer (V3's TF momentum 0.01 lets the running statistics lag
  so far behind fast-moving weights that the eval-mode network ignores its input).
- ``rmsprop``: the papers' recipe as torchvision's classification reference (references/classification)
  reproduces it for MobileNetV3: RMSprop (alpha 0.9, momentum 0.9, eps 0.0316 = sqrt of TF's 1e-3 which TF
  adds *inside* the square root), lr 0.064 per 1024 images of batch (linear scaling), weight decay 1e-5,
  lr x0.973 every 2 epochs, EMA 0.9999 (V3 paper, section 6.1).

Weight decay skips 1-D parameters (BN affine, biases), as the TF references do. ``depthwise_weight_decay`` sets
the decay of depthwise filters apart (None: the same as every other weight): the V1 paper (section 3.3) puts "very
little or no weight decay" on them, since each has only k x k parameters, and TF-slim's ``mobilenet_v1_arg_scope``
leaves them unregularized by default.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import lr_scheduler

from ..errors import UserError
from ..layers import depthwise_convs

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str
    lr: float  # at batch size `lr_batch`; scaled linearly to the actual global batch
    lr_batch: int = 128
    weight_decay: float = 0.0
    depthwise_weight_decay: float | None = None  # None: weight_decay
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    step_epochs: float = 2.0  # "step" schedule: multiply the lr by step_gamma every step_epochs
    step_gamma: float = 0.973
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # 0: no EMA
    warmup_steps: int | None = None  # a fixed warm-up in steps (at most a tenth of the run); None: warmup_epochs
    lr_floor: float = 0.0  # the cosine ends at this fraction of the peak learning rate
    bn_momentum: float | None = None  # training momentum of every BN layer; None: the model's own

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not self.lr > 0:
            raise UserError(f"lr={self.lr} must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"label_smoothing={self.label_smoothing} must lie in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"ema_decay={self.ema_decay} must lie in [0, 1); 0 turns EMA off")
        if self.warmup_epochs < 0:
            raise UserError(f"warmup_epochs={self.warmup_epochs} must not be negative")
        check_weight_decay(self.weight_decay, self.depthwise_weight_decay)


def check_weight_decay(weight_decay: float, depthwise_weight_decay: float | None) -> None:
    """The one check of ``weight_decay`` / ``depthwise_weight_decay``: a Recipe runs it when built (before the run
    folder exists) and :func:`decay_groups` again (for callers that pass the decays without a Recipe)."""
    if weight_decay < 0 or (depthwise_weight_decay or 0) < 0:
        negative = [f"{name}={value:g}" for name, value in (("weight_decay", weight_decay),
                                                            ("depthwise_weight_decay", depthwise_weight_decay))
                    if value is not None and value < 0]
        raise UserError(f"{' and '.join(negative)} must not be negative")


RECIPES = {
    "default": Recipe("default", "adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=1.0, label_smoothing=0.1,
                      ema_decay=0.999),
    "sgd": Recipe("sgd", "sgd", lr=0.1, weight_decay=5e-5, warmup_epochs=1.0, label_smoothing=0.1,
                  ema_decay=0.999),
    "dense": Recipe("dense", "adamw", lr=3e-3, lr_batch=0, weight_decay=5e-4, warmup_steps=300,
                    label_smoothing=0.0, ema_decay=0.999, lr_floor=0.01, bn_momentum=0.1),
    "rmsprop": Recipe("rmsprop", "rmsprop", lr=0.064, lr_batch=1024, weight_decay=1e-5, warmup_epochs=0.0,
                      schedule="step", step_epochs=2.0, step_gamma=0.973, label_smoothing=0.0, ema_decay=0.9999),
}


def resolve_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with every non-None override applied (``lr`` overrides are taken as-is, at the actual
    batch: they set ``lr_batch`` to 0, meaning no scaling)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; use one of {', '.join(RECIPES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "lr" in changes:
        changes["lr_batch"] = 0
    if "warmup_epochs" in changes:
        changes["warmup_steps"] = None
    return dataclasses.replace(RECIPES[name], **changes)


def scaled_lr(recipe: Recipe, global_batch: int) -> float:
    return recipe.lr if recipe.lr_batch == 0 else recipe.lr * global_batch / recipe.lr_batch


def decay_groups(model: nn.Module, weight_decay: float, depthwise_weight_decay: float | None = None) -> list[dict]:
    """Parameter groups of the trainable parameters: conv / linear weights decayed by ``weight_decay``, 1-D
    parameters (norm affine, biases) not at all, and depthwise filters by ``depthwise_weight_decay`` in a group of
    their own when it is given (None: they stay with the other weights, so older runs' optimizer states, which
    have two groups, still load)."""
    check_weight_decay(weight_decay, depthwise_weight_decay)
    depthwise = {id(m.weight) for m in depthwise_convs(model)} if depthwise_weight_decay is not None else set()
    decay: list[nn.Parameter] = []
    depthwise_decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else depthwise_decay if id(p) in depthwise else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if depthwise_decay:
        groups.append({"params": depthwise_decay, "weight_decay": depthwise_weight_decay})
    return groups


def build_optimizer(model: nn.Module, recipe: Recipe, global_batch: int) -> torch.optim.Optimizer:
    groups = decay_groups(model, recipe.weight_decay, recipe.depthwise_weight_decay)
    if not any(g["params"] for g in groups):
        raise UserError("every parameter is frozen; freeze less (e.g. freeze='backbone' or 'none')")
    lr = scaled_lr(recipe, global_batch)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=0.0316, momentum=recipe.momentum)


class Deadline:
    """``--time-limit`` minutes from now (None: no limit), of which ``spent`` seconds (earlier sessions of a
    resumed run) are already gone."""

    def __init__(self, minutes: float | None, spent: float = 0.0):
        if minutes is not None and not minutes > 0:
            raise UserError(f"time_limit={minutes:g} must be a positive number of minutes; leave it out (None) for no "
                            "limit")
        self.start = time.monotonic() - spent
        self.seconds = None if minutes is None else 60.0 * minutes

    def fraction(self) -> float:
        """Share of the time budget used (0 without a limit)."""
        return 0.0 if self.seconds is None else self.elapsed() / self.seconds

    def passed(self) -> bool:
        return self.fraction() >= 1.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  deadline: Deadline | None = None, *, floor: float = 0.0,
                  start: float = 0.01) -> lr_scheduler.LambdaLR:
    """Linear warm-up from ``start`` x the peak learning rate to the peak at step ``warmup_steps``, then cosine
    decay to ``floor`` x the peak at ``total_steps``. With a ``deadline`` the decay follows whichever of steps
    and wall time runs out first, so a time-boxed run still ends at the low learning rate however fast the
    machine turns out to be."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1.0 - start) * step / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if deadline is not None:
            t = max(t, deadline.fraction())
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return lr_scheduler.LambdaLR(optimizer, factor)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int, epochs: int,
                    deadline: Deadline | None = None) -> lr_scheduler.LRScheduler:
    """A per-iteration schedule (call ``step()`` after every optimizer step). The cosine schedule follows
    ``deadline`` too (see :func:`warmup_cosine`); the papers' step schedule has no end to follow."""
    total = max(1, steps_per_epoch * epochs)
    if recipe.warmup_steps is not None:
        warmup = min(recipe.warmup_steps, total // 10 + 1)
    else:
        warmup = min(total - 1, round(recipe.warmup_epochs * steps_per_epoch))
    if recipe.schedule == "cosine":
        return warmup_cosine(optimizer, total, warmup, deadline, floor=recipe.lr_floor)
    main = lr_scheduler.StepLR(optimizer, step_size=max(1, round(recipe.step_epochs * steps_per_epoch)),
                               gamma=recipe.step_gamma)
    if warmup <= 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


PROGRESSIVE_RAMP_END = 0.75  # share of the run over which --progressive-resize grows to the full size


def progressive_size(min_size: int, full_size: int, fraction: float, *, ramp_end: float = PROGRESSIVE_RAMP_END,
                     multiple: int = 8) -> int:
    """Training resolution of ``--progressive-resize``: ``min_size`` at the start of the run, growing linearly
    to ``full_size`` at ``ramp_end`` of it, then ``full_size`` to the end; rounded to a multiple of ``multiple``
    (few distinct shapes) in between; the two ends are exact. ``fraction`` is the share of the run done: of the
    epochs or of ``--time-limit``, whichever is further, as the cosine schedule counts it."""
    t = min(1.0, max(0.0, fraction) / ramp_end)
    if t >= 1.0:
        return full_size
    size = multiple * round((min_size + (full_size - min_size) * t) / multiple)
    return max(min_size, min(full_size, size))
