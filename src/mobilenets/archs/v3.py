"""MobileNetV3-Large and -Small, Tables 1 and 2 of arXiv:1905.02244.

Options beyond the tables:
- ``minimal``: the "minimalistic" models of the TF-slim reference (no SE, ReLU everywhere, 3x3 kernels).
- ``reduced_tail``: section 6.1.1 (detection) -- the channels of the last stage, the final 1x1 conv and the
  head are divided by 2, as torchvision's ``_reduced_tail``.
- ``fix_stem``: the stem keeps its 16 channels at multipliers below 1 (timm's rule, needed for timm's
  ``mobilenetv3_small_050`` weights); by default it scales as in the TF reference (8 channels at 0.5 and 0.35).
"""
from dataclasses import replace

from ..layers import Act
from ..model import build
from ..registry import register_model
from .spec import Architecture, Bneck, FinalConv, HeadFC, Stem

RE, HS = Act.RELU, Act.HSWISH

Stages = tuple[tuple[Bneck, ...], ...]
CITATIONS = {"large": "Table 1 of arXiv:1905.02244", "small": "Table 2 of arXiv:1905.02244"}

# Table 1: bneck k x k, exp size, #out, SE, NL, s (input 224^2 x 3 -> conv2d 3x3, 16, HS, s2 first). One tuple per
# stage (the rows of one output width); the last is the "C4" stage that reduced_tail halves.
LARGE_STAGES: Stages = (
    (Bneck(k=3, exp=16, out=16, se=False, act=RE, stride=1),),
    (
        Bneck(k=3, exp=64, out=24, se=False, act=RE, stride=2),
        Bneck(k=3, exp=72, out=24, se=False, act=RE, stride=1),
    ),
    (
        Bneck(k=5, exp=72, out=40, se=True, act=RE, stride=2),
        Bneck(k=5, exp=120, out=40, se=True, act=RE, stride=1),
        Bneck(k=5, exp=120, out=40, se=True, act=RE, stride=1),
    ),
    (
        Bneck(k=3, exp=240, out=80, se=False, act=HS, stride=2),
        Bneck(k=3, exp=200, out=80, se=False, act=HS, stride=1),
        Bneck(k=3, exp=184, out=80, se=False, act=HS, stride=1),
        Bneck(k=3, exp=184, out=80, se=False, act=HS, stride=1),
    ),
    (
        Bneck(k=3, exp=480, out=112, se=True, act=HS, stride=1),
        Bneck(k=3, exp=672, out=112, se=True, act=HS, stride=1),
    ),
    (
        Bneck(k=5, exp=672, out=160, se=True, act=HS, stride=2),
        Bneck(k=5, exp=960, out=160, se=True, act=HS, stride=1),
        Bneck(k=5, exp=960, out=160, se=True, act=HS, stride=1),
    ),
)

# Table 2. The table also marks SE on the final conv2d 1x1 (576); neither the TF-slim reference nor
# torchvision/timm has it there, and the published 2.5 M parameters are reached without it, so we follow them.
SMALL_STAGES: Stages = (
    (Bneck(k=3, exp=16, out=16, se=True, act=RE, stride=2),),
    (
        Bneck(k=3, exp=72, out=24, se=False, act=RE, stride=2),
        Bneck(k=3, exp=88, out=24, se=False, act=RE, stride=1),
    ),
    (
        Bneck(k=5, exp=96, out=40, se=True, act=HS, stride=2),
        Bneck(k=5, exp=240, out=40, se=True, act=HS, stride=1),
        Bneck(k=5, exp=240, out=40, se=True, act=HS, stride=1),
    ),
    (
        Bneck(k=5, exp=120, out=48, se=True, act=HS, stride=1),
        Bneck(k=5, exp=144, out=48, se=True, act=HS, stride=1),
    ),
    (
        Bneck(k=5, exp=288, out=96, se=True, act=HS, stride=2),
        Bneck(k=5, exp=576, out=96, se=True, act=HS, stride=1),
        Bneck(k=5, exp=576, out=96, se=True, act=HS, stride=1),
    ),
)

