"""The one generic MobileNet: stem -> stages -> final conv -> pooled head, built from an
:class:`~mobilenets.archs.spec.Architecture` table.

Width multipliers and dilation (``output_stride``) are applied here, once, for every variant:
- every channel count goes through :func:`~mobilenets.layers.make_divisible`; V2's last 1280 channels keep
  their width for multipliers below 1 (V2 paper section 6.1) and V3's 1280/1024 head is never scaled;
- a stride-2 block that would take the total stride past ``output_stride`` keeps stride 1 and dilates the
  depthwise convs from there on (DeepLab's atrous trick, V2 paper section 6.3).

MobileNetV5 ends in a neck (:class:`~mobilenets.blocks.MultiScaleFusionAdapter`) that reads the outputs of its
last two stages instead of a final conv; ``forward_features`` returns the neck's fixed-size map. Built with
``encoder=True`` a model has no pooling, head or classifier and ``forward`` returns that map as tokens.

The builder also records ``taps`` (a classifier's ``feature_info``): every map a task head may read (stage outputs,
the output and the expansion of each stage's reducing block, the final conv), with its channels, reduction, stage
and block. ``features_only=True`` builds the same network without pooling, head or classifier (and without the
stages and final conv after the last requested map); its ``forward`` returns the requested maps and its
``feature_info`` describes exactly those (timm's ``channels()`` / ``reduction()`` / ``module_name()``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .blocks import (
    ConvBlock,
    DepthwiseSeparable,
    FusedInvertedBottleneck,
    InvertedResidual,
    MobileMQA,
    MultiScaleFusionAdapter,
    UniversalInvertedBottleneck,
)
from .errors import UserError
from .layers import (
    Block,
    ConvNormAct,
    PooledConvNorm,
    make_divisible,
    norm_factory,
    use_antialiased_downsampling,
    use_tf_same_padding,
)

if TYPE_CHECKING:  # the row types are data the builder reads; archs/ imports this module
    from .archs.spec import Architecture, Unit
    from .weights import WeightEntry  # (weights.py imports this module)

OUTPUT_STRIDES = (8, 16, 32)
DILATION_POLICIES = ("tf", "torchvision")
PADDINGS = ("symmetric", "tf_same")


class Location(str, Enum):
    """Where in the network a feature map is taken."""

    STAGE = "stage"  # output of a stage (``stages.i``): the default features_only maps, timm's
    BLOCK = "block"  # output of a stage's reducing block (``stages.i.j``, the strided one): torchvision's
    #                  LR-ASPP "low" and DeepLabV3 aux maps (its ``stage_indices``)
    EXPANSION = "expansion"  # the reducing block's expansion output, before its strided depthwise conv: where
    #                          SSDLite attaches (V2 paper section 6.2, V3 paper section 6.3)
    FINAL = "final"  # output of the final 1x1 conv (V2's 1280, V3's 960 / 576)


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a dense-prediction head can read, recorded by the builder."""

    module: str  # the module whose output this is ("stages.3", "stages.3.0", "final_conv"); for EXPANSION the
    #              block whose expansion it is
    channels: int
    reduction: int  # input size / map size (before dilation takes over)
    location: Location = Location.STAGE
    stage: int | None = None  # index into ``stages`` (None: the final conv)
    block: int | None = None  # index of the block within the stage (BLOCK, EXPANSION); None: the stage's output


class FeatureInfoList(list):
    """``feature_info``: a list of :class:`FeatureInfo` with timm's accessors. ``channels()``, ``reduction()`` and
    ``module_name()`` give every entry's value in order; with an index, that entry's; with a list of indices, theirs.
    A ``features_only`` model's list describes exactly the maps its ``forward`` returns, in order."""

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [getattr(f, key) for f in self]
        if isinstance(idx, int):
            return getattr(self[idx], key)
        return [getattr(self[i], key) for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None):
        return self.get("channels", idx)

    def reduction(self, idx: int | Sequence[int] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None):
        return self.get("module", idx)


