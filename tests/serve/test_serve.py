"""``mobilenets serve`` in-process, over real HTTP on 127.0.0.1: /predict gives what eager PyTorch gives for the
same file (classify, detect, segment), every bad upload gets its own 4xx as one-line JSON and the server goes
on, concurrent requests are batched (and each gets its own result), a full queue answers 503 + Retry-After,
/metrics counts it all."""
from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from mobilenets.deploy import open_runner  # noqa: E402
from mobilenets.serve import body as body_module  # noqa: E402
from mobilenets.serve.app import create_app  # noqa: E402
from mobilenets.serve.batching import Batcher  # noqa: E402
from mobilenets.serve.client import Client  # noqa: E402
from mobilenets.serve.limits import Limits  # noqa: E402
from mobilenets.serve.model import open_model  # noqa: E402
from mobilenets.serve.server import background  # noqa: E402
from mobilenets.tasks import get_task  # noqa: E402
from serve_models import CLASSES, bomb, classifier, dense, encoded, picture  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
LIMITS = Limits(max_upload_bytes=256 << 10, max_pixels=1_000_000, max_batch=4, max_queue=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("serve")
    mp.setenv("MOBILENETS_CACHE", str(path / "cache"))  # the dynamic-batch exports go here
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def cls_ckpt(folder):
    path = folder / "cls.safetensors"
    classifier(path)
    return path


@pytest.fixture(scope="module")
def served(cls_ckpt):
    return open_model(cls_ckpt, "onnxruntime", threads=1)


@pytest.fixture(scope="module")
def url(served):
    with background(create_app(served, LIMITS, decode_threads=1)) as base:
        yield base


def eager(ckpt, path, **options) -> dict:
    """What eager PyTorch answers for the image file ``path`` (the task's load and postprocess)."""
    runner = open_runner(ckpt, "torch")
    task = get_task(runner.meta.task)
    image, x = task.load(path, runner.meta)
    outputs = [torch.from_numpy(o) for o in runner.outputs(x.numpy())]
    return task.postprocess(outputs, runner.meta, runner.properties, tuple(image.shape[-2:]), **options)


def post(url: str, body: bytes, content_type: str | None = "image/png", path: str = "/predict",
         headers: dict | None = None) -> tuple[int, dict, dict]:
    c = Client(url)
    try:
        status, h, data = c.request("POST", path, body,
                                    {**({"Content-Type": content_type} if content_type else {}), **(headers or {})})
    finally:
        c.close()
    return status, h, json.loads(data)


def test_predict_matches_eager(url, cls_ckpt, folder):
    files = {"a.png": encoded(picture(1)), "b.jpg": encoded(picture(2), "JPEG", quality=90),
             "c.webp": encoded(picture(3), "WEBP", lossless=True)}
    tops = set()
    for name, data in files.items():
        (folder / name).write_bytes(data)
        want = eager(cls_ckpt, folder / name, top_k=3)["top"]
        # raw body, then multipart (what the page and curl -F send)
        status, _, got = post(url + "", data, "image/" + name.split(".")[1], "/predict?top_k=3")
        assert status == 200, got
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want]
        np.testing.assert_allclose([t["probability"] for t in got["top"]], [t["probability"] for t in want],
                                   atol=1e-4)
        assert got["image_size"] == [80, 96] and got["task"] == "classify" and got["timing"]["batch"] >= 1
        assert set(got["timing"]) == {"decode_ms", "queue_ms", "infer_ms", "batch", "postprocess_ms", "total_ms"}
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        status, _, multi = post(url, body, f"multipart/form-data; boundary={boundary}")
        assert status == 200 and multi["top"][:3] == got["top"], multi
        tops.add(got["top"][0]["class"])
    assert len(tops) > 1  # the model's answer depends on the image


