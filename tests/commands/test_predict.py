"""``mobilenets predict``: every image mode gives the prediction of its plain 8-bit grayscale twin; JSON output;
bad images and bad checkpoints are one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, save_checkpoint
from mobilenets.cli import main
from mobilenets.data.loaders import default_preprocessing
from mobilenets.data.transforms import preprocess
from synthetic_data import synthetic_images

CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=10, in_chans=1, width_multiplier=0.5)
    pre = default_preprocessing("fashion-mnist", 32, 1)
    # Make the output depend on the input: BN statistics of real-looking batches, a strong classifier.
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(preprocess(torch.from_numpy(synthetic_images(64, 4)[0])[:, None], pre))
        model.classifier.weight.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_checkpoint(path, model.eval(), CheckpointMeta(model="mobilenet_v3_small", options=model.arch_options,
                                                       class_names=CLASSES,
                                                       preprocessing=pre))
    return path


@pytest.fixture()
def images(tmp_path):
    gray = synthetic_images(1, 9)[0][0]
    variants = {
        "gray.png": Image.fromarray(gray),
        "rgb.jpg": None,
        "rgba.png": Image.fromarray(gray).convert("RGBA"),
        "palette.png": Image.fromarray(gray).convert("P"),  # grayscale palette: lossless
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "la.png": Image.fromarray(gray).convert("LA"),
    }
    paths = {}
    for name, im in variants.items():
        if im is not None:
            im.save(tmp_path / name)
            paths[name] = tmp_path / name
    Image.fromarray(gray).convert("RGB").save(tmp_path / "rgb.jpg", quality=100)
    paths["rgb.jpg"] = tmp_path / "rgb.jpg"
    return paths


def predict_json(capsys, *argv):
    assert main(["predict", *map(str, argv), "--json", "--top-k", "10"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_mode_predicts_like_plain_grayscale(checkpoint, images, capsys):
    results = predict_json(capsys, checkpoint, *images.values())
    probs = {r["image"]: {t["class"]: t["probability"] for t in r["top"]} for r in results}
    ref = probs[str(images["gray.png"])]
    assert set(ref) == set(CLASSES) and sum(ref.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(ref.values()) - min(ref.values()) > 0.03  # not uniform: the comparison below means something
    for name, path in images.items():
        tol = 2e-2 if name.endswith(".jpg") else 1e-4
        assert all(abs(probs[str(path)][c] - ref[c]) < tol for c in CLASSES), name


def test_text_output_names_classes(checkpoint, images, capsys):
    assert main(["predict", str(checkpoint), str(images["gray.png"]), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(images["gray.png"]))
    assert len([c for c in CLASSES if f" {c} " in line]) == 2


def test_corrupt_image_is_one_line(checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    assert main(["predict", str(checkpoint), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.png" in err


def test_missing_image_and_checkpoint(checkpoint, tmp_path, capsys):
    assert main(["predict", str(checkpoint), str(tmp_path / "none.png")]) == 2
    assert "none.png" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.safetensors"), str(tmp_path / "x.png")]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_checkpoint_that_does_not_fit_its_architecture(tmp_path, images, capsys):
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=10, in_chans=1)
    bad = tmp_path / "liar.safetensors"  # weights of width 1.0, metadata claims width 0.5
    save_checkpoint(bad, model, CheckpointMeta(model="mobilenet_v3_small",
                                               options={**model.arch_options, "width_multiplier": 0.5},
                                               class_names=CLASSES))
    assert main(["predict", str(bad), str(images["gray.png"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit" in err
