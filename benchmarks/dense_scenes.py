"""Detection / segmentation benchmark on the built-in Fashion-MNIST scenes: train a task model under a time budget
with the CLI, then measure it once on the 1,000 test scenes (COCO mAP@[.5:.95] / mAP@.5, or mIoU / pixel accuracy),
with its parameters, MACs and CPU latency (batch 1, one thread, forward + post-processing; median of 30 runs
through the package's timing harness, mobilenets.deploy.bench.harness). Training is ``mobilenets train``, which
keeps ``best.safetensors`` by ``--val-scenes`` validation scenes of held-out training items (never the test
scenes); the test figures are the task's own evaluation on the test set ``mobilenets eval`` reports (the first
``--test-scenes`` test scenes at seed 0, ``get_task(...).open_eval_data`` and ``evaluate``).

    .venv/bin/python benchmarks/dense_scenes.py --task detect --backbone mobilenet_v3_small --minutes 60 \\
        --scenes 30000 --out runs/bench/detect_v3s
    .venv/bin/python benchmarks/dense_scenes.py --task segment --backbone mobilenet_v3_small --minutes 60 \\
        --scenes 30000 --out runs/bench/segment_v3s

Writes ``OUT/results.json`` (and the run folder of ``mobilenets train`` under ``OUT/run``; a killed benchmark
continues with ``mobilenets train --resume OUT/run`` and then ``--skip-train``) and prints a Markdown row for
BENCHMARKS.md.
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
from mobilenets.data.dense import model_inputs
from mobilenets.data.loaders import DataConfig
from mobilenets.deploy.bench.harness import interleave, timed
from mobilenets.tasks import get_task

REFERENCE_SIZE = {"detect": 320, "segment": 512}  # the torchvision reference models' input size


def latency_ms(fn, x: torch.Tensor, runs: int = 30, warmup: int = 5) -> float:
    """Median ms of ``fn(x)`` over ``runs`` runs (6 rounds of 5 through the harness)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        rounds = max(1, runs // 5)
        return interleave({0: timed(lambda: fn(x))}, rounds, min_runs=5, max_runs=5)[0].median


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=tuple(REFERENCE_SIZE), required=True)
    p.add_argument("--model", default=None, help="task model (default: ssdlite / lraspp)")
    p.add_argument("--backbone", default="mobilenet_v3_small")
    p.add_argument("--width", type=float, default=None)
    p.add_argument("--minutes", type=float, default=60.0, help="training time budget (evaluations included)")
    p.add_argument("--scenes", type=int, default=30000, help="training scenes")
    p.add_argument("--scene-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=1, help="training threads")
    p.add_argument("--workers", type=int, default=0,
                   help="scene-rendering processes (0: render in the trainer once and keep the scenes in memory)")
    p.add_argument("--val-scenes", type=int, default=300,
                   help="validation scenes (held-out training items) evaluated after each epoch; pick best")
    p.add_argument("--test-scenes", type=int, default=1000, help="test scenes of the final measurement")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip-train", action="store_true", help="only measure OUT/run")
    args = p.parse_args()
    task, reference_size = get_task(args.task), REFERENCE_SIZE[args.task]

    run = args.out / "run"
    train_cmd = ["train", "--task", args.task, "--data", "scenes", "--model", args.model or task.generic_model,
                 "--backbone", args.backbone, "--scenes", str(args.scenes), "--scene-size", str(args.scene_size),
                 "--limit-val", str(args.val_scenes), "--epochs", "100", "--time-limit", str(args.minutes),
                 "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--workers",
                 str(args.workers), "--out", str(run), "--no-progress"]
    if args.width is not None:
        train_cmd += ["--width", str(args.width)]
    if args.lr is not None:
        train_cmd += ["--lr", str(args.lr)]
    start = time.perf_counter()
    if not args.skip_train and cli(train_cmd) != 0:
        return 1
    train_minutes = (time.perf_counter() - start) / 60

    torch.set_num_threads(1)
    model, meta = load_checkpoint(run / "best.safetensors", task=args.task)
    size = meta.preprocessing.input_size[-1]
    test = task.open_eval_data(meta, DataConfig("scenes", limit_val=args.test_scenes))  # as `mobilenets eval`
    metrics = task.evaluate(model, test, preprocessing=meta.preprocessing, class_names=meta.class_names,
                            device=torch.device("cpu"))
    report = task.report(metrics, meta.class_names)  # per-class figures named: per_class_ap / per_class_iou
    prof = mobilenets.profile(model, input_size=(3, size, size))
    prof_ref = mobilenets.profile(model, input_size=(3, reference_size, reference_size))
    x = model_inputs([test.render(0)[0]], size)
    latency = latency_ms(model.predict if args.task == "detect" else (lambda t: model(t).argmax(1)), x)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    headline = ("map", "map50") if args.task == "detect" else ("miou", "pixel_acc")
    per_class = "per_class_ap" if args.task == "detect" else "per_class_iou"
    result = {
        "command": "mobilenets " + " ".join(train_cmd),
        "benchmark": " ".join([".venv/bin/python", "benchmarks/dense_scenes.py", *sys.argv[1:]]),
        "model": meta.model, "options": meta.options, "input_size": size,
        **{k: metrics[k] for k in headline}, "test_scenes": metrics["images"],
        "chosen_on": meta.extra["data"].get("val_split", "test"),  # holdout: validation scenes of held-out items
        per_class: report[per_class],
        "params": prof.params, "macs": prof.macs, f"macs_{reference_size}": prof_ref.macs,
        "latency_ms_1_thread": latency,
        "epochs": records[-1]["epoch"], "steps": records[-1]["step"], "train_minutes": train_minutes,
        "train_img_s": statistics.mean(r["train_img_s"] for r in records),
        "val_history": [(r["epoch"], *(round(r[k], 4) for k in headline)) for r in records],
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"| {args.task} | {meta.model} ({args.backbone}) | {size} | {metrics[headline[0]]:.3f} | "
          f"{metrics[headline[1]]:.3f} | {prof.params / 1e6:.2f} M | {prof.macs / 1e6:.1f} M | {latency:.1f} ms | "
          f"{result['epochs']} epochs, {result['steps']} steps, {train_minutes:.0f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
