"""LiteRT (formerly TensorFlow Lite) ``.tflite``: conversion with litert-torch, int8 with the AI Edge Quantizer,
metadata inside the flatbuffer, and the runner (the LiteRT ``Interpreter``, XNNPACK on CPU).

* Conversion: :func:`litert_torch.convert` of the task's export module (BatchNorm already folded by the exporter)
  at a fixed batch; the graph keeps the PyTorch NCHW input (litert-torch adds one TRANSPOSE to NHWC), or takes
  NHWC, what phone camera pipelines hand over, with ``nhwc=True`` (:func:`litert_torch.to_channel_last_io`).
* int8: static quantization of the fp32 ``.tflite`` by the AI Edge Quantizer (its ``static_wi8_ai8`` recipe:
  int8 weights, per-channel for convolutions, int8 activations calibrated on real images, int8 input and output),
  except h-swish, which stays float between a DEQUANTIZE and a QUANTIZE: XNNPACK has no int8 h-swish, and an int8
  one ran outside the delegate, 20 partitions for V3-Small, 4x slower than fp32. Chosen over litert-torch's PT2E
  quantizer, which annotates only conv/linear/add/pools and so leaves QUANTIZE/DEQUANTIZE pairs around the rest
  (22-43 of them in V2/V3-Large/V4 Conv-S) and took 7-8x as long; on trained Fashion-MNIST checkpoints both stay
  within 0.1 point of fp32 (BENCHMARKS.md, "LiteRT").
* Metadata: every ``mobilenets.*`` property (the :class:`~mobilenets.checkpoint.CheckpointMeta`, precision,
  parity figures, the task's properties, the input layout) is a named entry of the flatbuffer's ``metadata``
  table, which the LiteRT runtime carries along and ignores; :func:`read_properties` reads them back.

Packages: the runner needs only ``ai-edge-litert`` (extra ``litert``, no torch); conversion needs ``litert-torch``
(extra ``litert-convert``), which pins ``typing-extensions<4.13`` through ``xdsl`` and so cannot share one pip
resolution with ExecuTorch (the Makefile installs it beside ExecuTorch: ``LITERT_PKGS``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..files import failing_as, optional_import, quiet_native_stderr, require
from ..keys import PROPERTY_PREFIX
from ..runtime import Runner, meta_of
from .base import COMMON_OPTIONS, INT8_OPTIONS, ExportJob, Writer

log = logging.getLogger(__name__)

RUNTIME_EXTRA = "litert"  # ai-edge-litert: the Interpreter, the flatbuffer schema
CONVERT_EXTRA = "litert-convert"  # litert-torch (+ the AI Edge Quantizer it pulls in)
LAYOUT_KEY = "mobilenets.layout"  # "NCHW" (default) or "NHWC": the layout of the file's image input
NEEDS = ("ai_edge_litert", "litert_torch")
OPTIONS = (*COMMON_OPTIONS, *INT8_OPTIONS, "nhwc")  # a fixed batch: no dynamic_batch


def check(int8: bool = False) -> None:
    """One-line UserError naming the extra when a package of the LiteRT export is missing."""
    for module in NEEDS + (("ai_edge_quantizer",) if int8 else ()):
        require(module, CONVERT_EXTRA, "int8 with fmt='litert'" if module == "ai_edge_quantizer" else "fmt='litert'")


# ------------------------------------------------------------------------------------------------ conversion
def convert(module, input_size: tuple[int, int, int], *, batch: int = 1, nhwc: bool = False) -> bytes:
    """The fp32 ``.tflite`` flatbuffer of ``module`` (eval mode, (N, C, H, W) in) at a fixed ``batch``."""
    import torch

    litert_torch = optional_import("litert_torch", CONVERT_EXTRA, "fmt='litert'")
    _quiet()
    example = torch.zeros(batch, *input_size)
    if nhwc:
        module = litert_torch.to_channel_last_io(module, args=[0]).eval()
        example = example.permute(0, 2, 3, 1).contiguous()
    with failing_as("litert-torch cannot convert this model", "export it to another format (fmt='onnx')"), \
            _no_progress(), quiet_native_stderr():
        edge = litert_torch.convert(module.eval(), (example,))
        return bytes(edge.model_content())


@contextlib.contextmanager
def _no_progress():
    """litert-torch prints every conversion stage to stdout (its rich console) unless this variable says no; set
    for the conversion only, so a command's own stdout (``--json``) stays clean."""
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous


