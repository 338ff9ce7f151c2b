"""Assertions that several test files make the same way: a CLI failure is one line, and an int8 file is really
int8, smaller, and keeps the fp32 file's top-1 on real test images."""
from __future__ import annotations

import numpy as np

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
