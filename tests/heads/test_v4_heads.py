"""MobileNetV4 under every head (issue 20): SSDLite, LR-ASPP, DeepLabV3 and YOLO tap the maps the papers name
on a V4 backbone, and output stride by dilation under a head. Small inputs, one thread."""

import pytest
import torch

import mobilenets
from mobilenets.model import Location

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONES = ["mobilenet_v4_conv_small", "mobilenet_v4_hybrid_medium"]
SIZE = (96, 128)  # non-square: 6x8 at stride 16, 3x4 at stride 32


def taps(model) -> list[tuple[str, Location, int, int]]:
    """(module, location, channels, reduction) of each map a head's features_only backbone returns."""
    f = model.features
    return [(i.module, i.location, i.channels, i.reduction) for i in f.feature_info]


def maps_of(model, x) -> list[tuple[int, int]]:
    with torch.no_grad():
        return [tuple(m.shape[-2:]) for m in model.features(x)]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_ssdlite_taps_the_expansion_of_the_first_stride_32_block(backbone):
    model = mobilenets.create_model("ssdlite", backbone=backbone, num_classes=3).eval()
    expansion = {"mobilenet_v4_conv_small": 576, "mobilenet_v4_hybrid_medium": 960}[backbone]
    assert taps(model) == [("stages.3.0", Location.EXPANSION, expansion, 16), ("final_conv", Location.FINAL, 960, 32)]
    block = model.features.get_submodule("stages.3.0")  # an ExtraDW UIB: the stride on its middle depthwise conv
    assert block.dw.conv.stride == (2, 2) and block.dw.conv.in_channels == expansion
    x = torch.randn(1, 3, *SIZE)
    assert maps_of(model, x) == [(6, 8), (3, 4)]
    with torch.no_grad():
        out = model(x)
        (dets,) = model.postprocess(out, SIZE)
    # anchors: 6 per location on the two taps' 6x8 and 3x4 maps and the four extra blocks' 2x2, 1x1, 1x1, 1x1
    assert out["anchors"].shape[0] == 6 * (48 + 12 + 4 + 1 + 1 + 1)
    assert out["cls_logits"].shape == (1, out["anchors"].shape[0], 3) and dets["boxes"].shape[-1] == 4


@pytest.mark.parametrize("backbone", BACKBONES)
def test_lraspp_taps_the_stride_8_block_and_the_last_map(backbone):
    # "low": the output of the block that takes the features to stride 8 (for Conv-S the 3x3 stride-2 conv of
    # stage 1, the first of the TF/timm pair Table 11 calls FusedIB); "high": the final 1x1 conv, dilated to /16.
    model = mobilenets.create_model("lraspp", backbone=backbone, num_classes=3).eval()
    low = {"mobilenet_v4_conv_small": 96, "mobilenet_v4_hybrid_medium": 80}[backbone]
    assert taps(model) == [("stages.1.0", Location.BLOCK, low, 8), ("final_conv", Location.FINAL, 960, 16)]
    x = torch.randn(1, 3, *SIZE)
    assert maps_of(model, x) == [(12, 16), (6, 8)]
    with torch.no_grad():
        assert model(x).shape == (1, 3, *SIZE)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_deeplabv3_with_aux_head(backbone):
    model = mobilenets.create_model("deeplabv3", backbone=backbone, num_classes=3, aux_loss=True)
    assert [(m, loc, r) for m, loc, _, r in taps(model)] == [("final_conv", Location.FINAL, 16),
                                                            ("stages.1.0", Location.BLOCK, 8)]
    x = torch.randn(2, 3, *SIZE)
    out, aux = model.train().forward_with_aux(x)
    assert out.shape == aux.shape == (2, 3, *SIZE)
    (out.mean() + aux.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x[:1]).shape == (1, 3, *SIZE)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_yolo_on_a_v4_backbone(backbone):
    if "yolo" not in mobilenets.list_models(task="detect"):
        pytest.skip("no YOLO head in this tree")
    model = mobilenets.create_model("yolo", backbone=backbone, num_classes=3).eval()
    assert [r for *_, r in taps(model)] == [8, 16, 32]  # P3 / P4 / P5
    x = torch.randn(1, 3, *SIZE)
    assert maps_of(model, x) == [(12, 16), (6, 8), (3, 4)]
    with torch.no_grad():
        model(x)


def test_heads_on_a_narrow_grayscale_v4():
    """Width 0.5 and one input channel (what the Fashion-MNIST scenes train): the taps follow the widths."""
    ssd = mobilenets.create_model("ssdlite", backbone="mobilenet_v4_conv_small", num_classes=3, width_multiplier=0.5,
                                  in_chans=1)
    assert [c for _, _, c, _ in taps(ssd)] == [288, 480]
    seg = mobilenets.create_model("lraspp", backbone="mobilenet_v4_hybrid_medium", num_classes=3,
                                  width_multiplier=0.5, in_chans=1).eval()
    with torch.no_grad():
        assert seg(torch.randn(1, 1, 64, 80)).shape == (1, 3, 64, 80)


# -- output stride --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3_on_conv_small_dilates(output_stride):
    model = mobilenets.create_model("deeplabv3", backbone="mobilenet_v4_conv_small", num_classes=3,
                                    output_stride=output_stride).eval()
    plain = mobilenets.create_model("deeplabv3", backbone="mobilenet_v4_conv_small", num_classes=3, output_stride=32)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.randn(1, 3, 97, 131)  # odd sizes: padded convs round up at every stride
    with torch.no_grad():
        (deepest,) = model.features(x)
        assert model(x).shape == (1, 3, 97, 131)
    assert deepest.shape == (1, 960, -(-97 // output_stride), -(-131 // output_stride))
    assert model.features.feature_info[-1].reduction == output_stride
    # the stage that would go past the output stride keeps its resolution: its strided conv dilates instead
    # (torchvision's policy, the head's default); the stages before it are untouched
    stage3 = model.features.stages[3]
    assert stage3[0].dw.conv.stride == (1, 1) and stage3[0].dw.conv.dilation == (32 // output_stride,) * 2
    assert stage3[-1].dw.conv.dilation == (32 // output_stride,) * 2
    assert model.features.stages[2][0].dw.conv.stride == ((2, 2) if output_stride == 16 else (1, 1))


def test_lraspp_on_a_hybrid_at_output_stride_8():
    model = mobilenets.create_model("lraspp", backbone="mobilenet_v4_hybrid_medium", num_classes=3,
                                    output_stride=8).eval()
    x = torch.randn(1, 3, *SIZE)
    assert maps_of(model, x) == [(12, 16), (12, 16)]  # Mobile MQA at stride 8: keys/values still downsampled
    with torch.no_grad():
        assert model(x).shape == (1, 3, *SIZE)


