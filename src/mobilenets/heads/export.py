"""ONNX export of the detection and segmentation models, checked against eager PyTorch with ONNX Runtime.

What the ONNX graph computes:

- segmentation: input ``input`` (N, 3, H, W) normalised -> ``logits`` (N, classes, H, W) at the input size;
  the class map is ``logits.argmax(1)``.
- detection: input ``input`` -> ``boxes`` (N, A, 4) decoded ``x1, y1, x2, y2`` in input pixels (anchors and box
  decoding are in the graph) and ``scores`` (N, A, classes) softmax probabilities, class 0 the background.
  **Non-maximum suppression is outside the graph**: per image, clip the boxes, keep per class the scores above
  ``score_thresh`` (top ``topk_candidates``), run class-wise NMS at ``nms_thresh`` and keep the best
  ``detections_per_img`` -- :func:`mobilenets.heads.ssdlite.postprocess_detections` does exactly that on the
  ONNX outputs (the thresholds travel in the file's metadata). Keeping NMS out keeps the graph static and the
  same in every runtime.

The input size is fixed at export (the anchors depend on it), the batch may be dynamic. The checkpoint metadata
travels in the file (``metadata_props``: ``mobilenets.meta``, ``mobilenets.postprocess``).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointMeta
from ..deploy.export import META_KEY
from ..errors import UserError

log = logging.getLogger(__name__)

OPSET = 18
POSTPROCESS_KEY = "mobilenets.postprocess"  # a detector's NMS settings (JSON) in the file's metadata


class DecodedDetections(nn.Module):
    """SSDLite up to (not including) NMS: ``(boxes, scores)`` for a batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.decode(self.model(x))


@dataclass
class TaskParity:
    n: int
    max_abs_diff: float  # boxes (pixels) for detection, logits for segmentation
    agreement: float  # detection: share of eager detections matched by the ONNX ones; segmentation: pixels
    tolerance: float
    min_agreement: float = 0.99

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.agreement >= self.min_agreement


def postprocess_settings(model: nn.Module) -> dict:
    return {k: getattr(model, k) for k in ("score_thresh", "nms_thresh", "topk_candidates", "detections_per_img")}


def export_onnx(model: nn.Module, meta: CheckpointMeta, out: str | os.PathLike, *, parity_inputs: Tensor | None = None,
                dynamic_batch: bool = False) -> TaskParity:
    """Write ``model`` (a detect or segment model) to ``out`` as ONNX; refuse when ONNX Runtime disagrees."""
    import onnx
    import onnxruntime as ort

    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out} must end in .onnx")
    model = model.eval()
    task = getattr(model, "task", meta.task)
    module = (DecodedDetections(model) if task == "detect" else model).eval()
    names = ["boxes", "scores"] if task == "detect" else ["logits"]
    c, h, w = meta.preprocessing.input_size
    example = torch.zeros(2 if dynamic_batch else 1, c, h, w)
    for name in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    try:
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                    output_names=names, dynamic_shapes=dynamic, external_data=False, optimize=True,
                                    verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise UserError(f"torch.onnx could not export {meta.model} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from e
    proto = program.model_proto
    props = {META_KEY: meta.to_json()}
    if task == "detect":
        props[POSTPROCESS_KEY] = json.dumps(postprocess_settings(model))
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    if parity_inputs is None:
        parity_inputs = default_parity_inputs(meta)
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, tmp)
    try:
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        report = check_parity(model, session, parity_inputs, task)
        log.info("%s", report)
        if not report.passed:
            raise UserError(f"refusing to write {out}: ONNX Runtime does not match eager PyTorch ({report})")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return report


def default_parity_inputs(meta: CheckpointMeta, n: int = 4) -> Tensor:
    """Test scenes for a model trained on the Fashion-MNIST scenes (real inputs), else seeded noise."""
    c, h, w = meta.preprocessing.input_size
    data = meta.extra.get("data", {}) if isinstance(meta.extra, dict) else {}
    if data.get("data") == "scenes" and c == 3:
        import torch.nn.functional as F

        from ..data.scenes import FashionScenes, SceneConfig

        scenes = FashionScenes("test", n, SceneConfig(image_size=data.get("image_size", h)), seed=data.get("seed", 0))
        x = torch.stack([scenes.render(i)[0] for i in range(n)])
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(meta.preprocessing.mean).view(1, -1, 1, 1)
        std = torch.tensor(meta.preprocessing.std).view(1, -1, 1, 1)
        return (x - mean) / std
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def check_parity(model: nn.Module, session, inputs: Tensor, task: str) -> TaskParity:
    from .ssdlite import postprocess_detections

    feeds = [inputs[i:i + 1] for i in range(len(inputs))] if session.get_inputs()[0].shape[0] == 1 else [inputs]
    got = [session.run(None, {"input": x.numpy()}) for x in feeds]
    if task != "detect":
        logits = torch.from_numpy(np.concatenate([g[0] for g in got]))
        ref = model(inputs)
        agree = float((logits.argmax(1) == ref.argmax(1)).float().mean())
        tolerance = 1e-3 * max(1.0, float(ref.abs().max()))
        return TaskParity(len(inputs), float((logits - ref).abs().max()), agree, tolerance)
    boxes = torch.from_numpy(np.concatenate([g[0] for g in got]))
    scores = torch.from_numpy(np.concatenate([g[1] for g in got]))
    ref_boxes, ref_scores = model.decode(model(inputs))
    settings = postprocess_settings(model)
    size = tuple(inputs.shape[-2:])
    matched = total = 0
    for b, s, rb, rs in zip(boxes, scores, ref_boxes, ref_scores):
        mine = postprocess_detections(b, s, size, **settings)
        ref = postprocess_detections(rb, rs, size, **settings)
        confident = ref["scores"] > 0.05  # tiny scores near the threshold may swap order in fp32
        total += int(confident.sum())
        for box, label in zip(ref["boxes"][confident], ref["labels"][confident]):
            same = (mine["labels"] == label) & ((mine["boxes"] - box).abs().amax(-1) < 0.05)
            matched += int(same.any())
    diff = max(float((boxes - ref_boxes).abs().max()), float((scores - ref_scores).abs().max()) * 100)
    # The graph ends before NMS, so its parity is the box / score difference. NMS is the same code on both sides;
    # the detections after it can differ only where two candidates' scores tie within fp32 noise and swap places
    # (frequent for untrained models), so their agreement is reported but not required.
    return TaskParity(len(inputs), diff, matched / total if total else 1.0, 0.05, min_agreement=0.0)


def report_dict(report: TaskParity) -> dict:
    return {**asdict(report), "passed": report.passed}
