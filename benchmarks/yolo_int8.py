"""What int8 costs a trained YOLO detector, per runtime and per head: COCO mAP on the test scenes of the eager
checkpoint against its fp32 ONNX file and its int8 files (ONNX Runtime QDQ, OpenVINO NNCF), each run on its own
runtime (issue 30: "int8 mAP change per runtime, within 1.5 points").

    .venv/bin/python benchmarks/yolo_int8.py runs/bench/yolo_vs_yolo26n/ours/run/last.safetensors \\
        --workdir /tmp/yolo_int8 --out benchmarks/yolo_int8

An end-to-end checkpoint (``train --end-to-end``) is measured through both of its heads: the one-to-one head (the
graph ends in the detections) and the one-to-many head with NMS outside the graph; any other YOLO or SSDLite
through its one head. Calibration: ``--calibration-n`` scenes of the training split at another seed than training
(the exporter's default 7-bit weights); the exporter's parity gate runs on further training-split scenes, so the
test scenes are touched once, for the figures. Every file is scored by the task's own evaluation (pycocotools, boxes
in original coordinates) on the first ``--test-scenes`` test scenes, the set ``mobilenets eval`` reports.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mobilenets.checkpoint import load_checkpoint
from mobilenets.data.loaders import DataConfig
from mobilenets.data.scenes import FashionScenes, SceneConfig, export_scenes
from mobilenets.deploy import ExportOptions, export_model, open_runner
from mobilenets.heads.detection import postprocess_detections
from mobilenets.heads.yolo import detections_to_dict
from mobilenets.tasks import get_task
from mobilenets.tasks.detect import POSTPROCESS_KEY

# (label, export format, int8, backend that runs it)
FILES = (("ONNX fp32", "onnx", False, "onnxruntime"),
         ("ONNX Runtime QDQ int8", "onnx", True, "onnxruntime"),
         ("OpenVINO NNCF int8", "openvino", True, "openvino"))
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


class RunnerDetector:
    """A runner made to look like a detector to ``Detect.evaluate``: ``predict`` runs the file and the
    post-processing its metadata names (NMS, or the score filter of an end-to-end graph)."""

    def __init__(self, runner, num_classes: int):
        self.runner, self.num_classes = runner, num_classes
        self.settings = json.loads(runner.properties[POSTPROCESS_KEY])
        self.end_to_end = bool(self.settings.pop("end_to_end", False))

    def eval(self):
        return self

    def predict(self, x: torch.Tensor) -> list[dict]:
        size = tuple(x.shape[-2:])
        outputs = [torch.from_numpy(o) for o in self.runner.outputs(x.contiguous().numpy())]
        if self.end_to_end:
            return [detections_to_dict(d, size, self.settings["score_thresh"]) for d in outputs[0]]
        return [postprocess_detections(b, s, size, **self.settings) for b, s in zip(*outputs)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/yolo_int8"))
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    p.add_argument("--test-scenes", type=int, default=1000)
    p.add_argument("--calibration-n", type=int, default=300)
    p.add_argument("--parity-n", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = datetime.now(timezone.utc)

    model, meta = load_checkpoint(args.checkpoint, task="detect")
    task = get_task("detect")
    trained = meta.extra.get("data", {})
    size = meta.preprocessing.input_size[-1]
    scene = SceneConfig(image_size=trained.get("image_size", size))
    args.workdir.mkdir(parents=True, exist_ok=True)
    seed = int(trained.get("seed", 0))
    calibration = export_scenes(FashionScenes("train", args.calibration_n, scene, seed=seed + 101),
                                args.workdir / "calibration") / "images"
    parity = export_scenes(FashionScenes("train", args.parity_n, scene, seed=seed + 202),
                           args.workdir / "parity") / "images"
    val = task.open_eval_data(meta, DataConfig(data=trained["data"], batch_size=32, limit_val=args.test_scenes,
                                               **task.eval_defaults(trained)))

    def score(detector) -> dict:
        m = task.evaluate(detector, val, preprocessing=meta.preprocessing, class_names=meta.class_names,
                          device=torch.device("cpu"))
        return {"map": m["map"], "map50": m["map50"], "images": m["images"]}

    heads = ["one-to-one", "one-to-many + NMS"] if getattr(model, "end_to_end", False) else ["one head"]
    rows = []
    for head in heads:
        reading = copy.deepcopy(model).eval()
        if head != "one head":
            reading.one_to_one = head == "one-to-one"
        eager = score(reading)
        rows.append({"head": head, "file": "eager PyTorch fp32", **eager, "delta_map_points": 0.0})
        print(f"{head}: eager mAP {eager['map']:.4f} mAP@.5 {eager['map50']:.4f}", flush=True)
        for label, fmt, int8, backend in FILES:
            out = args.workdir / f"{head.split()[0]}_{fmt}_{'int8' if int8 else 'fp32'}{SUFFIX[fmt]}"
            start = time.perf_counter()
            result = export_model(reading, meta, out, fmt,
                                  ExportOptions(int8=int8, calibration_data=str(calibration) if int8 else None,
                                                calibration_n=args.calibration_n, parity_data=str(parity),
                                                parity_n=args.parity_n))
            seconds = time.perf_counter() - start
            runner = open_runner(out, backend=backend, threads=args.threads)
            got = score(RunnerDetector(runner, model.num_classes))
            rows.append({"head": head, "file": label, "backend": backend, **got,
                         "delta_map_points": round((got["map"] - eager["map"]) * 100, 2),
                         "delta_map50_points": round((got["map50"] - eager["map50"]) * 100, 2),
                         "parity_agreement": result.parity.agreement, "export_seconds": round(seconds, 1),
                         "int8_settings": result.details if int8 else None})
            print(f"  {label}: mAP {got['map']:.4f} ({rows[-1]['delta_map_points']:+.2f} points), parity "
                  f"{result.parity.agreement:.1%} of confident detections kept", flush=True)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX-512" if "avx512f" in flags else "AVX2")
    record = {"command": "benchmarks/yolo_int8.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
              "date": started.strftime("%Y-%m-%d %H:%M UTC"), "host": f"{cpu} ({isa})", "checkpoint":
              str(args.checkpoint), "test_scenes": args.test_scenes, "calibration_n": args.calibration_n,
              "rows": rows}
    table = [f"Host {record['host']}, {record['date']}; {args.checkpoint}; {args.test_scenes} test scenes; "
             f"calibration {args.calibration_n} training-split scenes (7-bit weights).", "",
             "| head | file | runtime | mAP@[.5:.95] | change (points) | mAP@.5 | parity kept |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['head']} | {r['file']} | {r.get('backend', 'torch')} | {r['map']:.4f} | "
                     f"{r['delta_map_points']:+.2f} | {r['map50']:.4f} | "
                     + (f"{r['parity_agreement']:.1%} |" if "parity_agreement" in r else "- |"))
    print("\n".join(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
        args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