@dataclass(frozen=True)
class Select:
    """A ``feature_info`` entry named by what it is, for heads written for any backbone: the first entry at
    ``location`` whose reduction reaches ``reduction`` (with ``deepest``: the last one whose reduction is at most
    ``reduction``, i.e. the deepest map at that stride; None: the deepest entry at ``location``); ``fallback``
    when the backbone has none (MobileNetV1's blocks have no expansion)."""

    location: Location
    reduction: int | None = None
    fallback: "Select | None" = None
    deepest: bool = False

    def index(self, info: Sequence[FeatureInfo]) -> int:
        at = [i for i, f in enumerate(info) if f.location == self.location]
        if self.reduction is None:
            found = at[-1:]
        elif self.deepest:
            found = [i for i in at if info[i].reduction <= self.reduction][-1:]
        else:
            found = [i for i in at if info[i].reduction >= self.reduction][:1]
        if found:
            return found[0]
        if self.fallback is not None:
            return self.fallback.index(info)
        raise UserError(f"this backbone has no {self.location.value} feature map"
                        f"{'' if self.reduction is None else f' at reduction {self.reduction}'}; its maps are "
                        + ", ".join(f"{f.module} ({f.location.value}, /{f.reduction})" for f in info))


LAST = Select(Location.FINAL, fallback=Select(Location.STAGE))  # the deepest map (forward_features')


