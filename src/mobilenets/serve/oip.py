"""Open Inference Protocol v2 (KServe / Triton REST), the parts a client of an image model uses.

Spec: kserve/open-inference-protocol ``inference_rest.md``; Triton's binary tensor data and classification
extensions. Inputs: the FP32 tensor ``input`` (N, C, H, W) as the ONNX export names it, already preprocessed
(what Triton or KServe running our export expects, so one client fits all), or a ``BYTES`` tensor ``image`` of
N encoded image files (JPEG/PNG/..., as OpenVINO Model Server accepts) that the server decodes and
preprocesses. Outputs: the export's (``logits``, or ``boxes`` and ``scores``), as JSON lists or binary; an
output requested with ``parameters.classification: k`` comes back as BYTES ``[N, k]`` of ``"score:index:label"``.

The routes are :data:`router`'s (``create_app`` includes it): ``GET /v2`` (server metadata), ``/v2/health/live``
and ``/v2/health/ready``, and under ``/v2/models/{name}`` and ``/v2/models/{name}/versions/1``: the model's
metadata, ``/ready`` and ``POST /infer``, which runs through the same :meth:`.pipeline.State.run` as
``POST /predict``.
"""
from __future__ import annotations

import importlib.metadata
import json
import struct
from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .body import read_body
from .limits import Limits, ServeError, number
from .model import ServedModel
from .pipeline import State, error, state_of

EXTENSIONS = ("binary_tensor_data", "classification")
HEADER = "inference-header-content-length"  # the binary extension's header (HTTP header names ignore case)
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # numbers, or the elements of a BYTES tensor


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[dict] | None  # the requested outputs ({name, parameters}), None: all
    parameters: dict = field(default_factory=dict)


