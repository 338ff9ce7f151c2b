"""One-to-one head variants for the end-to-end YOLO, trained by the real `mobilenets train` with one change patched
in for this process only (issue 30: the end-to-end head trails the one-to-many head by 8 points, and
``yolo_e2e_gap.py`` puts the gap in its class scores). Run a variant and the baseline side by side, one thread and
one core each, same flags and budget, then score both with ``yolo_e2e_gap.py`` on held-out scenes.

    taskset -c 0 .venv/bin/python benchmarks/yolo_o2o_variant.py baseline -- --out runs/o2o/base ... &
    taskset -c 1 .venv/bin/python benchmarks/yolo_o2o_variant.py undetached -- --out runs/o2o/undet ...

Variants:
- ``baseline``: the library as it is (YOLOv10/Ultralytics: the one-to-one head on detached neck maps).
- ``undetached``: the one-to-one head on the neck maps themselves, so its top-1 targets also train the neck and
  the backbone (YOLOv10's paper trains both heads jointly, but Ultralytics' code detaches).

The checkpoints are ordinary ones: at inference the two variants compute the same graph.
"""
from __future__ import annotations

import sys

from mobilenets.cli import main
from mobilenets.heads import yolo

VARIANTS = ("baseline", "undetached")


def undetached_forward(self, x):
    feats = self.neck(list(self.features(x)))
    points, strides = yolo.grid_points([tuple(f.shape[-2:]) for f in feats], self.strides, device=x.device,
                                       dtype=x.dtype)
    out = {"points": points, "strides": strides}
    if self.end_to_end and (self.training or self.one_to_one):
        cls_o2o, box_o2o = self.head_o2o(feats)
        if not self.training:
            return {"cls_logits": cls_o2o, "box_logits": box_o2o, **out}
        out.update(cls_logits_o2o=cls_o2o, box_logits_o2o=box_o2o)
    cls_logits, box_logits = self.head(feats)
    return {"cls_logits": cls_logits, "box_logits": box_logits, **out}


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in VARIANTS or sys.argv[2] != "--":
        raise SystemExit(f"usage: yolo_o2o_variant.py {{{'|'.join(VARIANTS)}}} -- TRAIN FLAGS")
    if sys.argv[1] == "undetached":
        yolo.YOLO.forward = undetached_forward
    sys.exit(main(["train", *sys.argv[3:]]))
