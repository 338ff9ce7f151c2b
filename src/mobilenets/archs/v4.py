"""MobileNetV4 (Qin et al., ECCV 2024), Appendix D Tables 11-15 of arXiv:2404.10518.

Each table is one tuple of rows per stage. ``UIB(start, mid, ...)`` is a Universal Inverted Bottleneck with its
start / middle depthwise kernels (0 = absent): ExtraDW (both), IB (middle only), ConvNext (start only), FFN
(neither). Every variant ends with a 1x1 conv to 960 channels before pooling and, after pooling, a 1x1 conv to
1280 with BN and activation (no bias) before the classifier.

Where the paper's tables and the TF Model Garden / timm definitions differ, we follow the definitions, because
the only published weights (timm's) use them; each difference is stated at its row:
- Conv-S stages 0 and 1 ("FusedIB" in Table 11) are two plain conv-BN-ReLU layers each;
- Hybrid-M follows the TF/timm block list, not Table 13 (stage 2's 2nd and 10th rows, stage 3's rows).
Further choices of the definitions: BN eps 1e-5 and momentum 0.1 (PyTorch's; TF uses 1e-3 / decay 0.99),
symmetric padding, layer scale 1e-5 on every UIB and Mobile MQA block of the hybrids, GELU throughout Hybrid-L.

Width multipliers (no paper figures exist; timm's ``conv_small_035/050`` and ``hybrid_*_075``): every block
width and the 960 scale through ``make_divisible``; the stem keeps its width below 1 (``fix_stem``, timm's rule;
TF's would scale it), the 1280 layer and the attention heads never scale.

The paper's parameter and MAC figures (Table 6) are not reproduced by the definitions: M/L models sit 5-8% above
them, with layer lists that match the paper's own appendix tables row for row (Conv-S agrees within rounding).
"""
from dataclasses import replace

from ..layers import Act
from ..model import build
from ..registry import register_model
from .spec import UIB, Architecture, Conv, FinalConv, FusedIB, HeadFC, MobileMQA, Stem

RE, GE = Act.RELU, Act.GELU
LAYER_SCALE = 1e-5  # TF MNV4LayerScale init; timm layer_scale_init_value (hybrids only)

# Table 11, MNv4-Conv-S (224 px).
CONV_SMALL = (
    (Conv(k=3, out=32, stride=2), Conv(k=1, out=32)),  # Table 11 "FusedIB 3x3, 32 -> 32": TF/timm build 2 convs
    (Conv(k=3, out=96, stride=2), Conv(k=1, out=64)),  # Table 11 "FusedIB 3x3, 96 -> 64": likewise
    (
        UIB(5, 5, e=3, out=96, stride=2),                # ExtraDW
        UIB(0, 3, e=2, out=96, n=4),                     # IB
        UIB(3, 0, e=4, out=96),                          # ConvNext
    ),
    (
        UIB(3, 3, e=6, out=128, stride=2),               # ExtraDW
        UIB(5, 5, e=4, out=128),                         # ExtraDW
        UIB(0, 5, e=4, out=128),                         # IB
        UIB(0, 5, e=3, out=128),                         # IB
        UIB(0, 3, e=4, out=128, n=2),                    # IB
    ),
)

# Table 12, MNv4-Conv-M (256 px).
CONV_MEDIUM = (
    (FusedIB(k=3, e=4, out=48, stride=2),),
    (
        UIB(3, 5, e=4, out=80, stride=2),                # ExtraDW
        UIB(3, 3, e=2, out=80),                          # ExtraDW
    ),
    (
        UIB(3, 5, e=6, out=160, stride=2),               # ExtraDW
        UIB(3, 3, e=4, out=160, n=2),                    # ExtraDW
        UIB(3, 5, e=4, out=160),                         # ExtraDW
        UIB(3, 3, e=4, out=160),                         # ExtraDW
        UIB(3, 0, e=4, out=160),                         # ConvNext
        UIB(0, 0, e=2, out=160),                         # FFN
        UIB(3, 0, e=4, out=160),                         # ConvNext
    ),
    (
        UIB(5, 5, e=6, out=256, stride=2),               # ExtraDW
        UIB(5, 5, e=4, out=256),                         # ExtraDW
        UIB(3, 5, e=4, out=256, n=2),                    # ExtraDW
        UIB(0, 0, e=4, out=256),                         # FFN
        UIB(3, 0, e=4, out=256),                         # ConvNext
        UIB(3, 5, e=2, out=256),                         # ExtraDW
        UIB(5, 5, e=4, out=256),                         # ExtraDW
        UIB(0, 0, e=4, out=256, n=2),                    # FFN
        UIB(5, 0, e=2, out=256),                         # ConvNext
    ),
)

