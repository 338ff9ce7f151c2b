"""MobileNetV4 everywhere V1-V3 go (issue 20): every task head on a V4 backbone (taps on the maps the papers
name), output stride by dilation under a head, CLI training round trips, OpenVINO export with parity (Mobile MQA
included), int8, and `mobilenets bench` with timm's same model as the peer. Small inputs, one thread."""
import json

import numpy as np
import pytest
import torch

import mobilenets
from mobilenets.checkpoint import read_checkpoint
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions
from mobilenets.layers import LayerScale
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


# -- training ---------------------------------------------------------------------------------------------------
def test_cli_classify_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "mobilenet_v4_conv_small", "--width", "0.5", "--data", "fashion-mnist",
                 "--limit-train", "256", "--limit-val", "64", "--epochs", "1", "--batch-size", "32",
                 "--img-size", "32", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    _, meta = read_checkpoint(out / "best.safetensors")
    assert meta.model == "mobilenet_v4_conv_small" and meta.options["width_multiplier"] == 0.5
    assert meta.preprocessing.input_size == (1, 32, 32)
    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--data", "fashion-mnist", "--limit-val", "64", "--json",
                 "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 64 and 0 <= report["top1"] <= 1 and np.isfinite(report["loss"])


@pytest.mark.parametrize("task, backbone, model_name, metric", [
    ("detect", "mobilenet_v4_conv_small", "ssdlite", "map"),
    ("segment", "mobilenet_v4_hybrid_medium", "lraspp", "miou"),
])
def test_cli_dense_round_trip(tmp_path, capsys, task, backbone, model_name, metric):
    out = tmp_path / "run"
    assert main(["train", "--task", task, "--backbone", backbone, "--width", "0.5", "--data", "scenes",
                 "--scenes", "16", "--limit-val", "4", "--scene-size", "64", "--epochs", "1", "--batch-size", "8",
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    _, meta = read_checkpoint(out / "best.safetensors")
    assert meta.task == task and meta.model == model_name and meta.options["backbone"] == backbone
    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--json", "--threads", "1", "--limit-val", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and 0 <= report[metric] <= 1  # the first 4 of the 1,000 test scenes


# -- export ---------------------------------------------------------------------------------------------------
def exportable(name: str):
    """test_export's small random model (width 0.5, grayscale, 64 px, O(1) logits) with non-trivial layer
    scales: at their 1e-5 init the hybrids' Mobile MQA blocks would add almost nothing to the output and a broken
    attention export could still pass parity."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from small_models import SIZE as PX
    from small_models import small_model

    model, meta = small_model(name)
    scales = [m for m in model.modules() if isinstance(m, LayerScale)]
    if scales:
        g = torch.Generator().manual_seed(3)
        for m in scales:
            m.gamma.data.copy_(torch.rand(m.gamma.shape, generator=g) + 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()  # momentum None (small_model): re-measured below as a plain average
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 1, PX, PX))
        model.eval()
    return model, meta


@pytest.mark.parametrize("name", BACKBONES)
def test_openvino_export_with_parity(name, tmp_path):
    pytest.importorskip("openvino")
    from mobilenets.deploy import export_model, open_runner

    model, meta = exportable(name)
    x = torch.randn(4, 1, 64, 64)
    if "hybrid" in name:  # the attention matters: without Mobile MQA's branch the logits change
        with torch.no_grad():
            y = model(x)
            gammas = [m.layer_scale.gamma.data.clone() for m in model.modules() if hasattr(m, "attn")]
            for m in model.modules():
                if hasattr(m, "attn"):
                    m.layer_scale.gamma.data.zero_()
            assert (model(x) - y).abs().max() > 0.1 * y.abs().max()
            for m, g in zip([m for m in model.modules() if hasattr(m, "attn")], gammas):
                m.layer_scale.gamma.data.copy_(g)
    result = export_model(model, meta, tmp_path / "m.xml", "openvino")
    assert result.parity.passed and result.precision == "fp32" and result.path.with_suffix(".bin").is_file()
    runner = open_runner(result.path, backend="openvino")
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(runner.run(x.numpy()) - want).max() <= result.parity.tolerance


def test_int8_onnxruntime_qdq_of_conv_small(tmp_path, trained):
    from checks import int8_top1_agreement
    from mobilenets.deploy import export_model

    model, meta, _ = trained("mobilenet_v4_conv_small")  # width 0.5, trained once per test run (tests/trained.py)
    result = export_model(model, meta, tmp_path / "q.onnx", "onnx",
                          ExportOptions(int8=True, calibration_data="fashion-mnist", calibration_n=32, parity_n=64))
    assert result.precision == "int8" and result.details["scheme"] == "onnxruntime-qdq"
    assert result.parity.n == 64 and result.parity.inputs == "fashion-mnist"
    assert int8_top1_agreement(model, meta, result.path, "onnxruntime") >= 0.9


def test_int8_openvino_nncf_of_conv_small(tmp_path, trained):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from checks import int8_top1_agreement
    from mobilenets.deploy import export_model, open_runner

    model, meta, _ = trained("mobilenet_v4_conv_small")
    result = export_model(model, meta, tmp_path / "q.xml", "openvino",
                          ExportOptions(int8=True, calibration_data="fashion-mnist", calibration_n=32, parity_n=64))
    assert result.details["scheme"] == "nncf"
    assert 'type="FakeQuantize"' in result.path.read_text() or 'type="FakeConvert"' in result.path.read_text()
    assert result.parity.top1_agreement >= 0.9 and open_runner(result.path, backend="openvino").meta == meta
    assert int8_top1_agreement(model, meta, result.path, "openvino") >= 0.9


def test_export_by_name_uses_the_native_resolution():
    from mobilenets.deploy.source import load_source

    _, meta = load_source("mobilenet_v4_conv_medium")
    assert meta.preprocessing.input_size == (3, 256, 256) and meta.preprocessing.resize == 293
    _, meta = load_source("mobilenet_v3_small")
    assert meta.preprocessing.input_size == (3, 224, 224) and meta.preprocessing.resize == 256


# -- bench ----------------------------------------------------------------------------------------------------
def test_bench_peers_are_timms_same_models():
    pytest.importorskip("timm")
    from mobilenets.deploy.bench.paths import PEERS, build, input_size

    v4 = [n for n in mobilenets.list_models(task="classify") if n.startswith("mobilenet_v4_")]
    assert {n: PEERS[n] for n in v4} == {n: ("timm", "mobilenetv4_" + n[len("mobilenet_v4_"):]) for n in v4}
    assert PEERS["mobilenet_v2_140"] == ("timm", "mobilenetv2_140")
    for name in ("mobilenet_v4_conv_small", "mobilenet_v4_hybrid_medium", "mobilenet_v2_140"):
        ours, peer = build("mobilenets", name), build(*PEERS[name])
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in peer.parameters()), name
        # native resolutions: timm's own input size for its model
        assert input_size(name) == tuple(peer.pretrained_cfg["input_size"])
    assert input_size("mobilenet_v4_conv_large") == (3, 384, 384)
    assert input_size("mobilenet_v4_conv_large", 160) == (3, 160, 160)


def test_bench_paths_run_at_the_models_resolution(tmp_path):
    pytest.importorskip("timm")
    from mobilenets.deploy.bench.paths import load, specs

    paths = specs("mobilenet_v4_conv_small", 1, 1, ["torch"], tmp_path, False, False, None, resolution=64)
    assert [(p.who, p.source, p.input_size) for p in paths] == [
        ("ours", ("mobilenets", "mobilenet_v4_conv_small"), (3, 64, 64)),
        ("peer", ("timm", "mobilenetv4_conv_small"), (3, 64, 64))]
    for p in paths:
        load(p)()  # builds the model and runs one batch
    torch.set_num_threads(1)  # load() set the path's thread count in this process


def test_bench_cli_refuses_a_bad_resolution(capsys):
    assert main(["bench", "--models", "mobilenet_v4_conv_small", "--resolution", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resolution=0 must be at least 1" in err
