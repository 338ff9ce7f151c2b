"""MobileNetV4 (arXiv:2404.10518): parameter counts, outputs and MACs against timm's definitions, the paper's
figures, dilation, export and the published-weight entries."""
import pytest
import torch
from safetensors.torch import save_file

import mobilenets
from mobilenets import UserError, weights
from mobilenets.blocks import MobileMQA, UniversalInvertedBottleneck
from mobilenets.cli import main
from mobilenets.layers import LayerScale
from mobilenets.model import Location

timm = pytest.importorskip("timm")  # test-only reference implementation


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def timm_reference(name: str, size: tuple[int, int], **kwargs) -> torch.nn.Module:
    """timm's random-init ``name`` made non-trivial: random BN affine parameters and layer scales, BN statistics
    measured on random inputs of ``size`` (so that logits stay O(1) and a wrong key mapping shows)."""
    model = timm.create_model(name, **kwargs)
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            m.momentum = None  # cumulative average: one batch sets the statistics
            m.reset_running_stats()
    for name_, p in model.named_parameters():
        if name_.endswith("layer_scale.gamma"):
            p.data.copy_(torch.rand(p.shape, generator=g) + 0.5)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, *size, generator=g))
    return model.eval()


def max_diff(ours, ref, x) -> float:
    with torch.no_grad():
        return (ours.eval()(x) - ref(x)).abs().max().item()


# ours, options, timm name, timm's exact parameter count
VARIANTS = [
    ("mobilenet_v4_conv_small", {}, "mobilenetv4_conv_small", 3_774_024),
    ("mobilenet_v4_conv_medium", {}, "mobilenetv4_conv_medium", 9_715_512),
    ("mobilenet_v4_conv_large", {}, "mobilenetv4_conv_large", 32_590_864),
    ("mobilenet_v4_hybrid_medium", {}, "mobilenetv4_hybrid_medium", 11_074_648),
    ("mobilenet_v4_hybrid_large", {}, "mobilenetv4_hybrid_large", 37_764_624),
    ("mobilenet_v4_conv_small", {"width_multiplier": 0.35}, "mobilenetv4_conv_small_035", 1_905_384),
    ("mobilenet_v4_conv_small", {"width_multiplier": 0.5}, "mobilenetv4_conv_small_050", 2_238_952),
    ("mobilenet_v4_hybrid_medium", {"width_multiplier": 0.75}, "mobilenetv4_hybrid_medium_075", 7_313_528),
    ("mobilenet_v4_hybrid_large", {"width_multiplier": 0.75}, "mobilenetv4_hybrid_large_075", 22_754_984),
]


@pytest.mark.parametrize("name, options, tname, params", VARIANTS, ids=[v[2] for v in VARIANTS])
def test_params_and_outputs_equal_timm(name, options, tname, params):
    size = (64, 96)  # non-square and small: the full-resolution check is Conv-S's below
    ref = timm_reference(tname, size)
    ours = mobilenets.create_model(name, **options)
    assert n_params(ours) == n_params(ref) == params
    mobilenets.load_weights(ours, ref.state_dict())
    assert max_diff(ours, ref, torch.randn(2, 3, *size)) < 1e-4


@pytest.mark.parametrize("size", [(224, 224), (160, 256)])
def test_conv_small_equals_timm_at_native_and_non_square_resolution(tmp_path, size):
    ref = timm_reference("mobilenetv4_conv_small", size)
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))  # a file as timm saves it
    ours = mobilenets.load_weights(mobilenets.create_model("mobilenet_v4_conv_small"), tmp_path / "model.safetensors")
    assert max_diff(ours, ref, torch.randn(2, 3, *size)) < 1e-4


def test_hybrid_medium_equals_timm_at_native_resolution():
    ref = timm_reference("mobilenetv4_hybrid_medium_075", (256, 256))
    ours = mobilenets.create_model("mobilenet_v4_hybrid_medium", width_multiplier=0.75)
    mobilenets.load_weights(ours, ref.state_dict())
    assert max_diff(ours, ref, torch.randn(1, 3, 256, 256)) < 1e-4


# Our counts (conv, linear and attention products) equal those of timm's definitions; the M/L models sit 5.9-8.1%
# above the paper's rounded Table 6 figures, whose own layer tables they follow row for row.
@pytest.mark.parametrize("name, options, resolution, macs, attention", [
    ("mobilenet_v4_conv_small", {}, 224, 186_005_568, 0),
    ("mobilenet_v4_conv_small", {"width_multiplier": 0.35}, 224, 47_723_040, 0),
    ("mobilenet_v4_conv_small", {"width_multiplier": 0.5}, 224, 64_741_408, 0),
    ("mobilenet_v4_conv_medium", {}, 256, 1_080_244_224, 0),
    ("mobilenet_v4_conv_large", {}, 256, 2_835_269_632, 0),
    ("mobilenet_v4_hybrid_medium", {}, 256, 1_271_183_360, 41_943_040),
    ("mobilenet_v4_hybrid_large", {}, 256, 3_345_008_640, None),
    ("mobilenet_v4_hybrid_medium", {"width_multiplier": 0.75}, 224, 649_844_400, None),
    ("mobilenet_v4_hybrid_large", {"width_multiplier": 0.75}, 256, 2_036_234_240, None),
])
def test_macs_include_attention(name, options, resolution, macs, attention):
    p = mobilenets.profile(mobilenets.create_model(name, **options), (3, resolution, resolution))
    assert p.macs == macs
    if attention is not None:
        assert sum(r.macs for r in p.rows if r.kind == "DotProductAttention") == attention


