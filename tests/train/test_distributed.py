"""DDP: 2 gloo processes on CPU (torchrun) with batch 32 each reach the weights of 1 process with batch 64.

Why the comparison is exact up to float rounding: both read the same global batches (DistributedSampler with the
same seed, see test_data), DDP averages the per-rank mean gradients, which equals the mean gradient of the global
batch, and the learning rate is scaled by the same global batch. What would differ, and is switched off:
- BatchNorm in training mode normalizes with per-process batch statistics. SyncBatchNorm fixes that but torch
  has no CPU kernel for it, so the model is built with ``--norm-layer frozenbatchnorm`` (fixed statistics);
- augmentation and dropout draw per-rank random numbers: ``--augment none --dropout 0``.
Tolerance: 2e-5 absolute on every weight after 4 AdamW steps (observed differences are ~1e-7: summation order).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import mobilenets
from mobilenets.cli import main
from mobilenets.train.state import seed_epoch
from synthetic_data import write_fashion

SRC = Path(__file__).resolve().parents[2] / "src"
COMMON = ["--model", "mobilenet_v3_small", "--width", "0.5", "--norm-layer", "frozenbatchnorm", "--dropout", "0",
          "--augment", "none", "--epochs", "1", "--seed", "3", "--no-progress", "--ema-decay", "0.9",
          "--warmup-epochs", "0", "--lr", "0.001", "--limit-val", "64", "--no-channels-last"]


def test_two_processes_match_one(tmp_path):
    data = write_fashion(tmp_path / "data", n_train=256, n_test=64)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mobilenets", "train", "--data", str(data), *COMMON,
                          "--batch-size", "32", "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert main(["train", "--data", str(data), *COMMON, "--batch-size", "64", "--threads", "1",
                 "--out", str(tmp_path / "one")]) == 0
    raw = [torch.load(tmp_path / run / "state.pt", weights_only=True)["model"] for run in ("one", "ddp")]
    ema = [load_file(tmp_path / run / "last.safetensors") for run in ("one", "ddp")]
    seed_epoch(3, -1)  # the initial weights both runs started from
    init = mobilenets.create_model("mobilenet_v3_small", num_classes=10, in_chans=1, width_multiplier=0.5,
                                   norm_layer="frozenbatchnorm", dropout=0.0).state_dict()
    moved = max((raw[0][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3  # the 4 steps really changed the weights
    for one, two in (raw, ema):
        assert one.keys() == two.keys()
        worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
        assert worst < 2e-5, worst
    # only rank 0 wrote files, and the same set as a single process
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == {p.name for p in (tmp_path / "one").iterdir()}


DENSE = ["--task", "segment", "--data", "scenes", "--model", "lraspp", "--backbone", "mobilenet_v3_small", "--width",
         "0.5", "--norm-layer", "frozenbatchnorm", "--augment", "none", "--scenes", "32", "--scene-size", "64",
         "--limit-val", "4", "--epochs", "1", "--seed", "3", "--no-progress", "--ema-decay", "0.9",
         "--warmup-epochs", "0", "--lr", "0.001", "--no-channels-last"]


def test_two_processes_match_one_for_a_dense_task(tmp_path):
    """The dense tasks run through the same trainer, so DDP trains them too: 2 gloo ranks x 8 scenes reach the
    weights of 1 process x 16 (the same argument and switches as above; the head's BN follows --norm-layer, the
    flips are off with --augment none, and the per-pixel cross-entropy is a mean over equally many pixels per
    rank). Before the one trainer, torchrun ran two independent trainings that wrote one run folder."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mobilenets", "train", *DENSE, "--batch-size", "8", "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert main(["train", *DENSE, "--batch-size", "16", "--threads", "1", "--out", str(tmp_path / "one")]) == 0
    states = [torch.load(tmp_path / run / "state.pt", weights_only=True) for run in ("one", "ddp")]
    raw = [s["model"] for s in states]
    ema = [load_file(tmp_path / run / "last.safetensors") for run in ("one", "ddp")]
    assert [s["history"][-1]["step"] for s in states] == [2, 2]  # 32 scenes / global batch 16, on both
    seed_epoch(3, -1)
    init = mobilenets.create_model("lraspp", backbone="mobilenet_v3_small", width_multiplier=0.5, num_classes=11,
                                   norm_layer="frozenbatchnorm").state_dict()
    assert max((raw[0][k] - init[k]).abs().max().item() for k in init) > 1e-4  # the steps changed the weights
    for one, two in (raw, ema):
        assert one.keys() == two.keys()
        worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
        assert worst < 2e-5, worst
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == {p.name for p in (tmp_path / "one").iterdir()}
