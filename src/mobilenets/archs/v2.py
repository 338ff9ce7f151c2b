"""MobileNetV2, Table 2 of arXiv:1801.04381 (rows ``t, c, n, s``)."""
from ..layers import Act
from ..model import build
from ..registry import register_model
from .spec import Architecture, FinalConv, IRStage, Stem

MOBILENET_V2 = Architecture(
    name="mobilenet_v2",
    citation="Table 2 of arXiv:1801.04381",
    stem=Stem(out=32, act=Act.RELU6),  # conv2d 3x3, s2
    rows=(  # one stage per row (bottleneck sequence)
        #        t    c   n  s
        (IRStage(1, 16, 1, 1),),
        (IRStage(6, 24, 2, 2),),
        (IRStage(6, 32, 3, 2),),
        (IRStage(6, 64, 4, 2),),
        (IRStage(6, 96, 3, 1),),
        (IRStage(6, 160, 3, 2),),
        (IRStage(6, 320, 1, 1),),
    ),
    final_conv=FinalConv(out=1280, act=Act.RELU6, keep_below_1=True),  # conv2d 1x1; 1280 kept below 1.0
    # Table 4 and the TF-slim checkpoint sweep: (width, resolution) -> (top-1, M MACs, M params)
    paper_figures={(1.0, 224): (72.0, 300, 3.4), (1.4, 224): (74.7, 585, 6.9), (1.3, 224): (None, 509, 5.34),
                   (0.75, 224): (None, 209, 2.61), (0.5, 224): (None, 97, 1.95), (0.35, 224): (None, 59, 1.66),
                   (1.0, 192): (None, 221, 3.47), (1.0, 160): (None, 154, 3.47), (1.0, 128): (None, 99, 3.47),
                   (1.0, 96): (None, 56, 3.47)},
)


@register_model("mobilenet_v2", paper=MOBILENET_V2.citation,
                summary="inverted residuals with linear bottlenecks (Sandler et al. 2018)")
def mobilenet_v2(**options):
    return build(MOBILENET_V2, **options)
