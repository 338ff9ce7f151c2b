"""Training speed of `mobilenets train --precision fp32|bf16` on this CPU, each run twice, alternating, in one
process after another (the BENCHMARKS.md "--precision on this CPU" table).

    .venv/bin/python benchmarks/precision_speed.py [--precisions fp32,bf16] [--rounds 2] [--images 8000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(precision: str, images: int, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "mobilenets", "train", "--data", "fashion-mnist", "--limit-train",
                    str(images), "--limit-val", "500", "--epochs", "1", "--batch-size", "128", "--threads", "2",
                    "--no-progress", "--bn-recalibrate", "0", "--precision", precision, "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--images", type=int, default=8000)
    args = p.parse_args()
    seconds: dict[str, list[float]] = {}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for precision in args.precisions.split(","):
                record = run(precision, args.images, Path(tmp) / f"{precision}_{r}")
                seconds.setdefault(precision, []).append(record["train_seconds"])
                losses[precision] = record["train_loss"]
    base = statistics.median(seconds["fp32"]) if "fp32" in seconds else None
    print("| precision | " + " | ".join(f"run {i + 1}" for i in range(args.rounds)) + " | median / fp32 | train loss |")
    print("|---" * (args.rounds + 3) + "|")
    for precision, values in seconds.items():
        ratio = f"{statistics.median(values) / base:.2f}" if base else "-"
        runs = " | ".join(f"{v:.2f} s" for v in values)
        print(f"| {precision} | {runs} | {ratio} | {losses[precision]:.4f} |")


if __name__ == "__main__":
    main()
