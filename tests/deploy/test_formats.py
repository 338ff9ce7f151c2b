"""The format table is the only registry of formats and runners; ExportOptions is checked against it in one place
(validate), and the keyword arguments of earlier releases still work, with a DeprecationWarning."""
from __future__ import annotations

import importlib
import pkgutil
import warnings

import pytest

import mobilenets.deploy.formats as formats
import mobilenets.deploy.runtime as runtime
from mobilenets.deploy import ExportOptions, export_model
from mobilenets.deploy.files import failing_as
from mobilenets.deploy.formats import BACKEND, FORMAT, FORMATS_LIST, ExportJob, Writer
from mobilenets.deploy.options import NAMES, TRITON_OPTIONS, validate
from mobilenets.deploy.triton import TritonOptions, export_triton
from mobilenets.errors import UserError
from small_models import small_model

MODULES = {"onnx", "openvino", "exported_program", "executorch", "ort", "coreml", "litert"}


def test_every_format_has_its_module_writer_runner_check_and_options():
    found = {m.name for m in pkgutil.iter_modules(formats.__path__)} - {"base"}
    assert found == MODULES  # one module per format, nothing else beside the table's shapes
    assert {f.writer.__module__.rsplit(".", 1)[-1] for f in FORMATS_LIST} == MODULES
    for f in FORMATS_LIST:
        module = importlib.import_module(f.writer.__module__)
        assert f.writer is module.writer and f.check is module.check and f.options == module.OPTIONS
        assert f.needs == module.NEEDS
        assert set(f.options) <= set(NAMES), f.name  # every option is an ExportOptions field
        assert ("int8" in f.options) == (f.int8 is not None), f.name
        assert f.backends and all(b in BACKEND for b in f.backends), f.name
        f.check  # noqa: B018 - callable without importing any runtime
    for b in BACKEND.values():
        assert callable(b.runner) and b.runner.__module__.startswith("mobilenets.deploy.formats."), b.name


def test_the_table_is_the_only_runner_registry():
    assert not hasattr(runtime, "RUNNERS")  # runners live in their format's module, named by the Backend rows
    runners = {getattr(b.runner, "__self__", b.runner) for b in BACKEND.values()}
    subclasses = set()
    stack = list(runtime.Runner.__subclasses__())
    while stack:
        cls = stack.pop()
        subclasses.add(cls)
        stack += cls.__subclasses__()
    assert {c for c in subclasses if c.__module__.startswith("mobilenets.deploy")} == runners


def test_a_runner_without_its_run_cannot_be_made(tmp_path):
    class Incomplete(runtime.Runner):
        backend = "nothing"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(tmp_path / "model.bin", None, 1)  # type: ignore[abstract]


@pytest.mark.parametrize("fmt, options, words", [
    ("coreml", ExportOptions(int8=True), "int8 is not available for fmt='coreml'"),
    ("litert", ExportOptions(dynamic_batch=True), "dynamic_batch is not available for fmt='litert'"),
    ("onnx", ExportOptions(nhwc=True), "nhwc is not available for fmt='onnx' (its input is NCHW); drop it or use a "
                                       "format that offers it (litert)"),
    ("executorch", ExportOptions(int8=True, int8_weights="8bit"), "int8_weights is not available for "
                                                                  "fmt='executorch'"),
    ("onnx", ExportOptions(batch=0), "batch=0 must be at least 1"),
    ("onnx", ExportOptions(int8_weights="8bit"), "int8_weights is for int8=True"),
    ("onnx", ExportOptions(calibration_data="fashion-mnist"), "calibration_data is only used with int8=True"),
    ("tflite", ExportOptions(), "unknown export format fmt='tflite'"),
])
def test_validate_refuses_in_one_line_naming_the_parameter(fmt, options, words):
    with pytest.raises(UserError) as e:
        validate(fmt, options)
    message = str(e.value)
    assert words in message and "\n" not in message and "--" not in message


