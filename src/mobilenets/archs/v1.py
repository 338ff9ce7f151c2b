"""MobileNetV1, Table 1 of arXiv:1704.04861.

The paper's body uses ReLU; the TF-slim reference (and timm's ``mobilenetv1_100``, whose weights we import)
uses ReLU6, which we follow so that imported weights behave identically.
"""
from ..layers import Act
from ..model import build
from ..registry import register_model
from .spec import Architecture, DSConv, Stem

R = Act.RELU6

MOBILENET_V1 = Architecture(
    name="mobilenet_v1",
    citation="Table 1 of arXiv:1704.04861",
    stem=Stem(out=32, act=R),                 # Conv / s2, 3x3x3x32
    rows=(  # one tuple per stage, the rows of one output width
        (DSConv(out=64, stride=1),),          # Conv dw / s1, Conv 1x1 32->64
        (DSConv(out=128, stride=2), DSConv(out=128, stride=1)),
        (DSConv(out=256, stride=2), DSConv(out=256, stride=1)),
        (
            DSConv(out=512, stride=2),
            *[DSConv(out=512, stride=1)] * 5,  # "5x" rows
        ),
        (
            DSConv(out=1024, stride=2),
            DSConv(out=1024, stride=1),       # the paper prints s2 here; its output table (7x7) says s1
        ),
    ),
    # Table 6/7 (width, resolution) -> (ImageNet top-1, M MACs, M params)
    paper_figures={(1.0, 224): (70.6, 569, 4.2), (0.75, 224): (68.4, 325, 2.6), (0.5, 224): (63.7, 149, 1.3),
                   (0.25, 224): (50.6, 41, 0.5), (1.0, 192): (69.1, 418, 4.2), (1.0, 160): (67.2, 290, 4.2),
                   (1.0, 128): (64.4, 186, 4.2)},
)


@register_model("mobilenet_v1", paper=MOBILENET_V1.citation,
                 summary="depthwise separable convs + BN + ReLU6 (Howard et al. 2017)")
def mobilenet_v1(**options):
    return build(MOBILENET_V1, **options)
