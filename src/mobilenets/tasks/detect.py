"""Object detection: the built-in Fashion-MNIST scenes or a COCO folder (images + instances JSON); the detector's
own loss (SSDLite: multibox; YOLO: CIoU + DFL + BCE against task-aligned targets); COCO box mAP@[.5:.95] and
mAP@.5 from pycocotools, in original image coordinates.

The exported graph ends before non-maximum suppression: ``boxes`` (N, A, 4) decoded ``x1, y1, x2, y2`` in input
pixels and ``scores`` (N, A, classes) probabilities, class 0 the background (all 0 for a detector that predicts no
background, as YOLO). Per image, :func:`postprocess` clips the boxes, keeps per class the scores above
``score_thresh`` (top ``topk_candidates``), runs class-wise NMS at ``nms_thresh`` and keeps the best
``detections_per_img``; those settings travel in the file's metadata (:data:`POSTPROCESS_KEY`). Keeping NMS out
keeps the graph static and the same in every runtime.

An end-to-end YOLO (``end_to_end=True``: YOLOv10's one-to-one head) exports to the final detections instead:
``detections`` (N, K, 6) rows ``x1, y1, x2, y2, score, label`` best first, selected in the graph by two top-k; its
metadata says ``end_to_end: true`` and only ``score_thresh`` applies after it.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from ..data.dense import MEAN, STD, split_folder
from ..errors import UserError
from ..heads.detection import Detector, postprocess_detections
from ..heads.yolo import detections_to_dict
from .base import Parity
from .dense import DenseTask

POSTPROCESS_KEY = "mobilenets.postprocess"  # a detector's NMS settings (JSON) in an exported file's metadata
E2E_OUTPUTS = ("detections",)  # an end-to-end detector's graph: (N, K, 6) rows x1, y1, x2, y2, score, label
NMS_SETTINGS = ("score_thresh", "nms_thresh", "topk_candidates", "detections_per_img")
TERM_NAMES = {"bbox_regression": "box", "classification": "cls"}  # torchvision's loss names -> the logged ones


class DecodedDetections(nn.Module):
    """A detector up to (not including) NMS: ``(boxes, scores)`` for a batch."""

    def __init__(self, model: Detector):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        return self.model.decode(self.model(x))


def coco_map(gts: list[dict], detections: list[dict], num_classes: int) -> dict:
    """mAP@[.5:.95], mAP@.5 and per-class AP with pycocotools.

    ``gts[i]``: ``boxes`` (N, 4) XYXY, ``labels``, ``size`` (H, W); ``detections[i]``: ``boxes``, ``scores``,
    ``labels`` in the same coordinates.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise UserError("detection metrics need pycocotools: pip install 'mobilenets[detection]'") from e
    images: list[dict] = []
    annotations: list[dict] = []
    results: list[dict] = []
    for i, (gt, det) in enumerate(zip(gts, detections)):
        h, w = gt["size"]
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for box, label in zip(gt["boxes"].tolist(), gt["labels"].tolist()):
            bw, bh = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                "bbox": [box[0], box[1], bw, bh], "area": bw * bh, "iscrowd": 0})
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            results.append({"image_id": i + 1, "category_id": int(label), "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    categories = [{"id": c} for c in range(1, num_classes)]
    if not annotations or not results:
        return {"map": 0.0, "map50": 0.0, "per_class_ap": [0.0] * (num_classes - 1)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports with print()
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall, class) at area all, 100 dets
    per_class = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k]
        per_class.append(float(p[p > -1].mean()) if (p > -1).any() else 0.0)
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "per_class_ap": per_class}


class DetectionTally:
    """Detections of a model in original image coordinates beside the ground truth, for :func:`coco_map`."""

    def __init__(self, model: nn.Module, size: int):
        self.model, self.size = model, size
        self.gts: list[dict] = []
        self.dets: list[dict] = []

    def add(self, samples, x):
        size = self.size
        for (im, target), pred in zip(samples, self.model.predict(x)):
            h, w = im.shape[-2:]
            scale = torch.tensor([w / size, h / size, w / size, h / size])
            self.dets.append({"boxes": pred["boxes"].cpu() * scale, "scores": pred["scores"].cpu(),
                              "labels": pred["labels"].cpu()})
            self.gts.append({"boxes": target["boxes"].as_subclass(Tensor), "labels": target["labels"],
                             "size": (h, w)})

    def metrics(self) -> dict:
        result = coco_map(self.gts, self.dets, cast(int, self.model.num_classes))
        result.update(images=len(self.gts), objects=int(sum(len(g["labels"]) for g in self.gts)))
        return result


