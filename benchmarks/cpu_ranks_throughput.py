"""Training throughput on a small CPU: one process with 2 threads against 2 DDP processes (torchrun, gloo) with
1 thread each, at the same global batch, in the real trainer on Fashion-MNIST.

Why: on 2 cores much of a MobileNet step is small ops (BatchNorm, ReLU6 and depthwise convs on 4x4-16x16 maps)
that split poorly across threads; two single-threaded ranks each run whole ops and pay one gradient all-reduce
per step instead. Which wins is a property of the machine, so it is measured here, not assumed.

Each variant is an ordinary ``mobilenets train`` run over the first ``--images`` training images for 2 epochs;
the figure is epoch 2's ``train_images_per_s`` from the run's metrics.jsonl (epoch 1 carries the warm-up).
Variants are interleaved round by round, in a new random order each round, by the package's timing harness
(mobilenets.deploy.bench.harness.interleave, one run per variant and round), so load from elsewhere hits them
alike; medians over rounds.

    .venv/bin/python benchmarks/cpu_ranks_throughput.py            # V1 width 0.75, 64 px, global batch 128
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from mobilenets.deploy.bench.harness import interleave


def train_command(args: argparse.Namespace, ranks: int, out: Path) -> list[str]:
    common = ["train", "--model", args.model, "--width", str(args.width), "--img-size", str(args.img_size),
              "--data", "fashion-mnist", "--epochs", "2", "--limit-train", str(args.images), "--limit-val", "512",
              "--recipe", "sgd", "--augment", "basic", "--no-progress", "--out", str(out),
              "--batch-size", str(args.batch_size // ranks), "--threads", str(args.cores // ranks)]
    if ranks == 1:
        return [sys.executable, "-m", "mobilenets", *common]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    return [*torchrun, "-m", "mobilenets", *common]


def run_once(args: argparse.Namespace, ranks: int) -> float:
    out = Path(tempfile.mkdtemp(prefix=f"ranks{ranks}_"))
    try:  # the trainer's --threads sets each rank's threads; its stderr passes through, so a failure says why
        subprocess.run(train_command(args, ranks, out), check=True, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return float(records[-1]["train_images_per_s"])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v1")
    p.add_argument("--width", type=float, default=0.75)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (split across the ranks)")
    p.add_argument("--images", type=int, default=7680, help="training images per epoch")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if args.cores < 2 or args.cores % 2 or args.batch_size % 2:
        p.error(f"--cores {args.cores} and --batch-size {args.batch_size} must be even (cores >= 2): the two ranks "
                "split both")
    names = {ranks: f"{ranks} process(es) x {args.cores // ranks} thread(s)" for ranks in (1, 2)}
    results: dict[int, list[float]] = {ranks: [] for ranks in names}

    def burst(ranks: int, n: int) -> list[float]:  # the harness times in ms: ms per training image
        rates = [run_once(args, ranks) for _ in range(n)]
        results[ranks] += rates
        print(f"{names[ranks]}: " + ", ".join(f"{r:.0f}" for r in rates) + " img/s", flush=True)
        return [1e3 / r for r in rates]

    interleave({ranks: partial(burst, ranks) for ranks in names}, args.rounds, min_runs=1, max_runs=1)
    med = {ranks: statistics.median(v) for ranks, v in results.items()}
    print(json.dumps({"model": args.model, "width": args.width, "img_size": args.img_size,
                      "global_batch": args.batch_size,
                      "images_per_s_median": {names[ranks]: round(v) for ranks, v in med.items()},
                      "ratio_ddp_over_single": round(med[2] / med[1], 3), "rounds": args.rounds}, indent=2))


if __name__ == "__main__":
    main()
