"""Detection and segmentation checkpoints run on every backend: ``open_runner`` gives the same network outputs
on torch, ONNX Runtime and OpenVINO (through the cached, parity-checked ONNX export), and
``mobilenets predict --backend ...`` draws and lists the same predictions."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from PIL import Image

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
from mobilenets.cli import main
from mobilenets.data.dense import MEAN, STD
from mobilenets.data.scenes import FashionScenes, SceneConfig
from mobilenets.deploy import open_runner

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("onnxruntime")

SIZE = 64
NAMES = ["background"] + [f"c{i}" for i in range(1, 11)]
BACKENDS = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MOBILENETS_CACHE", str(tmp_path_factory.mktemp("cache")))  # the cached ONNX exports go here
    yield
    mp.undo()


def checkpoint(folder, task: str, randomize_bn):
    torch.manual_seed(0)
    name = "ssdlite" if task == "detect" else "lraspp"
    model = mobilenets.create_model(name, backbone="mobilenet_v3_small", num_classes=len(NAMES),
                                    width_multiplier=0.5)
    randomize_bn(model)
    if task == "detect":  # confident class scores, so that the drawn detections are few and clear-cut
        with torch.no_grad():
            for block in model.cls_head.blocks:
                block[-1].weight.mul_(30)
    meta = CheckpointMeta(model=name, options=dict(model.arch_options), task=task, class_names=NAMES,
                          preprocessing=Preprocessing(input_size=(3, SIZE, SIZE), resize=SIZE, mean=MEAN,
                                                      std=STD, interpolation="bilinear"),
                          extra={"data": {"data": "scenes", "image_size": SIZE, "seed": 0}})
    path = folder / f"{task}.safetensors"
    save_checkpoint(path, model.eval(), meta)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    scene = FashionScenes("test", 1, SceneConfig(image_size=SIZE)).render(0)[0]
    Image.fromarray((scene * 255).byte().permute(1, 2, 0).numpy()).resize((80, 72)).save(path)
    return path


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_backends_agree(task, tmp_path, cache, randomize_bn, image, capsys):
    path = checkpoint(tmp_path, task, randomize_bn)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).numpy()
    ref = open_runner(path, "torch")
    expected = [torch.from_numpy(e) for e in ref.outputs(x)]
    assert ref.meta.task == task and len(expected) == (2 if task == "detect" else 1)
    for backend in BACKENDS:
        runner = open_runner(path, backend)
        assert runner.backend == backend and runner.path.suffix == ".onnx"  # the cached export
        got = [torch.from_numpy(g) for g in runner.outputs(x)]
        assert len(got) == len(expected) and runner.meta.class_names == NAMES
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            torch.testing.assert_close(g, e, atol=2e-3 * max(1.0, float(e.abs().max())), rtol=1e-3)
        if task == "detect":
            assert (json.loads(runner.properties["mobilenets.postprocess"])
                    == json.loads(ref.properties["mobilenets.postprocess"]))

    capsys.readouterr()
    shares = {}
    for backend in ["torch", *BACKENDS]:
        out = tmp_path / backend
        assert main(["predict", str(path), str(image), "--backend", backend, "--out", str(out), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)[0]
        assert Image.open(out / "scene.png").size == (80, 72)  # drawn at the image's own size
        shares[backend] = result["detections" if task == "detect" else "classes"]
    if task == "segment":  # pixel shares of each class agree to a few pixels
        for backend in BACKENDS:
            assert shares[backend].keys() == shares["torch"].keys()
            assert all(abs(shares[backend][k] - v) < 0.01 for k, v in shares["torch"].items())
    else:  # the confident detections agree (near-tied low scores may swap places in NMS)
        def confident(dets):
            return sorted((d["class"], round(d["score"], 2)) for d in dets if d["score"] > 0.5)
        assert len(confident(shares["torch"])) >= 3
        assert all(confident(shares[b]) == confident(shares["torch"]) for b in BACKENDS)


def test_wrong_task_is_one_line(tmp_path, cache, randomize_bn, image, capsys):
    path = checkpoint(tmp_path, "segment", randomize_bn)
    assert main(["predict", str(path), str(image), "--task", "detect", "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert "segment" in err and "detect" in err and len(err.splitlines()) == 1
