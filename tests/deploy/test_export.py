"""Export: ONNX graph shape (BN folded, native hard activations, opset), parity report, metadata, refusal of a
file that fails parity, and the CLI's one-line errors for bad input."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mobilenets
from checks import one_line_error
from mobilenets.checkpoint import CheckpointMeta, save_checkpoint
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions, export_model, open_runner
from mobilenets.deploy.formats import META_KEY, OPSET
from mobilenets.deploy.onnx_graph import fold_batchnorm
from small_models import OPTIONS, SIZE, dense_checkpoint, small_model

onnx = pytest.importorskip("onnx")  # the test extra installs it; a bare install skips
pytest.importorskip("onnxruntime")

@pytest.fixture(scope="module")
def model_meta():
    return small_model()


@pytest.fixture(scope="module")
def exported(model_meta, tmp_path_factory):
    model, meta = model_meta
    out = tmp_path_factory.mktemp("export") / "v3s.onnx"
    return export_model(model, meta, out, "onnx", ExportOptions(dynamic_batch=True))


def test_eager_logits_are_not_degenerate(model_meta):
    model, meta = model_meta
    with torch.no_grad():
        y = model(torch.randn(4, *meta.preprocessing.input_size))
    assert y.abs().max() > 0.5 and y.std(0).mean() > 0.1  # varies across inputs


def test_fold_batchnorm_removes_every_bn_and_keeps_outputs(model_meta):
    model, meta = model_meta
    fused = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(3, *meta.preprocessing.input_size)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


def test_onnx_graph_is_folded_native_and_recent(exported):
    proto = onnx.load(str(exported.path))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert "BatchNormalization" not in ops
    assert ops["HardSwish"] > 0 and ops["HardSigmoid"] > 0  # native ops, not x * relu6(x + 3) / 6
    assert ops["GlobalAveragePool"] > 0 and "ReduceMean" not in ops
    assert "Identity" not in ops
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17 and OPSET >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert CheckpointMeta.from_json(props[META_KEY]).options == OPTIONS


def test_parity_report_and_runner_match_eager(exported, model_meta):
    model, meta = model_meta
    report = exported.parity
    assert report.passed and report.n == 16 and report.top1_agreement == 1.0
    assert 0 <= report.max_abs_diff < report.tolerance < 1e-2
    runner = open_runner(exported.path, backend="onnxruntime", threads=1)
    assert runner.meta.model == "mobilenet_v3_small" and runner.meta.class_names[3] == "c3"
    x = np.random.default_rng(0).standard_normal((5, 1, SIZE, SIZE), dtype=np.float32)  # dynamic batch: 5 at once
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.run(x), expected, atol=1e-4, rtol=1e-4)


def test_exported_program_round_trip(tmp_path):
    model, meta = small_model("mobilenet_v1")  # the shortest network: torch.export is the slow part
    result = export_model(model, meta, tmp_path / "v1.pt2", "exported-program", ExportOptions(parity_n=4))
    assert result.parity.passed and result.parity.max_abs_diff < result.parity.tolerance
    runner = open_runner(result.path, backend="torch")
    assert runner.meta.model == "mobilenet_v1" and runner.meta.options == OPTIONS and runner.batch == 1
    x = np.random.default_rng(2).standard_normal((2, 1, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(runner.run(x), model(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-4)


def test_export_refuses_a_file_that_fails_parity(model_meta, tmp_path, monkeypatch):
    """A broken export (here: a conv weight changed after folding) must not be written."""
    model, meta = model_meta
    import mobilenets.deploy.export as export_module
    real_fold = export_module.fold_batchnorm

    def broken_fold(m):
        fused = real_fold(m)
        conv = next(x for x in fused.modules() if isinstance(x, torch.nn.Conv2d))
        conv.weight.data.mul_(1.5)
        return fused

    monkeypatch.setattr(export_module, "fold_batchnorm", broken_fold)
    out = tmp_path / "bad.onnx"
    with pytest.raises(mobilenets.UserError, match="refusing to write"):
        export_model(model, meta, out, "onnx", ExportOptions(parity_n=4))
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary left behind


def test_cli_exports_a_checkpoint_with_parity_on_real_images(model_meta, tmp_path, capsys):
    model, meta = model_meta
    ckpt = tmp_path / "small.safetensors"
    save_checkpoint(ckpt, model, meta)
    out = tmp_path / "deep" / "small.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--data", "fashion-mnist", "--parity-samples", "8"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "8 fashion-mnist inputs" in text and "PASS" in text
    runner = open_runner(out, backend="onnxruntime")
    assert runner.meta.class_names == meta.class_names
    assert runner.batch == 1  # the default export has a fixed batch; run() feeds larger batches in slices
    x = np.random.default_rng(1).standard_normal((3, 1, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(runner.run(x), model(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-4)


def test_cli_rejects_a_checkpoint_that_is_not_a_mobilenet(tmp_path, capsys):
    bogus = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(10, 512), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, bogus)
    assert main(["export", str(bogus), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a mobilenets, torchvision or timm MobileNet checkpoint" in one_line_error(capsys)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    assert main(["export", str(garbage), "--out", str(tmp_path / "y.onnx")]) == 2
    assert "not a readable" in one_line_error(capsys)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_cli_rejects_unknown_model_and_unwritable_output(tmp_path, capsys):
    assert main(["export", "mobilenet_v5", "--out", str(tmp_path / "a.onnx")]) == 2
    assert "unknown model 'mobilenet_v5'" in one_line_error(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", "mobilenet_v3_small", "--out", str(blocker / "sub" / "a.onnx")]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)
    assert main(["export", "mobilenet_v3_small", "--out", str(tmp_path / "a.onnx.txt")]) == 2
    assert "must end in .onnx" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_missing_optional_runtime_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # import openvino -> ImportError
    assert main(["export", "mobilenet_v3_small", "--format", "openvino", "--out", str(tmp_path / "a.xml")]) == 2
    assert "pip install 'mobilenets[openvino]'" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- every task
def test_detector_exports_decoded_boxes_and_scores_with_its_nms_settings(tmp_path):
    model, meta, _ = dense_checkpoint("detect", tmp_path)
    result = export_model(model, meta, tmp_path / "det.onnx")
    report = result.parity
    assert report.passed and report.max_abs_diff < 1e-3 and report.agreement >= 0.9
    proto = onnx.load(tmp_path / "det.onnx")
    assert [o.name for o in proto.graph.output] == ["boxes", "scores"]  # NMS stays outside the graph
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["mobilenets.postprocess"])["nms_thresh"] == model.nms_thresh
    assert json.loads(props["mobilenets.parity"])["passed"] and props["mobilenets.precision"] == "fp32"


def test_segmenter_exports_logits_at_the_input_size_with_a_dynamic_batch(tmp_path):
    model, meta, _ = dense_checkpoint("segment", tmp_path, size=(80, 112))
    result = export_model(model, meta, tmp_path / "seg.onnx", options=ExportOptions(dynamic_batch=True))
    assert result.parity.passed and result.parity.agreement == 1.0
    runner = open_runner(result.path, backend="onnxruntime")
    assert runner.batch is None
    x = torch.randn(3, 3, 80, 112)
    (logits,) = runner.outputs(x.numpy())
    assert logits.shape == (3, 4, 80, 112)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-3, atol=1e-4)


def test_detector_int8_goes_through_the_same_exporter(tmp_path):
    """ONNX Runtime QDQ int8 of a detector: the task judges it (confident detections kept), the NMS settings
    travel with it."""
    model, meta, _ = dense_checkpoint("detect", tmp_path)
    result = export_model(model, meta, tmp_path / "det_int8.onnx",
                          options=ExportOptions(int8=True, calibration_data="fashion-mnist", calibration_n=16,
                                                parity_n=4))
    assert result.precision == "int8" and result.details["scheme"] == "onnxruntime-qdq" and result.parity.passed
    runner = open_runner(result.path, backend="onnxruntime")
    assert runner.properties["mobilenets.precision"] == "int8" and "mobilenets.postprocess" in runner.properties
    assert [o.shape[-1] for o in runner.outputs(np.zeros((1, 3, 96, 96), np.float32))] == [4, 4]  # boxes, scores


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_dense_checkpoint_runs_the_same_on_torch_and_onnxruntime(task, tmp_path, monkeypatch):
    """open_runner(ckpt, "torch") runs the task's export module, so its outputs equal the cached export's."""
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    _, meta, ckpt = dense_checkpoint(task, tmp_path)
    eager, exported = open_runner(ckpt, "torch"), open_runner(ckpt, "onnxruntime")
    assert exported.path.parent == tmp_path / "cache" / "exports" and exported.meta == eager.meta == meta
    assert json.loads(exported.properties["mobilenets.parity"])["passed"]
    x = np.random.default_rng(5).standard_normal((2, 3, 96, 96), dtype=np.float32)
    want, got = eager.outputs(x), exported.outputs(x)
    assert len(got) == len(want) == (2 if task == "detect" else 1)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-3 * max(1.0, float(np.abs(w).max())), rtol=1e-3)
    if task == "detect":
        assert exported.properties["mobilenets.postprocess"] == eager.properties["mobilenets.postprocess"]


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_checkpoints_of_version_0_1_still_export(task, tmp_path, capsys):
    """Files written by mobilenets 0.1 (tests/golden/v0_1): the CLI exports them with a passing parity check."""
    ckpt = Path(__file__).resolve().parents[1] / "golden" / "v0_1" / task / "last.safetensors"
    out = tmp_path / f"{task}.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--parity-samples", "4"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (onnx, fp32," in text and "PASS" in text
    assert open_runner(out, backend="onnxruntime").meta.task == task