def _bytes_elements(raw: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ServeError(400, "BYTES tensor data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ServeError(400, "BYTES tensor element runs past the end of its data")
        out.append(raw[pos:pos + n])
        pos += n
    return out


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request body (JSON, or JSON + binary tensors when ``header_length`` is given)."""
    if header_length is not None:
        n = number(header_length, int, f"Inference-Header-Content-Length {header_length!r}")
        if not 0 < n <= len(body):
            raise ServeError(400, f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body")
        head, binary = body[:n], memoryview(body)[n:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise ServeError(400, f"the infer request is not JSON ({e}); send {{\"inputs\": [...]}}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ServeError(400, 'the infer request needs "inputs": a list of tensors {name, shape, datatype, data}')
    inputs, offset = [], 0
    for spec in doc["inputs"]:
        if not isinstance(spec, dict):
            raise ServeError(400, "each input must be an object {name, shape, datatype, data}")
        name, dtype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or dtype not in (*DTYPES, "BYTES") or not isinstance(shape, list) or not all(
                isinstance(d, int) and d >= 0 for d in shape):
            raise ServeError(400, f"input {name!r}: needs a name, a datatype ({', '.join(DTYPES)} or BYTES) and a "
                                  "shape of non-negative integers")
        count = int(np.prod(shape)) if shape else 1
        size = (spec.get("parameters") or {}).get("binary_data_size")
        data: list[bytes] | np.ndarray
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ServeError(400, f"input {name!r}: binary_data_size {size} runs past the request body")
            raw = bytes(binary[offset:offset + size])
            offset += size
            if dtype == "BYTES":
                data = _bytes_elements(raw)
            else:
                itemsize = np.dtype(DTYPES[dtype]).itemsize
                if size != count * itemsize:
                    raise ServeError(400, f"input {name!r}: {size} bytes of binary data for shape {shape} of "
                                          f"{dtype} ({count * itemsize} expected)")
                data = np.frombuffer(raw, DTYPES[dtype]).reshape(shape)
        else:
            if "data" not in spec:
                raise ServeError(400, f"input {name!r} has no data (and no binary_data_size)")
            if dtype == "BYTES":
                raise ServeError(400, f"input {name!r}: send BYTES (encoded images) with the binary tensor data "
                                      "extension (tritonclient: InferInput.set_data_from_numpy(..., binary_data=True))")
            try:
                data = np.asarray(spec["data"], dtype=DTYPES[dtype])
                data = data.reshape(shape)
            except (ValueError, TypeError) as e:
                raise ServeError(400, f"input {name!r}: data does not fit shape {shape} of {dtype} ({e})") from None
        if dtype == "BYTES" and len(data) != count:
            raise ServeError(400, f"input {name!r}: {len(data)} BYTES elements for shape {shape}")
        inputs.append(Tensor(name, dtype, shape, data))
    if offset != len(binary):
        raise ServeError(400, f"{len(binary) - offset} bytes after the last binary input; check binary_data_size")
    outputs = doc.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise ServeError(400, 'the "outputs" of an infer request must be a list of {name, parameters}')
    request_id = doc.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, inputs, outputs,
                        doc.get("parameters") or {})


def classification(scores: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Triton's classification extension: the top ``k`` of each row of (N, classes) as ``"score:index:label"``."""
    rows = []
    for row in scores.reshape(len(scores), -1):
        top = np.argsort(-row, kind="stable")[:k]
        rows.append([f"{row[i]:.6f}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in top])
    return np.array(rows, dtype=object)


def response(model: str, request: InferRequest, outputs: dict[str, np.ndarray],
             labels: list[str]) -> tuple[bytes, dict[str, str]]:
    """The infer response body and its headers; binary outputs follow the JSON as the extension says."""
    binary_default = bool(request.parameters.get("binary_data_output", False))
    wanted: list[dict] = request.outputs if request.outputs is not None else [{"name": n} for n in outputs]
    parts, chunks = [], []
    for spec in wanted:
        name, params = spec["name"], spec.get("parameters") or {}
        if name not in outputs:
            raise ServeError(400, f"unknown output {name!r}; this model has {', '.join(outputs)}")
        value = outputs[name]
        k = params.get("classification")
        if k is not None:
            if not isinstance(k, int) or k < 1:
                raise ServeError(400, f"output {name!r}: classification {k!r} must be a positive integer")
            if value.ndim != 2:
                raise ServeError(400, f"output {name!r} of shape {list(value.shape)} is not (N, classes); "
                                      "classification applies to a classifier's logits")
            value = classification(value, min(k, value.shape[1]), labels)
        entry = {"name": name, "datatype": "BYTES" if value.dtype == object else "FP32", "shape": list(value.shape)}
        if params.get("binary_data", binary_default):
            if value.dtype == object:
                raw = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in value.flat))
            else:
                raw = np.ascontiguousarray(value, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = value.reshape(-1).tolist() if value.dtype != object else list(value.flat)
        parts.append(entry)
    doc = {"model_name": model, "model_version": "1", "outputs": parts}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return b"".join([head, *chunks]), {"content-type": "application/octet-stream", HEADER: str(len(head))}


def _input_batch(served: ServedModel, req: InferRequest, limits: Limits) -> np.ndarray:
    """The model's input batch of an infer request: the FP32 tensor ``input``, or encoded images in ``image``."""
    if len(req.inputs) != 1:
        raise ServeError(400, f"{len(req.inputs)} inputs sent; this model takes one: 'input' (FP32 (N, C, H, W)) "
                              "or 'image' (BYTES, encoded images)")
    t = req.inputs[0]
    c, h, w = served.input_shape
    if t.name == "image" and t.datatype == "BYTES":
        if not 0 < len(t.data) <= limits.max_queue:
            raise ServeError(400, f"input 'image' holds {len(t.data)} images; send 1 to {limits.max_queue}")
        return np.concatenate([served.prepare(bytes(b), limits)[0] for b in t.data])
    if t.name != "input":
        raise ServeError(400, f"unknown input {t.name!r}; send 'input' (FP32 (N, {c}, {h}, {w})) or 'image' "
                              "(BYTES, encoded images)")
    if t.datatype != "FP32":
        raise ServeError(400, f"input 'input' is {t.datatype}; send FP32")
    if len(t.shape) != 4 or tuple(t.shape[1:]) != (c, h, w) or t.shape[0] < 1:
        raise ServeError(400, f"input 'input' of shape {t.shape} does not fit the model's [N, {c}, {h}, {w}] "
                              "(N >= 1)")
    x = np.ascontiguousarray(t.data, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ServeError(400, "input 'input' holds NaN or infinite values")
    return x


# -- the routes ---------------------------------------------------------------------------------------------

router = APIRouter()


def _ready(state: State, **extra) -> dict | Response:
    """200 ``{**extra, "ready": true}``, or 503 with the error while the server starts or shuts down."""
    if state.ready:
        return {**extra, "ready": True}
    return error(503, "not ready (starting or shutting down)", **extra, ready=False)


def _model_state(request: Request, name: str, version: str | None) -> State:
    """The server's state, once ``name`` (and ``version``) name the model it serves; 404 otherwise."""
    state = state_of(request)
    if name != state.served.name:
        raise ServeError(404, f"unknown model {name!r}; this server serves {state.served.name!r}")
    if version not in (None, "1"):
        raise ServeError(404, f"model {name!r} has no version {version!r}; it has version 1")
    return state


@router.get("/v2")
async def server_metadata():
    return {"name": "mobilenets", "version": importlib.metadata.version("mobilenets"), "extensions": list(EXTENSIONS)}


@router.get("/v2/health/live")
async def live():
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request):
    return _ready(state_of(request))


async def model_metadata(request: Request, name: str, version: str | None = None):
    served = _model_state(request, name, version).served
    c, h, w = served.input_shape
    return {"name": served.name, "versions": ["1"], "platform": f"mobilenets_{served.backend}",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, *s]}
                        for n, s in zip(served.output_names, served.output_shapes)]}


async def model_ready(request: Request, name: str, version: str | None = None):
    return _ready(_model_state(request, name, version), name=name)


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    state = _model_state(request, name, version)
    served, limits, header = state.served, state.limits, request.headers.get(HEADER)

    def decode(body: bytes) -> tuple[np.ndarray, InferRequest]:
        req = parse_infer(body, header)
        return _input_batch(served, req, limits), req

    def answer(outputs: list[np.ndarray], req: InferRequest) -> tuple[bytes, dict[str, str]]:
        return response(served.name, req, dict(zip(served.output_names, outputs)), list(served.meta.class_names))

    (body, headers), _ = await state.run(lambda: read_body(request, limits.max_upload_bytes), decode, answer)
    return Response(body, headers=headers)


for _prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    router.add_api_route(_prefix, model_metadata, methods=["GET"])
    router.add_api_route(_prefix + "/ready", model_ready, methods=["GET"])
    router.add_api_route(_prefix + "/infer", infer, methods=["POST"])
