"""Request bodies: reading one under a cap (413 beyond, after draining the rest) and the image of ``POST /predict``.

Before answering 413, the server reads and discards the rest of an oversized body, up to ``DRAIN_BYTES`` in all
and for at most ``DRAIN_SECONDS``, so that a client which sends the whole body before reading the answer (plain
urllib, requests: no ``Expect: 100-continue``) gets the 413 and not a connection reset (the lingering close of
nginx and Apache). A body declared larger still is refused unread; a client that stalls is cut off when the
time is up.
"""
from __future__ import annotations

import asyncio
import contextlib

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .limits import ServeError

RAW_TYPES = ("image/", "application/octet-stream")  # content types of a raw image body
DRAIN_BYTES = 64 << 20
DRAIN_SECONDS = 10.0


class _Parser(MultiPartParser):
    spool_max_size = 64 << 20  # the body is already capped and in memory: keep the file part there too


def _too_large(cap: int, declared: int | None = None) -> ServeError:
    size = "" if declared is None else f" of {declared:,} bytes"
    return ServeError(413, f"upload{size} is over this server's limit of {cap:,} bytes (its max_upload_mb setting); "
                           "send a smaller image")


async def _discard(stream, size: int) -> None:
    async for chunk in stream:
        size += len(chunk)
        if size > DRAIN_BYTES:
            return


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refusing (413) more than ``cap`` bytes: from Content-Length, else as it streams in;
    either way the rest of the body is read and discarded first (up to ``DRAIN_BYTES`` and ``DRAIN_SECONDS``)."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ServeError(400, f"Content-Length {length!r} is not a number")
    declared = int(length) if length is not None else None
    if declared is not None and declared > DRAIN_BYTES:
        raise _too_large(cap, declared)
    chunks, size = [], 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > cap:
            break
        chunks.append(chunk)
    if size > cap or (declared or 0) > cap:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_discard(stream, size), DRAIN_SECONDS)
        raise _too_large(cap, declared)
    return b"".join(chunks)


async def upload_bytes(request: Request, cap: int) -> bytes:
    """The image of a ``POST /predict``: a multipart ``file`` field, or the raw body (``image/*``,
    ``application/octet-stream``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = await read_body(request, cap)

        async def stream():
            yield body

        try:
            form = await _Parser(request.headers, stream(), max_files=4, max_fields=16).parse()
        except MultiPartException as e:
            raise ServeError(400, f"malformed multipart upload ({e.message})") from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            field = form.get("file")
            chosen = field if isinstance(field, UploadFile) else (files[0] if files else None)
            if chosen is None:
                raise ServeError(400, "the multipart upload has no file; send the image in a field named 'file'")
            return await chosen.read()
        finally:
            await form.close()
    if ctype == "" or ctype.startswith(RAW_TYPES):
        return await read_body(request, cap)
    raise ServeError(415, f"content type {ctype!r} is not an image upload; send multipart/form-data with a "
                          "'file' field, or the image bytes as image/jpeg, image/png, ...")
