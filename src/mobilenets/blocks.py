"""One class per block of the papers. ``forward`` reads like the paper's figure, top to bottom; optional parts
are ``nn.Identity`` so module paths stay the same for every configuration (hooks, checkpoints, converters).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Act, ConvNormAct, LayerScale, MultiQueryAttention, NormFactory, SqueezeExcite, make_divisible


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 (arXiv:1704.04861, Figure 3 right): 3x3 depthwise conv-BN-act, then 1x1 pointwise
    conv-BN-act. No residual connection."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, dilation: int = 1, kernel: int = 3,
                 act: Act, norm: NormFactory):
        super().__init__()
        self.dw = ConvNormAct(in_ch, in_ch, kernel, stride, groups=in_ch, dilation=dilation, norm=norm, act=act)
        self.pw = ConvNormAct(in_ch, out_ch, 1, norm=norm, act=act)
        self.out_channels = out_ch
        self.expansion_channels = None  # no expansion: a head wanting one reads the previous stage's output

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
        self.expansion_channels = expanded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_expansion(x)[0]

    def forward_expansion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, expansion)``: the expansion is the input of the depthwise conv, SSDLite's tap."""
        expansion = self.expand(x)  # (B, expanded, H, W)
        y = self.dw(expansion)  # (B, expanded, H/stride, W/stride)
        y = self.se(y)
        y = self.project(y)  # (B, out, H/stride, W/stride), linear
        return (x + y if self.use_residual else y), expansion


class ConvBlock(ConvNormAct):
    """A full k x k conv-BN-act used as a block: MobileNetV4-Conv-S's stage 0 and 1 layers. The paper's Table 11
    calls each pair "FusedIB"; the TF and timm definitions, whose weights exist, build two plain conv-BN-ReLU
    layers (3x3 stride 2, then 1x1, both with ReLU, no residual), which we follow."""

    expansion_channels = None  # no expansion before its strided conv


class FusedInvertedBottleneck(nn.Module):
    """MobileNetV4's FusedIB (arXiv:2404.10518 section 4; EfficientNetV2's Fused-MBConv): the 1x1 expansion and
    the depthwise conv of an inverted bottleneck fused into one full conv.

        k x k expansion conv-BN-act   (stride here)
        1x1 projection conv-BN        (linear)
        + input                       (when stride is 1 and input and output widths agree)
    """

    # The strided conv is the expansion itself: there is no expanded map before it for a head to read.
    expansion_channels = None

    def __init__(self, in_ch: int, out_ch: int, *, expanded: int, kernel: int, stride: int, act: Act,
                 norm: NormFactory, dilation: int = 1):
        super().__init__()
        self.expand = ConvNormAct(in_ch, expanded, kernel, stride, dilation=dilation, norm=norm, act=act)
        self.project = ConvNormAct(expanded, out_ch, 1, norm=norm, act=None)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.expand(x))
        return x + y if self.use_residual else y


