"""Run an exported model: ``open_runner(path, backend, threads)`` -> :class:`Runner` with ``.run(x) -> logits``.

Files and the backends that run them:

=====================  =========================================================
``.onnx``              onnxruntime, openvino
``.xml`` (+ ``.bin``)  openvino (OpenVINO IR, e.g. an NNCF int8 model)
``.pt2``               torch (a ``torch.export`` ExportedProgram)
``.safetensors``       torch (eager); onnxruntime / openvino through an ONNX export cached per checkpoint
=====================  =========================================================

``backend="auto"`` picks the fastest installed backend for the file by a short measurement, each candidate in its
own process (runtimes' thread pools disturb one another inside one process), and remembers the choice in
``<cache>/backend_choice.json`` keyed by the file's sha256, the CPU model, the thread count and the runtime
versions. ``<cache>`` is ``$MOBILENETS_CACHE``, else ``$XDG_CACHE_HOME/mobilenets``, else ``~/.cache/mobilenets``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..checkpoint import CheckpointMeta, atomic_write
from ..errors import UserError
from ..weights import cache_root

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}  # pyproject extra that installs each optional runtime
RUNS_ON = {".onnx": ("onnxruntime", "openvino"), ".xml": ("openvino",), ".pt2": ("torch",),
           ".safetensors": ("torch", "onnxruntime", "openvino")}


def installed(backend: str) -> bool:
    return backend == "torch" or importlib.util.find_spec(backend) is not None


def require(backend: str) -> None:
    if not installed(backend):
        raise UserError(f"backend {backend!r} is not installed; install the extra: "
                        f"pip install 'mobilenets[{EXTRA[backend]}]'")


def onnx_backends() -> list[str]:
    """Installed runtimes that run ONNX files, fastest-first guess; UserError when there is none."""
    found = [b for b in ("onnxruntime", "openvino") if installed(b)]
    if not found:
        raise UserError("running an ONNX model needs onnxruntime; install the extra: pip install 'mobilenets[onnx]'")
    return found


class Runner:
    """One loaded model on one backend. ``run(x)``: float32 (N, C, H, W) -> float32 (N, num_classes), the first
    output; ``outputs(x)``: all of them (a detector's ``boxes`` and ``scores``, see mobilenets.heads.export).
    ``properties``: the file's string metadata (ONNX ``metadata_props``), e.g. a detector's NMS settings."""

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


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, *, tuned: bool = True):
        import onnxruntime as ort

        from .export import META_KEY

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
        custom = self.session.get_modelmeta().custom_metadata_map
        meta = CheckpointMeta.from_json(custom[META_KEY]) if META_KEY in custom else None
        inp = self.session.get_inputs()[0]
        self._input = inp.name
        batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        super().__init__(path, meta, batch, custom)

    def _run(self, x):
        return self.session.run(None, {self._input: x})


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: Path, threads: int | None = None):
        import openvino as ov

        from .export import META_KEY
        from .openvino_io import read_rt_info

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
        properties = onnx_properties(path)
        text = read_rt_info(model, META_KEY) or properties.get(META_KEY)
        shape = model.inputs[0].get_partial_shape()
        batch = shape[0].get_length() if shape[0].is_static else None
        super().__init__(path, CheckpointMeta.from_json(text) if text else None, batch, properties)

    def _run(self, x):
        results = self.request.infer({0: x})
        return [results[i].copy() for i in range(len(self.compiled.outputs))]  # the request reuses its buffers


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, path: Path, module, meta: CheckpointMeta | None, threads: int | None = None,
                 batch: int | None = None, properties: dict[str, str] | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.module = module
        super().__init__(path, meta, batch, properties)

    @classmethod
    def from_checkpoint(cls, path: Path, threads: int | None = None) -> "TorchRunner":
        from ..checkpoint import load_checkpoint
        model, meta = load_checkpoint(path)
        if meta.task == "detect":  # the same outputs as the ONNX export: decoded boxes and scores, NMS outside
            from ..heads.export import DecodedDetections, POSTPROCESS_KEY, postprocess_settings
            return cls(path, DecodedDetections(model).eval(), meta, threads,
                       properties={POSTPROCESS_KEY: json.dumps(postprocess_settings(model))})
        return cls(path, model.eval(), meta, threads)

    @classmethod
    def from_exported_program(cls, path: Path, threads: int | None = None) -> "TorchRunner":
        import torch

        from .export import EP_META_FILE

        extra = {EP_META_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"torch cannot load exported program {path} ({type(e).__name__}); pass a .pt2 file "
                            "written by 'mobilenets export --format exported-program'") from e
        text = extra[EP_META_FILE]
        name = program.graph_signature.user_inputs[0]
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
        batch = node.meta["val"].shape[0]
        return cls(path, program.module(), CheckpointMeta.from_json(text) if text else None, threads,
                   batch if isinstance(batch, int) else None)

    def _run(self, x):
        import torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(x))
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def onnx_properties(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (empty for other files)."""
    if Path(path).suffix != ".onnx" or importlib.util.find_spec("onnx") is None:
        return {}
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def read_meta(path: str | os.PathLike) -> CheckpointMeta | None:
    """The CheckpointMeta embedded in an exported file (None if it carries none)."""
    kind = Path(path).suffix.lower()
    backend = next((b for b in RUNS_ON.get(kind, ("torch",)) if installed(b)), RUNS_ON.get(kind, ("torch",))[0])
    return open_runner(path, backend=backend).meta


# ------------------------------------------------------------------------------------------------ open_runner
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
    if backend != "torch":
        require(backend)
    if backend == "torch":
        return (TorchRunner.from_checkpoint if kind == ".safetensors" else TorchRunner.from_exported_program)(
            path, threads)
    if kind == ".safetensors":
        path = exported_onnx(path)
    cls = OnnxRuntimeRunner if backend == "onnxruntime" else OpenVinoRunner
    return cls(path, threads)


def exported_onnx(checkpoint: Path) -> Path:
    """The ONNX export of a checkpoint, made once (with its parity check) and kept in the cache."""
    from ..checkpoint import load_checkpoint
    from .export import export_model

    target = cache_root() / "exports" / f"{file_digest(checkpoint)[:20]}.onnx"
    if not target.is_file():
        model, meta = load_checkpoint(checkpoint)
        log.info("exporting %s to %s", checkpoint, target)
        if meta.task in ("detect", "segment"):
            from ..heads.export import export_onnx
            export_onnx(model, meta, target)
        else:
            export_model(model, meta, target, "onnx")
    return target


# ------------------------------------------------------------------------------------------------ auto
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        h.update(file_digest(path.with_suffix(".bin")).encode())
    return h.hexdigest()


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
            out.append(f"{b}={version(b)}")
        except PackageNotFoundError:
            out.append(f"{b}=?")
    return ",".join(out)


def choose_backend(path: Path, threads: int | None) -> str:
    """The fastest installed backend for ``path``: from the cache, or measured now (a few seconds)."""
    candidates = [b for b in RUNS_ON[path.suffix.lower()] if installed(b)]
    if path.suffix.lower() == ".safetensors" and importlib.util.find_spec("onnx") is None:
        candidates = ["torch"]
    if not candidates:
        need = RUNS_ON[path.suffix.lower()][0]
        raise UserError(f"no installed backend runs {path}; install the extra: pip install 'mobilenets[{EXTRA[need]}]'")
    if len(candidates) == 1:
        return candidates[0]
    key = "|".join([file_digest(path), cpu_name(), f"threads={threads or os.cpu_count()}", _versions(candidates)])
    cache_file = cache_root() / "backend_choice.json"
    cache = _read_json(cache_file)
    if key in cache and cache[key].get("backend") in candidates:
        return cache[key]["backend"]
    target = exported_onnx(path) if path.suffix.lower() == ".safetensors" else path
    timings = {}
    for b in candidates:
        run_path = path if b == "torch" else target
        timings[b] = probe(run_path, b, threads)
    best = min(timings, key=timings.get)
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


def time_runner(runner: Runner, x: np.ndarray, seconds: float = 1.0, warmup: int = 3, max_runs: int = 200) -> float:
    """Median ms of ``runner.run(x)`` over about ``seconds`` of runs."""
    for _ in range(warmup):
        runner.run(x)
    times = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < end and len(times) < max_runs):
        t = time.perf_counter()
        runner.run(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
