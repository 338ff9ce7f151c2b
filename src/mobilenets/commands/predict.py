"""``mobilenets predict``: classes, boxes or masks of image files from a checkpoint or an exported file, on any
runner of :mod:`mobilenets.deploy` (``--backend``); detections and masks are drawn into ``--out``."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ..checkpoint import check_task
from ..deploy.formats import BACKENDS
from ..errors import UserError
from ..tasks import get_task
from ..tasks.base import save_png
from .common import add_task_and_threads

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classes, boxes or masks of image files")
    p.add_argument("checkpoint", help="a checkpoint or a file written by 'mobilenets export'")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_task_and_threads(p)
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--top-k", type=int, default=3, help="classify: classes shown per image (default 3)")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="detect: list and draw detections scoring at least this (default 0.3)")
    p.add_argument("--out", type=Path, default=None,
                   help="detect/segment: folder for the drawn predictions (PNG), default predictions/")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(handler=predict_command)


def predict_images(checkpoint: str | Path, images: list[str], *, backend: str = "torch", threads: int | None = None,
                   task: str | None = None, top_k: int = 3, score_thresh: float = 0.3,
                   out: Path | None = None) -> list[dict]:
    """The results of ``mobilenets predict``, drawn into ``out`` (default predictions/) where the task draws."""
    from ..deploy.open import open_runner

    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    runner = open_runner(checkpoint, backend=backend, threads=threads)
    meta = runner.meta
    if meta is None:
        raise UserError(f"{checkpoint} holds no mobilenets metadata; pass a checkpoint or a file written by "
                        "'mobilenets export'")
    check_task(checkpoint, meta, task)
    handler = get_task(meta.task)
    log.info("running %s on %s", checkpoint, runner.backend)
    out = out or Path("predictions")
    results = []
    for path in images:
        image, x = handler.load(path, meta)
        outputs = [torch.from_numpy(o) for o in runner.outputs(x.numpy())]
        result = handler.postprocess(outputs, meta, runner.properties, (image.shape[-2], image.shape[-1]), top_k=top_k,
                                     score_thresh=score_thresh)
        drawn = handler.draw(image, result, meta)
        entry = {"image": str(path), **{k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}}
        if drawn is not None:
            out.mkdir(parents=True, exist_ok=True)
            target = out / (Path(path).stem + ".png")
            save_png(drawn, target)
            entry["drawn"] = str(target)
        results.append(entry)
        entry["line"] = handler.result_line(result)
    return results


def print_predictions(results: list[dict], as_json: bool = False) -> None:
    """One line per image (``IMAGE: result -> drawn.png``), or the results as JSON."""
    if as_json:
        print(json.dumps([{k: v for k, v in r.items() if k != "line"} for r in results], indent=2))
        return
    for r in results:
        print(f"{r['image']}: {r['line']}" + (f" -> {r['drawn']}" if "drawn" in r else ""))


def predict_command(args: argparse.Namespace) -> int:
    results = predict_images(args.checkpoint, args.images, backend=args.backend, threads=args.threads,
                             task=args.task, top_k=args.top_k, score_thresh=args.score_thresh, out=args.out)
    print_predictions(results, as_json=args.json)
    return 0