class UniversalInvertedBottleneck(nn.Module):
    """MobileNetV4's Universal Inverted Bottleneck (arXiv:2404.10518 section 4, Figure 4):

        start k1 x k1 depthwise conv-BN   (optional; on the narrow input, no activation)
        1x1 expansion conv-BN-act
        middle k2 x k2 depthwise conv-BN-act   (optional; on the expanded map)
        1x1 projection conv-BN            (linear)
        layer scale                       (hybrids only; also on blocks without a residual)
        + input                           (when stride is 1 and input and output widths agree)

    Both depthwise convs: "ExtraDW"; middle only: the inverted bottleneck "IB"; start only: "ConvNext"-like;
    neither: "FFN". The stride goes on the middle depthwise conv when there is one, else on the start one (TF
    ``middle_dw_downsample``; every strided UIB of the paper's models is ExtraDW).
    """

    def __init__(self, in_ch: int, out_ch: int, *, expanded: int, start_kernel: int, mid_kernel: int, stride: int,
                 act: Act, norm: NormFactory, layer_scale: float | None = None, dilation: int = 1,
                 residual: bool = True):
        super().__init__()
        if stride > 1 and not (start_kernel or mid_kernel):
            raise ValueError("a strided UIB needs a depthwise conv to carry the stride")
        start_stride = 1 if mid_kernel else stride
        self.start_dw = (ConvNormAct(in_ch, in_ch, start_kernel, start_stride, groups=in_ch, dilation=dilation,
                                     norm=norm, act=None) if start_kernel else nn.Identity())
        self.expand = ConvNormAct(in_ch, expanded, 1, norm=norm, act=act)
        # the middle depthwise conv is ``dw``, as in InvertedResidual: the same place in the block
        self.dw = (ConvNormAct(expanded, expanded, mid_kernel, stride, groups=expanded, dilation=dilation,
                               norm=norm, act=act) if mid_kernel else nn.Identity())
        self.project = ConvNormAct(expanded, out_ch, 1, norm=norm, act=None)
        self.layer_scale = LayerScale(out_ch, layer_scale) if layer_scale else nn.Identity()
        self.use_residual = residual and stride == 1 and in_ch == out_ch
        self.out_channels = out_ch
        # SSDLite's tap (V2 paper section 6.2) is the expanded map entering the strided depthwise conv: the
        # middle one. Blocks without a middle depthwise conv (ConvNext-like, FFN) have no such map.
        self.expansion_channels = expanded if mid_kernel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_expansion(x)[0]

    def forward_expansion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, expansion)``: the expansion is the input of the middle depthwise conv."""
        expansion = self.expand(self.start_dw(x))  # (B, expanded, H, W)
        y = self.dw(expansion)  # (B, expanded, H/stride, W/stride)
        y = self.layer_scale(self.project(y))  # (B, out, H/stride, W/stride), linear
        return (x + y if self.use_residual else y), expansion


class MobileMQA(nn.Module):
    """MobileNetV4's Mobile MQA block (arXiv:2404.10518 section 5; TF ``MultiHeadSelfAttentionBlock`` with
    ``use_multi_query``):

        BN (no activation)
        multi-query attention, keys and values optionally downsampled
        layer scale
        + input
    """

    expansion_channels = None

    def __init__(self, channels: int, *, heads: int, key_dim: int, kv_stride: int, norm: NormFactory,
                 layer_scale: float | None = None, kv_kernel: int = 3, dilation: int = 1):
        super().__init__()
        self.norm = norm(channels)
        self.attn = MultiQueryAttention(channels, heads=heads, key_dim=key_dim, value_dim=key_dim,
                                        kv_stride=kv_stride, kv_kernel=kv_kernel, dilation=dilation, norm=norm)
        self.layer_scale = LayerScale(channels, layer_scale) if layer_scale else nn.Identity()
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale(self.attn(self.norm(x)))


class MultiScaleFusionAdapter(nn.Module):
    """MobileNetV5's Multi-Scale Fusion Adapter (MSFA), the neck of the Gemma 3n vision encoder (Google's Gemma 3n
    developer guide, June 2025; no paper; timm ``MobileNetV5MultiScaleFusionAdapter``), on the outputs of the last
    stages (highest resolution first):

        each map upsampled (nearest) to the size of the first one
        concatenated along the channels
        FFN: 1x1 expansion conv-norm-act, 1x1 projection conv-norm   (a UIB without depthwise convs or residual)
        resized to ``resolution`` x ``resolution``: average pooling when the size divides evenly, else bilinear
        norm

    The output has the same size at every input resolution: (B, out, 16, 16), the 256 "soft tokens" Gemma 3n
    reads from an image.
    """

    def __init__(self, in_chs: list[int], out_ch: int, *, resolution: int, expansion: float, act: Act,
                 norm: NormFactory):
        super().__init__()
        in_ch = sum(in_chs)
        self.resolution = resolution
        self.ffn = UniversalInvertedBottleneck(in_ch, out_ch, expanded=make_divisible(in_ch * expansion),
                                               start_kernel=0, mid_kernel=0, stride=1, act=act, norm=norm,
                                               residual=False)
        self.norm = norm(out_ch)
        self.out_channels = out_ch

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]  # the highest resolution: (H/16, W/16) for MobileNetV5
        maps = [m if m.shape[-2] >= size[0] and m.shape[-1] >= size[1]
                else F.interpolate(m, size=size, mode="nearest") for m in maps]
        x = self.ffn(torch.cat(maps, dim=1))  # (B, out, H/16, W/16)
        r = self.resolution
        if tuple(size) != (r, r):
            if size[0] % r or size[1] % r:
                x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
            else:  # 768 px in: 48 -> 16 with 3x3 pooling
                x = F.avg_pool2d(x, kernel_size=(size[0] // r, size[1] // r))
        return self.norm(x)  # (B, out, r, r)
