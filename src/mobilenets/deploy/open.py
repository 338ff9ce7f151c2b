"""``open_runner(path, backend, threads)``: any model file or checkpoint -> a :class:`~.runtime.Runner`.

The step above the runners: it checks the file and the backend against :data:`~.formats.RUNS_ON`, picks the
backend for ``"auto"`` (:mod:`.auto`), and turns a checkpoint into what the backend runs: on torch, the task's
export module in eager mode (:meth:`~mobilenets.tasks.base.Task.export_module`, so its outputs are the export's);
on any other backend, its cached, parity-checked export in the backend's format (:func:`~.export.cached_export`:
ONNX for ONNX Runtime and OpenVINO, ``.pte`` for ExecuTorch). A backend's Runner is the one its
:class:`~.formats.Backend` row names (the format table is the only registry of runners).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..tasks import get_task
from .auto import choose_backend
from .export import cached_export
from .files import optional_import
from .formats import BACKEND, BACKENDS, RUNS_ON, runs_here
from .formats.exported_program import TorchRunner
from .runtime import Runner


def open_runner(path: str | os.PathLike, backend: str = "auto", threads: int | None = None, **options) -> Runner:
    """Load ``path`` on ``backend`` ("auto" or one of :data:`~.formats.RUNTIMES`: torch, onnxruntime, openvino,
    executorch, ...) with ``threads`` intra-op threads (None: the runtime's default); ``options`` go to the
    backend's runner (e.g. ``tuned=False`` for ONNX Runtime's default session settings)."""
    path = Path(path)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise UserError(f"threads={threads} must be at least 1")
    kind = path.suffix.lower()
    if not (path.is_file() or (path.is_dir() and kind in RUNS_ON and kind != ".safetensors")):
        raise UserError(f"model file {path} not found; pass a file written by 'mobilenets export' or a checkpoint")
    if kind not in RUNS_ON:
        raise UserError(f"{path} is not a model file this package runs ({', '.join(RUNS_ON)}); "
                        "export it with 'mobilenets export'")
    if backend == "auto":
        backend = choose_backend(path, threads)
    if backend not in RUNS_ON[kind]:
        raise UserError(f"backend {backend!r} cannot run {kind} files like {path}; use "
                        f"{' or '.join(RUNS_ON[kind])}, or export to another format")
    if backend == "torch" and kind == ".safetensors":
        return checkpoint_runner(path, threads)
    spec = BACKEND[backend]
    if not runs_here(backend):
        raise UserError(f"backend {backend!r} cannot run here: {spec.platform_note}")
    optional_import(spec.module, spec.extra, f"backend={backend!r}")
    if kind == ".safetensors":
        path = cached_export(path, spec.export_format)
    return spec.runner(path, threads, **options)


def checkpoint_runner(path: Path, threads: int | None = None) -> TorchRunner:
    """A checkpoint in eager PyTorch, computing what its export computes (the task's export module)."""
    model, meta = load_checkpoint(path)
    task = get_task(meta.task)
    properties = task.export_properties(model)
    return TorchRunner(path, task.export_module(model).eval(), meta, threads, properties=properties)
