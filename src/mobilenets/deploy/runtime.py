"""Runners: one loaded model file on one backend, ``.outputs(x)`` -> the network's outputs as numpy arrays.

:class:`Runner` is what every backend's runner subclasses; each lives in the module of the format it runs
(:mod:`.formats.onnx`: ONNX Runtime, also for ``.ort`` files; :mod:`.formats.openvino`;
:mod:`.formats.exported_program`: eager / exported PyTorch; :mod:`.formats.executorch`, :mod:`.formats.coreml`,
:mod:`.formats.litert`) and is named by its :class:`~.formats.Backend` row. Runners read files and run them; they
never export and do not know which task a model serves: its outputs are whatever the exported graph computes (a
classifier's logits, a detector's boxes and scores), and ``properties`` hands the file's metadata to whoever
postprocesses them. Which file runs where, and how a checkpoint becomes a runner, is
:func:`mobilenets.deploy.open.open_runner`.
"""
from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointMeta
from ..errors import UserError
from .keys import META_KEY


class Runner(abc.ABC):
    """One loaded model on one backend. ``outputs(x)``: float32 (N, C, H, W) -> every output of the graph, in
    the order of the task's ``outputs``; ``run(x)``: the first one (a classifier's logits).
    ``properties``: the file's string metadata (ONNX ``metadata_props``, OpenVINO ``rt_info``), e.g. a
    detector's NMS settings; ``meta``: the :class:`CheckpointMeta` stored in it (None if it holds none)."""

    backend = ""

    def __init__(self, path: Path, meta: CheckpointMeta | None, batch: int | None,
                 properties: dict[str, str] | None = None):
        self.path = Path(path)
        self.meta = meta
        self.batch = batch  # fixed batch size of the file, None when dynamic
        self.properties = dict(properties or {})

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise UserError(f"input of shape {x.shape} is not a batch of images; pass float32 (N, C, H, W)")
        if self.batch is None or x.shape[0] == self.batch:
            return self._run(x)
        # A fixed-batch file (the default export): feed it slices of its batch size, padding the last one.
        parts = []
        for i in range(0, x.shape[0], self.batch):
            chunk = x[i:i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - n, *x.shape[1:]), np.float32)])
            parts.append([out[:n] for out in self._run(chunk)])
        return [np.concatenate(outs) for outs in zip(*parts)]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x)[0]

    __call__ = run

    @abc.abstractmethod
    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph on one batch of the file's own batch size (or any, when dynamic)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def meta_of(properties: dict[str, str]) -> CheckpointMeta | None:
    """The :class:`CheckpointMeta` stored in a file's properties (None if it holds none)."""
    text = properties.get(META_KEY)
    return CheckpointMeta.from_json(text) if text else None



@torch.no_grad()
def module_outputs(module, x: np.ndarray) -> list[np.ndarray]:
    """``module`` (torch) on a numpy batch -> its outputs as a list of numpy arrays (one per output)."""
    out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return [t.detach().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]
