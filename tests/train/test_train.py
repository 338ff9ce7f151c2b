"""Training end to end on a tiny synthetic Fashion-MNIST: run folder contents, exact resume after a SIGKILL,
NaN handling, freezing, eval output and mismatched checkpoints. Tiny on purpose (512 images, 32x32, 1 thread)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilenets.checkpoint import load_checkpoint, read_checkpoint
from mobilenets.cli import build_parser, main
from mobilenets.commands.train import config_from_args
from mobilenets.data import loaders
from mobilenets.data.loaders import DataConfig, build_eval
from mobilenets.errors import UserError
from mobilenets.train.recipes import (
    Deadline,
    build_optimizer,
    build_scheduler,
    decay_groups,
    progressive_size,
    resolve_recipe,
)
from mobilenets.train.state import read_config
from synthetic_data import write_fashion, write_folder

SRC = Path(__file__).resolve().parents[2] / "src"


def train_args(data: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "64",
            "--threads", "1", "--no-progress", "--bn-momentum", "0.5", "--lr", "0.004", "--seed", "7", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_fashion(tmp_path_factory.mktemp("fmnist"), n_train=512, n_test=256)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "a"
    assert main(train_args(data, out, 3)) == 0  # validated on 10% of the training split (the default)
    return out


def test_run_folder_contents(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "metrics.jsonl", "metrics.csv", "training_curves.png", "confusion_matrix.png",
            "best.safetensors", "last.safetensors", "state.pt"} <= names
    history = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["val_top1"] > 0.6  # the synthetic classes are easy: it must actually learn
    state, meta = read_checkpoint(trained / "last.safetensors")
    assert meta.model == "mobilenet_v3_small" and meta.task == "classify"
    assert meta.options["num_classes"] == 10 and meta.options["in_chans"] == 1
    assert meta.class_names[9] == "Ankle boot" and meta.preprocessing.input_size == (1, 32, 32)
    assert meta.extra["epoch"] == 3 and meta.extra["weights"] == "ema"
    config = json.loads((trained / "config.json").read_text())
    assert config["epochs"] == 3 and config["recipe"]["optimizer"] == "adamw" and config["data"]["seed"] == 7


def test_resume_after_kill_matches_uninterrupted(data, trained, tmp_path):
    """SIGKILL a run during its second epoch; --resume must reach bitwise the same metrics and weights."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "mobilenets", *train_args(data, out, 3)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "state.pt").exists():  # written atomically at the end of epoch 1
        assert proc.poll() is None and time.time() < deadline, "training subprocess ended early"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(first) < 3, "killed too late to test anything"
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr")
    resumed = [{k: json.loads(line)[k] for k in keys} for line in (out / "metrics.jsonl").read_text().splitlines()]
    straight = [{k: json.loads(line)[k] for k in keys} for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert resumed == straight
    a, b = load_file(trained / "last.safetensors"), load_file(out / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_needs_resume(trained, capsys):
    rc = main(train_args(Path("fashion-mnist"), trained, 1))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "already holds a run; resume it or choose another out folder" in err
    assert len(err.splitlines()) == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    real_iter = loaders.TensorBatches.__iter__

    def poisoned(self):  # NaN inputs from the second training epoch on
        for x, y in real_iter(self):
            if self.train and self.sampler.epoch >= 1:
                x = torch.full_like(x, float("nan"))
            yield x, y
    monkeypatch.setattr(loaders.TensorBatches, "__iter__", poisoned)
    out = tmp_path / "nan"
    rc = main(train_args(data, out, 3))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "loss is nan at epoch 2" in err and str(out / "last.safetensors") in err and "lower lr" in err
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta.extra["epoch"] == 1
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1


def test_finetune_with_frozen_backbone(trained, data, tmp_path):
    """--weights PATH + --freeze backbone: stem/stages/final conv (weights and BN statistics) stay as loaded."""
    out = tmp_path / "ft"
    assert main(train_args(data, out, 1, "--weights", str(trained / "last.safetensors"), "--freeze", "backbone",
                           "--ema-decay", "0")) == 0
    before, after = load_file(trained / "last.safetensors"), load_file(out / "last.safetensors")
    backbone = [k for k in before if k.startswith(("stem.", "stages.", "final_conv."))]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_freeze_stage_out_of_range(data, tmp_path, capsys):
    rc = main(train_args(data, tmp_path / "x", 1, "--freeze", "99"))
    err = capsys.readouterr().err
    assert rc == 2 and "freeze='99': the model has stages 0.." in err


def test_eval_json_and_text(trained, data, capsys):
    assert main(["eval", str(trained / "last.safetensors"), "--data", str(data), "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 256 and 0.6 < report["top1"] <= report["top5"] <= 1.0
    assert set(report["per_class"]) == set(read_checkpoint(trained / "last.safetensors")[1].class_names)
    # the untouched test split (training validated on a held-out part of the training split), scored as a plain
    # loop over the same checkpoint scores it
    model, meta = load_checkpoint(trained / "last.safetensors")
    batches, _ = build_eval(DataConfig(str(data), batch_size=64), meta.preprocessing)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    assert abs(report["top1"] - correct / 256) <= 1 / 256
    assert read_config(trained / "config.json")["data"]["val_split"] == "holdout"
    assert main(["eval", str(trained / "last.safetensors"), "--no-progress"]) == 0  # data from the checkpoint
    assert "Ankle boot" in capsys.readouterr().out


def test_eval_flip_tta(trained, data, capsys):
    """--tta flip scores the mean probabilities of each image and its mirror, and says so in the report."""
    from mobilenets.tasks.classify import FlipAverage
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.randn(5, 1, 8, 8)
    net(x)
    want = ((net(x).softmax(1) + net(x.flip(-1)).softmax(1)) / 2).log()
    torch.testing.assert_close(FlipAverage(net)(x), want)
    symmetric = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 3))
    torch.testing.assert_close(FlipAverage(symmetric)(x), symmetric(x).log_softmax(1))  # mirror-blind: no change
    ckpt = str(trained / "last.safetensors")
    assert main(["eval", ckpt, "--data", str(data), "--json", "--threads", "1", "--tta", "flip"]) == 0
    flip = json.loads(capsys.readouterr().out)
    assert main(["eval", ckpt, "--data", str(data), "--json", "--threads", "1"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert (flip["tta"], plain["tta"], flip["count"]) == ("flip", "none", 256)
    assert flip["loss"] != plain["loss"] and 0.5 < flip["top1"] <= flip["top5"] <= 1.0


def test_eval_refuses_other_classes(trained, tmp_path, capsys):
    folder = write_folder(tmp_path / "pets")
    rc = main(["eval", str(trained / "last.safetensors"), "--data", str(folder), "--val-fraction", "0.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "classes" in err and "cat" in err


def test_checkpoint_architecture_mismatch(trained, data, tmp_path, capsys):
    rc = main(train_args(data, tmp_path / "y", 1, "--model", "mobilenet_v2", "--weights",
                         str(trained / "last.safetensors")))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "does not fit" in err


def test_recipes_schedules():
    recipe = resolve_recipe("default", lr=1.0, warmup_epochs=1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, recipe, steps_per_epoch=10, epochs=3)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    # --time-limit: the cosine follows the clock when time runs out before the steps do
    for spent, expected in ((30.0, 0.5), (60.0, 0.0)):  # half / all of a one-minute budget already gone
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, recipe, steps_per_epoch=10, epochs=3, deadline=Deadline(1.0, spent=spent))
        for _ in range(11):
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=0.01)
    with pytest.raises(UserError, match="time_limit=0 must be a positive"):
        Deadline(0.0)
    rms = resolve_recipe("rmsprop")
    assert rms.optimizer == "rmsprop" and rms.ema_decay == 0.9999 and rms.schedule == "step"
    with pytest.raises(Exception, match="unknown recipe 'adam-ish'"):
        resolve_recipe("adam-ish")


def test_depthwise_weight_decay_group(capsys, data, tmp_path):
    import mobilenets
    model = mobilenets.create_model("mobilenet_v1", num_classes=10, width_multiplier=0.25)
    depthwise = [m.weight for m in model.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1]
    assert len(depthwise) == 13  # V1 Table 1: thirteen depthwise separable layers
    plain = build_optimizer(model, resolve_recipe("sgd", weight_decay=5e-4), 128)
    assert [g["weight_decay"] for g in plain.param_groups] == [5e-4, 0.0]  # unset: depthwise decayed like the rest
    opt = build_optimizer(model, resolve_recipe("sgd", weight_decay=5e-4, depthwise_weight_decay=0.0), 128)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 0.0]
    assert {id(p) for p in opt.param_groups[2]["params"]} == {id(w) for w in depthwise}
    # a step on zero gradients: weight decay alone moves the weights, so only the depthwise filters stay put
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {id(p) for p in model.parameters() if not torch.equal(p, before[id(p)])}
    assert moved == {id(p) for p in opt.param_groups[0]["params"]}
    with pytest.raises(UserError, match="^depthwise_weight_decay=-1 must not be negative"):  # decay_groups checks too
        decay_groups(model, 5e-4, -1.0)
    # the CLI: a bad value is one line before any run folder exists
    out = tmp_path / "neg"
    assert main(train_args(data, out, 1, "--depthwise-wd", "-1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depthwise_weight_decay=-1 must not be negative" in err and not out.exists()


def test_batch_norms_name_every_trainable_batchnorm_kind():
    """BATCH_NORMS (public classes) stands for torch's private ``_BatchNorm`` base: it must name every subclass
    of it in torch.nn, so that no BatchNorm layer escapes the momentum setting or the recalibration."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from mobilenets.train.loop import BATCH_NORMS

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    in_torch_nn = {c for c in subclasses(_BatchNorm) if c.__module__.startswith("torch.nn.")}
    assert in_torch_nn == set(BATCH_NORMS)


def test_progressive_size_schedule():
    sizes = [progressive_size(40, 64, f / 100) for f in range(101)]
    assert sizes[0] == 40 and sizes[75] == 64 and set(sizes[75:]) == {64}  # full size from 75% of the run on
    assert all(a <= b for a, b in zip(sizes, sizes[1:])) and set(sizes) == {40, 48, 56, 64}
    assert progressive_size(36, 50, 0.0) == 36 and progressive_size(36, 50, 1.0) == 50  # clamped to the ends


def test_progressive_resize_trains_small_then_full(data, tmp_path, capsys):
    out = tmp_path / "prog"
    assert main(train_args(data, out, 3, "--img-size", "48", "--progressive-resize", "32")) == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # epochs start at 0, 1/3 and 2/3 of the run: 32 px, then 32 + 16 * (1/3) / 0.75 and 32 + 16 * (2/3) / 0.75
    # rounded to multiples of 8
    assert [h["train_size"] for h in history] == [32, 40, 48]
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta.preprocessing.input_size == (1, 48, 48)  # evaluation and deployment at --img-size
    rc = main(train_args(data, tmp_path / "bad", 1, "--img-size", "48", "--progressive-resize", "48"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--progressive-resize 48" in err and len(err.splitlines()) == 1


def test_progressive_resize_is_bounded_by_the_default_size_of_the_data(tmp_path):
    """Without --img-size the bound is the size the task trains the data at: 224 for an image folder (32 for
    Fashion-MNIST, checked above through --img-size)."""
    folder = write_folder(tmp_path / "pets", per_class=2)
    argv = ["train", "--data", str(folder), "--out", str(tmp_path / "run")]
    assert config_from_args(build_parser().parse_args([*argv, "--progressive-resize", "128"])).progressive_resize == 128
    with pytest.raises(UserError, match="--progressive-resize 224 must be at least 1 and smaller than --img-size 224"):
        config_from_args(build_parser().parse_args([*argv, "--progressive-resize", "224"]))


def test_image_folder_training_skips_bad_files(tmp_path, capsys):
    folder = write_folder(tmp_path / "pets", per_class=8)
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    base = ["train", "--data", str(folder), "--img-size", "32", "--epochs", "1", "--batch-size", "4",
            "--threads", "1", "--no-progress", "--val-fraction", "0.25", "--augment", "strong"]
    assert main([*base, "--out", str(tmp_path / "strict")]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "run"), "--skip-bad"]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_images"] == 1
    _, meta = read_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta.class_names == ["cat", "dog", "fish"] and meta.preprocessing.input_size == (3, 32, 32)
