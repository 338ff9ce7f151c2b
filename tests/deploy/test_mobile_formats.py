"""On-device formats (issue 22): ExecuTorch .pte (fp32 and PT2E int8), ONNX Runtime's .ort and Core ML's
.mlpackage, each exported by the one exporter and checked with the converter's own runtime or reader:
executorch.runtime runs the .pte, onnxruntime.InferenceSession loads the .ort, coremltools reads the package's
spec (prediction needs macOS, so off macOS the export is structure-checked and the CLI says so)."""
from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch

from mobilenets.checkpoint import CheckpointMeta
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions, export_model, open_runner
from mobilenets.deploy.formats import META_KEY, PARITY_KEY, PRECISION_KEY
from small_models import SIZE, small_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from checks import assert_int8_keeps_top1  # noqa: E402

# int8 .pte vs fp32 .pte, top-1 on 64 Fashion-MNIST test images of a V1 trained once per test run
# (tests/trained.py); what int8 costs a fully trained checkpoint is BENCHMARKS.md's "On-device formats" figure
INT8_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def model_meta():
    return small_model()  # V3-Small, width 0.5, 1 x 64 x 64, O(1) logits that depend on the input


def _eager(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _images(n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, SIZE, SIZE), dtype=np.float32)


# ------------------------------------------------------------------------------------------------- ExecuTorch
@pytest.fixture(scope="module")
def pte(model_meta, tmp_path_factory):
    pytest.importorskip("executorch")
    model, meta = model_meta
    return export_model(model, meta, tmp_path_factory.mktemp("pte") / "v3s.pte", "executorch",
                        ExportOptions(parity_n=8))


@pytest.fixture(scope="module")
def pte_pair(pte, trained):
    """V1 (width 0.5, trained) fp32 and int8 .pte: PT2E int8 lowering takes 2-3x as long as fp32 and grows with
    the number of graph nodes, and V1 has about a fifth of V3-Small's."""
    model, meta, _ = trained("mobilenet_v1")
    fp32 = export_model(model, meta, pte.path.with_name("v1.pte"), "executorch", ExportOptions(parity_n=4))
    int8 = export_model(model, meta, pte.path.with_name("v1_int8.pte"), "executorch",
                        ExportOptions(int8=True, calibration_data="fashion-mnist", calibration_n=32, parity_n=64,
                                      min_agreement=0.0))
    return fp32, int8


def test_executorch_export_parity_delegation_and_metadata(pte, model_meta):
    model, meta = model_meta
    assert pte.parity.passed and pte.parity.n == 8 and pte.parity.max_abs_diff < pte.parity.tolerance
    assert pte.details["delegate"] == "XNNPACK" and pte.details["delegate_calls"] >= 1
    outside = pte.details["ops_outside"]  # only MobileNetV3's scalar-constant copies stay outside XNNPACK
    assert outside == "none" or set(outside) <= {"dim_order_ops._to_dim_order_copy.default"}
    # ExecuTorch's own runtime: the forward method against eager PyTorch, the metadata constant method
    from executorch.runtime import Runtime
    program = Runtime.get().load_program(str(pte.path))
    assert {"forward", "mobilenets_properties"} <= set(program.method_names)
    x = _images(1)
    got = program.load_method("forward").execute([torch.from_numpy(x)])[0].numpy()
    np.testing.assert_allclose(got, _eager(model, x), atol=1e-4, rtol=1e-4)
    raw = program.load_method("mobilenets_properties").execute([])[0]
    properties = json.loads(bytes(raw.numpy().tobytes()).decode())
    assert CheckpointMeta.from_json(properties[META_KEY]) == meta and properties[PRECISION_KEY] == "fp32"
    assert json.loads(properties[PARITY_KEY])["passed"] is True
    # and through open_runner: a fixed batch-1 file fed 4 images in slices
    runner = open_runner(pte.path, backend="executorch", threads=1)
    assert runner.backend == "executorch" and runner.meta == meta and runner.batch == 1
    x = _images(4, seed=1)
    np.testing.assert_allclose(runner.run(x), _eager(model, x), atol=1e-4, rtol=1e-4)
    assert open_runner(pte.path, backend="auto").backend == "executorch"  # the only backend for .pte


def test_executorch_int8_is_quantized_smaller_and_keeps_top1(pte_pair):
    pte, pte_int8 = pte_pair
    assert pte_int8.details["scheme"] == "pt2e-xnnpack" and pte_int8.details["delegate_calls"] >= 1
    assert_int8_keeps_top1(pte.path, pte_int8, "executorch", INT8_AGREEMENT)


