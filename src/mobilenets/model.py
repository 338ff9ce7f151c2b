"""The one generic MobileNet: stem -> stages -> final conv -> pooled head, built from an
:class:`~mobilenets.archs.spec.Architecture` table.

Width multipliers and dilation (``output_stride``) are applied here, once, for every variant:
- every channel count goes through :func:`~mobilenets.layers.make_divisible`; V2's last 1280 channels keep
  their width for multipliers below 1 (V2 paper section 6.1) and V3's 1280/1024 head is never scaled;
- a stride-2 block that would take the total stride past ``output_stride`` keeps stride 1 and dilates the
  depthwise convs from there on (DeepLab's atrous trick, V2 paper section 6.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .archs.spec import Architecture, Unit
from .blocks import DepthwiseSeparable, InvertedResidual
from .errors import UserError
from .layers import ConvNormAct, make_divisible, norm_factory

MIN_RESOLUTION = 32  # five stride-2 stages need at least 32 pixels to leave a 1x1 map
OUTPUT_STRIDES = (8, 16, 32)
DILATION_POLICIES = ("tf", "torchvision")


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a dense-prediction head can tap."""

    stage: int  # index into feature_info order (== stages index; the final conv comes last)
    channels: int
    reduction: int  # input size / feature map size (before dilation takes over)
    module: str  # module path whose output this is, e.g. "stages.3"


