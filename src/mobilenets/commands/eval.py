"""``mobilenets eval``: a checkpoint's accuracy, COCO mAP or mIoU on its data (the task's evaluation), printed as
lines or JSON. The task is the checkpoint's; ``--task`` only checks it."""
from __future__ import annotations

import argparse
import json

import torch

from ..checkpoint import load_checkpoint
from ..data.loaders import DataConfig
from ..errors import UserError
from ..tasks import get_task
from .common import add_task_and_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint: accuracy, COCO mAP or mIoU")
    p.add_argument("checkpoint")
    add_task_and_threads(p)
    p.add_argument("--data", default=None, help="default: the data set the checkpoint was trained on")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", "--workers", type=int, default=0, help="DataLoader processes")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images")
    p.add_argument("--limit-val", type=int, default=None,
                   help="evaluate only the first N images (scenes: the test set is the first 1000 test scenes at "
                        "seed 0; N picks the first N instead)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="classify: the held-out share of an image folder (default: the checkpoint's)")
    p.add_argument("--scene-size", type=int, default=None, help="scenes: canvas size (default: the checkpoint's)")
    p.add_argument("--annotations", default=None, help="detect: COCO instances JSON of --data")
    p.add_argument("--tta", choices=("none", "flip"), default="none",
                   help="classify: flip averages the class probabilities of each image and its mirror image "
                        "(reported as such; default none, the single-view figure)")
    p.add_argument("--nms", action="store_true",
                   help="detect, end-to-end YOLO: read the one-to-many head with NMS instead of the one-to-one head "
                        "(both are trained; compares the two on one checkpoint)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=eval_command)


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    """The report of ``mobilenets eval``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(args.checkpoint, task=args.task)
    task = get_task(meta.task)
    trained = meta.extra.get("data", {}) if isinstance(meta.extra, dict) else {}
    data = args.data or trained.get("data")
    if data is None:
        raise UserError(f"{args.checkpoint} does not record its data set; pass --data fashion-mnist or --data DIR")
    defaults = task.eval_defaults(trained)
    if args.val_fraction is not None:
        defaults["val_fraction"] = args.val_fraction
    cfg = DataConfig(data=data, batch_size=args.batch_size, num_workers=args.num_workers, skip_bad=args.skip_bad,
                     limit_val=args.limit_val, scene_size=args.scene_size, annotations=args.annotations, **defaults)
    val = task.open_eval_data(meta, cfg)
    if args.nms:
        if not getattr(model, "end_to_end", False):
            raise UserError(f"--nms reads the one-to-many head of an end-to-end YOLO; {args.checkpoint} "
                            f"({meta.model}) has no other head and already uses NMS where it has one: drop --nms")
        setattr(model, "one_to_one", False)  # noqa: B010  (an attribute of the YOLO head, not of nn.Module)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # (torch's overloads omit this pair)
    if args.tta == "flip":
        flipped = task.flip_averaged(model)
        if flipped is None:
            raise UserError(f"--tta flip: {args.checkpoint} is a {task.name} checkpoint, which has no test-time "
                            "augmentation; drop --tta")
        model = flipped
    metrics = task.evaluate(model, val, preprocessing=meta.preprocessing, class_names=meta.class_names,
                            device=device, channels_last=True, progress=not (args.no_progress or args.json))
    return {"checkpoint": str(args.checkpoint), "data": data, "task": task.name, "tta": args.tta,
            **({"head": "one-to-many + NMS" if args.nms else "one-to-one (no NMS)"}
               if getattr(model, "end_to_end", False) else {}),
            **task.report(metrics, meta.class_names)}


def eval_command(args: argparse.Namespace) -> int:
    report = evaluate_checkpoint(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    counted, *lines = get_task(report["task"]).report_lines(report)
    print(f"{report['checkpoint']} on {report['data']}: {counted}"
          + (" (flip test-time augmentation)" if report["tta"] == "flip" else "")
          + (f" (head: {report['head']})" if "head" in report else ""))
    for line in lines:
        print(line)
    return 0
