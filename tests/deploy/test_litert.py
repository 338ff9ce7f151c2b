"""LiteRT .tflite (issue 22): export by the CLI with parity against eager PyTorch, the metadata read back from the
flatbuffer, AI Edge Quantizer int8 against fp32, ``predict --backend litert``, and one-line refusals.

The runtime that checks the files is LiteRT's own Interpreter (ai_edge_litert), the flatbuffer is read with the
schema and tools that ship with it, and the reference is eager PyTorch."""
from __future__ import annotations

import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import torch

from mobilenets.checkpoint import CheckpointMeta, save_checkpoint
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions, export_model, open_runner
from mobilenets.deploy.formats import META_KEY, PARITY_KEY, PRECISION_KEY
from mobilenets.errors import UserError
from small_models import SIZE, small_model

litert_torch = pytest.importorskip("litert_torch")  # make test installs it (Makefile: LITERT_PKGS)
interpreter = pytest.importorskip("ai_edge_litert.interpreter")

from checks import assert_int8_keeps_top1, one_line_error  # noqa: E402

# int8 vs fp32 top-1 on 64 Fashion-MNIST test images of a V3-Small trained once per test run (tests/trained.py):
# measured 0.95-1.00; what int8 costs a fully trained checkpoint on all 10,000 images is in BENCHMARKS.md.
INT8_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def model_meta(trained):
    model, meta, _ = trained("mobilenet_v3_small")  # width 0.5, 1 x 32 x 32, one epoch on 12,000 images
    return model, meta


@pytest.fixture(scope="module")
def tflite(model_meta, tmp_path_factory):
    """A checkpoint exported by the CLI: ``(path, what it printed)``."""
    model, meta = model_meta
    folder = tmp_path_factory.mktemp("litert")
    ckpt = folder / "v3s.safetensors"
    save_checkpoint(ckpt, model, meta)
    out = folder / "v3s.tflite"
    with pytest.MonkeyPatch.context() as mp:
        buf = io.StringIO()
        mp.setattr("sys.stdout", buf)
        assert main(["export", str(ckpt), "--format", "litert", "--out", str(out), "--parity-samples", "8"]) == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def tflite_int8(model_meta, tflite):
    model, meta = model_meta
    return export_model(model, meta, tflite[0].with_name("v3s_int8.tflite"), "litert",
                        ExportOptions(int8=True, calibration_data="fashion-mnist", calibration_n=32, parity_n=64,
                                      min_agreement=0.0))


