"""Before/after of the task layer (issue #18): the same training runs with the code of commit 5fac75e (two
trainers) and with this checkout (one trainer), side by side on the same machine at the same time.

1. Dense tasks: for each of detect and segment, the old and the new code train the same model on the built-in
   Fashion-MNIST scenes for ``--minutes`` each, at the same time, one thread each (so the two share the machine
   alike), then each code's own ``mobilenets eval`` measures its best checkpoint on the same 1,000 test scenes.
2. Classification speed: ``mobilenets train`` of one configuration, old and new alternately (``--rounds`` each,
   interleaved, one thread), comparing the training images/s each run records; the median of the per-round
   new/old ratios is the figure.

    .venv/bin/python benchmarks/task_layer_before_after.py --minutes 15 --out runs/bench/before_after

The old code runs from a git worktree of 5fac75e (``--old-src``; made with ``git worktree add`` when missing) with
this venv's Python, ``PYTHONPATH`` pointing at its ``src``. Writes ``OUT/results.json`` and prints Markdown rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "5fac75e"


def code_env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}


def mobilenets(src: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mobilenets", *args], env=code_env(src),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{out[-3000:]}")
    return out


def dense(task: str, srcs: dict[str, Path], out: Path, a) -> dict:
    train = ["train", "--task", task, "--data", "scenes", "--model", "mobilenet_v3_small", "--scenes",
             str(a.scenes), "--scene-size", "128", "--limit-val", "300", "--epochs", "100", "--time-limit",
             str(a.minutes), "--batch-size", str(a.batch_size), "--threads", "1", "--no-progress", "--seed", "0"]
    # the old code validated on the test scenes and trained on every item; --val-split test keeps the new code on
    # that same data (its default now holds validation items out of the training scenes)
    same_data = {"old": [], "new": ["--val-split", "test"]}
    procs = {name: mobilenets(src, [*train, *same_data[name], "--out", str(out / f"{task}_{name}")])
             for name, src in srcs.items()}
    logs = {name: finish(p, f"{name} {task} training") for name, p in procs.items()}
    result = {"command": "mobilenets " + " ".join(train) + " --out OUT"}
    for name, src in srcs.items():
        run = out / f"{task}_{name}"
        report = json.loads(finish(mobilenets(src, ["eval", str(run / "best.safetensors"), "--limit-val", "1000",
                                                    "--json", "--no-progress", "--threads", "2"]), f"{name} eval"))
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        key = "map" if task == "detect" else "miou"
        result[name] = {key: report[key], **({"map50": report["map50"]} if task == "detect" else
                                             {"pixel_acc": report["pixel_acc"]}),
                        "epochs": history[-1]["epoch"], "steps": history[-1]["step"],
                        "train_img_s": statistics.mean(r["train_img_s"] for r in history),
                        "log_tail": logs[name].strip().splitlines()[-2:]}
    return result


def classify_speed(srcs: dict[str, Path], out: Path, a) -> dict:
    train = ["train", "--data", "fashion-mnist", "--model", "mobilenet_v3_small", "--limit-train",
             str(a.classify_images), "--limit-val", "256", "--epochs", "1", "--threads", "1", "--no-progress",
             "--augment", "basic", "--bn-recalibrate", "0"]
    rates: dict[str, list[float]] = {name: [] for name in srcs}
    for r in range(a.rounds):
        order = list(srcs) if r % 2 == 0 else list(srcs)[::-1]  # alternate who goes first
        for name in order:
            run = out / f"classify_{name}_{r}"
            finish(mobilenets(srcs[name], [*train, "--out", str(run)]), f"{name} classify round {r}")
            rates[name].append(json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_images_per_s"])
    ratios = [n / o for n, o in zip(rates["new"], rates["old"])]
    return {"command": "mobilenets " + " ".join(train) + " --out OUT", "img_s": rates,
            "ratio_new_over_old_median": statistics.median(ratios), "ratios": ratios}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="training budget of each dense run")
    p.add_argument("--scenes", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tasks", default="detect,segment")
    p.add_argument("--rounds", type=int, default=5, help="classification rounds per code version")
    p.add_argument("--classify-images", type=int, default=6400)
    p.add_argument("--old-src", type=Path, default=Path(f"/tmp/mobilenets_{OLD_COMMIT}/src"))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if not a.old_src.is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", str(a.old_src.parent), OLD_COMMIT], check=True)
    srcs = {"old": a.old_src, "new": ROOT / "src"}
    a.out.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": _cpu(), "old": OLD_COMMIT}
    for task in [t for t in a.tasks.split(",") if t]:
        results[task] = dense(task, srcs, a.out, a)
        (a.out / "results.json").write_text(json.dumps(results, indent=2))
    if a.rounds:
        results["classify_speed"] = classify_speed(srcs, a.out, a)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    for task in ("detect", "segment"):
        if task in results:
            key = "map" if task == "detect" else "miou"
            o, n = results[task]["old"], results[task]["new"]
            print(f"| {task} | {o[key]:.4f} ({o['epochs']} ep, {o['steps']} steps) | {n[key]:.4f} ({n['epochs']} ep, "
                  f"{n['steps']} steps) | {n[key] - o[key]:+.4f} |")
    if "classify_speed" in results:
        print(f"| classify img/s new/old | median {results['classify_speed']['ratio_new_over_old_median']:.3f} |")
    return 0


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
