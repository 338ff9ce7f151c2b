"""Exponential moving average of the weights (V3 paper section 6.1), with torch's ``AveragedModel``.

The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so short runs are not dominated by the
random initial weights (the same warm-up as TF's ExponentialMovingAverage with ``num_updates``).
BN running statistics are averaged too (``use_buffers=True``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

_Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]  # what AveragedModel passes, what the foreach ops take


def create_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    if decay <= 0:
        return None

    def update(ema_params: _Tensors, params: _Tensors, num_averaged: torch.Tensor | int) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:  # integer buffers (BN's num_batches_tracked): follow the model
            for e, p in zip(ema_params, params):
                e.copy_(p)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