# Table 3 and the appendix sweep (Table 9): (width, resolution) -> (top-1, M MACs, M params)
LARGE_FIGURES = {(1.0, 224): (75.2, 219, 5.4), (0.75, 224): (73.3, 155, 4.0), (1.25, 224): (76.6, 356, 7.5),
                 (0.5, 224): (68.8, 69, 2.6), (0.35, 224): (64.2, 40, 2.2)}
SMALL_FIGURES = {(1.0, 224): (67.4, 56, 2.5), (0.75, 224): (65.4, 44, 2.0), (1.25, 224): (70.4, 91, 3.6),
                 (0.5, 224): (58.0, 21, 1.6), (0.35, 224): (49.8, 12, 1.4)}
# TF-slim minimalistic checkpoints: (top-1, M MACs, M params). The Small figure belongs to the TF-slim README's
# older Small definition (its full Small was 66 M MACs / 2.9 M params); with the final paper's Table 2 the minimal
# Small has 52.3 M MACs, which tests/models/test_reference.py pins.
MINIMAL_FIGURES = {"large": {(1.0, 224): (72.3, 209, 3.9)}, "small": {(1.0, 224): (61.9, 65, 2.0)}}


def _reduced_tail(stages: Stages) -> Stages:
    """Section 6.1.1: the last stage at half the channels. Its first row expands the previous stage's output, which
    keeps its width, so that row keeps its expansion size; the later rows expand the halved width and halve it too
    (torchvision's ``_reduced_tail``). Small's halved stage (48 channels) has the width of the stage before it, and
    the two have always been built as one stage (``stages.3.2`` is the strided block), which checkpoints' keys
    keep."""
    first, *rest = stages[-1]
    tail = (replace(first, out=first.out // 2), *(replace(r, exp=r.exp // 2, out=r.out // 2) for r in rest))
    if stages[-2][-1].out == first.out // 2:  # Small
        return (*stages[:-2], stages[-2] + tail)
    return (*stages[:-1], tail)


def _architecture(size: str, minimal: bool, reduced_tail: bool, fix_stem: bool = False) -> Architecture:
    stages: Stages
    stages, final, head, figures = {
        "large": (LARGE_STAGES, 960, 1280, LARGE_FIGURES),
        "small": (SMALL_STAGES, 576, 1024, SMALL_FIGURES),
    }[size]
    act = RE if minimal else HS
    if reduced_tail:
        stages = _reduced_tail(stages)
        final, head = final // 2, head // 2
        figures = {}
    if minimal:
        stages = tuple(tuple(r.minimal() for r in stage) for stage in stages)
        figures = MINIMAL_FIGURES[size]
    return Architecture(
        name=f"mobilenet_v3_{size}",
        citation=CITATIONS[size],
        # 16 at widths 0.75-1 by rounding; 8 at 0.5/0.35 (TF reference) unless fix_stem (timm: 16 below 0.75)
        stem=Stem(out=16, act=act, keep_below_1=fix_stem),
        rows=stages,
        final_conv=FinalConv(out=final, act=act),
        head=HeadFC(out=head, act=act),
        # TF reference: BN decay 0.997 / eps 1e-3; torchvision (whose weights we import) uses momentum 0.01.
        bn_eps=1e-3,
        bn_momentum=0.01,
        paper_figures=figures,
    )


@register_model("mobilenet_v3_large", paper=CITATIONS["large"],
                summary="NAS-found bnecks with SE and h-swish (Howard et al. 2019), Large")
def mobilenet_v3_large(*, minimal: bool = False, reduced_tail: bool = False, fix_stem: bool = False, **options):
    return build(_architecture("large", minimal, reduced_tail, fix_stem), **options)


@register_model("mobilenet_v3_small", paper=CITATIONS["small"],
                summary="NAS-found bnecks with SE and h-swish (Howard et al. 2019), Small")
def mobilenet_v3_small(*, minimal: bool = False, reduced_tail: bool = False, fix_stem: bool = False, **options):
    return build(_architecture("small", minimal, reduced_tail, fix_stem), **options)
