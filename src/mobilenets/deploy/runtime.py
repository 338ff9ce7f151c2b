"""Runners: one loaded model file on one backend, ``.outputs(x)`` -> the network's outputs as numpy arrays.

:class:`OnnxRuntimeRunner` (``.onnx``), :class:`OpenVinoRunner` (``.onnx``, ``.xml``) and :class:`TorchRunner`
(``.pt2``, or any module, e.g. a checkpoint's export module) read files and run them; they never export and do
not know which task a model serves: its outputs are whatever the exported graph computes (a classifier's logits,
a detector's boxes and scores), and ``properties`` hands the file's metadata to whoever postprocesses them.
Which file runs where, and how a checkpoint becomes a runner, is :func:`mobilenets.deploy.open.open_runner`.
Runners of the other formats live in their format's module (:mod:`.executorch`, :mod:`.coreml`), subclass
:class:`Runner` and are named by their :class:`~.formats.Backend` entry; ``.ort`` files run on
:class:`OnnxRuntimeRunner`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..checkpoint import CheckpointMeta
from ..errors import UserError
from .formats import EP_META_FILE, EP_PROPERTIES_FILE, META_KEY, installed


class Runner:
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

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def meta_of(properties: dict[str, str]) -> CheckpointMeta | None:
    """The :class:`CheckpointMeta` stored in a file's properties (None if it holds none)."""
    text = properties.get(META_KEY)
    return CheckpointMeta.from_json(text) if text else None


_meta = meta_of


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, *, tuned: bool = True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3  # no warnings about initializers the optimizer dropped
        if threads:
            so.intra_op_num_threads = threads
        if tuned:
            # One request at a time: a single intra-op pool, sequential node execution, every graph rewrite
            # (NCHWc blocked layout, conv + activation fusion).
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"onnxruntime cannot load {path} ({str(e).splitlines()[0][:200]}); pass an ONNX file "
                            "written by 'mobilenets export'") from e
        properties = dict(self.session.get_modelmeta().custom_metadata_map)
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        super().__init__(path, _meta(properties), batch, properties)

    def _run(self, x):
        return self.session.run(None, {self._input: x})


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: Path, threads: int | None = None):
        import openvino as ov

        from .openvino_io import read_properties

        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as e:
            raise UserError(f"openvino cannot read {path} ({str(e).splitlines()[0][:200]}); pass an .onnx or "
                            ".xml file written by 'mobilenets export'") from e
        # fp32 means fp32: on CPUs with AVX-512 BF16 OpenVINO's default inference precision is bf16, which
        # moves V2 logits by several units (see BENCHMARKS.md). Quantized (int8) layers stay int8 either way.
        # The default performance hint is already LATENCY (one stream, all threads on one request).
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        properties = {**onnx_properties(path), **read_properties(model)}
        shape = model.inputs[0].get_partial_shape()
        batch = shape[0].get_length() if shape[0].is_static else None
        super().__init__(path, _meta(properties), batch, properties)

    def _run(self, x):
        results = self.request.infer({0: x})
        return [results[i].copy() for i in range(len(self.compiled.outputs))]  # the request reuses its buffers


class TorchRunner(Runner):
    """Eager PyTorch: ``module`` maps a batch to a tensor or a tuple of tensors."""

    backend = "torch"

    def __init__(self, path: Path, module, meta: CheckpointMeta | None, threads: int | None = None,
                 batch: int | None = None, properties: dict[str, str] | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.module = module
        super().__init__(path, meta, batch, properties)

    @classmethod
    def from_exported_program(cls, path: Path, threads: int | None = None) -> "TorchRunner":
        import torch

        extra = {EP_META_FILE: "", EP_PROPERTIES_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"torch cannot load exported program {path} ({type(e).__name__}); pass a .pt2 file "
                            "written by 'mobilenets export --format exported-program'") from e
        properties = json.loads(extra[EP_PROPERTIES_FILE]) if extra[EP_PROPERTIES_FILE] else {}
        if extra[EP_META_FILE]:
            properties[META_KEY] = extra[EP_META_FILE]
        name = program.graph_signature.user_inputs[0]
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
        batch = node.meta["val"].shape[0]
        return cls(path, program.module(), _meta(properties), threads, batch if isinstance(batch, int) else None,
                   properties)

    def _run(self, x):
        import torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(x))
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


# The runners of ONNX / IR / ORT files; other backends name theirs in formats.BACKEND (open.runner_class).
RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner}


def onnx_properties(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (empty for other files)."""
    if Path(path).suffix != ".onnx" or not installed("onnx"):
        return {}
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}

