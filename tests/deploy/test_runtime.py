"""Runtimes: open_runner on each backend, metadata, auto backend choice and its cache, bad input, bench helpers."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from mobilenets.checkpoint import save_checkpoint
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions, auto, export_model, open_runner
from mobilenets.errors import UserError
from small_models import SIZE, small_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")



@pytest.fixture(scope="module")
def model_meta():
    return small_model("mobilenet_v2")


@pytest.fixture(scope="module")
def onnx_file(model_meta, tmp_path_factory):
    model, meta = model_meta
    return export_model(model, meta, tmp_path_factory.mktemp("rt") / "v2.onnx", "onnx", ExportOptions(parity_n=4)).path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _inputs(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, SIZE, SIZE), dtype=np.float32)


def _eager(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_onnxruntime_runner_matches_eager_and_carries_meta(onnx_file, model_meta):
    model, meta = model_meta
    runner = open_runner(onnx_file, backend="onnxruntime", threads=2)
    assert runner.backend == "onnxruntime" and runner.meta == meta
    x = _inputs()
    np.testing.assert_allclose(runner.run(x), _eager(model, x), atol=1e-4, rtol=1e-4)


def test_openvino_runner_matches_eager(onnx_file, model_meta, tmp_path):
    pytest.importorskip("openvino")
    model, meta = model_meta
    x = _inputs(seed=3)
    runner = open_runner(onnx_file, backend="openvino", threads=2)
    assert runner.meta == meta
    np.testing.assert_allclose(runner.run(x), _eager(model, x), atol=1e-4, rtol=1e-4)
    ir = export_model(model, meta, tmp_path / "v2.xml", "openvino", ExportOptions(parity_n=2)).path
    assert ir.with_suffix(".bin").is_file()
    ir_runner = open_runner(ir, backend="openvino")
    assert ir_runner.meta == meta
    np.testing.assert_allclose(ir_runner.run(x), _eager(model, x), atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="cannot run .xml"):
        open_runner(ir, backend="onnxruntime")


def test_checkpoint_runs_on_onnxruntime_through_a_cached_export(model_meta, tmp_path, cache):
    model, meta = model_meta
    ckpt = tmp_path / "v2.safetensors"
    save_checkpoint(ckpt, model, meta)
    runner = open_runner(ckpt, backend="onnxruntime")
    assert runner.path.parent == cache / "exports" and runner.meta.model == "mobilenet_v2"
    x = _inputs(seed=4)
    np.testing.assert_allclose(runner.run(x), _eager(model, x), atol=1e-4, rtol=1e-4)
    torch_runner = open_runner(ckpt, backend="torch")
    np.testing.assert_allclose(torch_runner.run(x), _eager(model, x), atol=1e-5, rtol=1e-5)


def test_auto_measures_once_then_uses_the_cache(onnx_file, cache, monkeypatch):
    calls = []

    def fake_probe(path, backend, threads, seconds=1.0):
        calls.append(backend)
        return {"onnxruntime": 3.0, "openvino": 2.0}[backend]

    monkeypatch.setattr(auto, "probe", fake_probe)
    monkeypatch.setattr(auto, "installed", lambda b: b in ("torch", "onnxruntime", "openvino"))
    assert auto.choose_backend(onnx_file, threads=2) == "openvino"
    assert sorted(calls) == ["onnxruntime", "openvino"]
    entry, = json.loads((cache / "backend_choice.json").read_text()).values()
    assert entry["backend"] == "openvino" and entry["median_ms"] == {"onnxruntime": 3.0, "openvino": 2.0}
    assert auto.choose_backend(onnx_file, threads=2) == "openvino" and len(calls) == 2  # cached
    assert auto.choose_backend(onnx_file, threads=1) == "openvino" and len(calls) == 4  # another key
    # Without OpenVINO there is nothing to choose: no measurement, ONNX Runtime.
    monkeypatch.setattr(auto, "installed", lambda b: b in ("torch", "onnxruntime"))
    assert open_runner(onnx_file, backend="auto").backend == "onnxruntime" and len(calls) == 4


def test_probe_measures_in_a_subprocess(onnx_file):
    ms = auto.probe(onnx_file, "onnxruntime", 1, seconds=0.2)
    assert 0 < ms < 10_000


def test_bad_backend_file_and_missing_runtime(onnx_file, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown backend 'tensorrt'"):
        open_runner(onnx_file, backend="tensorrt")
    with pytest.raises(UserError, match="not found"):
        open_runner(tmp_path / "missing.onnx", backend="onnxruntime")
    (tmp_path / "model.xyz").write_bytes(b"x")
    with pytest.raises(UserError, match="not a model file"):
        open_runner(tmp_path / "model.xyz")
    (tmp_path / "model.tflite").write_bytes(b"x")  # a known suffix, but not such a file
    with pytest.raises(UserError, match="is not a readable .tflite file"):
        open_runner(tmp_path / "model.tflite", backend="litert")
    with pytest.raises(UserError, match="'torch' cannot run .onnx"):
        open_runner(onnx_file, backend="torch")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(UserError, match=r"not installed; install the extra: pip install 'mobilenets\[openvino\]'"):
        open_runner(onnx_file, backend="openvino")


def test_runner_rejects_non_image_input(onnx_file):
    with pytest.raises(UserError, match="not a batch of images"):
        open_runner(onnx_file, backend="onnxruntime").run(np.zeros((SIZE, SIZE), np.float32))


def test_bench_cli_rejects_bad_options(capsys):
    assert main(["bench", "--backends", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown backend(s) tensorrt" in err
    assert main(["bench", "--models", "resnet50"]) == 2
    assert "unknown benchmark model(s) resnet50" in capsys.readouterr().err
    assert main(["bench", "--batches", "1,x"]) == 2
    assert "--batches '1,x' is not a comma-separated list" in capsys.readouterr().err
    assert main(["bench", "--batch", "1,x"]) == 2  # the old spelling, kept as an alias
    assert "--batches '1,x' is not a comma-separated list" in capsys.readouterr().err


def test_bench_ratio_is_the_median_of_per_round_ratios():
    from mobilenets.deploy.bench import BenchReport, PathResult, format_table
    from mobilenets.deploy.bench.stats import ratio

    def row(who, backend, rounds, best):
        med = float(np.median(rounds))
        return PathResult("mobilenet_v2", f"{who} {backend}", who, backend, 1, med, med, med, 1e3 / med, 1.0, 0.01,
                          samples=len(rounds), best_ms=float(np.median(best)), rounds=rounds, round_best=best)

    rows = [row("ours", "openvino", [2.0, 4.0, 2.0], [1.0, 1.0, 1.0]),
            row("ours", "onnxruntime", [3.0, 3.0, 3.0], [0.9, 0.9, 0.9]),
            row("peer", "openvino", [2.5, 4.0, 2.5], [1.0, 1.2, 1.0]), row("peer", "torch", [1.0] * 3, [0.1] * 3),
            row("ours int8", "openvino", [1.0, 2.0, 1.0], [0.45, 0.45, 0.45])]
    q = ratio(rows)
    # By medians ours is fastest on openvino (2.0); peers' fastest among runtimes is openvino (eager excluded).
    assert q["ours"] == "ours openvino" and q["peer"] == "peer openvino"
    assert q["ratio"] == pytest.approx(0.8) and q["int8_vs_fp32"]["ratio"] == pytest.approx(0.5)
    # By each round's fastest run ours is fastest on onnxruntime: 0.9 / 1.0.
    assert q["best"]["ours"] == "ours onnxruntime" and q["best"]["ratio"] == pytest.approx(0.9)
    assert q["int8_vs_fp32"]["best_ratio"] == pytest.approx(0.5)
    table = format_table(BenchReport("d", "cpu", 2, 100.0, {}, rows, [q]))
    assert "| mobilenet_v2 | 1 | 0.800 (0.80-0.90): ours openvino 2.00 ms / peer openvino 2.50 ms | 0.900 (" in table


def test_harness_interleaves_rounds_and_sizes_bursts_from_the_first_round():
    from mobilenets.deploy.bench import harness

    calls = []

    def path(name, ms):
        def burst(n):
            calls.append((name, n))
            return [ms] * n
        return burst

    t = harness.interleave({"a": path("a", 10.0), "b": path("b", 1.0)}, rounds=3, burst_ms=50)
    assert [n for k, n in calls if k == "a"] == [3, 5, 5]  # 3 runs, then about 50 ms of them
    assert [n for k, n in calls if k == "b"] == [3, 50, 50]  # capped at 50 runs
    assert all({k for k, _ in calls[i:i + 2]} == {"a", "b"} for i in range(0, 6, 2))  # each path once a round
    assert t["a"].rounds == [10.0] * 3 and t["b"].best == 1.0 and len(t["b"].times) == 103


def test_worker_times_in_its_own_process_and_reports_a_failed_load():
    import operator
    import time
    from functools import partial

    from mobilenets.deploy.bench.harness import Worker

    worker = Worker.start(partial(partial, time.sleep), 0.002)  # load(0.002) -> the callable to time
    assert worker.ready() is None
    times = worker.burst(4)
    worker.stop()
    assert len(times) == 4 and min(times) >= 2.0
    assert "TypeError" in Worker.start(operator.neg, "x").ready()
