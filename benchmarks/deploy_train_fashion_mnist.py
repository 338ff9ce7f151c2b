"""Train a small Fashion-MNIST classifier to measure what int8 quantization costs in accuracy.

    .venv/bin/python benchmarks/deploy_train_fashion_mnist.py mobilenet_v2 --epochs 1 --train-limit 24000 \\
        --size 32 --out ckpt.safetensors

Three library calls, each printed as the command line that repeats it:

1. ``mobilenets train`` (the library's one trainer, :func:`mobilenets.train.trainer.fit`) into the run folder
   ``--run-dir`` (default: ``OUT`` without its suffix, plus ``_run``); its ``last.safetensors`` (not the best one,
   which the trainer picks on the test split) is copied to ``--out``;
2. ``mobilenets eval OUT --data fashion-mnist``: top-1 on all 10,000 test images;
3. ``mobilenets export OUT --int8 --calibration-data fashion-mnist --accuracy`` (OpenVINO + NNCF when installed,
   else ONNX Runtime QDQ), unless ``--no-int8``. ``benchmarks/deploy_int8_accuracy.py OUT`` then measures every
   int8 scheme side by side.

Until issue 18 this script was a training loop of its own (AdamW one-cycle, flips only, then a separate
"precise BN" pass); the rows of BENCHMARKS.md's "int8: accuracy on Fashion-MNIST" marked so come from it. The
recipe is now the library's ``--recipe default``, mapped from the old flags as follows:

- ``--lr`` (default 3e-3, as before) is passed as the trainer's ``--lr``, i.e. at the actual batch, not scaled;
  weight decay 0.05 and label smoothing 0.1 are the recipe's (the same values; the recipe does not decay norm
  weights and biases, the old loop did);
- the one-cycle schedule becomes the recipe's linear warm-up + cosine to zero, with ``--warmup-epochs`` (default
  0.15 x ``--epochs``, the old one-cycle's warm-up share; the recipe's own 1 epoch would make a 1-epoch run all
  warm-up);
- flips become ``--augment basic`` (random crop + flip);
- the precise-BN pass becomes the trainer's ``--bn-recalibrate`` (``--bn-batches``, default 40 as before): the BN
  statistics of the evaluated weights are re-estimated on that many training batches before every evaluation and
  checkpoint, so ``--epochs 0 --init CKPT`` (BN only) is no longer needed and is refused; ``--init`` is now
  ``--weights`` (fine-tune from a checkpoint);
- new: the recipe's EMA of the weights (``--ema-decay``, default the recipe's 0.999 with its decay warm-up; 0 turns
  it off, as the old loop had none), ``--seed``, ``--limit-val`` (images of the per-epoch evaluation).

The checkpoint is an ordinary ``mobilenets train`` checkpoint (Preprocessing: 1 channel, SIZE x SIZE,
Fashion-MNIST mean/std). ``OUT`` with the suffix ``.json`` records the commands and the figures.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from mobilenets.cli import build_parser
from mobilenets.cli import main as cli
from mobilenets.commands.eval import evaluate_checkpoint
from mobilenets.deploy.formats import SUFFIX, installed


def train_argv(args: argparse.Namespace, run: Path) -> list[str]:
    warmup = 0.15 * args.epochs if args.warmup_epochs is None else args.warmup_epochs
    argv = ["train", "--model", args.model, "--data", "fashion-mnist", "--img-size", str(args.size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch), "--recipe", "default",
            "--lr", f"{args.lr:g}", "--warmup-epochs", f"{warmup:g}", "--augment", "basic",
            "--bn-recalibrate", str(args.bn_batches), "--seed", str(args.seed), "--threads", str(args.threads),
            "--no-progress", "--out", str(run)]
    for flag, value in (("--limit-train", args.train_limit), ("--limit-val", args.limit_val),
                        ("--weights", args.init), ("--ema-decay", args.ema_decay)):
        if value is not None:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="input resolution (the trainer's --img-size)")
    p.add_argument("--batch", type=int, default=128, help="the trainer's --batch-size")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate at this batch (not scaled)")
    p.add_argument("--warmup-epochs", type=float, default=None, help="default: 0.15 x --epochs")
    p.add_argument("--ema-decay", type=float, default=None, help="default: the recipe's (0.999); 0: no EMA")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-val", type=int, default=None,
                   help="test images of the trainer's per-epoch evaluation (the final eval always uses all 10,000)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (the trainer's --weights)")
    p.add_argument("--bn-batches", type=int, default=40,
                   help="batches that re-estimate the BN statistics before evaluation (the trainer's "
                        "--bn-recalibrate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run-dir", type=Path, default=None, help="the trainer's run folder (default: OUT_STEM_run)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 export with --accuracy")
    p.add_argument("--out", type=Path, required=True, help="the trained checkpoint (.safetensors)")
    args = p.parse_args()
    if args.epochs < 1:
        p.error(f"--epochs {args.epochs}: the trainer re-estimates BN statistics in every run (--bn-batches), so "
                "the old BN-only pass (--epochs 0 --init) is gone; train at least 1 epoch")
    run = args.run_dir or args.out.with_name(args.out.stem + "_run")

    argv = train_argv(args, run)
    print("train:", shlex.join(["mobilenets", *argv]), flush=True)
    if cli(argv) != 0:
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "last.safetensors", args.out)

    eval_argv = ["eval", str(args.out), "--data", "fashion-mnist", "--threads", str(args.threads), "--no-progress"]
    print("eval:", shlex.join(["mobilenets", *eval_argv]), flush=True)
    report = evaluate_checkpoint(build_parser().parse_args(eval_argv))
    print(f"test accuracy (10,000 images): top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f}", flush=True)
    result = {"checkpoint": str(args.out), "run": str(run), "train": shlex.join(["mobilenets", *argv]),
              "eval": shlex.join(["mobilenets", *eval_argv]), "test_top1": report["top1"],
              "test_top5": report["top5"], "script": "benchmarks/deploy_train_fashion_mnist.py"}
    record = args.out.with_suffix(".json")
    record.write_text(json.dumps(result, indent=2) + "\n")

    if not args.no_int8:
        fmt = "openvino" if installed("openvino") and installed("nncf") else "onnx"  # export --int8's default
        exported = args.out.with_name(f"{args.out.stem}_int8{SUFFIX[fmt]}")
        export_argv = ["export", str(args.out), "--int8", "--format", fmt, "--calibration-data", "fashion-mnist",
                       "--accuracy", "--out", str(exported)]
        print("export:", shlex.join(["mobilenets", *export_argv]), flush=True)
        if cli(export_argv) != 0:
            return 1
        result["export"] = shlex.join(["mobilenets", *export_argv])
        record.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
