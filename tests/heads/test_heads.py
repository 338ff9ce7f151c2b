"""Task heads: SSDLite, LR-ASPP, DeepLabV3 against torchvision (same random weights), anchors, box coding, the SSD
loss, feature taps, any input size and output stride."""
import copy

import pytest
import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large
from torchvision.models.detection.image_list import ImageList
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

import mobilenets
from mobilenets.errors import UserError
from mobilenets.heads.anchors import BoxCoder, DefaultBoxes, match_anchors
from mobilenets.heads.backbones import channels_of

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def randomize_bn(model, seed=0):
    """Non-trivial BN statistics, so eval-mode parity checks every norm layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


TORCHVISION = {
    "ssdlite_mobilenet_v3_large": (lambda: ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None),
                                   3_440_060),
    "lraspp_mobilenet_v3_large": (lambda: lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
                                  3_221_538),
    "deeplabv3_mobilenet_v3_large": (lambda: deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                           aux_loss=True), 11_029_328),
}


@pytest.fixture(scope="module")
def pairs():
    """(ours with torchvision's weights loaded through mobilenets.load_weights, torchvision), per model."""
    torch.manual_seed(0)
    out = {}
    for name, (build, _) in TORCHVISION.items():
        tv = build()
        randomize_bn(tv)
        tv.eval()
        ours = mobilenets.create_model(name)
        mobilenets.load_weights(ours, tv.state_dict())
        out[name] = (ours.eval(), tv)
    return out


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_param_counts_equal_torchvision(name):
    build, expected = TORCHVISION[name]
    assert n_params(build()) == expected
    assert n_params(mobilenets.create_model(name)) == expected


def test_ssdlite_matches_torchvision(pairs):
    ours, tv = pairs["ssdlite_mobilenet_v3_large"]
    x = torch.rand(2, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    xn = (x - 0.5) / 0.5  # torchvision's SSDLite normalisation, done inside its transform
    with torch.no_grad():
        feats = list(tv.backbone(xn).values())
        head = tv.head(feats)
        out = ours(xn)
        anchors = tv.anchor_generator(ImageList(xn, [(320, 320)] * 2), feats)[0]
        torch.testing.assert_close(out["cls_logits"], head["cls_logits"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out["bbox_regression"], head["bbox_regression"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out["anchors"], anchors)
        # the whole pipeline: decode, clip, per-class top-k, batched NMS
        expected = tv(list(x))
        got = ours.postprocess(out, (320, 320))
    for e, g in zip(expected, got):
        assert len(e["boxes"]) == len(g["boxes"]) > 0
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(g["scores"], e["scores"], rtol=1e-4, atol=1e-5)
        assert torch.equal(g["labels"], e["labels"])


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_segmentation_matches_torchvision(pairs, name):
    ours, tv = pairs[name]
    x = torch.randn(1, 3, 136, 200, generator=torch.Generator().manual_seed(2))  # not a multiple of 32
    with torch.no_grad():
        expected = tv(x)["out"]
        got = ours(x)
    assert got.shape == (1, 21, 136, 200)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_ssd_loss_matches_torchvision(pairs):
    ours, tv = pairs["ssdlite_mobilenet_v3_large"]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 320, 320, generator=g)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 100.0, 140.0], [150.0, 150.0, 300.0, 310.0]]),
                "labels": torch.tensor([3, 17])},
               {"boxes": torch.tensor([[40.0, 30.0, 90.0, 60.0]]), "labels": torch.tensor([5])}]
    ours.train()
    tv.train()
    try:
        expected = tv(list(x), copy.deepcopy(targets))
        got = ours.loss(ours((x - 0.5) / 0.5), targets)
    finally:
        ours.eval()
        tv.eval()
    for key in ("bbox_regression", "classification"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4)


