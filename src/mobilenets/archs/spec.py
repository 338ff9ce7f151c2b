"""Typed rows for the papers' architecture tables.

Each variant (``v1.py`` ... ``v5.py``) writes its table as a tuple of stages, each a tuple of these rows, one per
row of the paper's table (timm's block-args layout). A stage is what ``model.stages[i]`` becomes and where the
stage feature maps are taken. A row knows how to unroll itself into :class:`Unit` s, one per block, at width
1.0; the builder in ``model.py`` applies the width multiplier (through ``make_divisible``) and turns strides
into dilations.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from ..layers import Act, Block

BLOCKS = tuple(b.value for b in Block)  # the names a row may give a block


@dataclass(frozen=True)
class Unit:
    """One block of the network at width multiplier 1.0."""

    block: Block  # a name ("uib") is accepted and becomes its Block
    out: int
    stride: int
    kernel: int = 3  # the depthwise kernel after the expansion (V4 UIB: the middle one, 0 = none)
    expansion: float = 1.0  # expanded width / input width (V2's t; V3's exp size / input size)
    se: bool = False
    act: Act = Act.RELU6
    start_kernel: int = 0  # V4 UIB: the depthwise kernel before the expansion (0 = none)
    layer_scale: float | None = None  # V4 hybrids: initial value of the per-channel residual scale
    heads: int = 0  # V4 Mobile MQA: query heads; key width (= value width); key/value downsampling stride
    key_dim: int = 0
    kv_stride: int = 1

    def __post_init__(self):
        if self.block not in BLOCKS:  # a misspelt block must not silently build another block
            raise ValueError(f"unknown block {str(self.block)!r}: use one of {', '.join(BLOCKS)}")
        object.__setattr__(self, "block", Block(self.block))


class Row(Protocol):
    """A row of a paper's table (the classes below): it unrolls into its blocks, given its input width at 1.0."""

    def units(self, in_ch: int) -> list[Unit]: ...


@dataclass(frozen=True)
class Stem:
    """The first full 3x3 convolution."""

    out: int
    act: Act
    stride: int = 2
    kernel: int = 3
    keep_below_1: bool = False  # keep ``out`` at multipliers below 1 (timm's ``fix_stem``; V4's default)
    bias: bool = False  # V5: the conv has a bias (its RMSNorm has no shift)


@dataclass(frozen=True)
class DSConv:
    """MobileNetV1 Table 1: a "Conv dw / s" row followed by its "Conv 1x1" row."""

    out: int
    stride: int
    act: Act = Act.RELU6

    def units(self, in_ch: int) -> list[Unit]:
        return [Unit(Block.DEPTHWISE_SEPARABLE, self.out, self.stride, act=self.act)]


@dataclass(frozen=True)
class IRStage:
    """MobileNetV2 Table 2 row ``t, c, n, s``: n inverted residual blocks with expansion t and c output
    channels; the first has stride s, the others stride 1."""

    t: int
    c: int
    n: int
    s: int

    def units(self, in_ch: int) -> list[Unit]:
        return [Unit(Block.INVERTED_RESIDUAL, self.c, self.s if i == 0 else 1, 3, float(self.t), act=Act.RELU6)
                for i in range(self.n)]


@dataclass(frozen=True)
class Bneck:
    """MobileNetV3 Table 1/2 row: ``bneck, k x k`` with expansion size ``exp``, ``out`` channels, SE, NL, s."""

    k: int
    exp: int
    out: int
    se: bool
    act: Act
    stride: int

    def units(self, in_ch: int) -> list[Unit]:
        # The expansion is stored as a ratio of the input width so that width multipliers scale it from the
        # *rounded* input width, as the TF reference does (expand_input_by_factor).
        return [Unit(Block.INVERTED_RESIDUAL, self.out, self.stride, self.k, self.exp / in_ch, self.se, self.act)]

    def minimal(self) -> "Bneck":
        """The "minimalistic" variant (TF-slim MobileNetV3 minimal): no SE, ReLU, 3x3 kernels."""
        return replace(self, k=3, se=False, act=Act.RELU)


@dataclass(frozen=True)
class FinalConv:
    """The 1x1 conv-BN-act that ends the feature extractor (V2's 1280, V3's 960 / 576)."""

    out: int
    act: Act
    keep_below_1: bool = False  # V2 keeps 1280 channels for multipliers below 1 (paper section 6.1)


@dataclass(frozen=True)
class HeadFC:
    """V3's 1x1 conv (no BN) after global pooling: 1280 (Large) or 1024 (Small) channels at every width
    multiplier (the appendix's 1.25 models have 7.5 M / 3.6 M parameters only with an unscaled head; timm
    and the TF reference agree)."""

    out: int
    act: Act
    norm: bool = False  # V4: 1x1 conv without bias + BN + act (TF ``convbn(1, 1, 1280)``); V3: with bias, no BN