def quantize(model: bytes, calibration: list[np.ndarray], *, nhwc: bool = False) -> tuple[bytes, dict]:
    """``(int8 flatbuffer, settings)``: AI Edge Quantizer static int8 of the fp32 ``model``, calibrated on
    ``calibration``, (N, C, H, W) batches of the file's batch size."""
    optional_import("ai_edge_quantizer", CONVERT_EXTRA, "int8 with fmt='litert'")
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    with quiet_native_stderr():
        interpreter = Interpreter(model_content=model)
    signatures = interpreter.get_signature_list()
    (key, signature), = signatures.items()
    (name,) = signature["inputs"]
    batch = int(interpreter.get_input_details()[0]["shape"][0])
    samples = [{name: np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else x} for x in calibration]
    q = quantizer.Quantizer(bytearray(model), recipe.static_wi8_ai8())
    # h-swish stays float (dequantize -> HARD_SWISH -> quantize): XNNPACK has no int8 h-swish, so an int8 one
    # splits the graph into a delegate partition per activation, run 4x slower than fp32 on V3-Small
    # (BENCHMARKS.md, "On-device formats"); in float, the whole graph stays one XNNPACK delegate
    q.update_quantization_recipe(regex=".*", operation_name=qtyping.TFLOperationName.HARD_SWISH,
                                 algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    log.info("quantizing with the AI Edge Quantizer on %d images", len(samples) * batch)
    # Quiet: calibration keeps every tensor, and LiteRT warns that this is for debugging; its progress bar and
    # XNNPACK's line go to file descriptor 2.
    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        calibrated = q.calibrate({key: samples}, num_threads=1)
        result = q.quantize(calibrated, enable_progress_bar=False, enable_progress_report=False)
    settings = {"scheme": "ai-edge-quantizer static_wi8_ai8", "weights": "int8 (per-channel convolutions)",
                "activations": "int8 (h-swish in float)", "io": "int8", "calibration": "min-max",
                "calibration_images": len(samples) * batch}
    return bytes(result.quantized_model), settings


def with_properties(model: bytes, properties: dict[str, str]) -> bytes:
    """``model`` with ``properties`` as named entries of its metadata table (earlier ``mobilenets.*`` entries
    replaced; the converter's own entries kept)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    # read_model_from_bytearray resolves buffers stored after the flatbuffer (by offset, as the AI Edge Quantizer
    # writes them) into the object, so that packing it again keeps every weight.
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    for buffer in obj.buffers or []:
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(bytes(buffer.data), dtype=np.uint8)  # packed as one vector, not bytewise
    kept = [m for m in (obj.metadata or []) if not _name(m.name).startswith(PROPERTY_PREFIX)]
    obj.buffers = obj.buffers or []
    for key, value in properties.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode(), dtype=np.uint8)
        obj.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = key
        entry.buffer = len(obj.buffers) - 1
        kept.append(entry)
    obj.metadata = kept
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def read_properties(path_or_bytes: str | Path | bytes) -> dict[str, str]:
    """The ``mobilenets.*`` entries of a ``.tflite`` file's metadata table (empty when it has none)."""
    from ai_edge_litert import schema_py_generated as schema

    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    what = path_or_bytes if not isinstance(path_or_bytes, bytes) else "the model"
    out = {}
    # a damaged flatbuffer fails in many ways
    with failing_as(f"{what} is not a readable .tflite file", "pass a file written by 'mobilenets export' with "
                    "fmt='litert'"):
        if not schema.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("no TFL3 identifier")
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            name = _name(entry.Name())
            if name.startswith(PROPERTY_PREFIX):
                out[name] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    return out


def _name(name) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")


def _quiet() -> None:
    """litert-torch logs every conversion stage at INFO; keep our logs readable."""
    for logger in ("litert_torch", "absl", "jax"):
        logging.getLogger(logger).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------------ the runner
class LiteRTRunner(Runner):
    """A ``.tflite`` on the LiteRT Interpreter (its default XNNPACK delegate on CPU) with ``threads`` threads.
    Inputs are float32 NCHW whatever the file holds: an NHWC file gets them transposed, an int8 file quantized
    with its input scale (and its outputs dequantized)."""

    backend = "litert"

    def __init__(self, path: Path, threads: int | None = None):
        litert = optional_import("ai_edge_litert.interpreter", RUNTIME_EXTRA, "backend='litert'")
        path = Path(path)
        properties = read_properties(path)
        with failing_as(f"LiteRT cannot load {path}", "pass a .tflite file written by 'mobilenets export' with "
                        "fmt='litert'"), quiet_native_stderr():  # XNNPACK's "INFO: Created ..." at every load
            self.interpreter = litert.Interpreter(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        (signature,) = self.interpreter._get_full_signature_list().values()  # names -> tensor indices
        details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        (self._input,) = (details[i] for i in signature["inputs"].values())
        # Outputs in the order of the PyTorch module's outputs (output_0, output_1, ...), not of tensor indices.
        names = sorted(signature["outputs"], key=lambda n: int(n.rsplit("_", 1)[-1]) if n[-1].isdigit() else 0)
        self._outputs = [details[signature["outputs"][n]] for n in names]
        self.nhwc = properties.get(LAYOUT_KEY) == "NHWC"
        super().__init__(path, meta_of(properties), int(self._input["shape"][0]), properties)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if self.nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        it = self.interpreter
        it.set_tensor(self._input["index"], _to_file_dtype(x, self._input))
        it.invoke()
        return [_to_float(it.get_tensor(d["index"]), d) for d in self._outputs]


def _to_file_dtype(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _to_float(y: np.ndarray, detail: dict) -> np.ndarray:
    if y.dtype == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * np.float32(scale)


# ------------------------------------------------------------------------------------------------ the exporter's writer
def writer(job: ExportJob) -> Writer:
    """Convert ``job``'s model (BatchNorm folded) to LiteRT, int8 when asked, with an NHWC input when
    ``job.nhwc``, once; the Writer saves it with its properties for the exporter's parity-or-delete
    (:func:`mobilenets.deploy.export.export_model`, which ran :func:`check` first)."""
    nhwc = job.nhwc
    model = convert(job.fused, tuple(job.meta.preprocessing.input_size), batch=job.batch, nhwc=nhwc)
    layout = "NHWC" if nhwc else "NCHW"
    job.details.update({"converter": "litert-torch", "layout": layout})
    if job.int8:
        model, settings = quantize(model, job.calibration_batches(), nhwc=nhwc)
        job.details.update(settings)
    job.details.update(op_counts(model))

    def save(file: Path, properties: dict[str, str]) -> None:
        Path(file).write_bytes(with_properties(model, {**properties, LAYOUT_KEY: layout}))
    return Writer(save=save, open=LiteRTRunner)


def op_counts(model: bytes) -> dict:
    """What the flatbuffer computes: its operators by name (e.g. CONV_2D 40, HARD_SWISH 19)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAs(model, 0)
    codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
    count: dict[str, int] = {}
    graph = m.Subgraphs(0)
    for j in range(graph.OperatorsLength()):
        code = codes[graph.Operators(j).OpcodeIndex()]
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        count[name] = count.get(name, 0) + 1
    return {"ops": dict(sorted(count.items(), key=lambda kv: -kv[1]))}
