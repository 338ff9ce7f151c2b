"""MobileNetV4 deployed (issue 20): OpenVINO export with parity (Mobile MQA included), int8 through ONNX Runtime
and OpenVINO, export at the native resolution, and `mobilenets bench` with timm's same model as the peer. Small
inputs, one thread."""

import numpy as np
import pytest
import torch

import mobilenets
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions
from mobilenets.layers import LayerScale

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONES = ["mobilenet_v4_conv_small", "mobilenet_v4_hybrid_medium"]
SIZE = (96, 128)  # non-square: 6x8 at stride 16, 3x4 at stride 32




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
