"""Running the app under uvicorn on a socket we bind ourselves (so ``--port 0`` can say which port it got).

SIGTERM (or Ctrl-C) shuts down gracefully: uvicorn stops accepting connections, lets the requests in flight
finish (up to ``graceful_s``), then the app's lifespan runs what is queued and stops the worker, and the
process exits with status 0. (Plain uvicorn re-raises the signal after such a shutdown, so the process would
die of SIGTERM instead of exiting 0; :class:`_Server` keeps the graceful shutdown and drops the re-raise.)
"""
from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import uvicorn

from ..errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another port "
                        "(0: any free one) or host") from e


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _config(app, graceful_s: float) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                          timeout_graceful_shutdown=graceful_s,  # type: ignore[arg-type]  # uvicorn: int, used as asyncio timeout
                          timeout_keep_alive=5)


def run(app, sock: socket.socket, graceful_s: float = 30.0) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT, then shut down gracefully."""
    _Server(_config(app, graceful_s)).run(sockets=[sock])


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0, graceful_s: float = 10.0, start_s: float = 120.0):
    """Serve ``app`` from a thread of this process (tests, benchmarks, notebooks); yields the base URL
    (``http://127.0.0.1:PORT``) once the app is ready, and shuts down gracefully on leaving."""
    sock = bind(host, port)
    server = _Server(_config(app, graceful_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mobilenets-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the server did not start; see its log")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(graceful_s + 10)
        sock.close()
