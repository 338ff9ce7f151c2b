"""Assertions that several test files make the same way: a CLI failure is one line; an int8 file is really int8,
smaller, and keeps the fp32 model's top-1 on real test images; a float output agrees with a reference within a
bound that follows from the computation, not from one CPU's rounding."""
from __future__ import annotations

import numpy as np
import torch

from mobilenets.data.samples import sample_inputs
from mobilenets.deploy import open_runner
from mobilenets.deploy.formats import PRECISION_KEY


def one_line_error(capsys) -> str:
    """What the command wrote to stderr, asserted to be a single line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def assert_int8_keeps_top1(fp32_path, exported_int8, backend: str, min_agreement: float):
    """``exported_int8`` (an export result) against the fp32 file at ``fp32_path``, both run by ``backend``:
    about a quarter of the size, labelled int8, numerically different (not a relabelled fp32 file), and agreeing
    on top-1 for 64 Fashion-MNIST test images, as the exporter's own check on 64 other images did. Returns the
    two runners for further checks."""
    assert exported_int8.precision == "int8"
    assert exported_int8.path.stat().st_size < fp32_path.stat().st_size / 2.5  # int8 weights: about a quarter
    fp32, int8 = open_runner(fp32_path, backend=backend), open_runner(exported_int8.path, backend=backend)
    assert int8.properties[PRECISION_KEY] == "int8" and int8.meta == fp32.meta
    x = sample_inputs(int8.meta.preprocessing, "fashion-mnist", 64, split="test", seed=3)
    a, b = fp32.run(x), int8.run(x)
    assert np.abs(a - b).max() > 1e-3  # really int8
    assert (a.argmax(1) == b.argmax(1)).mean() >= min_agreement
    assert exported_int8.parity.agreement >= min_agreement
    return fp32, int8


def int8_top1_agreement(model, meta, path, backend: str, n: int = 200) -> float:
    """Share of ``n`` Fashion-MNIST test images on which the file at ``path`` (run by ``backend``) gives eager
    ``model``'s top-1 class."""
    x = sample_inputs(meta.preprocessing, "fashion-mnist", n, split="test")
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    got = open_runner(path, backend=backend).run(x)
    return float((got.argmax(1) == want.argmax(1)).mean())


# How far an fp32 evaluation of a network may land from another fp32 evaluation of the same network (another CPU's
# kernels, another summation order, another runtime): a multiple of this computation's own fp32 rounding error,
# measured on the same inputs as |fp32 - fp64| of eager PyTorch. Kernels differ in blocking and fused
# multiply-adds, not in precision, so their errors are of that size; 16x leaves room for two of them in opposite
# directions plus growth through the layers. The floor (64 float32 ulps of the output's magnitude) covers an output
# whose own fp32 and fp64 values happen to coincide.
FP32_SPREAD = 16.0
FP32_FLOOR_ULPS = 64.0


def fp32_bound(fp32: np.ndarray, fp64: np.ndarray) -> float:
    """The largest |difference| to allow between another fp32 evaluation and ``fp32`` (both of one output, whose
    float64 evaluation is ``fp64``)."""
    fp32, fp64 = np.asarray(fp32, np.float64), np.asarray(fp64, np.float64)
    scale = max(float(np.abs(fp64).max()), 1e-30)
    return FP32_SPREAD * float(np.abs(fp32 - fp64).max()) + FP32_FLOOR_ULPS * float(np.finfo(np.float32).eps) * scale


def float_references(module: torch.nn.Module, x) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``module``'s outputs on ``x`` in fp32 and in fp64 (the module is left in fp32), each a list of arrays."""
    def run(dtype):
        m = module.to(dtype)
        with torch.no_grad():
            out = m(torch.as_tensor(np.asarray(x)).to(dtype))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().double().numpy() for o in out]
    try:
        return run(torch.float32), run(torch.float64)
    finally:
        module.to(torch.float32)


def assert_close_to_fp32(got, module: torch.nn.Module, x, names=None) -> None:
    """Each output in ``got`` within :func:`fp32_bound` of ``module``'s fp32 output on ``x`` (eager PyTorch)."""
    got = got if isinstance(got, (tuple, list)) else (got,)
    fp32, fp64 = float_references(module, x)
    assert len(got) == len(fp32)
    for i, (g, a, b) in enumerate(zip(got, fp32, fp64)):
        g = np.asarray(g, np.float64)
        bound = fp32_bound(a, b)
        diff = float(np.abs(g - a).max())
        name = names[i] if names else i
        assert diff <= bound, f"output {name}: max |diff| {diff:.3g} > {bound:.3g} (16x fp32's own error here)"


def die_before_epoch(monkeypatch, fatal: int) -> None:
    """Training dies (KeyboardInterrupt) as epoch ``fatal`` (0-based) starts, after the files of the one before:
    ``trainer.train_one_epoch`` patched until ``monkeypatch.undo()``."""
    from mobilenets.train import trainer
    real = trainer.train_one_epoch

    def interrupted(*a, epoch: int, **k):
        if epoch == fatal:
            raise KeyboardInterrupt
        return real(*a, epoch=epoch, **k)
    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)


def die_at_step(monkeypatch, task, step: int) -> None:
    """Training dies (KeyboardInterrupt) in its ``step``-th loss computation (1-based, over the whole run): the
    ``task``'s ``loss`` patched until ``monkeypatch.undo()``."""
    real, calls = task.loss, []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(task, "loss", dies)


def train_on_scenes(task: str, out, model: str, head: str):
    """``mobilenets train --task TASK`` for one epoch on 16 tiny scenes (width 0.5, 64 px), then the checks every
    dense task's checkpoint must pass; returns its metadata."""
    from mobilenets.checkpoint import read_checkpoint
    from mobilenets.cli import main

    assert main(["train", "--task", task, "--data", "scenes", "--model", model, "--width-multiplier", "0.5",
                 "--scenes", "16", "--limit-val", "6", "--scene-size", "64", "--epochs", "1", "--batch-size", "8",
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    _, meta = read_checkpoint(out / "best.safetensors")
    assert meta.task == task and meta.model == head and meta.options["backbone"] == model
    assert meta.class_names[0] == "background" and len(meta.class_names) == 11
    return meta
