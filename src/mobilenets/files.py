"""Files on disk, for every room (a leaf module): writing a file so that a crash never leaves a half-written one
behind, the package's cache folder (downloaded weights, cached exports, the backend choice) and file digests."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import UserError


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one step."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create folder {path.parent}: {e.strerror}; choose another out folder") from e
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cache_root() -> Path:
    """Where mobilenets caches downloads and derived files: $MOBILENETS_CACHE, else $XDG_CACHE_HOME/mobilenets,
    else ~/.cache/mobilenets."""
    root = os.environ.get("MOBILENETS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mobilenets")
    return Path(root)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