# Table 14, MNv4-Conv-L (384 px).
CONV_LARGE = (
    (FusedIB(k=3, e=4, out=48, stride=2),),
    (
        UIB(3, 5, e=4, out=96, stride=2),                # ExtraDW
        UIB(3, 3, e=4, out=96),                          # ExtraDW
    ),
    (
        UIB(3, 5, e=4, out=192, stride=2),               # ExtraDW
        UIB(3, 3, e=4, out=192, n=3),                    # ExtraDW
        UIB(3, 5, e=4, out=192),                         # ExtraDW
        UIB(5, 3, e=4, out=192, n=5),                    # ExtraDW
        UIB(3, 0, e=4, out=192),                         # ConvNext
    ),
    (
        UIB(5, 5, e=4, out=512, stride=2),               # ExtraDW
        UIB(5, 5, e=4, out=512, n=3),                    # ExtraDW
        UIB(5, 0, e=4, out=512),                         # ConvNext
        UIB(5, 3, e=4, out=512),                         # ExtraDW
        UIB(5, 0, e=4, out=512, n=2),                    # ConvNext
        UIB(5, 3, e=4, out=512),                         # ExtraDW
        UIB(5, 5, e=4, out=512),                         # ExtraDW
        UIB(5, 0, e=4, out=512, n=3),                    # ConvNext
    ),
)

# MNv4-Hybrid-M (256 px): the TF Model Garden / timm block list, whose weights exist. Table 13 differs in stage 2
# (row 2 ExtraDW 3/3 e4 instead of FFN e2; the row after the third MQA FFN e4 instead of ExtraDW 3/3 e4) and in
# stage 3 (11 UIB + 4 MQA, the MQAs after the 7th-10th rows, instead of 12 UIB + 4 MQA as below).
MQA_M16 = MobileMQA(heads=4, key_dim=64, out=160, kv_stride=2)  # 16 px at 256: keys/values at 8 px
MQA_M8 = MobileMQA(heads=4, key_dim=64, out=256)
HYBRID_MEDIUM = (
    (FusedIB(k=3, e=4, out=48, stride=2),),
    (
        UIB(3, 5, e=4, out=80, stride=2),                # ExtraDW
        UIB(3, 3, e=2, out=80),                          # ExtraDW
    ),
    (
        UIB(3, 5, e=6, out=160, stride=2),               # ExtraDW
        UIB(0, 0, e=2, out=160),                         # FFN (Table 13: ExtraDW 3/3 e4)
        UIB(3, 3, e=4, out=160),                         # ExtraDW
        UIB(3, 5, e=4, out=160),                         # ExtraDW
        MQA_M16,
        UIB(3, 3, e=4, out=160),                         # ExtraDW
        MQA_M16,
        UIB(3, 0, e=4, out=160),                         # ConvNext
        MQA_M16,
        UIB(3, 3, e=4, out=160),                         # ExtraDW (Table 13: FFN e4)
        MQA_M16,
        UIB(3, 0, e=4, out=160),                         # ConvNext
    ),
    (
        UIB(5, 5, e=6, out=256, stride=2),               # ExtraDW
        UIB(5, 5, e=4, out=256),                         # ExtraDW
        UIB(3, 5, e=4, out=256, n=2),                    # ExtraDW
        UIB(0, 0, e=2, out=256),                         # FFN
        UIB(3, 5, e=2, out=256),                         # ExtraDW
        UIB(0, 0, e=2, out=256),                         # FFN
        UIB(0, 0, e=4, out=256),                         # FFN
        MQA_M8,
        UIB(3, 0, e=4, out=256),                         # ConvNext
        MQA_M8,
        UIB(5, 5, e=4, out=256),                         # ExtraDW
        MQA_M8,
        UIB(5, 0, e=4, out=256),                         # ConvNext
        MQA_M8,
        UIB(5, 0, e=4, out=256),                         # ConvNext
    ),
)

# Table 15, MNv4-Hybrid-L (384 px; GELU everywhere in the TF/timm definitions, which the table does not say).
MQA_L24 = MobileMQA(heads=8, key_dim=48, out=192, kv_stride=2)  # 24 px at 384: keys/values at 12 px
MQA_L12 = MobileMQA(heads=8, key_dim=64, out=512)
HYBRID_LARGE = (
    (FusedIB(k=3, e=4, out=48, stride=2),),
    (
        UIB(3, 5, e=4, out=96, stride=2),                # ExtraDW
        UIB(3, 3, e=4, out=96),                          # ExtraDW
    ),
    (
        UIB(3, 5, e=4, out=192, stride=2),               # ExtraDW
        UIB(3, 3, e=4, out=192, n=3),                    # ExtraDW
        UIB(3, 5, e=4, out=192),                         # ExtraDW
        UIB(5, 3, e=4, out=192, n=2),                    # ExtraDW
        *(MQA_L24, UIB(5, 3, e=4, out=192)) * 3,         # [MQA, ExtraDW] x 3
        MQA_L24,
        UIB(3, 0, e=4, out=192),                         # ConvNext
    ),
    (
        UIB(5, 5, e=4, out=512, stride=2),               # ExtraDW
        UIB(5, 5, e=4, out=512, n=3),                    # ExtraDW
        UIB(5, 0, e=4, out=512),                         # ConvNext
        UIB(5, 3, e=4, out=512),                         # ExtraDW
        UIB(5, 0, e=4, out=512, n=2),                    # ConvNext
        UIB(5, 3, e=4, out=512),                         # ExtraDW
        UIB(5, 5, e=4, out=512),                         # ExtraDW
        *(MQA_L12, UIB(5, 0, e=4, out=512)) * 4,         # [MQA, ConvNext] x 4
    ),
)


