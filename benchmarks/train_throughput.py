"""Training throughput (images/s) of our MobileNet against torchvision's same architecture, side by side in one
run and in the same loop (mobilenets.train.loop.train_one_epoch over the classification task's TrainingStep:
forward, label-smoothed cross-entropy, backward, SGD step, per-step NaN check), as the trainer runs it.

Variants are interleaved round by round, in a new random order each round, by the package's timing harness
(mobilenets.deploy.bench.harness.interleave: one burst of ``--steps`` steps per variant and round), so that load
from other processes on the machine hits them alike; the figure reported is the median over rounds. Synthetic
data (random tensors), so only the model and the loop count.

    .venv/bin/python benchmarks/train_throughput.py                       # V3-Small, 32 px, batch 128, 2 threads
    .venv/bin/python benchmarks/train_throughput.py --model mobilenet_v3_large --img-size 64 --compile
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchvision
from torch import nn

import mobilenets
from mobilenets.deploy.bench.harness import interleave
from mobilenets.tasks import get_task
from mobilenets.train.distributed import World
from mobilenets.train.loop import TrainingStep, train_one_epoch


def build(kind: str, name: str, num_classes: int) -> nn.Module:
    if kind == "ours":
        return mobilenets.create_model(name, num_classes=num_classes)
    return getattr(torchvision.models, name)(num_classes=num_classes)


class Constant:
    def __init__(self, x, y, steps):
        self.x, self.y, self.steps = x, y, steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = [(kind, cl, comp) for kind in ("torchvision", "ours") for cl in (False, True)
                for comp in ((False, True) if args.compile and cl else (False,))]
    world = World()
    task = get_task("classify")
    bursts = {}
    for kind, cl, comp in variants:
        model = build(kind, args.model, 10)
        fmt = torch.channels_last if cl else torch.contiguous_format
        model.to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
        step = TrainingStep(task, model, label_smoothing=0.1)
        net = torch.compile(step) if comp else step  # the trainer compiles the step, loss included
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        y = torch.randint(0, 10, (args.batch_size,))
        t = time.perf_counter()
        train_one_epoch(net, Constant(x, y, 2), opt, sched, epoch=0, world=world, channels_last=cl,
                        progress=False)  # warm-up (and compilation)
        name = f"{kind}{' channels_last' if cl else ''}{' compile' if comp else ''}"
        print(f"{name}: warm-up {time.perf_counter() - t:.1f} s", flush=True)

        def burst(n: int, net=net, opt=opt, sched=sched, x=x, y=y, cl=cl) -> list[float]:
            stats = train_one_epoch(net, Constant(x, y, n), opt, sched, epoch=0, world=world, channels_last=cl,
                                    progress=False)
            return [1e3 * stats["seconds"] / stats["steps"]] * stats["steps"]  # the loop times the whole burst
        bursts[name] = burst
    timings = interleave(bursts, args.rounds, min_runs=args.steps, max_runs=args.steps)
    for name, t in timings.items():
        print(f"{name}: " + ", ".join(f"{args.batch_size * 1e3 / ms:.0f}" for ms in t.rounds) + " img/s by round")
    med = {name: args.batch_size * 1e3 / statistics.median(t.rounds) for name, t in timings.items()}
    base = med["torchvision"]
    print(f"\n{args.model}, {args.img_size}x{args.img_size}, batch {args.batch_size}, {args.threads} threads, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}; median of {args.rounds} rounds "
          f"x {args.steps} steps")
    print(f"{'variant':<34} {'img/s':>7} {'vs torchvision':>15} {'vs torchvision channels_last':>29}")
    for name, v in med.items():
        print(f"{name:<34} {v:>7.0f} {v / base:>14.2f}x {v / med['torchvision channels_last']:>28.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "images_per_s": med}, f, indent=2)


if __name__ == "__main__":
    main()