def test_validate_accepts_what_each_format_lists():
    for f in FORMATS_LIST:
        values = {"batch": 2, "dynamic_batch": True, "parity_data": "fashion-mnist", "parity_n": 4, "tolerance": 1e-3,
                  "min_agreement": 0.9, "int8": True, "calibration_data": "fashion-mnist", "calibration_n": 8,
                  "int8_weights": "8bit", "nhwc": True}
        assert validate(f.name, ExportOptions(**{k: values[k] for k in f.options})) is f


def test_a_triton_repository_takes_only_its_options():
    assert validate("onnx", ExportOptions(int8=True, calibration_data="x", parity_n=4), triton=True) is FORMAT["onnx"]
    with pytest.raises(UserError, match=r"^batch, nhwc do not apply to a Triton repository"):
        validate("onnx", ExportOptions(batch=2, nhwc=True), triton=True)
    assert set(TRITON_OPTIONS) <= set(FORMAT["onnx"].options) & set(FORMAT["openvino"].options)


def test_deprecated_keywords_map_onto_the_record_with_a_warning(tmp_path):
    model, meta = small_model("mobilenet_v1")
    with pytest.warns(DeprecationWarning, match=r"export_model\(parity_n=\.\.\.\) is deprecated; pass "
                                                r"options=ExportOptions\(parity_n=\.\.\.\)"):
        result = export_model(model, meta, tmp_path / "v1.pt2", "exported-program", parity_n=3)
    assert result.parity.passed and result.parity.n == 3  # the keyword reached the parity check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the record itself warns about nothing
        export_model(model, meta, tmp_path / "v1b.pt2", "exported-program", ExportOptions(parity_n=2))
    with pytest.warns(DeprecationWarning), pytest.raises(UserError, match="batch=0 must be at least 1"):
        export_model(model, meta, tmp_path / "x.onnx", batch=0)
    with pytest.raises(TypeError, match="not both"):
        export_model(model, meta, tmp_path / "x.onnx", "onnx", ExportOptions(), batch=2)
    with pytest.raises(TypeError, match="unexpected keyword"):
        export_model(model, meta, tmp_path / "x.onnx", "onnx", batches=2)
    # export_triton's keywords go to both records: the repository's and the export's
    with pytest.warns(DeprecationWarning, match="triton=TritonOptions"), pytest.raises(UserError, match="cores=0"):
        export_triton(model, meta, tmp_path / "repo", name="m", cores=0, parity_n=4)
    with pytest.raises(UserError, match="cores=0"):
        export_triton(model, meta, tmp_path / "repo", TritonOptions(name="m", cores=0), ExportOptions(parity_n=4))
    assert list(tmp_path.glob("x*")) == [] and not (tmp_path / "repo").exists()


def test_failing_as_is_the_one_exception_wrapper():
    with pytest.raises(UserError) as e, failing_as("the converter could not convert m", "try fmt='onnx'"):
        raise RuntimeError("unsupported op\nstack trace line")
    assert str(e.value) == "the converter could not convert m (RuntimeError: unsupported op); try fmt='onnx'"
    with pytest.raises(UserError, match="^as it was$"), failing_as("not this"):
        raise UserError("as it was")


def test_export_job_cuts_calibration_into_whole_batches():
    import numpy as np
    job = ExportJob(module=None, fused=None, meta=None, outputs=("logits",), batch=4, dynamic_batch=False,
                    int8=True, calibration=np.arange(10 * 3, dtype=np.float32).reshape(10, 3))
    assert [b.shape for b in job.calibration_batches()] == [(4, 3), (4, 3)]
    assert [b.shape for b in job.calibration_batches(16)] == [(16, 3)]  # fewer images than a batch: repeated
    assert Writer(save=lambda f, p: None, open=None).unchecked == ""


def test_run_bench_takes_a_record_and_its_old_keywords():
    from mobilenets.deploy.bench import BenchOptions, run_bench

    with pytest.raises(UserError, match=r"^threads=0 must be at least 1$"):
        run_bench(BenchOptions(threads=0))
    with pytest.warns(DeprecationWarning, match=r"pass options=BenchOptions\(threads=\.\.\.\)"), \
            pytest.raises(UserError, match=r"^threads=0 must be at least 1$"):
        run_bench(threads=0)
