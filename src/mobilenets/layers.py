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


class Block(str, Enum):
    """The paper blocks an architecture table may name (``archs.spec.Unit.block``); model.py maps each to the
    builder of its class in blocks.py, with no default: a Block without a builder fails when model.py is imported."""

    DEPTHWISE_SEPARABLE = "depthwise_separable"  # V1
    INVERTED_RESIDUAL = "inverted_residual"  # V2, V3
    CONV = "conv"  # V4
    FUSED_IB = "fused_ib"  # V4
    UIB = "uib"  # V4
    MOBILE_MQA = "mobile_mqa"  # V4 hybrids


class Act(str, Enum):
    """Activations named in the papers' tables (V3 Table 1/2: RE = ReLU, HS = h-swish)."""

    RELU = "relu"
    RELU6 = "relu6"
    HSWISH = "hswish"
    GELU = "gelu"  # MobileNetV4-Hybrid-L (TF and timm definitions; the paper's tables do not say)
    GELU_TANH = "gelu_tanh"  # MobileNetV5 (Gemma 3n): GELU's tanh approximation, as its weights were trained with

    def layer(self) -> nn.Module:
        if self is Act.GELU:
            return nn.GELU()  # the exact erf form, as timm's Hybrid-L weights were trained with
        if self is Act.GELU_TANH:
            return nn.GELU(approximate="tanh")
        # nn.Hardswish is the paper's h-swish, x * ReLU6(x + 3) / 6 (V3 section 5.2); it exports to the
        # native ONNX HardSwish op.
        return {Act.RELU: nn.ReLU, Act.RELU6: nn.ReLU6, Act.HSWISH: nn.Hardswish}[self](inplace=True)


NormFactory = Callable[[int], nn.Module]

NORM_LAYERS = ("batchnorm", "syncbatchnorm", "frozenbatchnorm", "groupnorm", "rmsnorm2d")


class RMSNorm2d(nn.Module):
    """RMS normalisation over the channels of each pixel of a (B, C, H, W) map, with a per-channel weight and no
    bias or running statistics (Zhang & Sennrich, arXiv:1910.07467; MobileNetV5's norm everywhere, timm
    ``RmsNorm2d``): ``x / sqrt(mean_c(x^2) + eps) * weight``.

    Written out (pow, mean, rsqrt, mul) rather than through ``F.rms_norm`` on a permuted map, so that it exports
    to any ONNX opset (``RMSNormalization`` only exists from opset 23) and quantizers see plain float ops. Unlike
    BatchNorm it depends on the pixel's own values, so it cannot be folded into the preceding convolution.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)  # (B, 1, H, W)
        return x * scale * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps:g}"


def norm_factory(kind: str | NormFactory = "batchnorm", eps: float = 1e-5, momentum: float = 0.1) -> NormFactory:
    """Return ``channels -> norm module`` with the hyper-parameters bound once.

    ``momentum`` is PyTorch's: the weight of the *new* batch statistic. TensorFlow's BN ``decay`` is the weight of
    the *old* running value, so TF decay 0.997 is PyTorch momentum 0.003 (torchvision's V3 uses 0.01).
    ``"rmsnorm2d"`` (MobileNetV5) takes ``eps`` and has no momentum: it keeps no statistics.
    """
    if callable(kind):
        return kind
    if kind == "rmsnorm2d":
        return partial(RMSNorm2d, eps=eps)
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


class TFSameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: the output has ceil(input / stride) pixels and the padding
    that takes is split with the odd pixel at the bottom/right, computed from each input's size. At stride 1 and
    odd kernels this is the symmetric padding of every other conv here; it differs at stride 2 on even inputs (TF
    pads only bottom/right by one, symmetric padding pads both sides), which is what weights trained in TF (timm's
    ``tf_`` ports, the Gemma 3n vision tower) expect. timm: ``Conv2dSame``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.padding = (0, 0)

    @classmethod
    def like(cls, conv: nn.Conv2d) -> "TFSameConv2d":
        """The same convolution (shapes, stride, dilation, groups, bias) with TF padding; weights not copied."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                   conv.groups, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                                 reversed(self.dilation)):  # F.pad lists the last dimension first: W, then H
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def use_tf_same_padding(model: nn.Module) -> int:
    """Give every strided convolution inside ``model`` TF "SAME" padding (:class:`TFSameConv2d`); the others
    (stride 1, odd kernels) already pad the same way. Returns how many were changed. Module paths and parameter
    names do not change, so checkpoints load either way."""
    changed = 0
    for module in model.modules():
        conv = getattr(module, "conv", None)
        if isinstance(module, ConvNormAct) and type(conv) is nn.Conv2d and max(conv.stride) > 1:
            module.conv = TFSameConv2d.like(conv)
            changed += 1
    return changed


def use_antialiased_downsampling(module: nn.Module) -> int:
    """Anti-aliased downsampling (Zhang, "Making Convolutional Networks Shift-Invariant Again", arXiv:1904.11486,
    with the simplest low-pass filter; timm ``aa_layer='avg'``): every strided conv-norm-act inside ``module`` runs
    at stride 1 and is followed by 2x2 average pooling with stride 2. Attention's key/value downsampling is left
    alone (timm's is too). Parameters and their names do not change; MACs of those convs grow 4x. Returns how many
    were changed."""
    changed = 0
    for name, m in module.named_modules():
        if isinstance(m, ConvNormAct) and max(m.conv.stride) > 1 and ".key_down" not in f".{name}" \
                and ".value_down" not in f".{name}":
            if m.conv.stride != (2, 2):
                raise UserError(f"anti-aliased downsampling pools by 2; {name} has stride {m.conv.stride}")
            m.conv.stride = (1, 1)
            m.aa = nn.AvgPool2d(2)
            changed += 1
    return changed


class ConvNormAct(nn.Module):
    """conv -> norm -> activation (-> ``aa``: anti-aliasing pool, see :func:`use_antialiased_downsampling`;
    identity otherwise); ``act=None`` gives a linear layer (V2's linear bottleneck). The conv has no bias (the
    norm's shift replaces it) unless ``bias`` (MobileNetV5's stem, whose RMSNorm has no shift)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, *, groups: int = 1,
                 dilation: int = 1, norm: NormFactory, act: Act | None = None, bias: bool = False):
        super().__init__()
        padding = (kernel - 1) // 2 * dilation  # "same" output size for odd kernels at stride 1
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = norm(out_ch)
        self.act = act.layer() if act is not None else nn.Identity()
        self.aa: nn.Module = nn.Identity()
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aa(self.act(self.bn(self.conv(x))))


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


class LayerScale(nn.Module):
    """Learnable per-channel scale of a residual branch, initialised small so that each block starts close to
    the identity (CaiT, arXiv:2103.17239). MobileNetV4's hybrids put one, init 1e-5, on every UIB and Mobile MQA
    block (TF Model Garden ``MNV4LayerScale``; timm ``layer_scale_init_value``)."""

    def __init__(self, channels: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class PooledConvNorm(nn.Module):
    """1x1 conv (no bias) -> norm on a globally pooled map, given and returned as a (B, C) vector: MobileNetV4's
    post-pooling 1280 layer, which has BN where V3's has a bias (TF ``convbn(1, 1, 1280)``; timm
    ``head_norm``). The activation follows outside, as for V3's head."""

    def __init__(self, in_ch: int, out_ch: int, *, norm: NormFactory):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = norm(out_ch)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x[:, :, None, None])).flatten(1)  # (B, C_in) -> (B, C_out)


class DotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v. A leaf module of its own so that :func:`mobilenets.profile` counts the two
    matrix products (``count_macs``), which hooks on convolutions and linear layers would miss.

    Shapes: q (B, heads, N, d); k (B, 1 or heads, M, d); v (B, 1 or heads, M, d_v) -> (B, heads, N, d_v). A single
    key/value head broadcasts over the query heads: multi-query attention (Shazeer, arXiv:1911.02150).
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, heads, N, M)
        return logits.softmax(dim=-1) @ v

    @staticmethod
    def count_macs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> int:
        heads, n, d = q.shape[1:]
        m, d_v = v.shape[-2:]
        return heads * n * m * (d + d_v)  # q k^T, then (attention) v; per image


class MultiQueryAttention(nn.Module):
    """MobileNetV4's Mobile MQA (arXiv:2404.10518 section 5, Eq. 2) on a (B, C, H, W) map: ``heads`` query heads
    of ``key_dim`` channels share one key head and one value head. With ``kv_stride`` > 1, keys and values are
    computed on a map reduced by a stride-``kv_stride`` 3x3 depthwise conv + BN, one for K and another for V (the
    paper's SR(X); the TF and timm definitions, whose weights exist, give K and V separate ones). No biases.
    """

    def __init__(self, channels: int, *, heads: int, key_dim: int, value_dim: int, kv_stride: int = 1,
                 kv_kernel: int = 3, dilation: int = 1, norm: NormFactory):
        super().__init__()
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim

        def downsample() -> nn.Module:
            if kv_stride == 1:
                return nn.Identity()
            return ConvNormAct(channels, channels, kv_kernel, kv_stride, groups=channels, dilation=dilation,
                               norm=norm, act=None)

        self.query = nn.Conv2d(channels, heads * key_dim, 1, bias=False)
        self.key_down = downsample()
        self.key = nn.Conv2d(channels, key_dim, 1, bias=False)
        self.value_down = downsample()
        self.value = nn.Conv2d(channels, value_dim, 1, bias=False)
        self.attend = DotProductAttention()
        self.output = nn.Conv2d(heads * value_dim, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x).reshape(b, self.heads, self.key_dim, -1).transpose(-2, -1)  # (B, heads, HW, d)
        k = self.key(self.key_down(x)).flatten(2).transpose(-2, -1).unsqueeze(1)  # (B, 1, hw, d)
        v = self.value(self.value_down(x)).flatten(2).transpose(-2, -1).unsqueeze(1)  # (B, 1, hw, d_v)
        o = self.attend(q, k, v)  # (B, heads, HW, d_v)
        return self.output(o.transpose(-2, -1).reshape(b, self.heads * self.value_dim, h, w))