def test_ssd_loss_empty_images_and_gradients():
    model = mobilenets.create_model("ssdlite", backbone="mobilenet_v3_small", num_classes=4)
    x = torch.randn(2, 3, 96, 128)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
               {"boxes": torch.tensor([[5.0, 5.0, 60.0, 70.0]]), "labels": torch.tensor([2])}]
    losses = model.loss(model(x), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    empty_only = model.loss(model(x), [targets[0], targets[0]])
    assert empty_only["bbox_regression"] == 0 and empty_only["classification"] > 0  # negatives still train
    (losses["bbox_regression"] + losses["classification"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("size", [(320, 320), (128, 128), (96, 160), (257, 199)])
def test_anchors_follow_real_feature_sizes(size):
    model = mobilenets.create_model("ssdlite", backbone="mobilenet_v3_small", num_classes=3).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    expected = sum(f.shape[-2] * f.shape[-1] * 6 for f in feats)
    assert out["anchors"].shape == (expected, 4)
    assert out["cls_logits"].shape == (1, expected, 3) and out["bbox_regression"].shape == (1, expected, 4)
    centres = (out["anchors"][:, :2] + out["anchors"][:, 2:]) / 2
    assert (centres[:, 0] > 0).all() and (centres[:, 0] < size[1]).all()
    assert (centres[:, 1] > 0).all() and (centres[:, 1] < size[0]).all()
    dets = model.postprocess(out, size)[0]
    assert len(dets["boxes"]) <= model.detections_per_img
    assert (dets["boxes"][:, 2] <= size[1]).all() and (dets["boxes"][:, 3] <= size[0]).all()
    assert (dets["labels"] >= 1).all()


def test_default_boxes_scales_of_ssd_paper():
    boxes = DefaultBoxes([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
    assert boxes.scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    anchors = boxes([(1, 1)] * 6, (100, 100))
    # first map, first box: square of scale s_1 = 0.2 centred in the image
    torch.testing.assert_close(anchors[0], torch.tensor([40.0, 40.0, 60.0, 60.0]))


def test_box_coder_round_trip_and_matching():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 60.0]])
    boxes = torch.tensor([[1.0, 2.0, 9.0, 12.0], [25.0, 15.0, 45.0, 50.0]])
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes)
    assert torch.isfinite(coder.decode(torch.full((2, 4), 1e4), anchors)).all()  # size offsets are clipped
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])  # IoU 1 and 0.125 with the anchors
    matched = match_anchors(gt, anchors)
    assert matched.tolist() == [0, 1]  # every object gets at least its best anchor, even below 0.5 IoU
    assert match_anchors(gt[1:], anchors).tolist() == [-1, 0]
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [-1, -1]


@pytest.mark.parametrize("backbone,channels", [("mobilenet_v2", [576, 1280]), ("mobilenet_v1", [512, 1024]),
                                               ("mobilenet_v3_small", [288, 288])])
def test_ssdlite_taps_on_every_backbone(backbone, channels):
    # V2: expansion of the first stride-32 block (section 6.2 of arXiv:1801.04381); V1: conv11 (stride 16);
    # V3-Small with the reduced tail (576 // 2 for the last conv).
    model = mobilenets.create_model("ssdlite", backbone=backbone, num_classes=5).eval()
    assert channels_of(model.features) == channels
    with torch.no_grad():  # and the maps really have them, at strides 16 and 32
        maps = model.features(torch.randn(1, 3, 128, 128))
    assert [m.shape[1:] for m in maps] == [(channels[0], 8, 8), (channels[1], 4, 4)]


def test_reduced_tail_is_v3_only():
    with pytest.raises(UserError, match="reduced_tail"):
        mobilenets.create_model("ssdlite", backbone="mobilenet_v2", reduced_tail=True)
    full = mobilenets.create_model("ssdlite", backbone="mobilenet_v3_large", reduced_tail=False, num_classes=3)
    assert channels_of(full.features) == [672, 960]