def _hybrid(stages: tuple, act: Act) -> tuple:
    """The hybrids' rows: ``act`` everywhere, layer scale on every UIB and Mobile MQA row."""
    def row(r):
        if isinstance(r, MobileMQA):
            return replace(r, layer_scale=LAYER_SCALE)
        return replace(r, act=act, layer_scale=LAYER_SCALE) if isinstance(r, UIB) else replace(r, act=act)
    return tuple(tuple(row(r) for r in stage) for stage in stages)


# Table 6, (width, resolution) -> (ImageNet-1k top-1 trained on IN-1k only, M MACs, M params). Ours (conv, linear
# and attention products; the counts of the TF/timm definitions): Conv-S 186.0 M @224, Conv-M 1080.2 M @256,
# Hybrid-M 1271.2 M @256, Conv-L 6376.2 M @384, Hybrid-L 7711.9 M @384 -- the M/L models 5-8% above the paper.
PAPER_FIGURES = {
    "conv_small": {(1.0, 224): (73.8, 200, 3.8)},
    "conv_medium": {(1.0, 256): (79.9, 1000, 9.2)},
    "hybrid_medium": {(1.0, 256): (80.7, 1200, 10.5)},
    "conv_large": {(1.0, 384): (82.9, 5900, 31.0)},
    "hybrid_large": {(1.0, 384): (83.4, 7200, 35.9)},
}


CITATIONS = {
    "conv_small": "Table 11 of arXiv:2404.10518",
    "conv_medium": "Table 12 of arXiv:2404.10518",
    "hybrid_medium": "Table 13 of arXiv:2404.10518",
    "conv_large": "Table 14 of arXiv:2404.10518",
    "hybrid_large": "Table 15 of arXiv:2404.10518",
}


def _architecture(size: str, fix_stem: bool) -> Architecture:
    stages, stem, act, dropout = {
        "conv_small": (CONV_SMALL, 32, RE, 0.3),  # dropout: Table 10
        "conv_medium": (CONV_MEDIUM, 32, RE, 0.2),
        "conv_large": (CONV_LARGE, 24, RE, 0.2),
        "hybrid_medium": (_hybrid(HYBRID_MEDIUM, RE), 32, RE, 0.2),
        "hybrid_large": (_hybrid(HYBRID_LARGE, GE), 24, GE, 0.2),
    }[size]
    return Architecture(
        name=f"mobilenet_v4_{size}",
        citation=CITATIONS[size],
        stem=Stem(out=stem, act=act, keep_below_1=fix_stem),  # conv 3x3, stride 2
        rows=stages,
        final_conv=FinalConv(out=960, act=act),  # "Conv2D 1x1, 960": scales with the width (timm)
        head=HeadFC(out=1280, act=act, norm=True),  # after pooling; never scaled
        dropout=dropout,
        bn_eps=1e-5,
        bn_momentum=0.1,
        paper_figures=PAPER_FIGURES[size],
    )


_INTRO = "universal inverted bottlenecks (Qin et al. 2024)"


def _register(size: str, resolution: int, summary: str):
    """Register ``mobilenet_v4_{size}``: one builder per row of the registration table below."""
    @register_model(f"mobilenet_v4_{size}", default_resolution=resolution, paper=CITATIONS[size], summary=summary)
    def builder(*, fix_stem: bool = True, **options):
        return build(_architecture(size, fix_stem), **options)
    builder.__name__ = builder.__qualname__ = f"mobilenet_v4_{size}"
    return builder


# (size, native resolution, summary): the five models, one row each
mobilenet_v4_conv_small = _register("conv_small", 224, f"{_INTRO}, Conv-S")
mobilenet_v4_conv_medium = _register("conv_medium", 256, f"{_INTRO}, Conv-M")
mobilenet_v4_conv_large = _register("conv_large", 384, f"{_INTRO}, Conv-L")
mobilenet_v4_hybrid_medium = _register("hybrid_medium", 256, f"{_INTRO} + Mobile MQA, Hybrid-M")
mobilenet_v4_hybrid_large = _register("hybrid_large", 384, f"{_INTRO} + Mobile MQA, Hybrid-L (GELU)")