class Detect(DenseTask):
    name = "detect"
    metric = "map"
    per_class = "per_class_ap"
    per_class_label = "AP"
    outputs = ("boxes", "scores")
    generic_model = "ssdlite"
    folder_size = 320
    curves = (("loss", "loss", (("loss", "total"), ("loss_box", "box"), ("loss_dfl", "DFL"), ("loss_cls", "class"))),
              ("val mAP", "mAP", (("map", "mAP@[.5:.95]"), ("map50", "mAP@.5"))))

    # -- data ------------------------------------------------------------------------------------------------
    def train_transforms(self, size: int, scenes: bool, augment: str = "basic") -> v2.Compose:
        """Flip and photometric distortion (SSD section 3.6), resize to the model input, drop boxes the resize
        made degenerate, normalise. Boxes move with the image (transforms.v2 with tv_tensors). The scenes skip
        the photometric distortion: their colours are random already, and it would double the loading time.
        ``augment="none"``: resize and normalise only."""
        colour = [] if scenes or augment == "none" else [v2.RandomPhotometricDistort(p=0.5)]
        flip = [] if augment == "none" else [v2.RandomHorizontalFlip()]
        return v2.Compose([*flip, *colour, v2.Resize((size, size), antialias=True),
                           v2.SanitizeBoundingBoxes(min_size=1), v2.Normalize(MEAN, STD)])

    def collate_targets(self, targets):
        return [{"boxes": t["boxes"].as_subclass(Tensor).float(), "labels": t["labels"]} for t in targets]

    def open_folder(self, cfg, split, transforms, class_names):
        """A COCO folder (whose JSON names the classes, so ``class_names`` is not needed)."""
        from ..data.coco import open_coco

        folder = split_folder(cfg, split)
        annotations = cfg.annotations if folder == Path(cfg.data) else None  # the JSON of --data itself
        return open_coco(folder, annotations, transforms, cfg.skip_bad)

    def class_names_of(self, dataset) -> list[str]:
        return ["background"] + list(dataset.class_names)

    def skipped_record(self, dataset) -> dict:
        return {"skipped_annotations": dict(dataset.skipped)}

    # -- training and evaluation ---------------------------------------------------------------------------
    def loss(self, model, inputs, targets, label_smoothing=0.0, soft_targets=None):
        """The sum of the terms the detector's ``loss`` returns, each logged as ``loss_<term>`` (torchvision's
        ``bbox_regression`` / ``classification`` as ``loss_box`` / ``loss_cls``; YOLO adds ``loss_dfl``)."""
        terms = model.loss(model(inputs), targets)
        named = {f"loss_{TERM_NAMES.get(k, k)}": v for k, v in terms.items()}
        return sum(named.values()), named, {}

    def tally(self, model, size):
        """COCO mAP of the model's boxes in original coordinates."""
        return DetectionTally(model, size)

    def summary(self, metrics: dict) -> str:
        return f"mAP@[.5:.95] {metrics['map']:.4f}  mAP@.5 {metrics['map50']:.4f}"

    def report(self, metrics: dict, class_names: list[str]) -> dict:
        return {"map": metrics["map"], "map50": metrics["map50"], "images": metrics["images"],
                "objects": metrics["objects"], "per_class_ap": dict(zip(class_names[1:], metrics["per_class_ap"]))}

    def counted(self, report: dict) -> str:
        return f"{report['images']} images, {report['objects']} objects"

    # -- export ----------------------------------------------------------------------------------------------
    def export_module(self, model):
        return DecodedDetections(model).eval()

    def export_properties(self, model):
        """The NMS settings; for a model read through its one-to-one head (end-to-end YOLO) ``end_to_end: true``
        too: its graph ends in the detections (:data:`E2E_OUTPUTS`) and only ``score_thresh`` applies after it."""
        settings = {k: getattr(model, k) for k in NMS_SETTINGS}
        if is_end_to_end(model):
            settings["end_to_end"] = True
        return {POSTPROCESS_KEY: json.dumps(settings)}

    def output_names(self, properties):
        return E2E_OUTPUTS if _settings(properties)[1] else self.outputs

    def compare(self, reference, got, *, inputs, int8, properties, tolerance=None, min_agreement=None) -> Parity:
        """The graph ends before NMS, so its parity is the box / score difference (scores weighted x100, so that
        0.05 means 0.05 px or 5e-4 probability). NMS is the same code on both sides; the detections after it can
        differ only where two candidates' scores tie within fp32 noise and swap places (frequent for untrained
        models), so their agreement is reported but not required (fp32); int8 must keep 50% of them."""
        settings, end_to_end = _settings(properties)
        if end_to_end:
            return _compare_detections(torch.from_numpy(np.asarray(reference[0])),
                                       torch.from_numpy(np.asarray(got[0])), inputs=inputs, int8=int8,
                                       tolerance=tolerance, min_agreement=min_agreement)
        boxes, scores = (torch.from_numpy(np.asarray(a)) for a in got)
        ref_boxes, ref_scores = (torch.from_numpy(np.asarray(a)) for a in reference)
        matched = total = 0
        for b, s, rb, rs in zip(boxes, scores, ref_boxes, ref_scores):
            size = (10 ** 6, 10 ** 6)  # no clipping: compare the boxes as decoded
            mine = postprocess_detections(b, s, size, **settings)
            ref = postprocess_detections(rb, rs, size, **settings)
            confident = ref["scores"] > 0.05  # tiny scores near the threshold may swap order in fp32
            total += int(confident.sum())
            for box, label in zip(ref["boxes"][confident], ref["labels"][confident]):
                same = (mine["labels"] == label) & ((mine["boxes"] - box).abs().amax(-1) < (2.0 if int8 else 0.05))
                matched += int(same.any())
        diff = max(float((boxes - ref_boxes).abs().max()), float((scores - ref_scores).abs().max()) * 100)
        if tolerance is None and not int8:
            tolerance = 0.05
        return Parity(n=len(boxes), inputs=inputs, max_abs_diff=diff, agreement=matched / total if total else 1.0,
                      tolerance=tolerance, min_agreement=min_agreement if min_agreement is not None
                      else (0.5 if int8 else 0.0), what="confident detections matched")

    # -- results for a person --------------------------------------------------------------------------------
    def postprocess(self, outputs, meta, properties, image_size, *, score_thresh: float = 0.3, **options):
        h, w = image_size
        size = meta.preprocessing.input_size[-1]
        settings, end_to_end = _settings(properties)
        pred = (detections_to_dict(outputs[0][0], (size, size), settings["score_thresh"]) if end_to_end
                else postprocess_detections(outputs[0][0], outputs[1][0], (size, size), **settings))
        keep = pred["scores"] >= score_thresh
        boxes = pred["boxes"][keep] * torch.tensor([w / size, h / size, w / size, h / size])
        scores, labels = pred["scores"][keep], pred["labels"][keep]
        names = [meta.class_names[i] if i < len(meta.class_names) else str(i) for i in labels.tolist()]
        return {"detections": [{"class": n, "label": int(lab), "score": round(float(s), 4),
                                "box": [round(v, 1) for v in b]}
                               for n, lab, s, b in zip(names, labels.tolist(), scores.tolist(), boxes.tolist())]}

    def draw(self, image, result, meta):
        from torchvision.utils import draw_bounding_boxes

        dets = result["detections"]
        boxes = torch.tensor([d["box"] for d in dets], dtype=torch.float32).reshape(-1, 4)
        return draw_bounding_boxes((image * 255).round().to(torch.uint8), boxes,
                                   [f"{d['class']} {d['score']:.2f}" for d in dets], colors="yellow")

    def result_line(self, result: dict) -> str:
        return ", ".join(f"{d['class']} {d['score']:.2f}" for d in result["detections"]) or "nothing"


