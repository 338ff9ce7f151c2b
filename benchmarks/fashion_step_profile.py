"""Where a Fashion-MNIST training step's time goes on this machine: the per-batch augmentation against the SGD step
of the model, the batch size, and fp32 against bf16 autocast.

- augmentation: ``TensorAugment`` as the trainer uses it (``basic`` and ``strong``), and the loop of per-image v2
  calls that ``random_crop_flip`` replaced (crop + flip per image, then the same ``preprocess``);
- model step: forward and cross-entropy (the classification task's ``TrainingStep``, as the trainer runs it),
  backward, SGD (Nesterov) step, channels_last, synthetic data;
- bf16: the same step under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Variants are interleaved round by round, in a new random order each round, by the package's timing harness
(mobilenets.deploy.bench.harness.interleave, bursts of about ``--burst-ms``), so load from elsewhere hits them
alike; figures are medians over every run.

    .venv/bin/python benchmarks/fashion_step_profile.py          # V1 width 0.75, 64 px, 2 threads, 3 rounds
"""
from __future__ import annotations

import argparse
import json

import torch
from torchvision.transforms import v2

import mobilenets
from mobilenets.data.loaders import default_preprocessing
from mobilenets.data.transforms import TensorAugment, preprocess
from mobilenets.deploy.bench.harness import interleave, timed
from mobilenets.tasks import get_task
from mobilenets.train.loop import TrainingStep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v1")
    p.add_argument("--width", type=float, default=0.75)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", default="64,96,128")
    p.add_argument("--burst-ms", type=float, default=500.0, help="work per path and round")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    pre = default_preprocessing("fashion-mnist", args.img_size, 1)
    raw = torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8)
    per_image = v2.Compose([v2.RandomCrop([28, 28], padding=2), v2.RandomHorizontalFlip()])
    augments = {"basic": TensorAugment(pre, "basic", (28, 28)), "strong": TensorAugment(pre, "strong", (28, 28)),
                "basic, per-image v2 loop (before)": lambda b: preprocess(torch.stack([per_image(i) for i in b]), pre)}

    model = mobilenets.create_model(args.model, num_classes=10, in_chans=1, width_multiplier=args.width)
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    train_step = TrainingStep(get_task("classify"), model).train()
    x = augments["basic"](raw).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step(bs: int, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = train_step(x[:bs], y[:bs])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    paths = {("augment", name): (lambda fn=fn: fn(raw)) for name, fn in augments.items()}
    for bs in sizes:
        for bf16 in (False, True) if bs == 128 else (False,):
            paths[("step", f"batch {bs}{' bf16' if bf16 else ''}")] = lambda bs=bs, bf16=bf16: step(bs, bf16)
    for fn in paths.values():  # warm-up
        for _ in range(3):
            fn()
    timings = interleave({key: timed(fn) for key, fn in paths.items()}, args.rounds, burst_ms=args.burst_ms)
    result = {"model": f"{args.model} width {args.width:g}, {args.img_size} px", "threads": args.threads,
              "augment_ms_per_batch_128": {name: round(t.median, 2) for (kind, name), t in timings.items()
                                           if kind == "augment"},
              "model_step_images_per_s": {name: round(int(name.split()[1]) * 1e3 / t.median)
                                          for (kind, name), t in timings.items() if kind == "step"}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