class MobileNet(nn.Module):
    """Every MobileNet variant. Build it with :func:`mobilenets.create_model`.

    forward(x) = forward_head(forward_features(x)); ``forward_intermediates`` returns the output of each stage
    listed in ``feature_info``.
    """

    def __init__(self, arch: Architecture, *, stem: nn.Module, stages: nn.Sequential, final_conv: nn.Module,
                 head_fc: nn.Module, head_act: nn.Module, num_features: int, head_hidden_size: int,
                 num_classes: int, dropout: float, in_chans: int, feature_info: list[FeatureInfo]):
        super().__init__()
        self.arch = arch
        self.in_chans = in_chans
        self.stem = stem
        self.stages = stages
        self.final_conv = final_conv
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_fc = head_fc
        self.head_act = head_act
        self.dropout = nn.Dropout(dropout)
        self.num_features = num_features  # channels of forward_features' output
        self.head_hidden_size = head_hidden_size  # width of the pre-logits vector
        self.num_classes = num_classes
        self.classifier = nn.Linear(head_hidden_size, num_classes) if num_classes else nn.Identity()
        self.feature_info = feature_info
        _init_weights(self)

    # -- the model contract ------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise UserError(f"expected input of shape (batch, {self.in_chans}, height, width), got "
                            f"{tuple(x.shape)}; build the model with in_chans={x.shape[1] if x.dim() == 4 else '?'}"
                            " or convert the images")
        if x.shape[-2] < MIN_RESOLUTION or x.shape[-1] < MIN_RESOLUTION:
            raise UserError(f"input {x.shape[-2]}x{x.shape[-1]} is smaller than {MIN_RESOLUTION}x{MIN_RESOLUTION}; "
                            "resize the images to at least 32 pixels a side")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.final_conv(self.stages(self.stem(x)))  # (B, num_features, H/32, W/32) at output_stride 32

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (B, num_features)
        x = self.head_act(self.head_fc(x))  # V3: (B, 1280 | 1024); V1/V2: unchanged
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: list[int] | None = None) -> list[torch.Tensor]:
        """Feature maps listed in ``feature_info`` (all, or those ``indices``), shallow to deep."""
        self.check_input(x)
        wanted = set(range(len(self.feature_info)) if indices is None else indices)
        last = max(wanted)
        outs = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                outs.append(x)
            if i == last:
                return outs
        outs.append(self.final_conv(x))
        return outs

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: none, pre-logits out)."""
        if num_classes < 0:
            raise UserError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        if num_classes:
            _init_linear(self.classifier)


def _init_linear(m: nn.Linear) -> None:
    nn.init.normal_(m.weight, 0, 0.01)
    nn.init.zeros_(m.bias)


def _init_weights(model: nn.Module) -> None:
    # torchvision's scheme: He (fan-out) for convs, unit BN, small normal for linear layers.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            _init_linear(m)


BUILD_OPTIONS = ("width_multiplier", "num_classes", "in_chans", "dropout", "output_stride", "norm_layer",
                 "bn_eps", "bn_momentum", "dilation_policy")


def build(arch: Architecture, *, width_multiplier: float = 1.0, num_classes: int = 1000, in_chans: int = 3,
          dropout: float | None = None, output_stride: int = 32, norm_layer="batchnorm",
          bn_eps: float | None = None, bn_momentum: float | None = None, dilation_policy: str = "tf") -> MobileNet:
    """Build ``arch`` at the given width.

    dilation_policy: where the first dilated block starts when ``output_stride`` < 32. "tf" (the DeepLab /
    TF-slim reference, and timm): the block that loses its stride keeps dilation 1 and the blocks after it are
    dilated. "torchvision": that block is dilated too (torchvision's ``dilated=True`` backbones).
    """
    w = float(width_multiplier)
    if not w > 0:
        raise UserError(f"width_multiplier must be > 0, got {width_multiplier}; the papers use 0.25 to 1.4")
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if dilation_policy not in DILATION_POLICIES:
        raise UserError(f"dilation_policy must be one of {DILATION_POLICIES}, got {dilation_policy!r}")
    if int(in_chans) != in_chans or in_chans < 1:
        raise UserError(f"in_chans must be a positive integer (1 for grayscale, 3 for RGB), got {in_chans}")
    if int(num_classes) != num_classes or num_classes < 0:
        raise UserError(f"num_classes must be an integer >= 0 (0: features only), got {num_classes}")
    dropout = 0.2 if dropout is None else float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    norm = norm_factory(norm_layer, arch.bn_eps if bn_eps is None else bn_eps,
                        arch.bn_momentum if bn_momentum is None else bn_momentum)

    def width(ch: int, keep_below_1: bool = False) -> int:
        return make_divisible(ch * (max(w, 1.0) if keep_below_1 else w))

    stem_ch = width(arch.stem.out)
    stem = ConvNormAct(in_chans, stem_ch, arch.stem.kernel, arch.stem.stride, norm=norm, act=arch.stem.act)

    stages, feature_info = [], []
    current, in_ch = [], stem_ch
    reduction, dilation = arch.stem.stride, 1
    units = arch.units()
    for i, unit in enumerate(units):
        out_ch = width(unit.out)
        stride, block_dilation = unit.stride, dilation
        if stride > 1 and reduction * stride > output_stride:
            dilation *= stride  # atrous: keep the resolution, widen the receptive field instead
            stride = 1
            if dilation_policy == "torchvision":
                block_dilation = dilation
        else:
            reduction *= stride
        current.append(_make_block(unit, in_ch, out_ch, stride, block_dilation, norm))
        in_ch = out_ch
        # A stage ends where the output width changes (the papers' tables group rows this way).
        if i + 1 == len(units) or units[i + 1].out != unit.out:
            feature_info.append(FeatureInfo(len(stages), out_ch, reduction, f"stages.{len(stages)}"))
            stages.append(nn.Sequential(*current))
            current = []

    final_conv: nn.Module = nn.Identity()
    if arch.final_conv is not None:
        final_ch = width(arch.final_conv.out, arch.final_conv.keep_below_1)
        final_conv = ConvNormAct(in_ch, final_ch, 1, norm=norm, act=arch.final_conv.act)
        feature_info.append(FeatureInfo(len(stages), final_ch, reduction, "final_conv"))
        in_ch = final_ch
    num_features = in_ch

    head_fc: nn.Module = nn.Identity()
    head_act: nn.Module = nn.Identity()
    head_hidden = num_features
    if arch.head is not None:
        head_hidden = arch.head.out
        head_fc = nn.Linear(num_features, head_hidden)  # == a 1x1 conv with bias on the pooled map, no BN
        head_act = arch.head.act.layer()

    return MobileNet(arch, stem=stem, stages=nn.Sequential(*stages), final_conv=final_conv, head_fc=head_fc,
                     head_act=head_act, num_features=num_features, head_hidden_size=head_hidden,
                     num_classes=int(num_classes), dropout=dropout, in_chans=int(in_chans),
                     feature_info=feature_info)


def _make_block(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    if unit.block == "depthwise_separable":
        return DepthwiseSeparable(in_ch, out_ch, stride=stride, dilation=dilation, kernel=unit.kernel,
                                  act=unit.act, norm=norm)
    expanded = in_ch if unit.expansion == 1 else make_divisible(in_ch * unit.expansion)
    se_reduced = make_divisible(expanded / 4) if unit.se else None  # V3 section 5.3: 1/4 of the expansion
    return InvertedResidual(in_ch, out_ch, expanded=expanded, kernel=unit.kernel, stride=stride, act=unit.act,
                            norm=norm, se_reduced=se_reduced, dilation=dilation)