@dataclass(frozen=True)
class FusionNeck:
    """MobileNetV5's Multi-Scale Fusion Adapter in place of V4's final conv and head: the outputs of the stages
    ``taps`` (negative: counted from the last) fused into ``out`` channels at ``resolution`` x ``resolution``
    (see :class:`~mobilenets.blocks.MultiScaleFusionAdapter`). ``out`` never scales with the width."""

    out: int
    resolution: int
    taps: tuple[int, ...] = (-2, -1)
    expansion: float = 2.0  # the FFN's expanded width / its (concatenated) input width
    act: Act = Act.GELU_TANH


@dataclass(frozen=True)
class Architecture:
    """A whole variant: the paper's table plus the defaults of the reference implementation."""

    name: str
    citation: str
    stem: Stem
    rows: tuple[tuple[Row, ...], ...]  # the table's rows, one tuple per stage
    final_conv: FinalConv | None = None
    head: HeadFC | None = None
    neck: FusionNeck | None = None  # V5: replaces final_conv and head
    dropout: float = 0.2
    norm_layer: str = "batchnorm"  # V5: "rmsnorm2d"
    bn_eps: float = 1e-5  # the norm's eps (RMSNorm's too)
    bn_momentum: float = 0.1
    paper_figures: dict = field(default_factory=dict)  # (width, resolution) -> (top-1, M MACs, M params)

    def __post_init__(self):
        if not self.rows or not all(isinstance(stage, tuple) and stage for stage in self.rows):
            raise ValueError(f"{self.name}: rows must be a non-empty tuple of stages, each a non-empty tuple of rows")

    def stages(self) -> list[list[Unit]]:
        """Every block at width 1.0, one list per stage."""
        stages, in_ch = [], self.stem.out
        for rows in self.rows:
            stage = []
            for row in rows:
                for unit in row.units(in_ch):
                    stage.append(unit)
                    in_ch = unit.out
            stages.append(stage)
        return stages


# -- MobileNetV4 (arXiv:2404.10518, Appendix D Tables 11-15) ------------------------------------------------------
@dataclass(frozen=True)
class Conv:
    """A full ``k`` x ``k`` conv-BN-act row (Conv-S's stage 0/1 layers, as the TF/timm definitions build them)."""

    k: int
    out: int
    stride: int = 1
    act: Act = Act.RELU

    def units(self, in_ch: int) -> list[Unit]:
        return [Unit(Block.CONV, self.out, self.stride, self.k, act=self.act)]


@dataclass(frozen=True)
class FusedIB:
    """A "FusedIB k x k" row: full ``k`` x ``k`` expansion conv to ``e`` x the input width, then 1x1 projection."""

    k: int
    e: float
    out: int
    stride: int
    act: Act = Act.RELU

    def units(self, in_ch: int) -> list[Unit]:
        return [Unit(Block.FUSED_IB, self.out, self.stride, self.k, float(self.e), act=self.act)]


@dataclass(frozen=True)
class UIB:
    """A Universal Inverted Bottleneck row of Tables 11-15: ``start`` / ``mid`` depthwise kernels (the tables'
    "start DW" / "middle DW"; 0 = absent), expansion ratio ``e`` of the input width, ``out`` channels, stride of
    the first of ``n`` repeats. ExtraDW = both kernels, IB = ``mid`` only, ConvNext = ``start`` only, FFN =
    neither."""

    start: int
    mid: int
    e: float
    out: int
    stride: int = 1
    n: int = 1
    act: Act = Act.RELU
    layer_scale: float | None = None

    def __post_init__(self):
        for k in (self.start, self.mid):
            if k and k % 2 == 0:
                raise ValueError(f"UIB depthwise kernels must be odd or 0 (absent), got {k}")
        if self.stride > 1 and not (self.start or self.mid):
            raise ValueError("a strided UIB row needs a depthwise kernel to carry the stride")

    def units(self, in_ch: int) -> list[Unit]:
        return [Unit(Block.UIB, self.out, self.stride if i == 0 else 1, self.mid, float(self.e), act=self.act,
                     start_kernel=self.start, layer_scale=self.layer_scale) for i in range(self.n)]


@dataclass(frozen=True)
class MobileMQA:
    """A "Mobile MQA" row: ``heads`` query heads of ``key_dim`` channels sharing one key and one value head (key
    width = value width); keys and values on a map downsampled by ``kv_stride`` (a 3x3 depthwise conv). The block
    keeps its input width ``out``."""

    heads: int
    key_dim: int
    out: int
    kv_stride: int = 1
    layer_scale: float | None = None

    def units(self, in_ch: int) -> list[Unit]:
        if in_ch != self.out:
            raise ValueError(f"a Mobile MQA block keeps its width: input {in_ch}, out {self.out}")
        return [Unit(Block.MOBILE_MQA, self.out, 1, 3, heads=self.heads, key_dim=self.key_dim, kv_stride=self.kv_stride,
                     layer_scale=self.layer_scale)]
