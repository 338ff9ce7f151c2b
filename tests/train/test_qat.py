"""``train --qat``: quantization-aware fine-tuning through PT2E. The fake-quantized graph keeps the network's own
BatchNorm (eps, momentum) and equals it with the quantizers off; a QAT run reloads, evaluates without changing its
learned scales, resumes bit for bit, and exports to int8 with the learned scales (ONNX QDQ, ExecuTorch) or to fp32
without them; one-line refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from checks import die_before_epoch
from mobilenets import create_model
from mobilenets.checkpoint import load_checkpoint, save_checkpoint
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions
from mobilenets.deploy.export import export_model
from mobilenets.qat import SCHEME, WEIGHT_RANGE, FakeQuantized
from synthetic_data import write_fashion

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


@pytest.fixture(scope="module")
def base(data, tmp_path_factory):
    """A float classifier trained one epoch on the synthetic data: what --qat fine-tunes."""
    out = tmp_path_factory.mktemp("float") / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--batch-size", "32", "--width", "0.5",
                 "--bn-momentum", "0.1", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    return out / "last.safetensors"


def qat_args(data, base, out, epochs=2):
    return ["train", "--qat", "--weights", str(base), "--data", str(data), "--epochs", str(epochs),
            "--batch-size", "32", "--lr", "0.002", "--out", str(out), "--no-progress", "--threads", "1"]


def test_fake_quantized_graph_is_the_network_with_quantizers_off(randomize_bn):
    torch.manual_seed(0)
    model = randomize_bn(create_model("mobilenet_v3_small", num_classes=10, width_multiplier=0.5)).eval()
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert eps == {0.001}  # V3's, which torchao's conv + BN pattern would replace by 1e-5
    x = torch.randn(4, 3, 64, 64)
    fq = FakeQuantized(model, (3, 64, 64))
    bn = [n for n in fq.graph.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert bn and {n.args[7] for n in bn} == {0.001} and {n.args[6] for n in bn} == {0.01}
    with torch.no_grad():
        want = model(x)
        got = fq.float_model()(x)
    # the same float operations, reordered by the simulated fold (conv(x, w * s) / s): rounding-level differences
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert not any(m.training for m in model.modules())  # tracing left the model as it was


def test_qat_run_reloads_evaluates_exports(data, base, tmp_path):
    out = tmp_path / "qat"
    assert main(qat_args(data, base, out)) == 0
    model, meta = load_checkpoint(out / "last.safetensors")
    assert isinstance(model, FakeQuantized) and meta.extra["qat"]["scheme"] == SCHEME
    assert meta.model == "mobilenet_v3_small" and meta.options["width_multiplier"] == 0.5  # from the checkpoint
    assert json.loads((out / "config.json").read_text())["recipe"]["ema_decay"] == 0.0
    state = load_file(out / "last.safetensors")
    scales = {k: v for k, v in state.items() if k.endswith(".scale")}
    assert scales and all(float(v.min()) > 0 for v in scales.values())
    quantizers = [m for m in model.graph.modules() if hasattr(m, "fake_quant_enabled")]
    weights = [m for m in quantizers if m.qscheme == torch.per_channel_symmetric]
    assert weights and {(m.quant_min, m.quant_max) for m in weights} == {(-WEIGHT_RANGE, WEIGHT_RANGE)}
    assert any(float(v.max()) != 1.0 for v in scales.values())  # learned, not the initial 1.0

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        first = model(x)
        model(x * 5)  # evaluation never moves the observers
        assert torch.equal(model(x), first)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in scales.items())
    again, _ = load_checkpoint(out / "last.safetensors")
    with torch.no_grad():
        assert torch.equal(again(x), first)

    # int8 with the learned scales: no calibration data needed; the QDQ graph carries the activation scales
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    result = export_model(model, meta, tmp_path / "q.onnx", "onnx", ExportOptions(int8=True))
    assert result.precision == "int8" and result.parity.passed
    assert result.details["scheme"] == "quantization-aware (learned scales)"
    proto = onnx.load(tmp_path / "q.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    q_scales = [float(np.asarray({**inits, **consts}[n.input[1]]).reshape(-1)[0]) for n in proto.graph.node
                if n.op_type == "QuantizeLinear"]
    learned = np.array(sorted({round(float(v.reshape(-1)[0]), 9) for k, v in scales.items() if v.numel() == 1}))
    assert q_scales
    int8_weights = [a for a in inits.values() if a.dtype == np.int8 and a.size > 1]
    assert int8_weights and max(int(np.abs(a.astype(np.int32)).max()) for a in int8_weights) <= WEIGHT_RANGE
    for s in q_scales:  # every activation quantizer of the file is one the training learned
        assert np.min(np.abs(learned - s) / s) < 1e-6, s

    # fp32: the fine-tuned weights without fake quantization
    plain = export_model(model, meta, tmp_path / "f.onnx", "onnx")
    assert plain.precision == "fp32" and plain.parity.passed
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(tmp_path / "f.onnx").graph.node)


def test_qat_resume_is_exact(data, base, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(qat_args(data, base, straight)) == 0
    die_before_epoch(monkeypatch, 1)  # the process dies in the second epoch, after state.pt of the first
    assert main(qat_args(data, base, resumed)) != 0
    monkeypatch.undo()
    assert main(["train", "--resume", str(resumed), "--no-progress"]) == 0
    a, b = load_file(straight / "last.safetensors"), load_file(resumed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_qat_executorch_and_openvino_take_the_learned_scales(data, base, tmp_path):
    pytest.importorskip("executorch")
    out = tmp_path / "qat"
    assert main(qat_args(data, base, out, epochs=1)) == 0
    model, meta = load_checkpoint(out / "last.safetensors")
    result = export_model(model, meta, tmp_path / "q.pte", "executorch", ExportOptions(int8=True))
    assert result.parity.passed and result.details["scheme"] == "quantization-aware (learned scales)"
    assert result.details["delegate_calls"] >= 1
    pytest.importorskip("openvino")
    # the QDQ graph, read by OpenVINO
    result = export_model(model, meta, tmp_path / "q.xml", "openvino", ExportOptions(int8=True))
    assert result.parity.passed and result.details["scheme"] == "quantization-aware (learned scales)"
    xml = result.path.read_text()
    assert 'type="FakeQuantize"' in xml or 'type="FakeConvert"' in xml or 'element_type="i8"' in xml


def test_qat_float_graph_converts_without_state(data, base, tmp_path):
    """Formats that can only re-calibrate get the fine-tuned float graph: no fake quantizer, no BN step counter
    (a mutable state that Core ML, for one, refuses below iOS 18)."""
    pytest.importorskip("coremltools")
    model, meta = load_checkpoint(base)
    fq = FakeQuantized(model, meta.preprocessing.input_size)
    graph = fq.float_model()
    modules = [graph.get_submodule(n.target) for n in graph.graph.nodes if n.op == "call_module"]
    assert not any(hasattr(m, "fake_quant_enabled") for m in modules)
    assert not any(n.target is torch.ops.aten.add_.Tensor for n in graph.graph.nodes)
    result = export_model(fq, meta, tmp_path / "f.mlpackage", "coreml")
    assert result.precision == "fp32" and result.details["structure"]["conv"] > 0


@pytest.mark.parametrize("extra, message", [
    ([], "fine-tunes a trained classifier"),
    (["--freeze", "backbone"], "leave freeze at 'none'"),
    (["--ema-decay", "0.9"], "keeps no EMA"),
    (["--model", "mobilenet_v2"], "drop --model"),
])
def test_qat_refusals(data, base, tmp_path, capsys, extra, message):
    args = ["train", "--qat", "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress", *extra]
    if extra:
        args += ["--weights", str(base)]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_qat_checkpoint_is_not_fine_tuned_twice(data, base, tmp_path, capsys):
    model, meta = load_checkpoint(base)
    fq = FakeQuantized(model, meta.preprocessing.input_size)
    meta.extra["qat"] = {"scheme": SCHEME, "input_size": list(meta.preprocessing.input_size)}
    save_checkpoint(tmp_path / "q.safetensors", fq, meta)
    assert main(qat_args(data, tmp_path / "q.safetensors", tmp_path / "again")) != 0
    assert "already quantization-aware" in capsys.readouterr().err