def is_end_to_end(model: nn.Module) -> bool:
    """Whether ``model`` decodes through a one-to-one head into final detections (end-to-end YOLO, read as such)."""
    return bool(getattr(model, "end_to_end", False) and getattr(model, "one_to_one", False))


def _settings(properties: dict[str, str]) -> tuple[dict, bool]:
    """A file's post-processing settings (the NMS keywords) and whether its graph is end-to-end."""
    settings = json.loads(properties[POSTPROCESS_KEY])
    return settings, bool(settings.pop("end_to_end", False))


def _compare_detections(reference: Tensor, got: Tensor, *, inputs, int8: bool, tolerance, min_agreement) -> Parity:
    """Parity of an end-to-end graph: (N, K, 6) detection rows against eager PyTorch's. Rows are ranked by score,
    so two candidates whose scores tie within fp32 noise may swap places: each confident reference row (score >
    0.05) is looked up among the export's rows of its label (box within 0.05 px, 2 px for int8); the difference
    reported is over those matched rows (boxes in px, scores x100 as for the NMS graph). The best 10 rows of each
    image count as confident whatever their score, so that an untrained model's export is compared too."""
    matched = total = 0
    diff = 0.0
    near = 2.0 if int8 else 0.05
    for ref, mine in zip(reference, got):
        checked = ref[:, 4] > 0.05
        checked[:10] = True  # rows come best first
        for row in ref[checked]:
            total += 1
            same = (mine[:, 5] == row[5]) & ((mine[:, :4] - row[:4]).abs().amax(-1) < near)
            if same.any():
                matched += 1
                best = mine[same][(mine[same][:, 4] - row[4]).abs().argmin()]
                diff = max(diff, float((best[:4] - row[:4]).abs().max()), float(abs(best[4] - row[4])) * 100)
    if tolerance is None and not int8:
        tolerance = 0.05
    agreement = matched / total if total else 1.0
    return Parity(n=len(reference), inputs=inputs, max_abs_diff=diff, agreement=agreement, tolerance=tolerance,
                  min_agreement=min_agreement if min_agreement is not None else (0.5 if int8 else 0.99),
                  what="confident detections matched")

