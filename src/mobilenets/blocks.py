"""One class per block of the papers. ``forward`` reads like the paper's figure, top to bottom; optional parts
are ``nn.Identity`` so module paths stay the same for every configuration (hooks, checkpoints, converters).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import Act, ConvNormAct, NormFactory, SqueezeExcite


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 (arXiv:1704.04861, Figure 3 right): 3x3 depthwise conv-BN-act, then 1x1 pointwise
    conv-BN-act. No residual connection."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, dilation: int = 1, kernel: int = 3,
                 act: Act, norm: NormFactory):
        super().__init__()
        self.dw = ConvNormAct(in_ch, in_ch, kernel, stride, groups=in_ch, dilation=dilation, norm=norm, act=act)
        self.pw = ConvNormAct(in_ch, out_ch, 1, norm=norm, act=act)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (MobileNetV2, arXiv:1801.04381, Table 1 / Figure 3b), which
    MobileNetV3 extends with squeeze-and-excite and h-swish (arXiv:1905.02244, Figure 4):

        1x1 expansion conv-BN-act   (absent when the expansion equals the input width)
        kxk depthwise conv-BN-act   (stride or dilation here)
        squeeze-and-excite          (V3 rows with SE)
        1x1 projection conv-BN      (linear: no activation)
        + input                     (when stride is 1 and input and output widths agree)
    """

    def __init__(self, in_ch: int, out_ch: int, *, expanded: int, kernel: int, stride: int, act: Act,
                 norm: NormFactory, se_reduced: int | None = None, dilation: int = 1):
        super().__init__()
        self.expand = (ConvNormAct(in_ch, expanded, 1, norm=norm, act=act) if expanded != in_ch
                       else nn.Identity())
        self.dw = ConvNormAct(expanded, expanded, kernel, stride, groups=expanded, dilation=dilation,
                              norm=norm, act=act)
        self.se = SqueezeExcite(expanded, se_reduced) if se_reduced else nn.Identity()
        self.project = ConvNormAct(expanded, out_ch, 1, norm=norm, act=None)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.use_residual else y
