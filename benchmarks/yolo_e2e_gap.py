"""Where the end-to-end head's mAP goes (issue 30: "end-to-end within 1 point of NMS"): one end-to-end YOLO
checkpoint scored three ways on its own held-out validation scenes (the training side's holdout items, never the
test scenes, because this chooses what to try next):

- one-to-many head + NMS (the usual YOLO);
- one-to-one head, end-to-end (two top-k, no NMS: what the exported graph does);
- one-to-one head + NMS (its boxes and scores through the same NMS as the one-to-many head);
- the one-to-one head's scores on the one-to-many head's boxes, end-to-end (is it the boxes or the ranking?).

It also counts the objects that the one-to-one head's top-1 assigner leaves without a positive (another object took
their best point), against Ultralytics YOLO26's one-to-one assigner (top 7, conflicts resolved, then the top 1 that
is left), which falls back to an object's next-best point: the gain that assigner could bring at most.

If the one-to-one head with NMS gets close to the one-to-many head, its boxes and ranking are fine and the gap is
duplicates that its top-1 training has not yet learnt to suppress; if it stays where the end-to-end reading is,
the head itself is weaker.

    .venv/bin/python benchmarks/yolo_e2e_gap.py runs/bench/yolo_vs_yolo26n/ours/run/last.safetensors \\
        --val-scenes 1000 --out benchmarks/yolo_e2e_gap
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from mobilenets.checkpoint import load_checkpoint
from mobilenets.data.dense import model_inputs
from mobilenets.data.loaders import DataConfig
from mobilenets.heads.yolo import TaskAlignedAssigner
from mobilenets.tasks import get_task
from mobilenets.train.config import TrainConfig


class OneToOneWithNMS(torch.nn.Module):
    """An end-to-end YOLO read through its one-to-one head, decoded like the one-to-many head (NMS)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes

    def predict(self, x: torch.Tensor) -> list[dict]:
        m = self.model
        m.one_to_one = True
        outputs = m(x)  # the one-to-one head's logits under the usual names
        m.end_to_end = False  # decode and postprocess as the one-to-many head does: NMS
        try:
            return m.postprocess(outputs, tuple(x.shape[-2:]))
        finally:
            m.end_to_end = True

    def forward(self, x):
        return self.model(x)


class OneToOneScoresManyBoxes(OneToOneWithNMS):
    """The one-to-one head's class scores on the one-to-many head's boxes, decoded end to end (two top-k, no
    NMS): how far the one-to-one reading gets when only its ranking is its own."""

    def predict(self, x: torch.Tensor) -> list[dict]:
        m = self.model
        m.one_to_one = False
        many = m(x)
        m.one_to_one = True
        one = m(x)
        outputs = {**one, "box_logits": many["box_logits"]}
        return m.postprocess(outputs, tuple(x.shape[-2:]))


@torch.no_grad()
def objects_without_positive(model, val, size: int, batch: int = 50) -> dict[str, int]:
    """Objects of ``val`` that get no one-to-one positive from the one-to-one head's own predictions: under the
    library's top-1 assigner, and under YOLO26's top-7-then-top-1 (an object keeps a positive there when any of its
    top 7 points survives conflict resolution)."""
    model.eval()
    model.one_to_one = True
    counts = {"objects": 0, "top-1": 0, "top-7 then top-1": 0}
    for start in range(0, len(val), batch):
        samples = [val[i] for i in range(start, min(start + batch, len(val)))]
        x = model_inputs([im for im, _ in samples], size)
        targets = []
        for im, t in samples:
            scale = torch.tensor([size / im.shape[-1], size / im.shape[-2]] * 2)
            targets.append({"boxes": t["boxes"] * scale, "labels": t["labels"]})
        out = model(x)
        gt_labels, gt_boxes, gt_valid = model._pad(targets, out["cls_logits"])
        scores, boxes = out["cls_logits"].sigmoid(), model.boxes(out)
        counts["objects"] += int(gt_valid.sum())
        for name, k in (("top-1", 1), ("top-7 then top-1", 7)):
            _, _, fg, target_gt = TaskAlignedAssigner(k)(scores, boxes, out["points"], gt_labels, gt_boxes, gt_valid)
            for i in range(len(samples)):
                counts[name] += int(gt_valid[i].sum()) - len(set(target_gt[i][fg[i]].tolist()))
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--val-scenes", type=int, default=1000, help="held-out validation scenes to score (default 1000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint)
    if not getattr(model, "end_to_end", False):
        raise SystemExit(f"{args.checkpoint} is not an end-to-end YOLO (train --end-to-end)")
    config = TrainConfig.from_dict(json.loads((args.checkpoint.parent / "config.json").read_text()))
    task = get_task("detect")
    cfg = DataConfig(**{**config.data.__dict__, "limit_val": args.val_scenes, "limit_train": 32})
    data = task.open_data(cfg, img_size=config.img_size, in_chans=3)
    rows = []
    readings = (("one-to-many + NMS", False, model), ("one-to-one, end-to-end", True, model),
                ("one-to-one + NMS", True, OneToOneWithNMS(model)),
                ("one-to-one scores on one-to-many boxes, end-to-end", True, OneToOneScoresManyBoxes(model)))
    for label, one_to_one, reader in readings:
        model.one_to_one = one_to_one
        start = time.perf_counter()
        metrics = task.evaluate(reader.eval(), data.val, preprocessing=meta.preprocessing,
                                class_names=meta.class_names, device=torch.device("cpu"))
        rows.append({"reading": label, "map": metrics["map"], "map50": metrics["map50"],
                     "images": metrics["images"], "seconds": round(time.perf_counter() - start, 1)})
        print(f"{label:<52} mAP {metrics['map']:.3f}  mAP@.5 {metrics['map50']:.3f}  ({metrics['images']} scenes)",
              flush=True)
    unassigned = objects_without_positive(model, data.val, meta.preprocessing.input_size[-1])
    print(f"objects without a one-to-one positive: {unassigned['top-1']} of {unassigned['objects']} (top-1), "
          f"{unassigned['top-7 then top-1']} (YOLO26's top-7 then top-1)", flush=True)
    record = {"checkpoint": str(args.checkpoint), "val": data.meta.get("val", {}), "rows": rows,
              "objects_without_one_to_one_positive": unassigned,
              "host": platform.processor() or platform.machine(),
              "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
        lines = ["| reading | mAP@[.5:.95] | mAP@.5 |", "|---|---|---|"]
        lines += [f"| {r['reading']} | {r['map']:.3f} | {r['map50']:.3f} |" for r in rows]
        lines.append(f"\nObjects without a one-to-one positive: {unassigned['top-1']} of {unassigned['objects']} "
                     f"(top-1), {unassigned['top-7 then top-1']} (YOLO26's top-7 then top-1).")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
