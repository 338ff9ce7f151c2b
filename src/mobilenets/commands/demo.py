"""``mobilenets demo``: a small MobileNetV3 trained on Fashion-MNIST in a few minutes
(:func:`mobilenets.train.demo.run_demo`), then its predictions for a few test images."""
from __future__ import annotations

import argparse
from pathlib import Path

from .predict import predict_images, print_predictions


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a small MobileNetV3 on Fashion-MNIST in a few minutes")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from ..train.demo import run_demo

    report = run_demo(args.out, threads=args.threads, progress=not args.no_progress)
    print(f"\nrun folder {report['run']}:")
    for name, size in report["files"]:
        print(f"  {name}  ({size:,} bytes)")
    record = report["record"]
    print(f"\ntest accuracy (10,000 images): top-1 {record['val_top1']:.4f}, top-5 {record['val_top5']:.4f}")
    print("\npredictions for a few test images (true class in the file name):")
    print_predictions(predict_images(report["checkpoint"], report["samples"], top_k=3, threads=args.threads))
    print(f"\nnext: mobilenets eval {report['checkpoint']} --data fashion-mnist ; mobilenets predict "
          f"{report['checkpoint']} IMAGE.png")
    return 0
