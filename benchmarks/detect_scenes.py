"""Detection benchmark on the built-in Fashion-MNIST scenes: train SSDLite under a time budget with the CLI, then
record COCO mAP@[.5:.95] / mAP@.5 on the 1,000 test scenes, parameters, MACs and CPU latency.

    .venv/bin/python benchmarks/detect_scenes.py --backbone mobilenet_v3_large --minutes 30 --out runs/bench/detect

Writes ``OUT/results.json`` (and the run folder of ``mobilenets train`` under ``OUT/run``) and prints a Markdown
row for BENCHMARKS.md. ``--skip-train`` re-measures an existing run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import mobilenets
from mobilenets.checkpoint import load_checkpoint
from mobilenets.cli import main as cli
from mobilenets.data.scenes import FashionScenes, SceneConfig
from mobilenets.train.detect import _resize_batch, evaluate_detector


def latency_ms(fn, x: torch.Tensor, threads: int, rounds: int = 30) -> float:
    torch.set_num_threads(threads)
    with torch.no_grad():
        for _ in range(5):
            fn(x)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ssdlite")
    p.add_argument("--backbone", default="mobilenet_v3_large")
    p.add_argument("--width", type=float, default=None)
    p.add_argument("--minutes", type=float, default=30.0, help="training time budget (evaluations included)")
    p.add_argument("--scenes", type=int, default=20000, help="training scenes")
    p.add_argument("--scene-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=1, help="training threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--workers", type=int, default=2, help="scene-rendering processes")
    p.add_argument("--val-scenes", type=int, default=300, help="scenes evaluated after each epoch")
    p.add_argument("--out", type=Path, default=Path("runs/bench/detect_scenes"))
    p.add_argument("--init", default=None, help="checkpoint to start from (continue an earlier time-boxed run)")
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()

    run = args.out / "run"
    train_cmd = ["train", "--task", "detect", "--data", "scenes", "--model", args.model, "--backbone", args.backbone,
                 "--scenes", str(args.scenes), "--scene-size", str(args.scene_size), "--limit-val",
                 str(args.val_scenes), "--epochs", "100", "--time-limit", str(args.minutes), "--batch-size",
                 str(args.batch_size), "--threads", str(args.threads), "--workers", str(args.workers),
                 "--out", str(run), "--no-progress"]
    if args.width is not None:
        train_cmd += ["--width", str(args.width)]
    if args.lr is not None:
        train_cmd += ["--lr", str(args.lr)]
    if args.init is not None:
        train_cmd += ["--weights", args.init, "--warmup-epochs", "0.05"]
    start = time.perf_counter()
    if not args.skip_train:
        if cli(train_cmd) != 0:
            return 1
    train_minutes = (time.perf_counter() - start) / 60

    torch.set_num_threads(args.threads)
    model, meta = load_checkpoint(run / "best.safetensors")
    size = meta.preprocessing.input_size[-1]
    test = FashionScenes("test", 1000, SceneConfig(image_size=args.scene_size), seed=meta.extra["data"]["seed"])
    metrics = evaluate_detector(model, test, size)
    prof = mobilenets.profile(model, input_size=(3, size, size))
    prof320 = mobilenets.profile(model, input_size=(3, 320, 320))
    x = _resize_batch([test.render(0)[0]], size)
    latency = latency_ms(model.predict, x, 1)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = {
        "command": "mobilenets " + " ".join(train_cmd),
        "benchmark": " ".join([".venv/bin/python", "benchmarks/detect_scenes.py", *sys.argv[1:]]),
        "model": meta.model, "options": meta.options, "input_size": size,
        "map": metrics["map"], "map50": metrics["map50"], "test_scenes": metrics["images"],
        "test_objects": metrics["objects"],
        "per_class_ap": dict(zip(meta.class_names[1:], metrics["per_class_ap"])),
        "params": prof.params, "macs": prof.macs, "macs_320": prof320.macs,
        # batch 1, one thread: on this shared 2-core machine two threads are oversubscribed and much slower
        "latency_ms_1_thread": latency,
        "epochs": records[-1]["epoch"], "steps": records[-1]["step"], "train_minutes": train_minutes,
        "train_img_s": statistics.mean(r["train_img_s"] for r in records),
        "val_history": [(r["epoch"], round(r["map"], 4), round(r["map50"], 4)) for r in records],
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"| {meta.model} ({args.backbone}) | {size} | {metrics['map']:.3f} | {metrics['map50']:.3f} | "
          f"{prof.params / 1e6:.2f} | {prof.macs / 1e6:.0f} | {latency:.1f} | "
          f"{result['steps']} steps, {train_minutes:.0f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