@pytest.mark.parametrize("name, low, high", [
    ("mobilenet_v4_conv_small", -0.08, -0.06),  # 186.0 M against the paper's "0.2 G"
    ("mobilenet_v4_conv_medium", 0.05, 0.09),
    ("mobilenet_v4_hybrid_medium", 0.05, 0.09),
    ("mobilenet_v4_conv_large", 0.05, 0.09),
    ("mobilenet_v4_hybrid_large", 0.05, 0.09),
])
def test_macs_against_the_papers_table_6(name, low, high):
    arch = mobilenets.create_model(name).arch
    ((width, resolution), (_, paper_macs, _)), = arch.paper_figures.items()
    macs = mobilenets.profile(mobilenets.create_model(name), (3, resolution, resolution)).macs
    assert low < macs / 1e6 / paper_macs - 1 < high


def test_summary_prints_the_papers_figures(capsys):
    assert main(["summary", "mobilenet_v4_conv_small"]) == 0
    out = capsys.readouterr().out
    assert "3,774,024" in out and "186.0 M MACs" in out and "200 M MACs" in out and "Table 11" in out


def test_blocks_as_the_definitions_build_them():
    hybrid = mobilenets.create_model("mobilenet_v4_hybrid_medium")
    scaled = [m for m in hybrid.modules() if isinstance(m, (UniversalInvertedBottleneck, MobileMQA))]
    assert len(scaled) == 30 and all(isinstance(m.layer_scale, LayerScale) for m in scaled)
    assert all(float(m.layer_scale.gamma.detach().max()) == pytest.approx(1e-5) for m in scaled)
    conv = mobilenets.create_model("mobilenet_v4_conv_medium")
    assert not any(isinstance(m, LayerScale) for m in conv.modules())
    first = conv.stages[3][0]  # ExtraDW 5/5, stride 2: the stride on the middle depthwise conv
    assert first.start_dw.conv.stride == (1, 1) and first.dw.conv.stride == (2, 2) and not first.use_residual
    large = mobilenets.create_model("mobilenet_v4_hybrid_large")
    assert {type(m).__name__ for m in large.modules()} & {"ReLU", "GELU"} == {"GELU"}
    assert [m.attn.heads for m in large.modules() if isinstance(m, MobileMQA)] == [8] * 8


def test_expansion_taps_and_feature_info():
    model = mobilenets.create_model("mobilenet_v4_conv_small").eval()
    info = model.feature_info
    assert [(f.channels, f.reduction) for f in info if f.location == Location.STAGE] == [
        (32, 4), (64, 8), (96, 16), (128, 32)]
    expansions = [f for f in info if f.location == Location.EXPANSION]
    assert [(f.module, f.channels, f.reduction) for f in expansions] == [("stages.2.0", 192, 8),
                                                                        ("stages.3.0", 576, 16)]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out, expansion = model.stages[3][0].forward_expansion(model.stages[:3](model.stem(x)))
    assert expansion.shape == (1, 576, 6, 8) and out.shape == (1, 128, 3, 4)


