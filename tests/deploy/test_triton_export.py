"""export --triton: a Triton / KServe model repository for classification, detection and segmentation models.

Every config.pbtxt is parsed with the model-config protobuf schema that ships with tritonclient (unknown fields
and wrong types fail the parse) and compared with what the written file really has (onnx.load / OpenVINO's
reader, and the runtimes' actual output shapes); the file in the repository runs in onnxruntime (and OpenVINO)
with parity to eager PyTorch; labels, thread counts, atomic writing and the one-line refusals; the CLI round trip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets.checkpoint import save_checkpoint
from mobilenets.cli import main
from mobilenets.deploy import ExportOptions
from mobilenets.deploy.triton import TritonOptions, export_triton
from mobilenets.errors import UserError
from mobilenets.tasks import get_task
from small_models import dense_checkpoint, small_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402  (tritonclient[grpc] brings protobuf)

CORES = 4  # the serving machine's cores as passed to export_triton (not this machine's)
ONNX_FP32 = onnx.TensorProto.FLOAT


def parse(entry: Path):
    """config.pbtxt through Triton's own schema: a typo in a field name or enum fails here."""
    return text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def params(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def graph_io(path: Path):
    """``{name: (elem_type, shape)}`` of the ONNX file's real inputs and outputs; a symbolic dim is -1."""
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}

    def io(values):
        return {v.name: (v.type.tensor_type.elem_type,
                         [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
                for v in values if v.name not in inits}
    return io(graph.input), io(graph.output)


@pytest.fixture(scope="module")
def classifier():
    return small_model()  # V3-Small, 1 x 64 x 64, 10 classes c0..c9, non-trivial BN statistics


@pytest.fixture(scope="module")
def repo(classifier, trained, tmp_path_factory):
    """One repository holding every kind of entry: ``{name: (TritonExport, model, meta)}``."""
    root = tmp_path_factory.mktemp("triton")
    folder = root / "repo"
    model, meta = classifier
    det, det_meta, _ = dense_checkpoint("detect", root)
    seg, seg_meta, _ = dense_checkpoint("segment", root, size=(80, 112))
    v1, v1_meta, _ = trained("mobilenet_v1")  # trained (tests/trained.py); NNCF quantizes V1's plain graph fast
    entries = {
        "clf": (dict(instances=2), {}, model, meta),
        "clf_ov_int8": (dict(backend="openvino", max_batch=4, threads=3),
                        dict(int8=True, calibration_data="fashion-mnist", calibration_n=32, parity_n=32), v1, v1_meta),
        "det": (dict(instances=4), {}, det, det_meta),
        "seg": (dict(max_batch=0), {}, seg, seg_meta),  # a fixed batch-1 file: dims keep the batch, no batching
    }
    if not all(_installed(m) for m in ("openvino", "nncf")):
        entries = {k: v for k, v in entries.items() if "ov" not in k}
    return {name: (export_triton(m, me, folder, TritonOptions(name=name, cores=CORES, **kw),
                                 ExportOptions(**{"parity_n": 4, **options})), m, me)
            for name, (kw, options, m, me) in entries.items()}


def _installed(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def test_every_config_parses_with_tritons_schema(repo):
    for name, (result, _, _) in repo.items():
        config = parse(result.path)
        assert config.name == name == result.path.name  # Triton requires the folder's name
        assert config.max_batch_size == result.max_batch
        assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        assert config.instance_group[0].count == result.instances
        if result.backend == "onnxruntime":
            assert config.platform == "onnxruntime_onnx" and not config.backend
            assert (result.path / "1" / "model.onnx").is_file()
        else:
            assert config.backend == "openvino" and config.default_model_filename == "model.xml"
            assert (result.path / "1" / "model.xml").is_file() and (result.path / "1" / "model.bin").is_file()
        if config.max_batch_size > 1:
            assert config.HasField("dynamic_batching")
            assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 1000  # small: no waiting at low load
        else:
            assert not config.HasField("dynamic_batching")
        assert sorted(p.name for p in result.path.rglob("*")) == sorted([*(Path(f).name for f in result.files), "1"])
        for p in (result.path, *result.path.rglob("*")):  # readable by a server running as another user
            assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~_umask(), p
    # nothing but the entries in the repository (no staging folder left inside it or beside it)
    folder = next(iter(repo.values()))[0].path.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(repo)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_config_states_the_onnx_files_real_inputs_and_outputs(repo):
    """Names, TYPE_FP32 and dims are the graph's (batch left out when batching); where the graph leaves a size
    open besides the batch, dims hold the size a run of the file gives; a run gives outputs of exactly those
    shapes."""
    for name, (result, _, meta) in repo.items():
        if result.backend != "onnxruntime":
            continue
        config = parse(result.path)
        inputs, outputs = graph_io(result.path / "1" / "model.onnx")
        batched = config.max_batch_size > 0
        for declared, real in ((config.input, inputs), (config.output, outputs)):
            assert [t.name for t in declared] == list(real)
            for t in declared:
                elem, shape = real[t.name]
                assert elem == ONNX_FP32 and t.data_type == model_config_pb2.TYPE_FP32
                if batched:
                    assert shape[0] == -1  # the dynamic-batch export
                graph_dims = shape[1:] if batched else shape
                assert len(t.dims) == len(graph_dims) and -1 not in t.dims
                assert all(g in (-1, d) for g, d in zip(graph_dims, t.dims)), (name, t.name, graph_dims, t.dims)
        assert list(config.input[0].dims)[-3:] == list(meta.preprocessing.input_size)
        session = ort.InferenceSession(str(result.path / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        n = 3 if batched else 1
        got = session.run(None, {"input": np.zeros((n, *meta.preprocessing.input_size), np.float32)})
        for t, array in zip(config.output, got):
            assert list(array.shape) == ([n, *t.dims] if batched else list(t.dims)), (name, t.name)
    boxes, scores = parse(repo["det"][0].path).output
    assert (boxes.name, scores.name) == ("boxes", "scores")  # NMS stays outside the graph
    assert list(boxes.dims) == [scores.dims[0], 4] and scores.dims[1] == len(repo["det"][2].class_names)
    seg = parse(repo["seg"][0].path)
    assert list(seg.input[0].dims) == [1, 3, 80, 112]  # max_batch 0 keeps the batch in dims
    assert list(seg.output[0].dims) == [1, 4, 80, 112]  # logits at the input size


def test_config_states_the_openvino_irs_real_inputs_and_outputs(repo):
    ov = pytest.importorskip("openvino")
    for name in [n for n in repo if "ov" in n]:
        result = repo[name][0]
        config = parse(result.path)
        model = ov.Core().read_model(str(result.path / "1" / "model.xml"))
        for declared, ports in ((config.input, model.inputs), (config.output, model.outputs)):
            assert [t.name for t in declared] == [p.get_any_name() for p in ports]
            for t, p in zip(declared, ports):
                shape = p.get_partial_shape()
                assert shape[0].is_dynamic and p.get_element_type() == ov.Type.f32
                assert list(t.dims) == [d.get_length() for d in list(shape)[1:]]


@torch.no_grad()
def test_the_repositorys_file_runs_with_parity_to_eager(repo):
    rng = np.random.default_rng(3)
    for name, (result, model, meta) in repo.items():
        n = min(3, result.max_batch) if result.max_batch else 1
        x = rng.standard_normal((n, *meta.preprocessing.input_size), dtype=np.float32)
        out = get_task(meta.task).export_module(model)(torch.from_numpy(x))
        want = [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
        if result.backend == "onnxruntime":
            session = ort.InferenceSession(str(result.path / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            got = session.run([t.name for t in result.outputs], {"input": x})
        else:
            import openvino as ov
            # f32 as the exporter checks it: OpenVINO's default on a CPU with bf16 (this AMX machine) is bf16,
            # which Triton's OpenVINO backend has no config key to turn off (see the README)
            compiled = ov.Core().compile_model(str(result.path / "1" / "model.xml"), "CPU",
                                               {"INFERENCE_PRECISION_HINT": "f32"})
            values = compiled(x)
            got = [values[compiled.output(t.name)] for t in result.outputs]
        assert len(got) == len(want)
        if "int8" in name:
            continue  # int8 changes the numbers: test_the_int8_ir_is_the_file_the_exporter_checked
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-3 * max(1.0, float(np.abs(w).max())), rtol=1e-3)
        assert result.export.parity.passed  # and the exporter's own check passed on the same file


@torch.no_grad()
def test_the_int8_ir_is_the_file_the_exporter_checked(repo):
    """The NNCF int8 IR in the repository gives, on the exporter's parity inputs (Fashion-MNIST test images),
    the top-1 agreement with eager PyTorch that the exporter measured and stored."""
    ov = pytest.importorskip("openvino")
    result, model, meta = repo["clf_ov_int8"]
    assert result.export.precision == "int8" and result.export.details["scheme"] == "nncf"
    task = get_task(meta.task)
    x = task.parity_inputs(meta, result.export.parity.n, "fashion-mnist")
    compiled = ov.Core().compile_model(str(result.path / "1" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.concatenate([compiled(x[i:i + 4])[compiled.output("logits")] for i in range(0, len(x), 4)])
    want = model(torch.from_numpy(x)).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() == pytest.approx(result.export.parity.agreement)
    assert result.export.parity.inputs == "fashion-mnist"
    assert 'type="FakeQuantize"' in (result.path / "1" / "model.xml").read_text()


def test_classifier_labels_are_the_classes_in_order(repo):
    for name, (result, _, meta) in repo.items():
        config = parse(result.path)
        labelled = [t.name for t in config.output if t.label_filename]
        if meta.task == "classify":
            assert labelled == ["logits"] and config.output[0].label_filename == "labels.txt"
            lines = (result.path / "labels.txt").read_text().splitlines()
            assert lines == meta.class_names and len(lines) == 10  # in order, one per line
            assert list(config.output[0].dims) == [len(lines)]
        else:  # a detector's scores and a segmenter's logits are not a classification
            assert labelled == [] and not (result.path / "labels.txt").exists()


def test_threads_times_instances_fit_the_cores(repo):
    for name, (result, _, _) in repo.items():
        config, p = parse(result.path), params(parse(result.path))
        count = config.instance_group[0].count
        if result.backend == "onnxruntime":
            threads = int(p["intra_op_thread_count"])
            assert p["inter_op_thread_count"] == "1"
        else:
            threads = int(p["INFERENCE_NUM_THREADS"])
            assert p["CPU_THREADS_NUM"] == str(threads) and p["NUM_STREAMS"] == p["CPU_THROUGHPUT_STREAMS"] == "1"
            assert (p.get("ENABLE_BATCH_PADDING") == "YES") == (config.max_batch_size > 1)
        assert count * threads <= CORES and threads >= 1, name
    assert params(parse(repo["clf"][0].path))["intra_op_thread_count"] == "2"  # default: cores // instances
    assert params(parse(repo["det"][0].path))["intra_op_thread_count"] == "1"


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_bad_arguments_are_refused_in_one_line_before_any_work(classifier, tmp_path):
    model, meta = classifier
    bad = [(dict(instances=3, threads=2, cores=4), "threads=1 or fewer"),
           (dict(instances=5, cores=4), "at most 4 instances"),
           (dict(name="../up"), "not a Triton model name"),
           (dict(backend="tensorrt"), "onnxruntime, openvino"),
           (dict(max_batch=-1), "max_batch=-1")]
    for kwargs, words in bad:
        with pytest.raises(UserError) as e:
            export_triton(model, meta, tmp_path / "repo", TritonOptions(**kwargs))
        assert words in _one_line(e)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as e:
        export_triton(model, meta, tmp_path / "file" / "repo")
    assert "is a file, not a folder" in _one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing made


def test_an_existing_entry_is_refused(classifier, tmp_path):
    model, meta = classifier
    entry = tmp_path / "repo" / "m"
    (entry / "1").mkdir(parents=True)
    (entry / "config.pbtxt").write_text("name: \"m\"\n")
    with pytest.raises(UserError) as e:
        export_triton(model, meta, tmp_path / "repo", TritonOptions(name="m"), ExportOptions(parity_n=4))
    assert "force=True" in _one_line(e) and str(entry) in str(e.value)
    assert (entry / "config.pbtxt").read_text() == "name: \"m\"\n"  # untouched (--force: test_cli_round_trip)
    (entry / "config.pbtxt").unlink()
    with pytest.raises(UserError) as e:
        export_triton(model, meta, tmp_path / "repo", TritonOptions(name="m/1"))
    assert "not a Triton model name" in _one_line(e)
    (tmp_path / "repo" / "f").write_text("x")
    with pytest.raises(UserError) as e:
        export_triton(model, meta, tmp_path / "repo", TritonOptions(name="f"))
    assert "is a file, not a model folder" in _one_line(e)


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_parity_check_leaves_no_entry(classifier, tmp_path, monkeypatch):
    import mobilenets.deploy.export as export_module

    model, meta = classifier

    def broken_fold(m):  # an export that no longer matches eager PyTorch
        from mobilenets.deploy.onnx_graph import fold_batchnorm
        fused = fold_batchnorm(m)
        with torch.no_grad():
            next(p for p in fused.parameters() if p.ndim == 4).mul_(3)
        return fused
    monkeypatch.setattr(export_module, "fold_batchnorm", broken_fold)
    with pytest.raises(UserError) as e:
        export_triton(model, meta, tmp_path / "repo", TritonOptions(name="m"), ExportOptions(parity_n=4))
    message = _one_line(e)
    assert "does not match eager PyTorch" in message and str(tmp_path / "repo" / "m") in message
    assert ".tmp" not in message  # the staging folder is not what the user asked for
    assert list(tmp_path.iterdir()) == []  # not even the repository folder it made


def test_cli_round_trip(classifier, tmp_path, capsys):
    model, meta = classifier
    ckpt = tmp_path / "best.safetensors"
    save_checkpoint(ckpt, model, meta)
    folder = tmp_path / "models"
    argv = ["export", str(ckpt), "--triton", str(folder), "--name", "fashion", "--instances", "2", "--threads", "1",
            "--cores", "2", "--parity-samples", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder / 'fashion'}: config.pbtxt, 1/model.onnx, labels.txt (Triton onnxruntime, fp32" in out
    assert "PASS" in out and "2 CPU instance(s) x 1 thread(s) (<= 2 cores)" in out
    assert "output logits: TYPE_FP32 [10], labels labels.txt" in out
    config = parse(folder / "fashion")
    assert config.instance_group[0].count == 2 and params(config)["intra_op_thread_count"] == "1"
    assert (folder / "fashion" / "labels.txt").read_text().split() == meta.class_names

    assert main(argv) == 2  # the entry exists now
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists and is not empty; pass force=True" in err
    (folder / "fashion" / "stale.txt").write_text("old")
    assert main([*argv, "--force", "--max-batch", "2"]) == 0
    assert parse(folder / "fashion").max_batch_size == 2 and not (folder / "fashion" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "models"]  # no staging left
    capsys.readouterr()

    for extra, words in ((["--out", "x.onnx"], "--out does not apply to --triton DIR"),
                         (["--format", "openvino"], "--format does not apply"),
                         (["--instances", "3"], "more than the 2 cores")):
        assert main([*argv, "--force", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err
    assert main(["export", str(ckpt), "--instances", "2", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "instances only applies to a Triton repository; add --triton DIR" in capsys.readouterr().err


@torch.no_grad()
def test_one_client_for_triton_and_mobilenets_serve(repo, tmp_path):
    """The official tritonclient.http, unchanged, against `mobilenets serve` on the repository's own files: the
    model metadata it gets are the config's names, datatypes and shapes (batch as -1), so a client written for
    the Triton/KServe deployment of this repository works against the Python server too (and back); the
    classification extension answers "score:index:label" with the labels.txt label of the eager top-1 class."""
    pytest.importorskip("fastapi")
    httpclient = pytest.importorskip("tritonclient.http")
    server = pytest.importorskip("mobilenets.serve.server")
    if not hasattr(server, "background"):
        pytest.skip("mobilenets.serve.server.background (serving from a thread) is not there yet")
    from PIL import Image

    from mobilenets.deploy import open_runner
    from mobilenets.serve.app import create_app
    from mobilenets.serve.model import ServedModel

    for name in ("clf", "det"):
        result, model, meta = repo[name]
        config = parse(result.path)
        served = ServedModel(open_runner(result.path / "1" / "model.onnx", backend="onnxruntime"), name=name)
        with server.background(create_app(served)) as url:
            client = httpclient.InferenceServerClient(url.removeprefix("http://"))
            metadata = client.get_model_metadata(name)
            for key, declared in (("inputs", config.input), ("outputs", config.output)):
                assert [{k: t[k] for k in ("name", "datatype", "shape")} for t in metadata[key]] == [
                    {"name": t.name, "datatype": "FP32", "shape": [-1, *t.dims]} for t in declared], (name, key)
            if name != "clf":
                continue
            image = tmp_path / "shirt.png"
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 70), dtype=np.uint8)).save(image)
            _, x = get_task(meta.task).load(image, meta)  # the README's client code from here on
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x.numpy(), binary_data=True)
            out = httpclient.InferRequestedOutput("logits", binary_data=True, class_count=3)
            top = client.infer(name, [inp], outputs=[out]).as_numpy("logits")
            score, index, label = top[0][0].decode().split(":")
            labels = (result.path / "labels.txt").read_text().splitlines()
            assert int(index) == int(model(x).argmax()) and label == labels[int(index)]
            client.close()