def test_predict_backend_executorch_cli(pte, model_meta, tmp_path, capsys):
    from PIL import Image
    model, meta = model_meta
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (70, 80), dtype=np.uint8)).save(image)
    assert main(["predict", str(pte.path), str(image), "--backend", "executorch", "--json"]) == 0
    result, = json.loads(capsys.readouterr().out)
    from mobilenets.tasks import get_task
    _, x = get_task("classify").load(image, meta)
    expected = int(_eager(model, x.numpy()).argmax())
    assert result["top"][0]["index"] == expected and result["top"][0]["class"] == f"c{expected}"
    assert main(["predict", str(pte.path), str(image), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot run .pte files" in err


# ------------------------------------------------------------------------------------------------- ORT format
def test_ort_format_loads_in_onnxruntime_with_metadata_and_operator_config(model_meta, tmp_path):
    import onnxruntime as ort
    model, meta = model_meta
    result = export_model(model, meta, tmp_path / "v3s.ort", "ort", ExportOptions(parity_n=8))
    assert result.parity.passed and result.details["ort_target"] == "arm"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    properties = session.get_modelmeta().custom_metadata_map
    assert CheckpointMeta.from_json(properties[META_KEY]) == meta and json.loads(properties[PARITY_KEY])["passed"]
    x = _images(1, seed=2)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], _eager(model, x), atol=1e-4, rtol=1e-4)
    config = tmp_path / "v3s.required_operators.config"
    ops = [line for line in config.read_text().splitlines() if line and not line.startswith("#")]
    assert any("Conv" in line for line in ops) and any("HardSigmoid" in line for line in ops)
    assert "# - v3s.ort" in config.read_text()
    assert not list(tmp_path.glob(".*"))  # nothing left of the staging
    assert open_runner(result.path).backend == "onnxruntime"


# ------------------------------------------------------------------------------------------------- Core ML
@pytest.fixture(scope="module")
def mlpackage(model_meta, tmp_path_factory):
    """The Core ML export through the CLI (its printout is part of what is tested)."""
    pytest.importorskip("coremltools")
    from mobilenets.checkpoint import save_checkpoint
    model, meta = model_meta
    folder = tmp_path_factory.mktemp("coreml")
    save_checkpoint(folder / "v3s.safetensors", model, meta)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["export", str(folder / "v3s.safetensors"), "--format", "coreml",
                     "--out", str(folder / "v3s.mlpackage")])
    assert code == 0, err.getvalue()
    return folder / "v3s.mlpackage", out.getvalue()


def test_coreml_package_structure_and_metadata(mlpackage, model_meta):
    import coremltools as ct
    path, printed = mlpackage
    model, meta = model_meta
    spec = ct.utils.load_spec(str(path))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert [i.name for i in spec.description.input] == ["input"]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 1, SIZE, SIZE]
    assert [o.name for o in spec.description.output] == ["logits"]
    ops = {op.type for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()
           for op in b.operations}
    assert {"conv", "sigmoid_hard", "linear"} <= ops  # h-swish as x * sigmoid_hard(x), fp32 weights
    user = spec.description.metadata.userDefined
    assert CheckpointMeta.from_json(user[META_KEY]) == meta and user[PRECISION_KEY] == "fp32"
    assert json.loads(user[PARITY_KEY])["checked"] is (sys.platform == "darwin")
    if sys.platform != "darwin":
        assert "prediction needs macOS" in printed and "structure checked" in printed


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS")
def test_coreml_predict_says_it_needs_macos_in_one_line(mlpackage, tmp_path, capsys):
    from PIL import Image
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    for backend in ("coreml", "auto"):
        assert main(["predict", str(mlpackage[0]), str(image), "--backend", backend]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Core ML prediction needs macOS" in err


# ------------------------------------------------------------------------------------------------- bad flags
@pytest.mark.parametrize("flags, message", [
    (["--format", "coreml", "--int8", "--calibration-data", "fashion-mnist"],
     "int8 is not available for fmt='coreml'; drop it"),
    (["--format", "executorch", "--dynamic-batch"], "dynamic_batch is not available for fmt='executorch' (the file "
                                                    "has a fixed batch; pass batch=N); drop it"),
    (["--format", "ort", "--out", "x.onnx"], "must end in .ort"),
])
def test_bad_flag_combinations_are_refused_in_one_line(flags, message, tmp_path, capsys, monkeypatch):
    pytest.importorskip("executorch")
    pytest.importorskip("coremltools")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "mobilenet_v3_small", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.iterdir())  # nothing written
