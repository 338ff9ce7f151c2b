"""YOLO (YOLOv8-style head, depthwise PAN) against SSDLite on the same backbone, input, data, seed and budget.

Both train side by side on the built-in Fashion-MNIST scenes (two ``mobilenets train`` processes, one thread each,
``--time-limit MINUTES``), then each ``best.safetensors`` (picked on ``--val-scenes`` validation scenes of
held-out training items, never the test scenes) is measured once with ``mobilenets eval --limit-val TEST --json``
on the first TEST scenes of eval's fixed test set (1,000 test scenes at seed 0), with its parameters and MACs at
the input size and its batch-1 latency, one thread, on ONNX Runtime and OpenVINO (the parity-checked export
:func:`mobilenets.deploy.open.open_runner` builds from the checkpoint) and eager PyTorch: the network alone, and
network + NMS (``postprocess_detections`` with the checkpoint's stored settings, what ``mobilenets predict``
runs). Latencies are medians over interleaved rounds of every (model, backend) pair in random order
(``mobilenets.deploy.bench.harness.interleave``).

    .venv/bin/python benchmarks/yolo_vs_ssdlite.py --minutes 52 --scenes 30000 --out runs/bench/yolo_vs_ssdlite
    .venv/bin/python benchmarks/yolo_vs_ssdlite.py --minutes 0.5 --scenes 200 --out /tmp/yvs   # smoke test

Writes ``OUT/results.json`` and ``OUT/<model>/run`` (a killed training continues with ``mobilenets train --resume
OUT/<model>/run``; then ``--skip-train`` measures) and prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mobilenets
from mobilenets.checkpoint import load_checkpoint
from mobilenets.data.dense import model_inputs
from mobilenets.data.scenes import FashionScenes, SceneConfig
from mobilenets.deploy.bench.harness import interleave, timed
from mobilenets.deploy.open import open_runner
from mobilenets.heads.detection import postprocess_detections
from mobilenets.tasks.detect import NMS_SETTINGS

BACKENDS = ("onnxruntime", "openvino", "torch")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mobilenets", *args]


def train_commands(args) -> dict[str, list[str]]:
    return {m: ["train", "--task", "detect", "--data", "scenes", "--model", m, "--backbone", args.backbone,
                "--scenes", str(args.scenes), "--scene-size", str(args.scene_size), "--limit-val",
                str(args.val_scenes), "--epochs", "100", "--time-limit", str(args.minutes), "--batch-size",
                str(args.batch_size), "--seed", str(args.seed), "--threads", "1", "--workers", "0",
                "--out", str(args.out / m / "run"), "--no-progress"]
            for m in args.models}


def train_side_by_side(commands: dict[str, list[str]], out: Path) -> None:
    """One process per model, started together, one thread each; logs in OUT/<model>/train.log."""
    env = {**os.environ, **ONE_THREAD}
    procs = {}
    for m, cmd in commands.items():
        (out / m).mkdir(parents=True, exist_ok=True)
        log = open(out / m / "train.log", "w")
        procs[m] = (subprocess.Popen(cli(*cmd), stdout=log, stderr=subprocess.STDOUT, env=env), log)
    failed = []
    for m, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(m)
        log.close()
    if failed:
        raise SystemExit(f"training failed for {', '.join(failed)}; see {out}/<model>/train.log")


def evaluate(ckpt: Path, test_scenes: int) -> dict:
    """``mobilenets eval --limit-val N --json``: the first N scenes of eval's fixed test set (one thread)."""
    done = subprocess.run(cli("eval", str(ckpt), "--limit-val", str(test_scenes), "--json", "--threads", "1",
                              "--no-progress"), capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        raise SystemExit(f"mobilenets eval {ckpt} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def latencies(ckpts: dict[str, Path], rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    """Batch-1 median ms per model and backend: ``network`` (the exported graph: boxes + scores) and ``with_nms``
    (+ class-wise NMS with the stored settings, what ``mobilenets predict`` runs)."""
    torch.set_num_threads(1)
    paths, unavailable = {}, {}
    for m, ckpt in ckpts.items():
        model, meta = load_checkpoint(ckpt, task="detect")
        size = meta.preprocessing.input_size[-1]
        scene = FashionScenes("test", 1, SceneConfig(image_size=size), seed=meta.extra["data"]["seed"]).render(0)[0]
        x = model_inputs([scene], size).numpy()
        settings = {k: getattr(model, k) for k in NMS_SETTINGS}
        for backend in BACKENDS:
            try:
                runner = open_runner(ckpt, backend, threads=1)
            except Exception as e:  # an optional runtime missing: report it, time the rest
                unavailable[(m, backend)] = str(e).splitlines()[0]
                continue

            def network(runner=runner, x=x):
                return runner.outputs(x)

            def with_nms(runner=runner, x=x, size=size, settings=settings):
                boxes, scores = runner.outputs(x)
                return postprocess_detections(torch.from_numpy(np.asarray(boxes[0])),
                                              torch.from_numpy(np.asarray(scores[0])), (size, size), **settings)

            for _ in range(5):  # warm-up
                with_nms()
            paths[(m, backend, "network")] = timed(network)
            paths[(m, backend, "with_nms")] = timed(with_nms)
    timings = interleave(paths, rounds, gap_s=0.02)
    out: dict = {m: {} for m in ckpts}
    for (m, backend, what), t in timings.items():
        out[m].setdefault(backend, {})[what] = round(t.median, 3)
    for (m, backend), why in unavailable.items():
        out[m][backend] = {"unavailable": why}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="ssdlite,yolo", help="detectors to compare (comma-separated)")
    p.add_argument("--backbone", default="mobilenet_v3_small")
    p.add_argument("--minutes", type=float, default=52.0, help="training budget of each model (evaluations included)")
    p.add_argument("--scenes", type=int, default=30000, help="training scenes")
    p.add_argument("--scene-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-scenes", type=int, default=300,
                   help="validation scenes (held-out training items) evaluated after each epoch (picks best)")
    p.add_argument("--test-scenes", type=int, default=1000, help="test scenes of the final measurement")
    p.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip-train", action="store_true", help="only measure OUT/<model>/run")
    args = p.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]

    commands = train_commands(args)
    start = time.perf_counter()
    if not args.skip_train:
        train_side_by_side(commands, args.out)
    train_minutes = (time.perf_counter() - start) / 60

    ckpts = {m: args.out / m / "run" / "best.safetensors" for m in args.models}
    rows = {}
    for m, ckpt in ckpts.items():
        report = evaluate(ckpt, args.test_scenes)
        model, meta = load_checkpoint(ckpt, task="detect")
        size = meta.preprocessing.input_size[-1]
        prof = mobilenets.profile(model, (3, size, size))
        records = [json.loads(line) for line in (ckpt.parent / "metrics.jsonl").read_text().splitlines()]
        rows[m] = {"command": "mobilenets " + " ".join(commands[m]), "model": meta.model, "options": meta.options,
                   "input_size": size, "map": report["map"], "map50": report["map50"],
                   "test_scenes": report["images"], "objects": report["objects"],
                   "chosen_on": meta.extra["data"].get("val_split", "test"),  # holdout: held-out training items
                   "per_class_ap": report["per_class_ap"], "params": prof.params, "macs": prof.macs,
                   "nms": {k: getattr(model, k) for k in NMS_SETTINGS},
                   "epochs": records[-1]["epoch"], "steps": records[-1]["step"],
                   "train_img_s": round(sum(r["train_img_s"] for r in records) / len(records), 1),
                   "val_history": [(r["epoch"], round(r["map"], 4)) for r in records]}
    for m, lat in latencies(ckpts, args.rounds).items():
        rows[m]["latency_ms_batch1_1thread"] = lat
    result = {"benchmark": " ".join([".venv/bin/python", "benchmarks/yolo_vs_ssdlite.py", *sys.argv[1:]]),
              "train_minutes_wall": round(train_minutes, 1), "models": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))

    def ms(row, backend):
        lat = row["latency_ms_batch1_1thread"].get(backend, {})
        return f"{lat['network']:.1f} / {lat['with_nms']:.1f}" if "network" in lat else "n/a"

    print("\n| model | input | training | mAP@[.5:.95] | mAP@.5 | params | MACs | ONNX Runtime | OpenVINO | "
          "PyTorch |\n|---|---|---|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} ({args.backbone}) | {r['input_size']} | {args.minutes:g} min, {r['epochs']} epochs, "
              f"{r['steps']:,} steps of {args.batch_size} | {r['map']:.3f} | {r['map50']:.3f} | "
              f"{r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} M | {ms(r, 'onnxruntime')} | "
              f"{ms(r, 'openvino')} | {ms(r, 'torch')} |")
    print("latency: batch 1, one thread, median ms, network / network + NMS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
