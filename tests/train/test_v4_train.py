"""MobileNetV4 through the CLI (issue 20): classification and dense training round trips, then eval.
Small inputs, one thread."""
import json

import numpy as np
import pytest

from mobilenets.checkpoint import read_checkpoint
from mobilenets.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


# -- training ---------------------------------------------------------------------------------------------------
def test_cli_classify_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "mobilenet_v4_conv_small", "--width", "0.5", "--data", "fashion-mnist",
                 "--limit-train", "256", "--limit-val", "64", "--epochs", "1", "--batch-size", "32",
                 "--img-size", "32", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    _, meta = read_checkpoint(out / "best.safetensors")
    assert meta.model == "mobilenet_v4_conv_small" and meta.options["width_multiplier"] == 0.5
    assert meta.preprocessing.input_size == (1, 32, 32)
    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--data", "fashion-mnist", "--limit-val", "64", "--json",
                 "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 64 and 0 <= report["top1"] <= 1 and np.isfinite(report["loss"])


@pytest.mark.parametrize("task, backbone, model_name, metric", [
    ("detect", "mobilenet_v4_conv_small", "ssdlite", "map"),
    ("segment", "mobilenet_v4_hybrid_medium", "lraspp", "miou"),
])
def test_cli_dense_round_trip(tmp_path, capsys, task, backbone, model_name, metric):
    out = tmp_path / "run"
    assert main(["train", "--task", task, "--backbone", backbone, "--width", "0.5", "--data", "scenes",
                 "--scenes", "16", "--limit-val", "4", "--scene-size", "64", "--epochs", "1", "--batch-size", "8",
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    _, meta = read_checkpoint(out / "best.safetensors")
    assert meta.task == task and meta.model == model_name and meta.options["backbone"] == backbone
    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--json", "--threads", "1", "--limit-val", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and 0 <= report[metric] <= 1  # the first 4 of the 1,000 test scenes


