"""Detection task: COCO mAP, a detector that learns, and the CLI train -> eval -> predict round trip on scenes and
on a COCO folder (with a bad annotation)."""
import json

import pytest
import torch
from PIL import Image

import mobilenets
from checks import train_on_scenes
from mobilenets.checkpoint import read_checkpoint
from mobilenets.cli import main
from mobilenets.data.scenes import FashionScenes, SceneConfig, export_scenes
from mobilenets.tasks import get_task
from mobilenets.tasks.detect import Detect, coco_map

pytestmark = pytest.mark.usefixtures("one_thread")


def test_coco_map_perfect_shifted_and_empty():
    gts = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 5.0, 90.0, 40.0]]),
            "labels": torch.tensor([1, 2]), "size": (100, 100)}]
    perfect = [{"boxes": gts[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}]
    assert coco_map(gts, perfect, 3)["map"] == pytest.approx(1.0)
    shifted = [{**perfect[0], "boxes": gts[0]["boxes"] + torch.tensor([6.0, 0.0, 6.0, 0.0])}]
    r = coco_map(gts, shifted, 3)
    assert r["map50"] == pytest.approx(1.0) and 0.2 < r["map"] < 0.9  # IoU ~0.7-0.75: passes .5, fails .8+
    wrong_class = [{**perfect[0], "labels": torch.tensor([2, 1])}]
    assert coco_map(gts, wrong_class, 3)["map"] == 0.0
    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    assert coco_map(gts, nothing, 3)["map"] == 0.0


def test_ssdlite_learns_a_batch():
    torch.manual_seed(0)
    scenes = FashionScenes("train", 8, SceneConfig(image_size=64, scale=(1.0, 1.6), max_items=3),
                           transforms=get_task("detect").train_transforms(64, scenes=False), targets="detect")
    x, targets, _ = Detect().collate([scenes[i] for i in range(8)])
    model = mobilenets.create_model("ssdlite", backbone="mobilenet_v3_small", num_classes=11,
                                    width_multiplier=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        loss, terms, _ = get_task("detect").loss(model, x, targets)  # the loss the trainer minimises
        assert loss == terms["loss_box"] + terms["loss_cls"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < 0.5 * history[0]


def test_cli_train_eval_predict_on_scenes(tmp_path, capsys):
    out = tmp_path / "run"
    meta = train_on_scenes("detect", out, "mobilenet_v3_small", "ssdlite")
    assert meta.preprocessing.input_size == (3, 64, 64)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= record["map"] <= 1.0 and record["images"] == 6

    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--json", "--limit-val", "6"]) == 0  # task from the file
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 6 and set(report) >= {"map", "map50", "per_class_ap"}
    # the task answers for itself: a detector has no flip test-time augmentation; a wrong --task is refused
    assert main(["eval", str(out / "best.safetensors"), "--limit-val", "6", "--tta", "flip"]) == 2
    assert "detect checkpoint, which has no test-time augmentation" in capsys.readouterr().err
    assert main(["eval", str(out / "best.safetensors"), "--task", "segment", "--limit-val", "6"]) == 2
    assert "holds a detect model, not a segment model; pass task='detect'" in capsys.readouterr().err

    image = tmp_path / "scene.png"
    scene = FashionScenes("test", 1, SceneConfig(image_size=64)).render(0)[0]
    Image.fromarray((scene * 255).byte().permute(1, 2, 0).numpy()).save(image)
    assert main(["predict", str(out / "best.safetensors"), str(image), "--out", str(tmp_path / "pred"),
                 "--score-thresh", "0.0", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert (tmp_path / "pred" / "scene.png").is_file() and len(preds[0]["detections"]) > 0
    assert main(["predict", str(out / "best.safetensors"), str(image), "--task", "classify"]) == 2
    assert "holds a detect model, not a classify model" in capsys.readouterr().err
    assert Image.open(tmp_path / "pred" / "scene.png").size == (64, 64)

    # export: fp32 ONNX, parity-checked against eager, with the NMS settings stored (NMS runs outside the graph);
    # int8 without calibration images is refused in one line
    capsys.readouterr()
    assert main(["export", str(out / "best.safetensors"), "--format", "onnx", "--out", str(tmp_path / "det.onnx")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "det.onnx").is_file() and "PASS" in text and "mobilenets.postprocess" in text
    assert main(["export", str(out / "best.safetensors"), "--int8", "--format", "onnx",
                 "--out", str(tmp_path / "q.onnx")]) == 2
    assert "int8=True needs calibration_data=" in capsys.readouterr().err and not (tmp_path / "q.onnx").exists()


def test_cli_coco_folder_bad_annotation(tmp_path, capsys):
    root = export_scenes(FashionScenes("train", 12, SceneConfig(image_size=64)), tmp_path / "coco")
    data = json.loads((root / "instances.json").read_text())
    data["annotations"][0]["bbox"] = [60, 10, 20, 20]  # leaves the 64x64 image
    bad_id = data["annotations"][0]["id"]
    (root / "instances.json").write_text(json.dumps(data))
    args = ["train", "--task", "detect", "--data", str(root), "--model", "mobilenet_v3_small", "--width", "0.5",
            "--img-size", "64", "--epochs", "1", "--batch-size", "4", "--no-progress", "--threads", "1"]
    assert main(args + ["--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert "instances.json" in err and f"annotation id {bad_id}" in err and "skip_bad=True" in err
    assert main(args + ["--out", str(tmp_path / "r2"), "--skip-bad"]) == 0
    _, meta = read_checkpoint(tmp_path / "r2" / "last.safetensors")
    assert meta.extra["data"]["skipped_annotations"] == {"boxes outside the image": 1}