def _eager(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _interpreter_outputs(path, x):
    """The file run by LiteRT's Interpreter directly, one image at a time (fp32 in, fp32 out)."""
    it = interpreter.Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    got = []
    for image in x:
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        got.append(it.get_tensor(out["index"]))
    return np.concatenate(got)


def test_export_parity_metadata_and_graph(tflite, model_meta):
    path, printed = tflite
    model, meta = model_meta
    assert f"wrote {path} (litert, fp32, mobilenet_v3_small)" in printed and "PASS" in printed
    assert "LiteRT-Torch" not in printed  # the converter's stage-by-stage progress stays off our stdout
    x = np.random.default_rng(7).standard_normal((6, *model_meta[1].preprocessing.input_size), dtype=np.float32)
    ref = _eager(model, x)
    got = _interpreter_outputs(path, x)  # LiteRT's own runtime, not our runner
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()

    runner = open_runner(path, backend="litert", threads=1)
    assert runner.backend == "litert" and runner.batch == 1
    np.testing.assert_allclose(runner.run(x), got, rtol=0, atol=1e-6)  # the runner feeds the fixed batch in slices
    assert runner.meta == CheckpointMeta.from_json(meta.to_json())  # classes, preprocessing, options, task
    assert runner.meta.class_names == meta.class_names and runner.meta.task == meta.task
    assert runner.properties[PRECISION_KEY] == "fp32" and runner.properties["mobilenets.layout"] == "NCHW"
    parity = json.loads(runner.properties[PARITY_KEY])
    assert parity["passed"] and parity["n"] == 8 and parity["max_abs_diff"] < 1e-3

    # The entries really sit in the flatbuffer's metadata table (read with LiteRT's own flatbuffer tools).
    from ai_edge_litert.tools import flatbuffer_utils
    obj = flatbuffer_utils.read_model(str(path))
    names = {m.name.decode() if isinstance(m.name, bytes) else m.name: m.buffer for m in obj.metadata}
    assert {META_KEY, PRECISION_KEY, PARITY_KEY} <= set(names)
    assert json.loads(bytes(obj.buffers[names[META_KEY]].data).decode())["model"] == "mobilenet_v3_small"
    ops = {flatbuffer_utils.opcode_to_name(obj, op.opcodeIndex) for op in obj.subgraphs[0].operators}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH"} <= ops  # BN folded away, native hard-swish
    assert not ops & {"BATCH_MATMUL", "CUSTOM"}


def test_int8_is_integer_in_one_xnnpack_partition_smaller_and_keeps_top1(tflite, tflite_int8):
    assert tflite_int8.details["scheme"].startswith("ai-edge-quantizer")
    ops = tflite_int8.details["ops"]
    # int8 everywhere but h-swish, which XNNPACK runs only in float: one DEQUANTIZE/QUANTIZE pair around each
    assert ops["HARD_SWISH"] > 0 and ops["QUANTIZE"] == ops["DEQUANTIZE"] == ops["HARD_SWISH"]
    it = interpreter.Interpreter(model_path=str(tflite_int8.path), num_threads=1)
    assert it.get_input_details()[0]["dtype"] == np.int8 and it.get_output_details()[0]["dtype"] == np.int8
    it.allocate_tensors()  # the execution plan after delegation: the whole graph in one XNNPACK partition (an
    #                        int8 h-swish left 19 ops outside it, 20 partitions, 4x slower than fp32)
    assert [o["op_name"] for o in it._get_ops_details()].count("DELEGATE") == 1
    assert_int8_keeps_top1(tflite[0], tflite_int8, "litert", INT8_AGREEMENT)


def test_nhwc_input_for_camera_pipelines(tmp_path, capsys):
    """``--nhwc``: the file takes (N, H, W, C) images; LiteRT's own Interpreter fed NHWC RGB images matches eager
    PyTorch on the same images as NCHW, and our runner (NCHW in, as for every backend) transposes for it. Three
    channels, so that a missing transpose could not pass unnoticed."""
    model, meta = small_model(in_chans=3)
    ckpt = tmp_path / "rgb.safetensors"
    save_checkpoint(ckpt, model, meta)
    out = tmp_path / "rgb_nhwc.tflite"
    assert main(["export", str(ckpt), "--format", "litert", "--nhwc", "--out", str(out), "--parity-samples", "4"]) == 0
    assert "layout=NHWC" in capsys.readouterr().out
    it = interpreter.Interpreter(model_path=str(out))
    assert tuple(it.get_input_details()[0]["shape"]) == (1, SIZE, SIZE, 3)
    x = np.random.default_rng(8).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    ref = _eager(model, x)
    got = _interpreter_outputs(out, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    runner = open_runner(out, backend="litert", threads=1)
    assert runner.properties["mobilenets.layout"] == "NHWC"
    np.testing.assert_allclose(runner.run(x), got, rtol=0, atol=1e-6)
    # only LiteRT offers it: one line naming the formats that do
    assert main(["export", str(ckpt), "--format", "onnx", "--nhwc", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "nhwc is not available for fmt='onnx'" in one_line_error(capsys) and not (tmp_path / "x.onnx").exists()


def test_predict_backend_litert_cli(tflite, model_meta, tmp_path, capsys):
    from PIL import Image

    from mobilenets.tasks import get_task
    model, meta = model_meta
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (70, 80), dtype=np.uint8)).save(image)
    assert main(["predict", str(tflite[0]), str(image), "--backend", "litert", "--json"]) == 0
    result, = json.loads(capsys.readouterr().out)
    _, x = get_task("classify").load(image, meta)
    expected = int(_eager(model, x.numpy()).argmax())
    assert result["top"][0]["index"] == expected and result["top"][0]["class"] == meta.class_names[expected]
    assert main(["predict", str(tflite[0]), str(image), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot run .tflite files" in err


def _hide(monkeypatch, *modules):
    """Make ``modules`` look uninstalled (find_spec None, import fails)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in modules else real(name, *args, **kwargs)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for name in [m for m in sys.modules if m.split(".")[0] in modules] + list(modules):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def test_missing_converter_is_refused_in_one_line_naming_the_extra(model_meta, tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "litert_torch")
    model, meta = model_meta
    with pytest.raises(UserError, match=r"pip install 'mobilenets\[litert-convert\]'"):
        export_model(model, meta, tmp_path / "m.tflite", "litert")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "mobilenet_v3_small", "--format", "litert"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mobilenets[litert-convert]" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_runtime_is_refused_in_one_line_naming_the_extra(tflite, tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "ai_edge_litert")
    with pytest.raises(UserError, match=r"pip install 'mobilenets\[litert\]'"):
        open_runner(tflite[0], backend="litert")
    image = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    assert main(["predict", str(tflite[0]), str(image), "--backend", "litert"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mobilenets[litert]" in err


def test_dynamic_batch_is_refused_in_one_line(model_meta, tmp_path):
    model, meta = model_meta
    with pytest.raises(UserError, match="dynamic_batch is not available for fmt='litert'"):
        export_model(model, meta, tmp_path / "m.tflite", "litert", ExportOptions(dynamic_batch=True))
    assert not list(tmp_path.iterdir())
