"""Typed rows for the papers' architecture tables.

Each variant (``v1.py``, ``v2.py``, ``v3.py``) writes its table as a tuple of these rows, one per row of the
paper's table. A row knows how to unroll itself into :class:`Unit` s, one per block, at width 1.0; the builder
in ``model.py`` applies the width multiplier (through ``make_divisible``) and turns strides into dilations.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..layers import Act


@dataclass(frozen=True)
class Unit:
    """One block of the network at width multiplier 1.0."""

    block: str  # "depthwise_separable" (V1) or "inverted_residual" (V2/V3)
    out: int
    stride: int
    kernel: int = 3
    expansion: float = 1.0  # expanded width / input width (V2's t; V3's exp size / input size)
    se: bool = False
    act: Act = Act.RELU6


@dataclass(frozen=True)
class Stem:
    """The first full 3x3 convolution."""

    out: int
    act: Act
    stride: int = 2
    kernel: int = 3


@dataclass(frozen=True)
class DSConv:
    """MobileNetV1 Table 1: a "Conv dw / s" row followed by its "Conv 1x1" row."""

    out: int
    stride: int
    act: Act = Act.RELU6

    def units(self, in_ch: int) -> list[Unit]:
        return [Unit("depthwise_separable", self.out, self.stride, act=self.act)]


@dataclass(frozen=True)
class IRStage:
    """MobileNetV2 Table 2 row ``t, c, n, s``: n inverted residual blocks with expansion t and c output
    channels; the first has stride s, the others stride 1."""

    t: int
    c: int
    n: int
    s: int

    def units(self, in_ch: int) -> list[Unit]:
        return [Unit("inverted_residual", self.c, self.s if i == 0 else 1, 3, float(self.t), act=Act.RELU6)
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
        return [Unit("inverted_residual", self.out, self.stride, self.k, self.exp / in_ch, self.se, self.act)]

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


@dataclass(frozen=True)
class Architecture:
    """A whole variant: the paper's table plus the defaults of the reference implementation."""

    name: str
    citation: str
    stem: Stem
    rows: tuple
    final_conv: FinalConv | None = None
    head: HeadFC | None = None
    dropout: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    paper_figures: dict = field(default_factory=dict)  # (width, resolution) -> (top-1, M MACs, M params)

    def units(self) -> list[Unit]:
        units, in_ch = [], self.stem.out
        for row in self.rows:
            for unit in row.units(in_ch):
                units.append(unit)
                in_ch = unit.out
        return units
