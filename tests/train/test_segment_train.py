"""Segmentation task: mIoU / pixel accuracy, a segmenter that learns, and the CLI train -> eval -> predict round
trip on scenes and on a VOC-style mask folder (with a mask of the wrong size)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenets
from checks import train_on_scenes
from mobilenets.checkpoint import read_checkpoint
from mobilenets.cli import main
from mobilenets.data.scenes import FashionScenes, SceneConfig, export_scenes
from mobilenets.tasks import get_task
from mobilenets.tasks.segment import AUX_WEIGHT, Segment, confusion_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_confusion_metrics():
    # rows: label, columns: prediction. Class 2 never occurs: it does not count in the mean.
    confusion = torch.tensor([[8, 2, 0], [1, 4, 0], [0, 0, 0]])
    r = confusion_metrics(confusion)
    assert r["pixel_acc"] == pytest.approx(12 / 15)
    assert r["per_class_iou"][:2] == pytest.approx([8 / 11, 4 / 7])
    assert r["miou"] == pytest.approx((8 / 11 + 4 / 7) / 2)


@pytest.mark.parametrize("name", ["lraspp", "deeplabv3"])
def test_segmenter_learns_a_batch(name):
    torch.manual_seed(0)
    task = get_task("segment")
    scenes = FashionScenes("train", 4, SceneConfig(image_size=64, max_items=3),
                           transforms=task.train_transforms(64, scenes=True), targets="segment")
    x, masks, _ = Segment().collate([scenes[i] for i in range(4)])
    model = mobilenets.create_model(name, backbone="mobilenet_v3_small", num_classes=11, width_multiplier=0.5,
                                    **({"aux_loss": True} if name == "deeplabv3" else {}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(15):
        torch.manual_seed(1)  # the same dropout masks in both passes
        loss, terms, _ = task.loss(model.train(), x, masks)  # the loss the trainer minimises, aux term included
        torch.manual_seed(1)
        main_term = torch.nn.functional.cross_entropy(model.forward_with_aux(x)[0], masks, ignore_index=255)
        assert set(terms) == ({"loss_main", "loss_aux"} if name == "deeplabv3" else {"loss_main"})
        assert torch.allclose(terms["loss_main"], main_term) and AUX_WEIGHT == 0.5
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0]


def test_cli_train_eval_predict_on_scenes(tmp_path, capsys):
    out = tmp_path / "run"
    train_on_scenes("segment", out, "mobilenet_v3_small", "lraspp")
    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--json", "--limit-val", "6"]) == 0  # of 1,000 test scenes
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 6 and 0 <= report["miou"] <= 1 and 0 <= report["pixel_acc"] <= 1

    image = tmp_path / "scene.png"
    scene = FashionScenes("test", 1, SceneConfig(image_size=64)).render(0)[0]
    Image.fromarray((scene * 255).byte().permute(1, 2, 0).numpy()).resize((80, 72)).save(image)
    assert main(["predict", str(out / "best.safetensors"), str(image), "--out", str(tmp_path / "pred"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert preds[0]["drawn"].endswith("scene.png")
    assert Image.open(tmp_path / "pred" / "scene.png").size == (80, 72)  # drawn at the image's own size


def test_cli_mask_folder_with_a_bad_mask(tmp_path, capsys):
    root = export_scenes(FashionScenes("train", 10, SceneConfig(image_size=64)), tmp_path / "voc")
    Image.fromarray(np.zeros((64, 60), np.uint8)).save(root / "masks" / "train_000003.png")
    args = ["train", "--task", "segment", "--data", str(root), "--model", "lraspp", "--backbone",
            "mobilenet_v3_small", "--width", "0.5", "--img-size", "64", "--epochs", "1", "--batch-size", "4",
            "--no-progress", "--threads", "1"]
    assert main(args + ["--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "train_000003.png is 60x64" in err and "skip_bad=True" in err
    assert main(args + ["--out", str(tmp_path / "r2"), "--skip-bad"]) == 0
    _, meta = read_checkpoint(tmp_path / "r2" / "last.safetensors")
    assert meta.extra["data"]["skipped_images"] == {"masks whose size does not match the image": 1}
