"""A small client of ``mobilenets serve``: one kept-alive HTTP connection (``http.client``, no dependency).

    from mobilenets.serve.client import Client
    with Client("http://127.0.0.1:8000") as c:
        status, result = c.predict(open("cat.jpg", "rb").read(), "image/jpeg", top_k=3)

For the Open Inference Protocol (this server, Triton, KServe), use the official ``tritonclient[http]``: the
routes and tensors are the same on each (see the README's "Serving" section).
"""
from __future__ import annotations

import http.client
import json
import urllib.parse


class Client:
    """``request(method, path, body, headers)`` -> ``(status, headers, body bytes)``; reconnects once when the
    server closed the kept-alive connection."""

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// URL")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
                continue
            if response.getheader("connection", "").lower() == "close":
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        raise AssertionError("unreachable")

    def predict(self, image: bytes, content_type: str = "application/octet-stream",
                **params) -> tuple[int, dict]:
        """``POST /predict`` of raw image bytes -> ``(status, JSON)`` (``{"error": ...}`` when not 200)."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        status, _, data = self.request("POST", "/predict" + query, image, {"Content-Type": content_type})
        return status, json.loads(data)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
