"""Detection and segmentation runs resume where a killed run stopped: the resumed run's metrics and weights equal
an uninterrupted run's with the same seed; a finished or foreign run folder is refused in one line."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from checks import die_at_step
from mobilenets.cli import main
from mobilenets.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = {"train_img_s", "eval_seconds"}


def args(task: str, out) -> list[str]:
    return ["train", "--task", task, "--data", "scenes", "--model", "mobilenet_v3_small", "--width", "0.5",
            "--scenes", "16", "--limit-val", "4", "--scene-size", "64", "--epochs", "3", "--batch-size", "8",
            "--seed", "3", "--out", str(out), "--no-progress", "--threads", "1"]


def history(out) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["detect", "segment"])
def test_resume_after_interrupt_matches_uninterrupted(name, tmp_path, monkeypatch, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(args(name, straight)) == 0

    die_at_step(monkeypatch, get_task(name), 3)  # 2 steps per epoch: the first step of epoch 2
    assert main(args(name, broken)) != 0  # the CLI reports the interrupt
    assert "interrupted" in capsys.readouterr().err
    assert [r["epoch"] for r in history(broken)] == [1]
    monkeypatch.undo()

    assert main(["train", "--resume", str(broken), "--no-progress", "--threads", "1"]) == 0
    assert history(broken) == history(straight) and len(history(straight)) == 3
    a, b = load_file(straight / "last.safetensors"), load_file(broken / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    capsys.readouterr()
    assert main(args(name, broken)) == 2  # the folder holds a run: resume it or choose another out folder
    err = capsys.readouterr().err
    assert "resume it or choose another out folder" in err and len(err.strip().splitlines()) == 1
    other = "segment" if name == "detect" else "detect"
    assert main(["train", "--task", other, "--resume", str(broken)]) == 2
    assert f"is a {name} run" in capsys.readouterr().err


def test_too_few_scenes_for_one_batch_is_one_line_before_training(tmp_path, capsys):
    """The trainer's one "no full batch" check covers the dense tasks too (their data no longer repeats it)."""
    out = tmp_path / "run"
    assert main(["train", "--task", "detect", "--data", "scenes", "--scenes", "4", "--batch-size", "8",
                 "--scene-size", "64", "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make no full batch of 8 per process; lower batch_size" in err
    assert not (out / "last.safetensors").exists()
