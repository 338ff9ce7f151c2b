"""``backend="auto"``: the fastest installed backend for a file, measured once and remembered.

Each candidate is timed in its own process (:mod:`.probe`; runtimes' thread pools disturb one another inside one
process), and the choice is kept in ``<cache>/backend_choice.json`` keyed by the file's sha256, the CPU model, the
thread count and the runtime versions. A checkpoint is timed on torch and, through its cached export in each
backend's format (:func:`~.export.cached_export`: ONNX, ExecuTorch ``.pte``), on the other backends.
``<cache>`` is :func:`mobilenets.files.cache_root`: ``$MOBILENETS_CACHE``, else ``$XDG_CACHE_HOME/mobilenets``, else
``~/.cache/mobilenets``.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write, cache_root, file_sha256
from .export import cached_export
from .formats import BACKEND, FORMAT, RUNS_ON, installed, runs_here

log = logging.getLogger(__name__)


def model_digest(path: Path) -> str:
    """sha256 of a model file; an OpenVINO .xml counts its .bin too."""
    digest = file_sha256(path)
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():
        digest += file_sha256(weights)
    return digest


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions(backends) -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for b in backends:
        try:
            out.append(f"{b}={version(BACKEND[b].module if b in BACKEND else b)}")
        except PackageNotFoundError:
            out.append(f"{b}=?")
    return ",".join(out)


def choose_backend(path: Path, threads: int | None) -> str:
    """The fastest installed backend for ``path``: from the cache, or measured now (a few seconds). A checkpoint
    is measured on torch and, through its cached export in each backend's format, on the other backends (the
    first time, an ExecuTorch export takes half a minute or more)."""
    kind = path.suffix.lower()
    candidates = [b for b in RUNS_ON[kind] if installed(b)]
    if kind == ".safetensors":  # a backend runs a checkpoint only where its format can be exported
        candidates = [b for b in candidates if b == "torch" or all(
            installed(m) for m in FORMAT[BACKEND[b].export_format].needs)]
    if not candidates:
        need = RUNS_ON[kind][0]
        if not runs_here(need):
            raise UserError(f"no backend runs {path} here: {BACKEND[need].platform_note}")
        raise UserError(f"no installed backend runs {path}; install the extra: "
                        f"pip install 'mobilenets[{BACKEND[need].extra}]'")
    if len(candidates) == 1:
        return candidates[0]
    key = "|".join([model_digest(path), cpu_name(), f"threads={threads or os.cpu_count()}", _versions(candidates)])
    cache_file = cache_root() / "backend_choice.json"
    cache = _read_json(cache_file)
    if key in cache and cache[key].get("backend") in candidates:
        return cache[key]["backend"]
    timings = {b: probe(file, b, threads) for b, file in _files(path, candidates).items()}
    best = min(timings, key=timings.__getitem__)
    log.info("auto backend for %s: %s (median ms per batch: %s)", path.name, best,
             ", ".join(f"{b} {t:.2f}" for b, t in timings.items()))
    cache = _read_json(cache_file)  # re-read: another process may have added entries meanwhile
    cache[key] = {"backend": best, "median_ms": timings, "file": str(path),
                  "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        atomic_write(cache_file, lambda tmp: Path(tmp).write_text(json.dumps(cache, indent=1)))
    except (OSError, UserError) as e:  # a read-only cache costs a re-measurement next time, nothing more
        log.warning("cannot write %s (%s); the backend choice will be measured again next time", cache_file, e)
    return best


def _files(path: Path, candidates: list[str]) -> dict[str, Path]:
    """What each candidate runs: the file itself, or for a checkpoint its cached export in the backend's format
    (a backend whose export fails is left out)."""
    if path.suffix.lower() != ".safetensors":
        return {b: path for b in candidates}
    files = {}
    for b in candidates:
        try:
            files[b] = path if b == "torch" else cached_export(path, BACKEND[b].export_format)
        except UserError as e:
            log.warning("backend %s left out for %s: %s", b, path.name, e)
    return files


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def probe(path: Path, backend: str, threads: int | None, seconds: float = 1.0) -> float:
    """Median ms per inference of ``path`` on ``backend``, measured in a fresh process."""
    cmd = [sys.executable, "-m", "mobilenets.deploy.probe", str(path), backend, str(threads or 0), str(seconds)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        log.warning("backend %s failed on %s: %s", backend, path, done.stderr.strip().splitlines()[-1:])
        return float("inf")
    return float(done.stdout.strip().splitlines()[-1])
