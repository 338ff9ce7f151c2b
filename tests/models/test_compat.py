"""Files written by the previous version (tests/golden/v0_1, made by the code at commit 5fac75e) keep working:
checkpoints load with the same outputs (within the rounding of another CPU), evaluate, predict and export; a
classification run resumes as that code resumed it; a detection / segmentation run, whose config that version kept
as a dump of its flags, is refused in one line saying what changed and what still works."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.ops import box_iou

from checks import assert_close_to_fp32
from mobilenets.checkpoint import load_checkpoint
from mobilenets.cli import main
from mobilenets.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

OLD = Path(__file__).resolve().parents[1] / "golden" / "v0_1"
TIMING = {"train_images_per_s", "train_seconds", "train_img_s", "eval_seconds"}


@pytest.fixture(scope="module")
def expected():
    return load_file(OLD / "expected_outputs.safetensors")


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_old_checkpoints_load_with_the_same_outputs(task, expected):
    """The outputs that version recorded (in fp32, on another CPU) against today's: within 16x this computation's
    own fp32 rounding error (checks.fp32_bound, measured here against fp64), and the task's own answer unchanged:
    the same top-1 class, the same best boxes with the same classes, the same class at (almost) every pixel."""
    model, meta = load_checkpoint(OLD / task / "last.safetensors")
    assert meta.task == task
    module = get_task(task).export_module(model.eval())
    names = ["boxes", "scores"] if task == "detect" else ["output"]
    x = expected[f"{task}.input"]
    with torch.no_grad():
        got = module(x)
    got = got if isinstance(got, tuple) else (got,)
    old = [expected[f"{task}.{name}"] for name in names]
    assert_close_to_fp32(old, module, x, names)  # the recorded outputs are an fp32 evaluation of today's model
    if task == "classify":
        assert torch.equal(got[0].argmax(1), old[0].argmax(1))
    elif task == "detect":
        best = old[1][0, :, 1:].max(1).values.topk(10).indices  # the 10 most confident anchors (class 0: background)
        assert torch.equal(got[1][0, best, 1:].argmax(1), old[1][0, best, 1:].argmax(1))
        iou = box_iou(got[0][0, best], old[0][0, best]).diagonal()
        assert float(iou.min()) > 0.999
    else:
        assert float((got[0].argmax(1) == old[0].argmax(1)).float().mean()) > 0.999


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_old_classification_run_resumes_as_it_did(tmp_path):
    """The resumed epoch against the history that version wrote on another CPU: the same epochs, learning rates
    and counts; losses within 1e-4 (relative: one epoch of 64-image batches carries the fp32 rounding of one CPU's
    kernels forward into a few 1e-8 here); accuracies within one of the 64 images. (Bit-exact resume is checked
    where it is exact by design, on one machine: tests/train/test_train.py resumes against an uninterrupted run.)"""
    run = tmp_path / "classify"
    shutil.copytree(OLD / "classify", run)
    assert main(["train", "--resume", str(run), "--no-progress", "--threads", "1"]) == 0
    want = [{k: v for k, v in r.items() if k not in TIMING}
            for r in json.loads((OLD / "expected_resumed_metrics.json").read_text())["classify"]]
    got = _history(run)
    assert len(want) == 2 and [set(r) for r in got] == [set(r) for r in want]
    for g, w in zip(got, want):
        for key, value in w.items():
            if key.endswith("_loss"):
                assert g[key] == pytest.approx(value, rel=1e-4), key
            elif key.endswith(("_acc", "_top1", "_top5")):
                assert g[key] == pytest.approx(value, abs=1 / 64 + 1e-9), key
            else:
                assert g[key] == value, key


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_old_dense_runs_are_refused_in_one_line_and_their_checkpoints_work(task, tmp_path, capsys):
    run = tmp_path / task
    shutil.copytree(OLD / task, run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mobilenets 0.1" in err and "weights='RUN_DIR/last.safetensors'" in err

    # eval's test set is fixed (the first 1,000 test scenes at seed 0); that run validated on the first 4 of them
    assert main(["eval", str(run / "last.safetensors"), "--json", "--no-progress", "--threads", "1",
                 "--limit-val", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    key = "map" if task == "detect" else "miou"
    old_epoch1 = json.loads((OLD / "expected_resumed_metrics.json").read_text())[task][0]
    assert report["images"] == 4
    # The same scenes give the same figure; only a detection score or a pixel's logits sitting on a tie could
    # flip on another CPU (the outputs agree within fp32 rounding: the first test), which moves mAP / mIoU of
    # these 4 scenes by well under 1e-3. Measured: equal to 1e-9 on AVX-512 VNNI, capped to AVX2 and to SSE4.1.
    assert report[key] == pytest.approx(old_epoch1[key], abs=1e-3)

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