class MobileNet(nn.Module):
    """Every MobileNet variant. Build it with :func:`mobilenets.create_model`.

    forward(x) = forward_head(forward_features(x)); ``forward_intermediates`` returns maps listed in ``taps``
    (every map a head may read; a classifier's ``feature_info`` is the same list). Built with
    ``features_only=True`` the model has no pooling, head or classifier, ``forward(x)`` returns the maps of
    ``out_indices`` (indices into ``taps``) and ``feature_info`` describes exactly those maps, in order; built
    with ``encoder=True`` it has no pooling, head or classifier either and ``forward(x)`` returns
    ``forward_tokens(x)``.
    """

    # Set from outside, after the build. What a checkpoint needs to rebuild this exact network (set by
    # registry.create_model; see checkpoint.py):
    arch_name: str = ""
    arch_options: dict
    # The published checkpoint the weights came from (weights.create_with_weights, for create_model(...,
    # weights="torchvision" / "timm:..."): its preprocessing and top-1); None for other weights or none.
    weights_entry: WeightEntry | None = None

    def __init__(self, arch: Architecture, *, stem: nn.Module, stages: nn.Sequential, final_conv: nn.Module,
                 head_fc: nn.Module | None, head_act: nn.Module | None, num_features: int, head_hidden_size: int,
                 num_classes: int, dropout: float, in_chans: int, feature_info: list[FeatureInfo],
                 out_indices: tuple[int, ...] | None = None, neck: MultiScaleFusionAdapter | None = None,
                 neck_taps: tuple[int, ...] = (), encoder: bool = False):
        super().__init__()
        self.arch = arch
        self.arch_options = {}
        self.in_chans = in_chans
        self.stem = stem
        self.stages = stages
        self.final_conv = final_conv
        self.neck = neck  # V5: reads the outputs of stages ``neck_taps``; None elsewhere
        self.neck_taps = neck_taps
        self.taps = FeatureInfoList(feature_info)  # every map forward_intermediates can return
        self.num_features = num_features  # channels of forward_features' output
        self.features_only = out_indices is not None
        self.encoder = encoder
        self.out_indices = out_indices  # features_only: the ``taps`` entries forward returns
        # timm's contract: a features_only model's feature_info lists exactly its outputs; else every tap
        self.feature_info = (FeatureInfoList(self.taps[i] for i in out_indices) if out_indices is not None
                             else self.taps)
        if encoder:
            self.num_classes = 0
        elif not self.features_only:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.head_fc = head_fc if head_fc is not None else nn.Identity()  # None: no head layer here
            self.head_act = head_act if head_act is not None else nn.Identity()
            self.dropout = nn.Dropout(dropout)
            self.head_hidden_size = head_hidden_size  # width of the pre-logits vector
            self.num_classes = num_classes
            self.classifier = nn.Linear(head_hidden_size, num_classes) if num_classes else nn.Identity()
        # (stage, block, location) of every entry, so forward_intermediates walks the blocks once
        self._tap_index = {(f.stage, f.block, f.location): i for i, f in enumerate(feature_info)}
        _init_weights(self)

    # -- the model contract ------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise UserError(f"expected input of shape (batch, {self.in_chans}, height, width), got "
                            f"{tuple(x.shape)}; build the model with in_chans={x.shape[1] if x.dim() == 4 else '?'}"
                            " or convert the images")
        if x.shape[-2] < 1 or x.shape[-1] < 1:  # padded convs leave >= 1x1 of any non-empty input, as in torchvision
            raise UserError(f"input {x.shape[-2]}x{x.shape[-1]} has no pixels; pass images of at least 1x1")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.neck is None:
            return self.final_conv(self.stages(self.stem(x)))  # (B, num_features, H/32, W/32) at output_stride 32
        x, taps = self.stem(x), []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s in self.neck_taps:
                taps.append(x)  # V5: (B, 640, H/16, W/16), (B, 1280, H/32, W/32)
        return self.neck(taps)  # V5: (B, 2048, 16, 16) at every input size

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_features`` as a sequence of tokens, one per pixel in row-major order: (B, H*W, C). For
        MobileNetV5, the (B, 256, 2048) image tokens Gemma 3n's language model reads (its vision tower
        flattens the neck's 16 x 16 map the same way)."""
        return self.forward_features(x).flatten(2).transpose(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (B, num_features)
        x = self.head_act(self.head_fc(x))  # V3: (B, 1280 | 1024); V1/V2: unchanged
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices)  # list of (B, C_i, H/r_i, W/r_i)
        if self.encoder:
            return self.forward_tokens(x)  # (B, N, num_features)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The maps of ``taps`` entries ``indices`` (default: the stage outputs and the final conv), in
        the order of ``indices``. One pass; it stops after the deepest requested map. (V5's neck output is not
        a ``taps`` map: its size does not follow the input's; ``forward_features`` returns it.)"""
        self.check_input(x)
        if indices is None:
            indices = [i for i, f in enumerate(self.taps) if f.location in (Location.STAGE, Location.FINAL)]
        wanted = set(indices)
        bad = [i for i in wanted if not 0 <= i < len(self.taps)]
        if bad:
            raise UserError(f"feature indices {bad} out of range; this model has {len(self.taps)} maps")
        maps: dict[int, torch.Tensor] = {}
        taps = self._tap_index

        def keep(key, value):
            i = taps.get(key)
            if i is not None and i in wanted:
                maps[i] = value

        x = self.stem(x)
        block: Any  # blocks of several classes; those with an expansion tap have forward_expansion
        for s, stage in enumerate(self.stages):
            if len(maps) == len(wanted):
                break
            for b, block in enumerate(cast(nn.Sequential, stage)):  # a Sequential of Sequentials
                i = taps.get((s, b, Location.EXPANSION))
                if i is not None and i in wanted:
                    x, expansion = block.forward_expansion(x)
                    maps[i] = expansion
                else:
                    x = block(x)
                keep((s, b, Location.BLOCK), x)
            keep((s, None, Location.STAGE), x)
        if len(maps) < len(wanted):
            keep((None, None, Location.FINAL), self.final_conv(x))
        return [maps[i] for i in indices]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: none, pre-logits out)."""
        if self.features_only:
            raise UserError("a features_only model has no classifier; build it without features_only")
        if self.encoder:
            raise UserError(f"{self.arch.name} built as an encoder has no classifier; build it with encoder=False "
                            "(mobilenet_v5_300m for MobileNetV5)")
        if num_classes < 0:
            raise UserError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        if isinstance(self.classifier, nn.Linear):  # (num_classes > 0)
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
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):  # (RMSNorm2d starts at weight 1 by itself)
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            _init_linear(m)


BUILD_OPTIONS = ("width_multiplier", "num_classes", "in_chans", "dropout", "output_stride", "norm_layer",
                 "bn_eps", "bn_momentum", "dilation_policy", "features_only", "out_indices", "padding", "encoder",
                 "antialias")


def build(arch: Architecture, *, width_multiplier: float = 1.0, num_classes: int | None = None, in_chans: int = 3,
          dropout: float | None = None, output_stride: int = 32, norm_layer=None,
          bn_eps: float | None = None, bn_momentum: float | None = None, dilation_policy: str = "tf",
          features_only: bool = False, out_indices: Sequence[int | Select] | None = None,
          padding: str = "symmetric", encoder: bool = False, antialias: bool = False) -> MobileNet:
    """Build ``arch`` at the given width.

    dilation_policy: where the first dilated block starts when ``output_stride`` < 32. "tf" (the DeepLab /
    TF-slim reference, and timm): the block that loses its stride keeps dilation 1 and the blocks after it are
    dilated. "torchvision": that block is dilated too (torchvision's ``dilated=True`` backbones).

    features_only: no pooling, head or classifier; ``forward`` returns the maps ``out_indices`` (indices into
    the classifier's ``feature_info``, the model's ``taps``, or :class:`Select` queries; default the stage outputs
    and the final conv, timm's convention), and ``feature_info`` describes those maps. Stages and the final conv
    after the deepest requested map are not built.

    padding: "symmetric" (PyTorch's, every published PyTorch weight) or "tf_same" (TensorFlow's "SAME" on the
    strided convs, :class:`~mobilenets.layers.TFSameConv2d`: for weights trained in TF, e.g. the Gemma 3n encoder
    and timm's ``tf_`` ports). It changes outputs, not parameters.

    norm_layer: None is the architecture's own (BatchNorm; V5: RMSNorm2d).

    encoder: no pooling, head or classifier; ``forward`` returns ``forward_tokens`` (B, N, C).

    antialias: anti-aliased downsampling in the blocks (the stem keeps its stride): each strided conv runs at
    stride 1 and 2x2 average pooling follows (:func:`~mobilenets.layers.use_antialiased_downsampling`; timm's
    ``mobilenetv4_conv_aa_large``, whose in12k -> in1k weights are the best public MobileNet ImageNet weights).
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
    if padding not in PADDINGS:
        raise UserError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if encoder and features_only:
        raise UserError("choose one of encoder=True (token output) and features_only=True (feature maps)")
    if encoder and num_classes:
        raise UserError(f"an encoder has no classifier, but num_classes={num_classes} was given; build it with "
                        "encoder=False for a classifier")
    num_classes = 1000 if num_classes is None else num_classes
    if int(num_classes) != num_classes or num_classes < 0:
        raise UserError(f"num_classes must be an integer >= 0 (0: features only), got {num_classes}")
    dropout = arch.dropout if dropout is None else float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    norm = norm_factory(arch.norm_layer if norm_layer is None else norm_layer,
                        arch.bn_eps if bn_eps is None else bn_eps,
                        arch.bn_momentum if bn_momentum is None else bn_momentum)

    def width(ch: int, keep_below_1: bool = False) -> int:
        return make_divisible(ch * (max(w, 1.0) if keep_below_1 else w))

    stem_ch = width(arch.stem.out, arch.stem.keep_below_1)
    stem = ConvNormAct(in_chans, stem_ch, arch.stem.kernel, arch.stem.stride, norm=norm, act=arch.stem.act,
                       bias=arch.stem.bias)

    stages: list[nn.Sequential] = []
    feature_info: list[FeatureInfo] = []
    in_ch = stem_ch
    reduction, dilation = arch.stem.stride, 1
    for s, units in enumerate(arch.stages()):  # one stage per tuple of rows in the table
        current: list[Any] = []  # blocks of several classes, each with out_channels and expansion_channels
        reducing = None  # (block index, reduction before it) of the stage's strided block
        for unit in units:
            out_ch = width(unit.out)
            stride, block_dilation = unit.stride, dilation
            if stride > 1 and reducing is None:
                reducing = (len(current), reduction)
            if stride > 1 and reduction * stride > output_stride:
                dilation *= stride  # atrous: keep the resolution, widen the receptive field instead
                stride = 1
                if dilation_policy == "torchvision":
                    block_dilation = dilation
            else:
                reduction *= stride
            current.append(_make_block(unit, in_ch, out_ch, stride, block_dilation, norm))
            in_ch = out_ch
        if reducing is not None:
            b, before = reducing
            expanded = getattr(current[b], "expansion_channels", None)
            if expanded is not None:
                feature_info.append(FeatureInfo(f"stages.{s}.{b}", expanded, before, Location.EXPANSION, s, b))
            if len(current) > 1:  # else the block's output is the stage's
                feature_info.append(FeatureInfo(f"stages.{s}.{b}", current[b].out_channels, reduction,
                                                Location.BLOCK, s, b))
        feature_info.append(FeatureInfo(f"stages.{s}", in_ch, reduction, Location.STAGE, s))
        stages.append(nn.Sequential(*current))

    final_conv: nn.Module = nn.Identity()
    if arch.final_conv is not None:
        final_ch = width(arch.final_conv.out, arch.final_conv.keep_below_1)
        final_conv = ConvNormAct(in_ch, final_ch, 1, norm=norm, act=arch.final_conv.act)
        feature_info.append(FeatureInfo("final_conv", final_ch, reduction, Location.FINAL))

    neck: MultiScaleFusionAdapter | None = None
    neck_taps: tuple[int, ...] = ()
    if arch.neck is not None and not features_only:
        stage_widths = [f.channels for f in feature_info if f.location == Location.STAGE]
        neck_taps = tuple(sorted(t % len(stage_widths) for t in arch.neck.taps))
        neck = MultiScaleFusionAdapter([stage_widths[t] for t in neck_taps], arch.neck.out,
                                       resolution=arch.neck.resolution, expansion=arch.neck.expansion,
                                       act=arch.neck.act, norm=norm)

    head_fc: nn.Module | None = nn.Identity()
    head_act: nn.Module | None = nn.Identity()
    kept = None
    if encoder:
        num_features = neck.out_channels if neck is not None else feature_info[-1].channels
        head_fc = head_act = None
        head_hidden = 0
    elif features_only:
        kept = _resolve_indices(out_indices, feature_info)
        deepest = feature_info[max(kept)]
        if deepest.location != Location.FINAL:
            final_conv = nn.Identity()
            last_stage = deepest.stage
            assert last_stage is not None  # every map but the final conv's lies in a stage
            stages = stages[:last_stage + 1]
            feature_info = feature_info[:max(i for i, f in enumerate(feature_info)
                                             if f.stage == last_stage) + 1]
        num_features = feature_info[max(kept)].channels
        head_fc = head_act = None
        head_hidden = 0
    else:
        if out_indices is not None:
            raise UserError("out_indices needs features_only=True")
        num_features = neck.out_channels if neck is not None else feature_info[-1].channels
        head_hidden = num_features
        if arch.head is not None:
            head_hidden = arch.head.out
            if arch.head.norm:  # V4: 1x1 conv, no bias, then BN
                head_fc = PooledConvNorm(num_features, head_hidden, norm=norm)
            else:
                head_fc = nn.Linear(num_features, head_hidden)  # == a 1x1 conv with bias on the pooled map, no BN
            head_act = arch.head.act.layer()

    if padding == "tf_same":
        for part in (stem, *stages):
            use_tf_same_padding(part)
    if antialias:
        for part in stages:
            use_antialiased_downsampling(part)
    return MobileNet(arch, stem=stem, stages=nn.Sequential(*stages), final_conv=final_conv, head_fc=head_fc,
                     head_act=head_act, num_features=num_features, head_hidden_size=head_hidden,
                     num_classes=int(num_classes), dropout=dropout, in_chans=int(in_chans),
                     feature_info=feature_info, out_indices=kept, neck=neck, neck_taps=neck_taps,
                     encoder=bool(encoder))


def _resolve_indices(out_indices, info: list[FeatureInfo]) -> tuple[int, ...]:
    if out_indices is None:
        return tuple(i for i, f in enumerate(info) if f.location in (Location.STAGE, Location.FINAL))
    kept = []
    for q in out_indices:
        i = q.index(info) if isinstance(q, Select) else q
        if not isinstance(i, int) or not 0 <= i < len(info):
            raise UserError(f"out_indices entry {q!r} is not one of this model's {len(info)} feature maps "
                            f"(0-{len(info) - 1}, see the classifier's feature_info)")
        kept.append(i)
    if len(set(kept)) != len(kept):
        raise UserError(f"out_indices {list(out_indices)} name one feature map twice")
    return tuple(kept)


def _depthwise_separable(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    return DepthwiseSeparable(in_ch, out_ch, stride=stride, dilation=dilation, kernel=unit.kernel, act=unit.act,
                              norm=norm)


def _inverted_residual(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    expanded = in_ch if unit.expansion == 1 else make_divisible(in_ch * unit.expansion)
    se_reduced = make_divisible(expanded / 4) if unit.se else None  # V3 section 5.3: 1/4 of the expansion
    return InvertedResidual(in_ch, out_ch, expanded=expanded, kernel=unit.kernel, stride=stride, act=unit.act,
                            norm=norm, se_reduced=se_reduced, dilation=dilation)


def _conv(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    return ConvBlock(in_ch, out_ch, unit.kernel, stride, dilation=dilation, norm=norm, act=unit.act)


def _fused_ib(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    return FusedInvertedBottleneck(in_ch, out_ch, expanded=make_divisible(in_ch * unit.expansion), kernel=unit.kernel,
                                   stride=stride, act=unit.act, norm=norm, dilation=dilation)


def _uib(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    return UniversalInvertedBottleneck(in_ch, out_ch, expanded=make_divisible(in_ch * unit.expansion),
                                       start_kernel=unit.start_kernel, mid_kernel=unit.kernel, stride=stride,
                                       act=unit.act, norm=norm, layer_scale=unit.layer_scale, dilation=dilation)


def _mobile_mqa(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    # heads and key width are not scaled by the width multiplier (timm, TF); the block keeps its width
    return MobileMQA(in_ch, heads=unit.heads, key_dim=unit.key_dim, kv_stride=unit.kv_stride, norm=norm,
                     layer_scale=unit.layer_scale, kv_kernel=unit.kernel, dilation=dilation)


# Each paper block -> the builder of its class at the unit's widths; no default, and every Block has its entry.
BUILDERS: dict[Block, Callable[..., nn.Module]] = {
    Block.DEPTHWISE_SEPARABLE: _depthwise_separable,
    Block.INVERTED_RESIDUAL: _inverted_residual,
    Block.CONV: _conv,
    Block.FUSED_IB: _fused_ib,
    Block.UIB: _uib,
    Block.MOBILE_MQA: _mobile_mqa,
}
if set(BUILDERS) != set(Block):  # a new Block needs its builder here
    raise ImportError(f"model.BUILDERS has no builder for {sorted(set(Block) - set(BUILDERS))}")


def _make_block(unit: Unit, in_ch: int, out_ch: int, stride: int, dilation: int, norm) -> nn.Module:
    return BUILDERS[unit.block](unit, in_ch, out_ch, stride, dilation, norm)
