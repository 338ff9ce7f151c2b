"""Building bricks shared by every MobileNet: channel rounding, conv-norm-act, squeeze-and-excite,
activations and norm layers.

Width multipliers are applied in exactly one place, :func:`make_divisible`, with the rule of the TensorFlow
reference (``_make_divisible`` in tensorflow/models research/slim/nets/mobilenet/mobilenet.py): round to the
nearest multiple of 8, never below 8, and never more than 10% below the unrounded value.
"""
from __future__ import annotations

from enum import Enum
from functools import partial
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserError


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Channel count nearest to ``value`` that is a multiple of ``divisor`` (TF reference rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:  # rounding down must not remove more than 10%
        new_value += divisor
    return new_value


def depthwise_convs(module: nn.Module) -> list[nn.Conv2d]:
    """The depthwise convolutions inside ``module`` (one filter group per input channel: the first half of a
    depthwise separable conv), in module order."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]


class Act(str, Enum):
    """Activations named in the papers' tables (V3 Table 1/2: RE = ReLU, HS = h-swish)."""

    RELU = "relu"
    RELU6 = "relu6"
    HSWISH = "hswish"

    def layer(self) -> nn.Module:
        # nn.Hardswish is the paper's h-swish, x * ReLU6(x + 3) / 6 (V3 section 5.2); it exports to the
        # native ONNX HardSwish op.
        return {Act.RELU: nn.ReLU, Act.RELU6: nn.ReLU6, Act.HSWISH: nn.Hardswish}[self](inplace=True)


NormFactory = Callable[[int], nn.Module]

NORM_LAYERS = ("batchnorm", "syncbatchnorm", "frozenbatchnorm", "groupnorm")


def norm_factory(kind: str | NormFactory = "batchnorm", eps: float = 1e-5, momentum: float = 0.1) -> NormFactory:
    """Return ``channels -> norm module`` with the hyper-parameters bound once.

    ``momentum`` is PyTorch's: the weight of the *new* batch statistic. TensorFlow's BN ``decay`` is the weight of
    the *old* running value, so TF decay 0.997 is PyTorch momentum 0.003 (torchvision's V3 uses 0.01).
    """
    if callable(kind):
        return kind
    if kind == "batchnorm":
        return partial(nn.BatchNorm2d, eps=eps, momentum=momentum)
    if kind == "syncbatchnorm":
        return partial(nn.SyncBatchNorm, eps=eps, momentum=momentum)
    if kind == "frozenbatchnorm":
        from torchvision.ops import FrozenBatchNorm2d
        return partial(FrozenBatchNorm2d, eps=eps)
    if kind == "groupnorm":
        # Group count: the largest of 32, 16, 8, ... that divides the channels (all MobileNet widths are
        # multiples of 8).
        def group_norm(channels: int) -> nn.Module:
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
            return nn.GroupNorm(groups, channels, eps=eps)
        return group_norm
    raise UserError(f"unknown norm_layer {kind!r}; choose one of {', '.join(NORM_LAYERS)} or pass a callable")


class ConvNormAct(nn.Module):
    """conv (no bias) -> norm -> activation; ``act=None`` gives a linear layer (V2's linear bottleneck)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, *, groups: int = 1,
                 dilation: int = 1, norm: NormFactory, act: Act | None = None):
        super().__init__()
        padding = (kernel - 1) // 2 * dilation  # "same" output size for odd kernels at stride 1
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups, bias=False)
        self.bn = norm(out_ch)
        self.act = act.layer() if act is not None else nn.Identity()
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite as V3 uses it (section 5.3): global pool, 1x1 reduce + ReLU, 1x1 expand + h-sigmoid,
    channel-wise scale. The reduced width is 1/4 of the expansion layer, rounded by make_divisible."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)  # ReLU6(x + 3) / 6: the paper's hard sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s
