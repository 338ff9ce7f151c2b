"""Open Inference Protocol v2 driven by the official client, ``tritonclient.http``, unchanged: health, metadata,
infer with JSON and binary tensors, the classification extension, BYTES images, and its errors."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from checks import assert_close_to_fp32, float_references, fp32_bound  # noqa: E402
from mobilenets.checkpoint import load_checkpoint  # noqa: E402
from mobilenets.deploy import open_runner  # noqa: E402
from mobilenets.serve.app import create_app  # noqa: E402
from mobilenets.serve.model import open_model  # noqa: E402
from mobilenets.serve.server import background  # noqa: E402
from mobilenets.tasks import get_task  # noqa: E402
from serve_models import CLASSES, SIZE, cached_classifier, encoded, picture  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "mobilenet_v3_small"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oip")
    with cached_classifier(folder) as ckpt, \
            background(create_app(open_model(ckpt, "onnxruntime", threads=1), decode_threads=1)) as url:
        client = httpclient.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=30.0)
        yield client, ckpt, folder
        client.close()


def assert_matches_eager(got: np.ndarray, ckpt, x: np.ndarray) -> None:
    """The server's logits (ONNX Runtime) against eager PyTorch's, within checks.fp32_bound."""
    assert_close_to_fp32(got, load_checkpoint(ckpt)[0], x)


def test_health_and_metadata(setup):
    client, _, _ = setup
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and not client.is_model_ready("other")
    server = client.get_server_metadata()
    assert set(server["extensions"]) == {"binary_tensor_data", "classification"}
    meta = client.get_model_metadata(NAME)
    assert meta["name"] == NAME and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, len(CLASSES)]}]
    assert client.get_model_metadata(NAME, model_version="1")["name"] == NAME
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("other")
    assert e.value.status() == "404" and "unknown model" in e.value.message()


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_matches_eager(setup, binary_in, binary_out):
    client, ckpt, _ = setup
    x = np.random.default_rng(3).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary_out)
    result = client.infer(NAME, [inp], outputs=[out], request_id="req-7")
    got = result.as_numpy("logits")
    assert got.shape == (3, len(CLASSES))
    assert_matches_eager(got, ckpt, x)
    assert result.get_response()["id"] == "req-7" and result.get_response()["model_name"] == NAME


def test_all_outputs_binary_by_default_and_classification(setup):
    client, ckpt, _ = setup
    x = np.random.default_rng(4).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(NAME, [inp])  # no outputs named: the client asks for every output in binary
    assert_matches_eager(result.as_numpy("logits"), ckpt, x)
    top = client.infer(NAME, [inp], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    rows = top.as_numpy("logits")
    assert rows.shape == (2, 3)
    (want,), (want64,) = float_references(load_checkpoint(ckpt)[0], x)
    bound = fp32_bound(want, want64)  # ONNX Runtime against eager PyTorch, plus the 6 decimals of the text
    for row, logits in zip(rows, want):
        parts = [r.decode().split(":") for r in row]
        classes, scores = [int(p[1]) for p in parts], np.array([float(p[0]) for p in parts])
        assert [p[2] for p in parts] == [CLASSES[c] for c in classes]
        assert list(scores) == sorted(scores, reverse=True)  # best first
        assert np.abs(scores - logits[classes]).max() <= bound  # each score is that class's logit
        others = np.delete(logits, classes)
        assert others.max() <= scores.min() + 2 * bound  # and no class left out beats one reported


def test_bytes_images_are_decoded_by_the_server(setup):
    client, ckpt, folder = setup
    files = [encoded(picture(20)), encoded(picture(21), "JPEG", quality=90)]
    runner = open_runner(ckpt, "torch")
    task = get_task("classify")
    xs = []
    for i, data in enumerate(files):
        (folder / f"i{i}").write_bytes(data)
        xs.append(task.load(folder / f"i{i}", runner.meta)[1].numpy())
    inp = httpclient.InferInput("image", [len(files)], "BYTES")
    inp.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    got = client.infer(NAME, [inp]).as_numpy("logits")
    assert_matches_eager(got, ckpt, np.concatenate(xs))


def test_errors_reach_the_client(setup):
    client, _, _ = setup
    bad = httpclient.InferInput("input", [1, 3, SIZE + 1, SIZE], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, SIZE + 1, SIZE), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer(NAME, [bad])
    assert e.value.status() == "400" and "does not fit" in e.value.message()
    wrong = httpclient.InferInput("input", [1, 3, SIZE, SIZE], "FP16")
    wrong.set_data_from_numpy(np.zeros((1, 3, SIZE, SIZE), np.float16))
    with pytest.raises(InferenceServerException) as e:
        client.infer(NAME, [wrong])
    assert e.value.status() == "400" and "FP32" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer(NAME, [bad], outputs=[httpclient.InferRequestedOutput("boxes")])
    assert e.value.status() == "400"
    ok = httpclient.InferInput("input", [1, 3, SIZE, SIZE], "FP32")
    ok.set_data_from_numpy(np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert client.infer(NAME, [ok]).as_numpy("logits").shape == (1, len(CLASSES))  # still serving