BAD = {
    "empty": (b"", "image/png", 400),
    "text": (b"hello, this is not an image\n" * 4, "image/jpeg", 415),
    "truncated": (encoded(picture(4))[:300], "image/png", 400),
    "oversized": (b"\xff" * (300 << 10), "image/jpeg", 413),
    "bomb": (bomb(2000), "image/png", 413),
    "wrong type": (encoded(picture(5)), "text/plain", 415),
    "no file field": (b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--x--\r\n",
                      "multipart/form-data; boundary=x", 400),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_uploads_get_their_4xx(url, kind):
    body, ctype, code = BAD[kind]
    status, headers, got = post(url, body, ctype)
    assert status == code and list(got) == ["error"] and "\n" not in got["error"], (kind, got)
    assert headers["content-type"] == "application/json"
    status, _, ok = post(url, encoded(picture(1)))  # the server goes on
    assert status == 200 and ok["top"]


def test_large_jpeg_reports_its_original_size(url):
    big = np.asarray(Image.fromarray(picture(8)).resize((800, 600), Image.BILINEAR))  # decoded at 1/4 scale
    status, _, got = post(url, encoded(big, "JPEG", quality=85), "image/jpeg")
    assert status == 200 and got["image_size"] == [600, 800]


def test_other_errors_are_one_line_json(url):
    c = Client(url)
    for method, path, body, code in [("GET", "/nope", None, 404), ("GET", "/predict", None, 405),
                                     ("POST", "/predict?top_k=0", encoded(picture(1)), 400),
                                     ("POST", "/predict?score_thresh=x", encoded(picture(1)), 400),
                                     ("POST", "/v2/models/other/infer", b"{}", 404),
                                     ("POST", "/v2/models/mobilenet_v3_small/infer", b"{not json", 400),
                                     ("GET", "/v2/models/mobilenet_v3_small/versions/7", None, 404)]:
        status, headers, data = c.request(method, path, body, {"Content-Type": "image/png"})
        got = json.loads(data)
        assert status == code and "\n" not in got["error"], (path, status, got)
    c.close()


def test_chunked_upload_over_the_cap_is_413(url):
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    conn.request("POST", "/predict", body=iter([b"\x89PNG" + b"\0" * (64 << 10)] * 6),
                 headers={"Content-Type": "image/png"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()


def test_dense_tasks_match_eager(folder):
    data = encoded(picture(7, (90, 70)))
    (folder / "scene.png").write_bytes(data)
    for task, options in (("detect", {}), ("segment", {}), ("detect", {"name": "yolo", "end_to_end": True})):
        ckpt = folder / f"{task}{len(options)}.safetensors"
        dense(ckpt, task, **options)  # the end-to-end YOLO: its graph ends in the detections, no NMS after it
        served = open_model(ckpt, "onnxruntime", threads=1)
        want = eager(ckpt, folder / "scene.png", score_thresh=0.05)
        with background(create_app(served, LIMITS, decode_threads=1)) as base:
            status, _, got = post(base, data, "image/png", "/predict?score_thresh=0.05")
        assert status == 200 and got["task"] == task, got
        if task == "detect":
            assert want["detections"] and len(got["detections"]) == len(want["detections"])
            for g, w in zip(got["detections"], want["detections"]):
                assert g["class"] == w["class"] and abs(g["score"] - w["score"]) < 1e-3
                np.testing.assert_allclose(g["box"], w["box"], atol=0.3)  # original-image pixels
            assert max(d["box"][2] for d in got["detections"]) > 64  # beyond the 64-px network input
        else:
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["mask"]))))
            assert got["mask_size"] == [70, 90] and mask.shape == (70, 90)
            assert (mask == want["mask"].numpy()).mean() > 0.999
            assert got["classes"].keys() == want["classes"].keys()


def test_batcher_takes_what_is_queued_bounded():
    gate, batches = threading.Event(), []

    def run(x):
        batches.append(len(x))
        gate.wait(10)
        return [x[:, :1, 0, 0] * 2]

    b = Batcher(run, max_batch=4)
    b.start()
    first = b.submit(np.full((1, 1, 1, 1), 0, np.float32))
    time.sleep(0.1)  # the worker is now blocked in the first batch
    rest = [b.submit(np.full((1, 1, 1, 1), i, np.float32)) for i in range(1, 6)]
    big = b.submit(np.zeros((6, 1, 1, 1), np.float32))  # more than max_batch: runs alone
    gate.set()
    results = [f.result(10) for f in [first, *rest, big]]
    b.stop(10)
    assert batches == [1, 4, 1, 6]
    for i, (outputs, timing) in enumerate(results[:6]):
        assert float(outputs[0][0, 0]) == 2 * i  # each request gets its own rows back
    assert [r[1].batch for r in results] == [1, 4, 4, 4, 4, 1, 6]


