"""One-to-one head variants for the end-to-end YOLO, trained by the real `mobilenets train` with one flag apart
(issue 30: the end-to-end head trails the one-to-many head by 8 points, and
``yolo_e2e_gap.py`` puts the gap in its class scores). Run a variant and the baseline side by side, one thread and
one core each, same flags and budget, then score both with ``yolo_e2e_gap.py`` on held-out scenes.

    taskset -c 0 .venv/bin/python benchmarks/yolo_o2o_variant.py baseline -- --out runs/o2o/base ... &
    taskset -c 1 .venv/bin/python benchmarks/yolo_o2o_variant.py undetached -- --out runs/o2o/undet ...

Variants:
- ``baseline``: the library as it is (YOLOv10/Ultralytics: the one-to-one head on detached neck maps).
- ``undetached``: ``--no-detach-one-to-one``, the one-to-one head on the neck maps themselves, so its top-1 targets
  also train the neck and the backbone (YOLOv10's paper trains both heads jointly, but Ultralytics' code detaches).
  The 2026-12-06 pair in BENCHMARKS.md ran this variant as a patch of ``YOLO.forward`` that computed the same.
- ``anneal``: ``--one-to-one-topk 10``, the one-to-one assigner's top-k starting at the one-to-many head's 10 and
  falling linearly (rounded, per step, on the run's clock) to YOLOv10's 1 at half the run, then 1: dense class
  signal while the head is young, one positive per object for the second half. The 2026-12-07 pair in BENCHMARKS.md
  ran it as a patch of this script that computed the same, before the option existed.

The checkpoints are ordinary ones: at inference the variants compute the same graph.
"""
from __future__ import annotations

import sys

from mobilenets.cli import main

# each variant's extra train flags (the patches this script applied before the options existed are now the options)
VARIANTS = {"baseline": [], "undetached": ["--no-detach-one-to-one"], "anneal": ["--one-to-one-topk", "10"]}


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in VARIANTS or sys.argv[2] != "--":
        raise SystemExit(f"usage: yolo_o2o_variant.py {{{'|'.join(VARIANTS)}}} -- TRAIN FLAGS")
    sys.exit(main(["train", *sys.argv[3:], *VARIANTS[sys.argv[1]]]))
