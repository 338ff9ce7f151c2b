"""What one request may cost the server, the one error every endpoint answers with, and the one parse of a
number a request sends (a query value, a header).

Every failure becomes :class:`ServeError`: an HTTP status, a one-line message (the body is ``{"error":
message}``, the Open Inference Protocol's error shape) and optional headers (``Retry-After`` on 503).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

MB = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """``max_upload_bytes``: body size (413 beyond); ``max_pixels``: width x height of a decoded image (413
    beyond; a decompression bomb is a small file of many pixels); ``max_batch``: images per inference;
    ``max_queue``: requests inside the server at once (decoding, waiting for the worker or running), the next
    one gets 503 with ``Retry-After``."""

    max_upload_bytes: int = 16 * MB
    max_pixels: int = 40_000_000
    max_batch: int = 8
    max_queue: int = 64
    retry_after_s: int = 1

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")


@dataclass
class ServeError(Exception):
    """A request that cannot be answered: ``status`` and a one-line ``message`` naming the problem and the fix."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.message = " ".join(str(self.message).split())  # one line, whatever the cause said
        super().__init__(self.message)


def number(text: str, cast: Callable[[str], T], label: str, hint: str = "") -> T:
    """``cast(text)``, or a 400 saying that ``label`` is not a number (``hint``: what to send instead)."""
    try:
        return cast(text)
    except ValueError:
        raise ServeError(400, f"{label} is not a number{hint}") from None