def test_concurrent_requests_are_batched_and_each_gets_its_own(served, cls_ckpt, folder):
    images = [encoded(picture(10 + i)) for i in range(6)]
    want = []
    for i, data in enumerate(images):
        (folder / f"p{i}.png").write_bytes(data)
        want.append(eager(cls_ckpt, folder / f"p{i}.png", top_k=2)["top"])
    app = create_app(served, LIMITS, decode_threads=1)
    run = app.state.serve.batcher.run
    app.state.serve.batcher.run = lambda x: (time.sleep(0.03), run(x))[1]  # slow enough for requests to queue
    with background(app) as base, ThreadPoolExecutor(6) as pool:
        def one(i):
            c = Client(base)
            out = [c.predict(images[i], "image/png", top_k=2) for _ in range(3)]
            c.close()
            return out
        results = list(pool.map(one, range(6)))
        metrics = Client(base).request("GET", "/metrics")[2].decode()
    for i, replies in enumerate(results):
        for status, got in replies:
            assert status == 200 and [t["class"] for t in got["top"]] == [t["class"] for t in want[i]]
    value = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
             if line and not line.startswith("#")}
    inferences = value['mobilenets_inferences_total{model="mobilenet_v3_small"}']
    executions = value['mobilenets_executions_total{model="mobilenet_v3_small"}']
    assert inferences == 18  # the warm-up runs outside the worker
    assert executions < inferences  # batched: fewer runner calls than images
    assert value['mobilenets_batch_size_count'] == executions
    assert value['mobilenets_requests_total{code="200",route="/predict"}'] == 18
    assert 'mobilenets_request_duration_seconds_bucket{le="+Inf",route="/predict"}' in value
    assert "mobilenets_queue_depth" in value and "mobilenets_inflight_requests" in value


def test_full_queue_is_503_with_retry_after(served):
    gate = threading.Event()
    app = create_app(served, Limits(max_batch=1, max_queue=2), decode_threads=1)
    run = app.state.serve.batcher.run
    app.state.serve.batcher.run = lambda x: (gate.wait(20), run(x))[1]
    with background(app) as base, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, base, encoded(picture(i))) for i in range(2)]
        deadline = time.monotonic() + 20
        while app.state.serve.inflight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, headers, got = post(base, encoded(picture(3)))
        assert status == 503 and headers["retry-after"] == "1" and "queue is full" in got["error"]
        gate.set()
        assert [h.result(20)[0] for h in held] == [200, 200]
        assert post(base, encoded(picture(3)))[0] == 200  # room again


def test_page_and_info(url):
    c = Client(url)
    status, headers, page = c.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    text = page.decode()
    assert "http://" not in text and "https://" not in text  # no external scripts, fonts or styles
    assert '"classes": ["class0"' in text
    info = json.loads(c.request("GET", "/info")[2])
    assert info["task"] == "classify" and info["classes"] == CLASSES and info["limits"]["max_batch"] == 4
    c.close()


def test_a_failing_inference_is_a_500_and_the_server_goes_on(served):
    app = create_app(served, LIMITS, decode_threads=1)
    run, calls = app.state.serve.batcher.run, []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("runtime exploded\nsecond line")
        return run(x)

    app.state.serve.batcher.run = flaky
    with background(app) as base:
        status, _, got = post(base, encoded(picture(1)))
        assert status == 500 and got == {"error": "internal error: RuntimeError: runtime exploded second line"}
        assert post(base, encoded(picture(1)))[0] == 200


@pytest.mark.parametrize("route,content_type", [("/predict", "image/jpeg"),
                                                ("/v2/models/{name}/infer", "application/octet-stream")])
def test_plain_urllib_post_over_the_cap_reads_the_413(url, served, route, content_type):
    """A client that sends the whole body before reading (urllib, no Expect: 100-continue) gets the 413 JSON, not a
    connection reset: the server reads and discards the rest of the body first (up to serve.body.DRAIN_BYTES)."""
    body = b"\xff" * (20 << 20)  # 20 MB against the 256 kB cap
    request = urllib.request.Request(url + route.format(name=served.name), data=body,
                                     headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    message = json.loads(err.value.read())["error"]
    assert err.value.code == 413 and f"of {len(body):,} bytes is over this server's limit of {256 << 10:,}" in message
    assert "max_upload_mb" in message and "--" not in message  # the server's setting, no flag for the client


def test_a_stalled_oversized_upload_is_cut_off_after_the_drain_time(url, monkeypatch):
    """The discarding read is bounded in time too: a client that declares a body over the cap, sends part of it
    and stalls gets its 413 after serve.body.DRAIN_SECONDS, and the server goes on."""
    monkeypatch.setattr(body_module, "DRAIN_SECONDS", 0.5)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sent = (300 << 10) + 1
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: %d\r\n\r\n" % (2 * sent) + b"\xff" * sent)
        start = time.monotonic()
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 413") and b"over this server's limit" in answer
    assert 0.3 < waited < 20
    assert post(url, encoded(picture(1)))[0] == 200
