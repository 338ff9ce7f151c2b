"""``--precision bf16|fp16``: the training step runs under autocast (convolutions in the lower precision, the loss
in fp32), weights and checkpoints stay fp32, fp16's gradient scaler is saved in state.pt and a resumed run equals
an uninterrupted one bit for bit; old run folders (no precision in their config) train in fp32."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from checks import die_before_epoch
from mobilenets.cli import main
from mobilenets.train.config import TrainConfig
from mobilenets.train.precision import autocast, grad_scaler
from mobilenets.train.state import load_state
from synthetic_data import write_fashion

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_top1", "lr")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def args(data, out, epochs, precision):
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "32",
            "--threads", "1", "--no-progress", "--bn-momentum", "0.5", "--lr", "0.004", "--seed", "3",
            "--width", "0.5", "--precision", precision]


def history(run):
    return [{k: json.loads(line)[k] for k in KEYS} for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_puts_convolutions_in_the_lower_precision(precision, dtype):
    conv = torch.nn.Conv2d(3, 8, 3)
    with autocast(precision, torch.device("cpu")):
        out = conv(torch.randn(2, 3, 8, 8))
        loss = torch.nn.functional.cross_entropy(out.mean((2, 3)), torch.tensor([0, 1]))
    assert out.dtype == dtype and loss.dtype == torch.float32 and conv.weight.dtype == torch.float32
    with autocast("fp32", torch.device("cpu")):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.float32
    assert grad_scaler("bf16", torch.device("cpu")) is None and grad_scaler("fp16", torch.device("cpu")) is not None


def test_bf16_trains_close_to_fp32_and_keeps_fp32_weights(data, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = tmp_path / precision
        assert main(args(data, runs[precision], 1, precision)) == 0
    fp32, bf16 = history(runs["fp32"])[0], history(runs["bf16"])[0]
    assert bf16["train_loss"] != fp32["train_loss"]  # the step really ran in bf16
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.05)  # bf16: 8 mantissa bits, one epoch
    assert all(t.dtype == torch.float32 for k, t in load_file(runs["bf16"] / "last.safetensors").items()
               if t.is_floating_point())
    assert json.loads((runs["bf16"] / "config.json").read_text())["precision"] == "bf16"


def test_fp16_resume_is_exact_and_keeps_the_scaler(data, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(args(data, straight, 2, "fp16")) == 0
    die_before_epoch(monkeypatch, 1)  # the process dies in the second epoch, after state.pt of the first
    assert main(args(data, resumed, 2, "fp16")) != 0  # the CLI turns the interrupt into an exit code
    monkeypatch.undo()
    scaler = load_state(resumed / "state.pt")["scaler"]
    assert scaler is not None and scaler["scale"] > 0 and len(history(resumed)) == 1
    assert main(["train", "--resume", str(resumed), "--no-progress"]) == 0
    assert history(resumed) == history(straight)
    a, b = load_file(straight / "last.safetensors"), load_file(resumed / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_old_configs_train_in_fp32():
    from mobilenets.data.loaders import DataConfig
    from mobilenets.train.recipes import resolve_recipe
    old = TrainConfig(model="mobilenet_v3_small", data=DataConfig(data="fashion-mnist"),
                      recipe=resolve_recipe("default"), out="x", precision="bf16").to_dict()
    del old["precision"]  # a config.json written before --precision existed
    assert TrainConfig.from_dict(old).precision == "fp32"


@pytest.mark.parametrize("task, model", [("detect", "yolo"), ("segment", "lraspp")])
def test_dense_tasks_train_in_bf16(task, model, tmp_path):
    """The detection and segmentation losses (YOLO's assigner and DFL, LR-ASPP's pixel loss) run under autocast
    and give a finite fp32 loss close to the fp32 run's on the same scenes."""
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["train", "--task", task, "--model", model, "--backbone", "mobilenet_v3_small", "--width", "0.5",
                     "--data", "scenes", "--scenes", "16", "--limit-val", "4", "--scene-size", "64", "--epochs", "1",
                     "--batch-size", "8", "--out", str(out), "--no-progress", "--threads", "1",
                     "--precision", precision]) == 0
        losses[precision] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    assert losses["bf16"] != losses["fp32"] and losses["bf16"] == pytest.approx(losses["fp32"], rel=0.1)
