"""MobileNetV5, the vision encoder of Gemma 3n (Google, June 2025). There is no paper: Google's "Introducing Gemma 3n"
developer guide describes it (MobileNetV4 blocks, a deep pyramid about ten times larger than MNv4-Hybrid-L, a
Multi-Scale Fusion VLM adapter) and timm's ``mobilenetv5.py`` (1.0.16+) defines it; the tables below follow timm
1.0.31's block lists row for row, because the only weights (the Gemma 3n encoder, ``timm/mobilenetv5_300m.gemma3n``)
were converted into that definition.

Rows are the V4 rows of ``spec.py``: ``FusedIB`` (timm ``er``), ``UIB(start, mid, ...)`` (``uir``; ConvNext-like with
``start`` only, FFN with neither) and ``MobileMQA`` (``mqa``). What V5 adds to V4, all in the definition below:
- RMSNorm2d (eps 1e-6, a weight and no bias, no running statistics) wherever V4 has BatchNorm;
- GELU with the tanh approximation everywhere;
- a 64-channel stem whose conv has a bias;
- layer scale (init 1e-5) on every UIB and Mobile MQA block (not on FusedIB);
- no final conv or V4 head: the Multi-Scale Fusion Adapter (``FusionNeck``) fuses the outputs of the last two
  stages (/16 and /32) into 2048 x 16 x 16 at every input size; a classifier pools that map (no hidden layer).

``mobilenet_v5_300m`` is the only official size (294,126,912 parameters without a classifier; 84 blocks in stages
of 3 / 5 / 37 / 39). ``mobilenet_v5_base`` is timm's untrained scale-down (R. Wightman; timm may change it): its
stage-2 Mobile MQA rows say stride 2, which timm's decoding ignores, so they have no key/value downsampling here
either. ``mobilenet_v5_300m_enc`` is the 300m encoder as Gemma 3n runs it: TF "SAME" padding (timm: "closer for
original weights"), no classifier, and ``forward`` returns the (B, 256, 2048) image tokens.

Width multipliers (no reference figures): block widths through ``make_divisible``; the stem keeps 64 channels below
1 (timm's ``fix_stem``); attention heads and the neck's 2048 never scale.
"""
from dataclasses import replace

from ..layers import Act
from ..model import build
from ..registry import register_model
from .spec import UIB, Architecture, FusedIB, FusionNeck, MobileMQA, Stem

GT = Act.GELU_TANH
LAYER_SCALE = 1e-5  # timm layer_scale_init_value for MobileNetV5
CITATION = "timm 1.0.31 mobilenetv5.py (Gemma 3n vision encoder; no paper)"

STAGES_01 = (  # shared by both sizes
    (
        FusedIB(k=3, e=4, out=128, stride=2),
        FusedIB(k=3, e=4, out=128, stride=1),
        FusedIB(k=3, e=4, out=128, stride=1),
    ),
    (
        UIB(3, 5, e=6, out=256, stride=2),               # ExtraDW
        UIB(5, 0, e=4, out=256),                         # ConvNext
        UIB(3, 0, e=4, out=256),                         # ConvNext
        UIB(5, 0, e=4, out=256),                         # ConvNext
        UIB(3, 0, e=4, out=256),                         # ConvNext
    ),
)

# MobileNetV5-300M (timm ``mobilenetv5_300m``): 3 / 5 / 37 / 39 blocks, 128 / 256 / 640 / 1280 channels.
MQA_300M_16 = MobileMQA(heads=12, key_dim=64, out=640, kv_stride=2)  # /16: keys and values at /32
MQA_300M_32 = MobileMQA(heads=16, key_dim=96, out=1280)
V5_300M = STAGES_01 + (
    (
        UIB(5, 5, e=6, out=640, stride=2),               # ExtraDW
        UIB(5, 0, e=4, out=640, n=7),                    # ConvNext
        UIB(0, 0, e=1, out=640),                         # FFN
        *(MQA_300M_16, UIB(0, 0, e=2, out=640)) * 14,    # [MQA, FFN] x 14
    ),
    (
        UIB(5, 5, e=6, out=1280, stride=2),              # ExtraDW
        *(MQA_300M_32, UIB(0, 0, e=2, out=1280)) * 19,   # [MQA, FFN] x 19
    ),
)

# timm's ``mobilenetv5_base`` (untrained scale-down): 3 / 5 / 16 / 15 blocks, 128 / 256 / 512 / 1024 channels.
MQA_BASE_16 = MobileMQA(heads=8, key_dim=64, out=512)  # timm's rows say "s2"; its decoding ignores that: kv stride 1
MQA_BASE_32 = MobileMQA(heads=16, key_dim=64, out=1024)
V5_BASE = STAGES_01 + (
    (
        UIB(5, 5, e=6, out=512, stride=2),               # ExtraDW
        UIB(5, 0, e=4, out=512, n=2),                    # ConvNext
        UIB(0, 0, e=1, out=512),                         # FFN
        *(MQA_BASE_16, UIB(0, 0, e=2, out=512)) * 6,     # [MQA, FFN] x 6
    ),
    (
        UIB(5, 5, e=6, out=1024, stride=2),              # ExtraDW
        *(MQA_BASE_32, UIB(0, 0, e=2, out=1024)) * 7,    # [MQA, FFN] x 7
    ),
)


def _v5(stages: tuple) -> tuple:
    """GELU-tanh on every row; layer scale on every UIB and Mobile MQA row."""
    def row(r):
        if isinstance(r, MobileMQA):
            return replace(r, layer_scale=LAYER_SCALE)
        if isinstance(r, UIB):
            return replace(r, act=GT, layer_scale=LAYER_SCALE)
        return replace(r, act=GT)
    return tuple(tuple(row(r) for r in stage) for stage in stages)


def _architecture(size: str) -> Architecture:
    return Architecture(
        name=f"mobilenet_v5_{size}",
        citation=CITATION,
        stem=Stem(out=64, act=GT, keep_below_1=True, bias=True),  # conv 3x3, stride 2, with bias
        rows=_v5({"300m": V5_300M, "base": V5_BASE}[size]),
        neck=FusionNeck(out=2048, resolution=16, taps=(-2, -1), expansion=2.0, act=GT),
        dropout=0.0,  # timm's default drop_rate; no published recipe
        norm_layer="rmsnorm2d",
        bn_eps=1e-6,  # RMSNorm's eps
    )


_SUMMARY = "Gemma 3n's vision encoder: MobileNetV4 blocks, RMSNorm, multi-scale fusion neck"


@register_model("mobilenet_v5_300m", default_resolution=768, paper=CITATION, summary=f"{_SUMMARY}, 300M")
def mobilenet_v5_300m(**options):
    return build(_architecture("300m"), **options)


@register_model("mobilenet_v5_300m_enc", default_resolution=768, paper=CITATION,
                summary=f"{_SUMMARY}, 300M encoder as Gemma 3n runs it (TF padding, token output)")
def mobilenet_v5_300m_enc(*, padding: str = "tf_same", encoder: bool = True, **options):
    return build(_architecture("300m"), padding=padding, encoder=encoder, **options)


@register_model("mobilenet_v5_base", default_resolution=256, paper=CITATION,
                summary=f"{_SUMMARY}, timm's untrained 'base' scale-down")
def mobilenet_v5_base(**options):
    return build(_architecture("base"), **options)
