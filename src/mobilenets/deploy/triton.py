"""A Triton / KServe model repository of any task's model: ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/``.

``export_triton`` hands the model to the one exporter (:func:`mobilenets.deploy.export.export_model`, with its
parity check against eager PyTorch, fp32 or int8) and writes, beside the file, the model configuration that
Triton's ONNX Runtime or OpenVINO backend needs to serve it on CPUs:

======================  ==========================================================================================
``backend``             what is written
======================  ==========================================================================================
``onnxruntime``         ``1/model.onnx`` (fp32, or ONNX Runtime QDQ int8); ``platform: "onnxruntime_onnx"``;
                        ``intra_op_thread_count`` / ``inter_op_thread_count``
``openvino``            ``1/model.xml`` + ``model.bin`` (fp32 IR, or the NNCF int8 IR); ``backend: "openvino"``,
                        ``default_model_filename: "model.xml"``; ``INFERENCE_NUM_THREADS`` / ``NUM_STREAMS`` (the
                        backend's current names) and ``CPU_THREADS_NUM`` / ``CPU_THROUGHPUT_STREAMS`` (the names of
                        its releases before the OpenVINO 2.0 API); each release reads its own and ignores the others
======================  ==========================================================================================

The configuration is read off the written file, not off the task: input and output names, ``TYPE_FP32`` and
``dims`` are the graph's (the batch dimension left out when ``max_batch_size`` > 0, which needs the
dynamic-batch export that is made then); a size the graph leaves open besides the batch (the ONNX exporter's
symbolic anchor count of a detector, a segmenter's upsampled sides) is the size a run of the file gives, fixed
by the input size: Triton's OpenVINO backend refuses ``-1`` in ``dims``. So the names and shapes that Triton,
KServe and ``mobilenets serve`` report under ``/v2/models/<name>`` are the same. An output whose shape per image
is ``[number of classes]`` (a classifier's logits) gets ``label_filename: "labels.txt"``, the class names in
index order, which is what Triton's classification extension reads.

CPU threads are always explicit: ``instances`` (``instance_group`` ``KIND_CPU``) x ``threads`` per instance is
at most ``cores`` (default: the cores this process may use; pass the serving machine's). Left to their defaults,
each instance of the ONNX Runtime backend takes every core (triton-inference-server/onnxruntime_backend#245).

The repository entry is written atomically: everything is made in a hidden folder beside ``REPO`` (a leftover
one inside ``REPO`` would be read as a model by Triton) and renamed onto ``REPO/<name>`` at the end; an existing,
non-empty ``REPO/<name>`` is refused unless ``force``. Staging and the replacement are :mod:`.files`' (the
exporter's).
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from torch import nn

from ..checkpoint import CheckpointMeta
from ..errors import UserError
from .export import ExportResult, export_model
from .files import check_writable, optional_import, replace_folder, staged
from .formats import onnx_runtimes
from .open import open_runner
from .options import ExportOptions, from_keywords, validate

TRITON_BACKENDS = ("onnxruntime", "openvino")
EXPORT_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}  # the export format each Triton backend serves
MODEL_FILE = {"onnxruntime": "model.onnx", "openvino": "model.xml"}
LABELS_FILE = "labels.txt"
VERSION = "1"
QUEUE_DELAY_US = 100  # dynamic batching waits at most this long for more requests (a CPU batch-1 run takes ~1 ms)
DEFAULT_MAX_BATCH = {"onnxruntime": 8, "openvino": 1}  # why 1 for OpenVINO: see _max_batch

# ONNX TensorProto element types / OpenVINO element type names -> Triton data types.
ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32",
              7: "TYPE_INT64", 9: "TYPE_BOOL"}
OPENVINO_TYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "f64": "TYPE_FP64", "u8": "TYPE_UINT8", "i8": "TYPE_INT8",
                  "i32": "TYPE_INT32", "i64": "TYPE_INT64", "boolean": "TYPE_BOOL"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Tensor:
    """One input or output as the config states it: ``dims`` without the batch dimension when batching."""

    name: str
    data_type: str
    dims: list[int]
    label_filename: str | None = None


@dataclass
class TritonExport:
    path: Path  # REPO/<name>
    name: str
    backend: str
    config: str  # the text of config.pbtxt
    files: list[str]  # relative to path
    export: ExportResult
    instances: int
    threads: int
    cores: int
    max_batch: int
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TritonOptions:
    """The repository entry's own settings (the export's are an :class:`~.options.ExportOptions`).

    ``name`` defaults to the model's name (``_int8`` appended for int8). ``threads`` per instance defaults to
    ``cores // instances`` (``cores``: the cores usable here); ``max_batch`` (Triton's ``max_batch_size``) to 8
    for ONNX Runtime and 1 for OpenVINO; 0 writes a fixed batch-1 file without batching. ``force`` replaces an
    existing, non-empty entry."""

    name: str | None = None
    backend: str = "onnxruntime"
    instances: int = 1
    threads: int | None = None
    cores: int | None = None
    max_batch: int | None = None
    queue_delay_us: int = QUEUE_DELAY_US
    force: bool = False

    def asked(self) -> list[str]:
        """The fields set to something other than their default."""
        return [f.name for f in fields(self) if getattr(self, f.name) != f.default]


def export_triton(model: nn.Module, meta: CheckpointMeta, repository: str | os.PathLike,
                  triton: TritonOptions | None = None, options: ExportOptions | None = None,
                  **deprecated) -> TritonExport:
    """Write ``model`` (of task ``meta.task``) as ``repository/<name>`` for Triton's backend on CPUs
    (``triton``: :class:`TritonOptions`), exported as ``options`` ask (parity and int8; the fields
    :data:`~.options.TRITON_OPTIONS` lists). Nothing is written when an argument is wrong or the parity check
    fails (one-line :class:`UserError`).

    The keyword arguments of earlier releases (``name=``, ``int8=``, ...) still work for this release: they are
    mapped onto the two records with a DeprecationWarning.
    """
    if deprecated:
        names = {f.name for f in fields(TritonOptions)}
        with warnings.catch_warnings(record=True) as said:  # one warning for both records
            warnings.simplefilter("always")
            triton = from_keywords(triton, {k: v for k, v in deprecated.items() if k in names}, "export_triton",
                                   "triton", cls=TritonOptions)
            options = from_keywords(options, {k: v for k, v in deprecated.items() if k not in names},
                                    "export_triton")
        warnings.warn("; ".join(str(w.message) for w in said), DeprecationWarning, stacklevel=2)
    triton = triton or TritonOptions()
    options = options or ExportOptions()
    backend = triton.backend
    if backend not in TRITON_BACKENDS:
        raise UserError(f"backend={backend!r} is not one of {', '.join(TRITON_BACKENDS)}")
    validate(EXPORT_FORMAT[backend], options, triton=True)
    name = triton.name if triton.name is not None else f"{meta.model}{'_int8' if options.int8 else ''}"
    if not NAME.fullmatch(name):
        raise UserError(f"name={name!r} is not a Triton model name; use letters, digits, '_', '-' and '.', "
                        "starting with a letter or digit")
    cores, threads = _threads(triton.instances, triton.threads, triton.cores)
    max_batch = _max_batch(backend, triton.max_batch)
    if triton.queue_delay_us < 0:
        raise UserError(f"queue_delay_us={triton.queue_delay_us} must not be negative")
    repository = Path(repository)
    target = repository / name
    _check_target(target, triton.force)
    optional_import("onnx", "onnx", "a Triton repository")

    made = [p for p in (repository, *repository.parents) if not p.exists()]
    try:
        repository.mkdir(parents=True, exist_ok=True)
        with staged(target, "repository", parent=_staging_parent(repository)) as tmp:
            model_file = tmp / VERSION / MODEL_FILE[backend]
            try:
                result = export_model(model, meta, model_file, EXPORT_FORMAT[backend],
                                      options.replace(dynamic_batch=max_batch > 0))
            except UserError as e:  # name the repository entry, not the staging folder
                raise UserError(str(e).replace(str(tmp), str(target))) from e
            inputs, outputs = _tensors(model_file, backend, batched=max_batch > 0, classes=len(meta.class_names))
            files = [f"{VERSION}/{MODEL_FILE[backend]}"] + ([f"{VERSION}/model.bin"] if backend == "openvino" else [])
            if any(o.label_filename for o in outputs):
                (tmp / LABELS_FILE).write_text("".join(f"{_label(c)}\n" for c in meta.class_names),
                                               encoding="utf-8")
                files.append(LABELS_FILE)
            config = model_config(name, backend, inputs, outputs, max_batch=max_batch, instances=triton.instances,
                                  threads=threads, queue_delay_us=triton.queue_delay_us)
            (tmp / "config.pbtxt").write_text(config, encoding="utf-8")
            files.insert(0, "config.pbtxt")
            _readable(tmp)
            replace_folder(tmp, target, aside=tmp.parent)
    except BaseException:
        for folder in made:  # the folders this call made, deepest first, if they are still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    result.path = target / VERSION / MODEL_FILE[backend]
    return TritonExport(path=target, name=name, backend=backend, config=config, files=files, export=result,
                        instances=triton.instances, threads=threads, cores=cores, max_batch=max_batch,
                        inputs=inputs, outputs=outputs)


# ------------------------------------------------------------------------------------------------ arguments
def _threads(instances: int, threads: int | None, cores: int | None) -> tuple[int, int]:
    cores = usable_cores() if cores is None else cores
    if cores < 1:
        raise UserError(f"cores={cores} must be at least 1")
    if instances < 1:
        raise UserError(f"instances={instances} must be at least 1")
    if instances > cores:
        raise UserError(f"instances={instances} is more than the {cores} cores; use at most {cores} instances "
                        "(or pass cores= the serving machine's core count)")
    threads = cores // instances if threads is None else threads
    if threads < 1:
        raise UserError(f"threads={threads} must be at least 1")
    if instances * threads > cores:
        raise UserError(f"instances={instances} x threads={threads} = {instances * threads} threads is more "
                        f"than the {cores} cores; use threads={cores // instances} or fewer (or pass cores= the "
                        "serving machine's core count)")
    return cores, threads


def _max_batch(backend: str, max_batch: int | None) -> int:
    """Triton's OpenVINO backend compiles the model for exactly ``max_batch_size`` and refuses smaller batches
    unless ``ENABLE_BATCH_PADDING`` pads them (each request then costs a full batch), hence 1 by default."""
    max_batch = DEFAULT_MAX_BATCH[backend] if max_batch is None else max_batch
    if max_batch < 0:
        raise UserError(f"max_batch={max_batch} must be 0 (no batching) or more")
    return max_batch


def _check_target(target: Path, force: bool) -> None:
    check_writable(target, "repository")
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not a model folder; remove it or choose another name")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UserError(f"{target} already exists and is not empty; pass force=True to replace it or choose another "
                        "name")


def _staging_parent(repository: Path) -> Path:
    """Beside the repository when it is on the same file system (so Triton never sees a half-written model),
    else (the repository is a mount point) inside it."""
    parent = repository.resolve().parent
    same = os.access(parent, os.W_OK) and os.stat(parent).st_dev == os.stat(repository).st_dev
    return parent if same else repository


def _readable(tmp: Path) -> None:
    """Folders as the umask makes them: mkdtemp's 0700 would hide the model from a server running as another user."""
    mode = 0o777 & ~_umask()
    for folder in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):
        folder.chmod(mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _label(name: str) -> str:
    return " ".join(str(name).split()) or "-"  # one line per class, whatever the name holds


# ------------------------------------------------------------------------------------------------ the config
def _tensors(model_file: Path, backend: str, *, batched: bool, classes: int) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs of the written file, as the config states them."""
    if backend == "openvino":
        ov = optional_import("openvino", "openvino", "backend='openvino'")
        model = ov.Core().read_model(str(model_file))
        ios = [[(p.get_any_name(), OPENVINO_TYPES.get(p.get_element_type().get_type_name()),
                 [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()]) for p in ports]
               for ports in (model.inputs, model.outputs)]
    else:
        import onnx

        graph = onnx.load(str(model_file), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}

        def shape(v) -> list[int]:
            return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        ios = [[(v.name, ONNX_TYPES.get(v.type.tensor_type.elem_type), shape(v)) for v in values
                if v.name not in initializers] for values in (graph.input, graph.output)]
    # Sizes the graph leaves open besides the batch are fixed by the input size: a run of the file gives them.
    ran = [list(o.shape) for o in _run_once(model_file, backend, ios[0][0][2])]
    tensors = []
    for values, real in ((ios[0], [shape for _, _, shape in ios[0]]), (ios[1], ran)):
        found = []
        for (name, data_type, dims), real_dims in zip(values, real):
            if data_type is None or not NAME.fullmatch(name):
                raise UserError(f"{model_file} has a tensor {name!r} that a Triton config cannot state; this is a "
                                "bug in the export: please report it")
            assert len(dims) == len(real_dims) and all(d in (-1, r) for d, r in zip(dims, real_dims)), name
            if batched:
                assert dims and dims[0] == -1, f"{name}: a batched config needs a dynamic batch dimension"
            dims = [r if d == -1 else d for d, r in zip(dims[1:], real_dims[1:])] if batched else list(real_dims)
            found.append(Tensor(name, data_type, dims))
        tensors.append(found)
    inputs, outputs = tensors
    for o in outputs:
        if classes and o.dims[-1:] == [classes] and len(o.dims) == (1 if batched else 2):
            o.label_filename = LABELS_FILE  # a classifier's logits: Triton's classification extension
    return inputs, outputs


def _run_once(model_file: Path, backend: str, input_shape: list[int]):
    """The outputs of one run of the written file on zeros (batch 1), in the graph's order."""
    runner = open_runner(model_file, "openvino" if backend == "openvino" else onnx_runtimes()[0])
    return runner.outputs(np.zeros([1, *input_shape[1:]], np.float32))


def model_config(name: str, backend: str, inputs: list[Tensor], outputs: list[Tensor], *, max_batch: int,
                 instances: int, threads: int, queue_delay_us: int = QUEUE_DELAY_US) -> str:
    """The text of ``config.pbtxt`` (Triton's ``ModelConfig`` protobuf in text format)."""
    lines = [f'name: "{name}"']
    if backend == "openvino":
        lines += ['backend: "openvino"', f'default_model_filename: "{MODEL_FILE[backend]}"']
    else:
        lines += ['platform: "onnxruntime_onnx"', f'default_model_filename: "{MODEL_FILE[backend]}"']
    lines.append(f"max_batch_size: {max_batch}")
    for key, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{key} [")
        for i, t in enumerate(tensors):
            lines += ["  {", f'    name: "{t.name}"', f"    data_type: {t.data_type}",
                      f"    dims: [ {', '.join(str(d) for d in t.dims)} ]"]
            if t.label_filename:
                lines.append(f'    label_filename: "{t.label_filename}"')
            lines.append("  }," if i < len(tensors) - 1 else "  }")
        lines.append("]")
    if max_batch > 1:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", "    kind: KIND_CPU", f"    count: {instances}", "  }", "]"]
    for key, value in _parameters(backend, threads, max_batch).items():
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def _parameters(backend: str, threads: int, max_batch: int) -> dict[str, str]:
    if backend == "onnxruntime":
        # One session per instance; ops run one after another (inter-op 1), each on `threads` threads.
        return {"intra_op_thread_count": str(threads), "inter_op_thread_count": "1"}
    params = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1",  # current openvino_backend
              "CPU_THREADS_NUM": str(threads), "CPU_THROUGHPUT_STREAMS": "1"}  # releases before OpenVINO 2.0
    if max_batch > 1:
        params["ENABLE_BATCH_PADDING"] = "YES"  # else a batch smaller than max_batch_size is refused
    return params
