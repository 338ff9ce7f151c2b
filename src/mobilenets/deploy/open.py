"""``open_runner(path, backend, threads)``: any model file or checkpoint -> a :class:`~.runtime.Runner`.

The step above the runners: it checks the file and the backend against :data:`~.formats.RUNS_ON`, picks the
backend for ``"auto"`` (:mod:`.auto`), and turns a checkpoint into what the backend runs: on torch, the task's
export module in eager mode (:meth:`~mobilenets.tasks.base.Task.export_module`, so its outputs are the export's);
on the ONNX runtimes, its cached, parity-checked ONNX export (:func:`~.export.cached_onnx`).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..tasks import get_task
from .auto import choose_backend
from .export import cached_onnx
from .formats import BACKENDS, EXTRA, RUNS_ON, optional_import
from .runtime import RUNNERS, Runner, TorchRunner


def open_runner(path: str | os.PathLike, backend: str = "auto", threads: int | None = None) -> Runner:
    """Load ``path`` on ``backend`` ("auto", "torch", "onnxruntime" or "openvino") with ``threads`` intra-op
    threads (None: the runtime's default)."""
    path = Path(path)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    if not path.is_file():
        raise UserError(f"model file {path} not found; pass a file written by 'mobilenets export' or a checkpoint")
    kind = path.suffix.lower()
    if kind not in RUNS_ON:
        raise UserError(f"{path} is not a model file this package runs (.onnx, .xml, .pt2 or .safetensors); "
                        "export it with 'mobilenets export'")
    if backend == "auto":
        backend = choose_backend(path, threads)
    if backend not in RUNS_ON[kind]:
        raise UserError(f"backend {backend!r} cannot run {kind} files like {path}; use "
                        f"{' or '.join(RUNS_ON[kind])}, or export to another --format")
    if backend == "torch":
        return checkpoint_runner(path, threads) if kind == ".safetensors" else TorchRunner.from_exported_program(
            path, threads)
    optional_import(backend, EXTRA[backend], f"backend {backend!r}")
    if kind == ".safetensors":
        path = cached_onnx(path)
    return RUNNERS[backend](path, threads)


def checkpoint_runner(path: Path, threads: int | None = None) -> TorchRunner:
    """A checkpoint in eager PyTorch, computing what its export computes (the task's export module)."""
    model, meta = load_checkpoint(path)
    task = get_task(meta.task)
    properties = task.export_properties(model)
    return TorchRunner(path, task.export_module(model).eval(), meta, threads, properties=properties)