@pytest.mark.parametrize("name, tname, options, output_stride", [
    ("mobilenet_v4_conv_small", "mobilenetv4_conv_small", {}, 16),
    ("mobilenet_v4_hybrid_medium", "mobilenetv4_hybrid_medium_075", {"width_multiplier": 0.75}, 8),
])
def test_output_stride_equals_timm_dilated_features(name, tname, options, output_stride):
    size = (96, 128)
    ref = timm_reference(tname, size, features_only=True, output_stride=output_stride)
    ours = mobilenets.create_model(name, output_stride=output_stride, **options)
    mobilenets.load_weights(ours, ref.state_dict(), skip=("head_fc.", "classifier."))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        got, want = ours.eval().forward_features(x), ref(x)[-1]
    assert got.shape == want.shape == (1, ours.num_features, 96 // output_stride, 128 // output_stride)
    assert (got - want).abs().max() < 1e-4


def test_onnx_export_with_parity(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mobilenets.deploy import export_model
    from small_models import small_model
    model, meta = small_model("mobilenet_v4_conv_small")
    assert export_model(model, meta, tmp_path / "v4.onnx", "onnx").parity.passed


def test_onnx_export_of_a_hybrid(tmp_path):
    """Mobile MQA's pre-norm follows no conv, so it stays a BatchNormalization node; the export keeps parity."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mobilenets.deploy import export_model
    from small_models import small_model
    model, meta = small_model("mobilenet_v4_hybrid_medium")
    assert export_model(model, meta, tmp_path / "v4h.onnx", "onnx").parity.passed


def _serve(tmp_path, monkeypatch, key, ref):
    """Serve ``ref`` as the file of WEIGHTS[key] from a file:// URL shaped like the hub's, so the download runs."""
    entry = weights.WEIGHTS[key]
    repo = entry.url.split("/timm/")[1].split("/")[0]
    path = tmp_path / "hub" / "timm" / repo / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file(ref.state_dict(), str(path))
    fake = weights.WeightEntry(entry.model, entry.source, path.as_uri(), None, entry.preprocessing, entry.top1,
                               entry.options, entry.variant)
    monkeypatch.setitem(weights.WEIGHTS, key, fake)
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    return path


@pytest.mark.parametrize("width, tname, inception", [(1.0, "mobilenetv4_conv_small", False),
                                                     (0.5, "mobilenetv4_conv_small_050", True)])
def test_timm_weights_download(tmp_path, monkeypatch, width, tname, inception):
    ref = timm_reference(tname, (96, 96))
    _serve(tmp_path, monkeypatch, ("mobilenet_v4_conv_small", "timm", width), ref)
    ours = mobilenets.create_model("mobilenet_v4_conv_small", weights="timm", width_multiplier=width)
    assert len(list((tmp_path / "cache" / "weights").glob("mobilenetv4_conv_small*.safetensors"))) == 1
    pre = ours.weights_entry.preprocessing
    assert (pre.input_size, pre.resize, pre.interpolation) == ((3, 224, 224), 256, "bicubic")
    assert pre.mean == ((0.5,) * 3 if inception else (0.485, 0.456, 0.406))
    assert max_diff(ours, ref, torch.randn(1, 3, 96, 96)) < 1e-4


def test_export_by_name_keeps_the_weights_own_preprocessing(tmp_path, monkeypatch, capsys):
    """``export NAME --weights timm:TAG`` writes that checkpoint's preprocessing (size, crop, bicubic, mean/std)
    and ImageNet's class names into the file (it used to write 224 px ImageNet defaults and no names), so that
    ``predict FILE`` feeds it what it was trained on and names an ImageNet class."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import json

    from PIL import Image

    from mobilenets.deploy import open_runner
    key = ("mobilenet_v4_conv_small", "timm:e3600_r256_in1k", 1.0)
    _serve(tmp_path, monkeypatch, key, timm_reference("mobilenetv4_conv_small", (96, 96)))
    out = tmp_path / "v4s.onnx"
    assert main(["export", "mobilenet_v4_conv_small", "--weights", "timm:e3600_r256_in1k", "--out", str(out),
                 "--parity-samples", "2"]) == 0
    meta = open_runner(out, backend="onnxruntime").meta
    assert meta.preprocessing == weights.WEIGHTS[key].preprocessing  # 256 px, resize 269, bicubic, ImageNet stats
    assert (meta.preprocessing.input_size, meta.preprocessing.resize) == ((3, 256, 256), 269)
    assert len(meta.class_names) == 1000 and meta.class_names[0] == "tench"
    image = tmp_path / "x.png"
    Image.new("RGB", (300, 280), (120, 60, 30)).save(image)
    capsys.readouterr()
    assert main(["predict", str(out), str(image), "--backend", "onnxruntime", "--json"]) == 0
    result, = json.loads(capsys.readouterr().out)
    assert result["top"][0]["class"] in meta.class_names


def test_every_v4_checkpoint_has_its_own_preprocessing():
    v4 = {k: e for k, e in weights.WEIGHTS.items() if k[0].startswith("mobilenet_v4_")}
    assert len(v4) == 16 and all("huggingface.co/timm/mobilenetv4_" in e.url for e in v4.values())  # 16: conv_aa
    e3600 = weights.WEIGHTS[("mobilenet_v4_conv_small", "timm:e3600_r256_in1k", 1.0)]
    assert (e3600.preprocessing.input_size, e3600.preprocessing.resize, e3600.top1) == ((3, 256, 256), 269, 74.534)
    large = weights.WEIGHTS[("mobilenet_v4_hybrid_large", "timm", 1.0)]
    assert (large.preprocessing.input_size, large.preprocessing.resize) == ((3, 384, 384), 404)
    assert "ix_e600_r384_in1k" in large.url and large.top1 == 83.996
    with pytest.raises(UserError,
                       match=r"no weights for mobilenet_v4_conv_small named 'timm:e9' .*timm:e1200_r224_in1k"):
        mobilenets.create_model("mobilenet_v4_conv_small", weights="timm:e9")
    with pytest.raises(UserError, match="at width_multiplier=0.75"):
        mobilenets.create_model("mobilenet_v4_conv_small", weights="timm", width_multiplier=0.75)


def test_timm_weights_refuse_another_bn_eps():
    state = timm.create_model("mobilenetv4_conv_small_035").state_dict()
    with pytest.raises(UserError, match="built with bn_eps=0.001; build it with bn_eps=1e-05"):
        mobilenets.load_weights(mobilenets.create_model("mobilenet_v4_conv_small", width_multiplier=0.35,
                                                        bn_eps=1e-3), state)