@pytest.mark.parametrize("name", ["lraspp", "deeplabv3"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_segmentation_any_size_and_output_stride(name, output_stride):
    model = mobilenets.create_model(name, backbone="mobilenet_v3_small", num_classes=4,
                                    output_stride=output_stride).eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        assert model(x).shape == (1, 4, 97, 131)
        deepest = model.features(x)[-1 if name == "lraspp" else 0]
    assert deepest.shape[-2:] == (-(-97 // output_stride), -(-131 // output_stride))


@pytest.mark.parametrize("backbone", ["mobilenet_v1", "mobilenet_v2"])
def test_segmentation_on_other_backbones(backbone):
    for name in ("lraspp", "deeplabv3"):
        model = mobilenets.create_model(name, backbone=backbone, num_classes=3).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_deeplab_without_aspp_drops_the_atrous_branches():
    with_aspp = mobilenets.create_model("deeplabv3", backbone="mobilenet_v2", num_classes=21)
    without = mobilenets.create_model("deeplabv3", backbone="mobilenet_v2", num_classes=21, aspp=False)
    assert len(with_aspp.head[0].convs) == 5 and len(without.head[0].convs) == 2
    # three 3x3 atrous convs (1280 -> 256) + their BN, and 3 x 256 fewer inputs to the projection
    assert n_params(with_aspp) - n_params(without) == 3 * (1280 * 256 * 9 + 512) + 3 * 256 * 256


def test_aux_head_only_in_training():
    model = mobilenets.create_model("deeplabv3", backbone="mobilenet_v3_small", num_classes=3, aux_loss=True)
    x = torch.randn(2, 3, 64, 64)
    out, aux = model.forward_with_aux(x)
    assert aux is not None and aux.shape == out.shape == (2, 3, 64, 64)
    model.eval()
    assert model.forward_with_aux(x)[1] is None


def test_backbones_hold_no_classifier_head():
    """Task models build their backbone features_only: no pooling, V3 1x1 head conv or classifier exists (they
    would be parameters without gradients), and the torchvision task models' counts hold."""
    for name in ("ssdlite", "lraspp", "deeplabv3"):
        model = mobilenets.create_model(name, backbone="mobilenet_v3_large", num_classes=3)
        assert model.features.features_only
        assert not any(n.startswith(("features.head_fc", "features.classifier")) for n, _ in model.named_parameters())
    v2 = mobilenets.create_model("deeplabv3_mobilenet_v2")
    assert isinstance(v2.features.final_conv, torch.nn.Identity)  # reads the 320-channel layer, builds no 1280


def test_deepcopy_keeps_taps_separate():
    # EMA (AveragedModel) deep-copies the model: the copy computes with its own weights.
    model = mobilenets.create_model("lraspp", backbone="mobilenet_v3_small", num_classes=3).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        x = torch.randn(1, 3, 64, 64)
        a, b = model(x), twin(x)
    assert not torch.allclose(a, b)
    assert twin.features.out_indices == model.features.out_indices


def test_registry_and_checkpoint_round_trip(tmp_path):
    from mobilenets.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

    assert {"ssdlite", "ssdlite_mobilenet_v3_large", "ssdlite_mobilenet_v2"} <= set(mobilenets.list_models("detect"))
    assert {"lraspp", "lraspp_mobilenet_v3_large", "deeplabv3"} <= set(mobilenets.list_models("segment"))
    model = mobilenets.create_model("ssdlite", backbone="mobilenet_v3_small", num_classes=4, width_multiplier=0.75)
    model.eval()
    save_checkpoint(tmp_path / "m.safetensors", model,
                    CheckpointMeta(model=model.arch_name, options=model.arch_options, task="detect"))
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta.task == "detect" and meta.options["width_multiplier"] == 0.75
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["cls_logits"], model(x)["cls_logits"])


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="background"):
        mobilenets.create_model("ssdlite", backbone="mobilenet_v3_small", num_classes=1)
    with pytest.raises(UserError, match="classification backbone"):
        mobilenets.create_model("lraspp", backbone="ssdlite", num_classes=3)


def test_mobile_deeplabv3_matches_mobilenetv2_paper():
    # Table 7 of arXiv:1801.04381: MobileNetV2 + DeepLabv3 head without ASPP, output stride 16, 21 classes:
    # 2.11 M parameters, 2.75 B MACs at 513x513. DeepLab's MobileNetV2 features end at the 320-channel layer.
    model = mobilenets.create_model("deeplabv3_mobilenet_v2")
    assert channels_of(model.features) == [320]
    prof = mobilenets.profile(model, input_size=(3, 513, 513))
    assert prof.params == 2_113_557
    assert prof.macs == pytest.approx(2.75e9, rel=0.01)


def test_ssdlite_macs_equal_torchvision():
    # torchvision's ssdlite320_mobilenet_v3_large meta: 0.583 GFLOPS (multiply-adds) at 320x320
    prof = mobilenets.profile(mobilenets.create_model("ssdlite_mobilenet_v3_large"), input_size=(3, 320, 320))
    assert prof.macs / 1e9 == pytest.approx(0.583, abs=0.0005)


def test_task_models_map_foreign_weights_themselves():
    """Every task model declares weights.ForeignWeights, so load_weights asks it for the map instead of guessing
    the format from the keys; YOLO declares it to opt out: its own ``features.*`` keys are not torchvision's."""
    from mobilenets.weights import ForeignWeights, module_map_for
    for name in ("ssdlite", "yolo", "deeplabv3", "lraspp"):
        assert isinstance(mobilenets.create_model(name, num_classes=3), ForeignWeights), name
    assert not isinstance(mobilenets.create_model("mobilenet_v2"), ForeignWeights)
    yolo = mobilenets.create_model("yolo", num_classes=3)
    assert module_map_for(yolo, yolo.state_dict().keys()) is None
    mobilenets.load_weights(yolo, yolo.state_dict())
