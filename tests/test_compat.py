"""Files written by the previous version (tests/data/v0_1, made by the code at commit 5fac75e) keep working:
checkpoints load with the same outputs, evaluate, predict and export; a classification run resumes exactly as that
code resumed it; a detection / segmentation run, whose config that version kept as a dump of its flags, is refused
in one line saying what changed and what still works."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mobilenets.checkpoint import load_checkpoint
from mobilenets.cli import main
from mobilenets.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

OLD = Path(__file__).parent / "data" / "v0_1"
TIMING = {"train_images_per_s", "train_seconds", "train_img_s", "eval_seconds"}


@pytest.fixture(scope="module")
def expected():
    return load_file(OLD / "expected_outputs.safetensors")


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_old_checkpoints_load_with_the_same_outputs(task, expected):
    model, meta = load_checkpoint(OLD / task / "last.safetensors")
    assert meta.task == task
    with torch.no_grad():
        outputs = get_task(task).export_module(model.eval())(expected[f"{task}.input"])
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    names = ["boxes", "scores"] if task == "detect" else ["output"]
    for name, got in zip(names, outputs):
        torch.testing.assert_close(got, expected[f"{task}.{name}"], rtol=0, atol=1e-5)


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_old_classification_run_resumes_exactly(tmp_path):
    run = tmp_path / "classify"
    shutil.copytree(OLD / "classify", run)
    assert main(["train", "--resume", str(run), "--no-progress", "--threads", "1"]) == 0
    want = [{k: v for k, v in r.items() if k not in TIMING}
            for r in json.loads((OLD / "expected_resumed_metrics.json").read_text())["classify"]]
    assert _history(run) == want and len(want) == 2


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_old_dense_runs_are_refused_in_one_line_and_their_checkpoints_work(task, tmp_path, capsys):
    run = tmp_path / task
    shutil.copytree(OLD / task, run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mobilenets 0.1" in err and "--weights" in err

    assert main(["eval", str(run / "last.safetensors"), "--json", "--no-progress", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    key = "map" if task == "detect" else "miou"
    old_epoch1 = json.loads((OLD / "expected_resumed_metrics.json").read_text())[task][0]
    assert report[key] == pytest.approx(old_epoch1[key], abs=1e-6)  # the same test scenes, the same numbers

    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(image)
    assert main(["predict", str(run / "last.safetensors"), str(image), "--out", str(tmp_path / "pred"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["drawn"].endswith("scene.png")


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_old_checkpoints_export(task, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / f"{task}.onnx"
    assert main(["export", str(OLD / task / "last.safetensors"), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and "PASS" in capsys.readouterr().out
