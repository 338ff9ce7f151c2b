"""``mobilenets serve`` as a real process: it prints where it listens, answers, and on SIGTERM finishes the
request in flight (here one whose upload is still arriving), then exits 0; bad flags are one-line errors."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from mobilenets.deploy.export import cached_export  # noqa: E402
from serve_models import cached_classifier, encoded, picture  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with cached_classifier(tmp_path_factory.mktemp("proc")) as ckpt:
        # the file the server runs (exported here once, so the process starts fast)
        yield cached_export(ckpt, "onnx", dynamic_batch=True)


def start(*args) -> tuple[subprocess.Popen, int, list[str], threading.Thread]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mobilenets", "serve", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90
    while not any("serving" in line for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    line = next(line for line in lines if "serving" in line)
    assert "1 runtime threads + 1 inference worker + 1 decode threads" in line, line
    return proc, int(line.rsplit(":", 1)[1].strip().rstrip("/")), lines, reader


def test_sigterm_finishes_the_request_in_flight_then_exits_0(model):
    proc, port, lines, reader = start(model, "--backend", "onnxruntime", "--port", 0, "--threads", 1,
                                      "--decode-threads", 1)
    try:
        data = encoded(picture(1))
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(f"POST /predict?top_k=2 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:100])
        time.sleep(0.5)  # the server has the headers: the request is in flight, its body still arriving
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connections once shutting down
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        s.sendall(data[100:])
        reply = b""
        while chunk := s.recv(65536):  # shutting down, the server closes the connection after its answer
            reply += chunk
        s.close()
        head, body = reply.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), reply[:300]
        assert len(json.loads(body)["top"]) == 2
        assert proc.wait(timeout=40) == 0
        reader.join(10)
        assert lines[-1].strip() == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_bad_invocations_are_one_line_errors(model, tmp_path, capsys):
    from mobilenets.cli import main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        for args, words in [((tmp_path / "missing.onnx",), "not found"),
                            ((model, "--max-batch", 0), "--max-batch 0 must be at least 1"),
                            ((model, "--port", 70000), "is not a TCP port"),
                            ((model, "--port", taken.getsockname()[1]), "cannot listen on 127.0.0.1")]:
            assert main(["serve", *map(str, args)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and words in err[0], err
