"""A served model: one runner (any backend, any task) and the task that turns images into its inputs and its
outputs into answers.

``open_model(path, backend)``: an exported file runs as it is (``auto``: the fastest backend for it,
:func:`mobilenets.deploy.auto.choose_backend`). A checkpoint is exported first, once, to a **dynamic-batch**
ONNX file in the cache (parity-checked like every export), so that the worker can batch requests; ``auto``
then picks the faster of ONNX Runtime and OpenVINO on it (:func:`mobilenets.deploy.export.cached_export`, the
one export cache). ``backend="torch"`` runs a checkpoint in eager
PyTorch instead (the task's export module, any batch size).
"""
from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy.export import cached_export
from ..deploy.open import open_runner
from ..deploy.runtime import Runner
from ..errors import UserError
from ..tasks import get_task
from .decode import decode_upload
from .limits import Limits

log = logging.getLogger(__name__)


def open_model(path: str | os.PathLike, backend: str = "auto", threads: int | None = None,
               name: str | None = None) -> "ServedModel":
    """``path`` (a checkpoint or an exported file) loaded for serving on ``backend`` with ``threads`` intra-op
    threads."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} not found; pass a checkpoint or a file written by 'mobilenets export'")
    if path.suffix.lower() == ".safetensors" and backend != "torch":
        path = cached_export(path, "onnx", dynamic_batch=True)
    return ServedModel(open_runner(path, backend, threads), name)


def png_base64(mask: torch.Tensor) -> str:
    """A (H, W) integer map as a base64 PNG: 8-bit grey when every value is below 256, else 16-bit."""
    from PIL import Image

    a = mask.cpu().numpy()
    im = Image.fromarray(a.astype(np.uint8)) if a.max(initial=0) < 256 else Image.fromarray(a.astype(np.uint16))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class ServedModel:
    """``runner`` with its metadata and task. Thread-safe for :meth:`prepare` and :meth:`answer`; the runner
    itself is called by one thread only (:class:`~.batching.Batcher`)."""

    def __init__(self, runner: Runner, name: str | None = None):
        if runner.meta is None:
            raise UserError(f"{runner.path} holds no mobilenets metadata (classes, preprocessing); pass a "
                            "checkpoint or a file written by 'mobilenets export'")
        self.runner = runner
        self.meta = runner.meta
        self.task = get_task(self.meta.task)
        self.name = name or self.meta.model
        if not self.name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise UserError(f"model name {self.name!r} must be letters, digits, '_', '-' or '.'; pass name= such a "
                            "name")
        pre = self.meta.preprocessing
        self.input_shape = tuple(int(v) for v in pre.input_size)  # (C, H, W)
        self.need = max(int(pre.resize), *self.input_shape[1:])  # JPEG draft decoding keeps sides >= this
        self.output_names = tuple(self.task.output_names(self.runner.properties))
        self.output_shapes: list[tuple[int, ...]] = []  # per image, known after warm_up()

    @property
    def backend(self) -> str:
        return self.runner.backend

    def warm_up(self, batch: int = 1) -> None:
        """Run a batch of zeros (the first inference allocates) and learn the outputs' shapes."""
        outputs = self.runner.outputs(np.zeros((batch, *self.input_shape), np.float32))
        self.output_shapes = [tuple(o.shape[1:]) for o in outputs]

    def prepare(self, data: bytes, limits: Limits) -> tuple[np.ndarray, tuple[int, int]]:
        """Upload bytes -> ``(input (1, C, H, W) float32, (height, width) of the image)``; ServeError for bad ones."""
        image, size = decode_upload(data, self.input_shape[0], limits, self.need)
        with torch.inference_mode():
            x = self.task.inputs(image, self.meta)
        return np.ascontiguousarray(x.numpy(), dtype=np.float32), size

    def answer(self, outputs: list[np.ndarray], size: tuple[int, int], **options) -> dict:
        """One image's outputs (each with its batch dimension of 1) -> the task's JSON result; a class map
        (segmentation) comes back as a base64 PNG of class indices with its size."""
        result = self.task.postprocess([torch.from_numpy(o) for o in outputs], self.meta, self.runner.properties,
                                       size, **options)
        out: dict[str, Any] = {}
        for key, value in result.items():
            if isinstance(value, torch.Tensor):
                out[key] = png_base64(value)
                out[f"{key}_size"] = list(value.shape[-2:])
            else:
                out[key] = value
        return out

    def info(self) -> dict:
        """What the page and ``GET /info`` show about the model."""
        return {"name": self.name, "task": self.task.name, "model": self.meta.model, "backend": self.backend,
                "input": list(self.input_shape), "classes": list(self.meta.class_names),
                "fixed_batch": self.runner.batch}
