"""Data: the idx reader, image decoding of every mode, preprocessing parity, image folders, bad input."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.checkpoint import Preprocessing
from mobilenets.cli import main
from mobilenets.data import fashion_mnist
from mobilenets.data.image_folder import ImageFolderDataset, collate_skip_bad, find_splits
from mobilenets.data.loaders import DataConfig, build_eval, build_train_val, default_preprocessing
from mobilenets.data.transforms import (
    TensorAugment,
    decode_image,
    folder_transforms,
    load_image,
    preprocess,
    random_crop_flip,
)
from mobilenets.errors import UserError
from synthetic_data import idx_bytes, synthetic_images, write_fashion, write_folder

# -- Fashion-MNIST idx files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_gz_and_raw(tmp_path, gz):
    root = write_fashion(tmp_path, n_train=30, n_test=20, gz=gz)
    images, labels, names = fashion_mnist.load_fashion_mnist("train", root)
    expected, expected_labels = synthetic_images(30, 1)
    assert images.dtype == torch.uint8 and images.shape == (30, 28, 28)
    assert torch.equal(images, torch.from_numpy(expected))
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"
    assert fashion_mnist.load_fashion_mnist("test", root)[0].shape == (20, 28, 28)


@pytest.mark.skipif(not fashion_mnist.is_fashion_mnist_dir(fashion_mnist.DEFAULT_ROOT),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    images, labels, _ = fashion_mnist.load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 1000))  # balanced test set


def test_idx_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x03" + bytes(20))  # float idx: not ours
    with pytest.raises(UserError, match="x-idx3-ubyte.*magic"):
        fashion_mnist.read_idx(bad)
    bad.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(UserError, match="truncated"):
        fashion_mnist.read_idx(bad)
    gzbad = tmp_path / "y.gz"
    gzbad.write_bytes(gzip.compress(b"abc")[:-4])
    with pytest.raises(UserError, match="y.gz"):
        fashion_mnist.read_idx(gzbad)


def test_missing_dataset_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOBILENETS_FASHION_MNIST", str(tmp_path / "nowhere"))
    rc = main(["train", "--data", "fashion-mnist", "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "dataset-fashion-mnist" in err and str(tmp_path / "nowhere") in err and "set data to a folder" in err


def test_data_dir_that_does_not_exist(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope" in err and "fashion-mnist" in err


# -- decoding and preprocessing -----------------------------------------------------------------------------

@pytest.fixture()
def gray():
    return (np.arange(40 * 36).reshape(40, 36) * 7 % 256).astype(np.uint8)


def test_decode_modes_agree(tmp_path, gray):
    ref = torch.from_numpy(gray).float()[None] / 255
    files = {
        "L.png": Image.fromarray(gray),
        "RGB.png": Image.fromarray(gray).convert("RGB"),
        "RGBA.png": Image.fromarray(gray).convert("RGBA"),  # opaque alpha: same pixels
        "LA.png": Image.fromarray(gray).convert("LA"),
        "P.png": Image.fromarray(gray).convert("RGB").quantize(256),
        "I16.png": Image.fromarray(gray.astype(np.uint16) * 257),  # 16-bit: 0..65535
        "L.bmp": Image.fromarray(gray),
    }
    for name, im in files.items():
        im.save(tmp_path / name)
    for name in files:
        x = decode_image(tmp_path / name, in_chans=1)
        assert x.shape == (1, 40, 36) and x.dtype == torch.float32, name
        tol = 2.5 / 255 if name.startswith(("P", "RGB")) else 1e-6  # palette quantization, luma rounding
        assert torch.allclose(x, ref, atol=tol), (name, (x - ref).abs().max())
    rgb = decode_image(tmp_path / "L.png", in_chans=3)
    assert rgb.shape == (3, 40, 36) and torch.equal(rgb[0], rgb[2])


def test_sixteen_bit_keeps_precision(tmp_path):
    a = np.full((32, 32), 1000, np.uint16)  # 1000/65535: below one 8-bit step
    Image.fromarray(a).save(tmp_path / "deep.png")
    x = decode_image(tmp_path / "deep.png", in_chans=1)
    assert torch.allclose(x, torch.full_like(x, 1000 / 65535), atol=1e-7)


def test_alpha_composites_onto_black(tmp_path):
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., :3] = 200
    a[:, :16, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    x = decode_image(tmp_path / "rgba.png", in_chans=1)
    assert torch.allclose(x[0, :, :16], torch.tensor(200 / 255), atol=1e-3)
    assert torch.equal(x[0, :, 16:], torch.zeros(32, 16))


def test_corrupt_image_names_the_file(tmp_path, gray):
    Image.fromarray(gray).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:120])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.png", "text.jpg"):
        with pytest.raises(UserError, match=name):
            decode_image(tmp_path / name)


def test_load_image_matches_batch_preprocessing(tmp_path):
    """predict's path (file -> load_image) and training's batch path give the same tensor for one image."""
    images, _ = synthetic_images(3, 5)
    pre = default_preprocessing("fashion-mnist", 32, 1)
    Image.fromarray(images[1]).save(tmp_path / "one.png")
    batch = preprocess(torch.from_numpy(images)[:, None], pre)
    assert torch.allclose(load_image(tmp_path / "one.png", pre), batch[1], atol=1e-6)


def test_preprocess_resize_and_crop():
    pre = Preprocessing(input_size=(3, 24, 24), resize=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = preprocess(torch.full((1, 40, 64), 0.75), pre)
    assert out.shape == (3, 24, 24) and torch.allclose(out, torch.full_like(out, 0.5))


def test_tensor_augment_is_seeded_and_keeps_shape():
    images = torch.from_numpy(synthetic_images(16, 3)[0])[:, None]
    pre = default_preprocessing("fashion-mnist", 32, 1)
    aug = TensorAugment(pre, "strong", (28, 28))
    torch.manual_seed(0)
    a = aug(images)
    torch.manual_seed(0)
    b = aug(images)
    assert a.shape == (16, 1, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, TensorAugment(pre, "none", (28, 28))(images))


def _window(image: torch.Tensor, top: int, left: int, h: int, w: int, flip: bool) -> torch.Tensor:
    crop = image[:, top:top + h, left:left + w]
    return crop.flip(-1) if flip else crop


def test_random_crop_flip_is_a_per_image_window_of_the_padded_image():
    """Each output is one of the 25 windows (pad 2) of its own zero-padded image, mirrored or not, the way
    v2.RandomCrop(padding=2) + v2.RandomHorizontalFlip() treat one image; all offsets and both flips occur."""
    torch.manual_seed(0)
    images = torch.randint(1, 256, (300, 2, 7, 6), dtype=torch.uint8)  # no zeros: padding shows
    out = random_crop_flip(images, (7, 6), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    drawn = set()
    for p, o in zip(padded, out):
        windows = [(top, left, flip) for top in range(5) for left in range(5) for flip in (False, True)
                   if torch.equal(o, _window(p, top, left, 7, 6, flip))]
        assert len(windows) == 1
        drawn.add(windows[0])
    assert {(t, c) for t, c, _ in drawn} == {(t, c) for t in range(5) for c in range(5)}
    assert {f for _, _, f in drawn} == {False, True}
    with pytest.raises(UserError, match="cannot crop 12x6"):
        random_crop_flip(images, (12, 6), pad=2)


def test_erase_probability_option(tmp_path, capsys):
    images = torch.full((8, 1, 28, 28), 200, dtype=torch.uint8)
    pre = default_preprocessing("fashion-mnist", 32, 1)
    plain = TensorAugment(pre, "none", (28, 28))(images)
    torch.manual_seed(0)
    erased = TensorAugment(pre, "none", (28, 28), erase=1.0)(images)  # --erase applies at any level
    # every image loses a rectangle (set to 0) and keeps the rest of its pixels
    for e, p in zip(erased, plain):
        assert (e == 0).any() and ((e == 0) | (e == p)).all()
    torch.manual_seed(0)
    strong_without_erasing = TensorAugment(pre, "strong", (28, 28), erase=0.0)(images)
    torch.manual_seed(0)
    assert torch.equal(strong_without_erasing, TensorAugment(pre, "basic", (28, 28))(images))
    assert TensorAugment(pre, "strong", (28, 28)).erase.p == 0.25
    assert TensorAugment(pre, "basic", (28, 28)).erase is None
    with pytest.raises(UserError, match="erase=1.5 is not a probability"):
        TensorAugment(pre, "strong", (28, 28), erase=1.5)
    # image folders: erasing after the level's own steps; the transform survives pickling (DataLoader workers)
    folder = write_folder(tmp_path / "pets", per_class=2)
    rgb = default_preprocessing(str(folder), 32, 3)
    torch.manual_seed(0)
    out = pickle.loads(pickle.dumps(folder_transforms(rgb, "none", erase=1.0)))(torch.full((3, 32, 32), 0.8))
    assert out.shape == (3, 32, 32) and (out == 0).any() and (out != 0).any()
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--erase", "-0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "erase=-0.1 is not a probability" in err and not (tmp_path / "run").exists()


def test_train_batches_shard_the_global_batch(tmp_path):
    """Two ranks with batch 8 see, step by step, exactly the samples one process with batch 16 sees."""
    root = write_fashion(tmp_path, n_train=64, n_test=16)
    pre = default_preprocessing(str(root), 32, 1)
    one, _, _ = build_train_val(DataConfig(str(root), batch_size=16, augment="none", seed=3), pre)
    ranks = [build_train_val(DataConfig(str(root), batch_size=8, augment="none", seed=3), pre, r, 2)[0]
             for r in range(2)]
    for b in (one, *ranks):
        b.set_epoch(1)
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks):
        assert sorted(y.tolist()) == sorted(torch.cat([y0, y1]).tolist())
        assert torch.allclose(x.sum(0), x0.sum(0) + x1.sum(0), atol=1e-4)


# -- image folders ------------------------------------------------------------------------------------------

def test_folder_layouts(tmp_path):
    flat = write_folder(tmp_path / "flat", per_class=10)
    train, val, names = find_splits(flat, val_fraction=0.2, seed=0)
    assert names == ["cat", "dog", "fish"] and len(train) == 24 and len(val) == 6
    assert {s[1] for s in val} == {0, 1, 2}  # stratified
    assert find_splits(flat, 0.2, 0)[1] == val  # reproducible
    split = tmp_path / "split"
    write_folder(split / "train", per_class=4)
    write_folder(split / "val", per_class=2)
    train, val, names = find_splits(split)
    assert len(train) == 12 and len(val) == 6 and names == ["cat", "dog", "fish"]


def test_folder_class_mismatch_and_empty(tmp_path):
    write_folder(tmp_path / "d" / "train")
    write_folder(tmp_path / "d" / "val", classes=("cat", "dog"))
    with pytest.raises(UserError, match="differ"):
        find_splits(tmp_path / "d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="class folders"):
        find_splits(tmp_path / "empty")


def test_skip_bad_counts_and_default_fails(tmp_path):
    root = write_folder(tmp_path / "f", per_class=3)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    pre = default_preprocessing(str(root), 32, 3)
    cfg = DataConfig(str(root), batch_size=4, augment="none", skip_bad=True, val_fraction=0.3)
    train, val, _ = build_train_val(cfg, pre)
    seen = sum(len(y) for _, y in val) + sum(len(y) for _, y in train)
    assert train.bad + val.bad == 1 and seen >= 4
    with pytest.raises(UserError, match="broken.png"):
        batches, _ = build_eval(DataConfig(str(root), batch_size=64, val_fraction=0.99), pre)
        list(batches)
    ds = ImageFolderDataset([(str(root / "dog" / "broken.png"), 1)], lambda x: x, 3, skip_bad=True)
    assert collate_skip_bad([ds[0]])[2] == [str(root / "dog" / "broken.png")]


# -- validation held out from the training side ---------------------------------------------------------------

def test_fashion_mnist_validates_on_a_stratified_holdout_of_its_training_split():
    """By default Fashion-MNIST validates (and picks best.safetensors) on 10% of the training split, 600 images of
    each class drawn with --seed; the test split stays for ``mobilenets eval``. ``val_split="test"`` is the old
    behaviour: all 60,000 images train, the 10,000 test images validate."""
    from mobilenets.data.loaders import holdout_indices

    pre = default_preprocessing("fashion-mnist", 28, 1)
    train, val, _ = build_train_val(DataConfig("fashion-mnist", batch_size=1000, augment="none", seed=0), pre)
    assert (train.num_samples, val.num_samples) == (54_000, 6_000)
    labels = torch.cat([y for _, y in val])
    assert torch.bincount(labels, minlength=10).tolist() == [600] * 10  # stratified (the test split has 1,000 each)
    _, y_train, _ = fashion_mnist.load_fashion_mnist("train")
    keep, held = holdout_indices(y_train, 0.1, seed=0)
    assert len(keep) + len(held) == 60_000 and not set(keep.tolist()) & set(held.tolist())
    assert torch.equal(held, holdout_indices(y_train, 0.1, seed=0)[1])  # the same split at every resume and rank
    assert not torch.equal(held, holdout_indices(y_train, 0.1, seed=1)[1])
    first_val = next(iter(val))[0][0]  # the first held-out image, preprocessed as validation preprocesses it
    x_train, _, _ = fashion_mnist.load_fashion_mnist("train")
    torch.testing.assert_close(first_val, preprocess(x_train[held[0]][None, None], pre)[0])
    old_train, old_val, _ = build_train_val(DataConfig("fashion-mnist", batch_size=1000, augment="none",
                                                       val_split="test"), pre)
    assert (old_train.num_samples, old_val.num_samples) == (60_000, 10_000)
    assert build_eval(DataConfig("fashion-mnist", batch_size=1000), pre)[0].num_samples == 10_000
    with pytest.raises(UserError, match="val_fraction=0 must lie strictly between 0 and 1"):
        holdout_indices(y_train, 0.0, seed=0)


def test_run_configs_from_before_val_split_keep_validating_on_the_test_split():
    from mobilenets.train.config import TrainConfig
    from mobilenets.train.recipes import resolve_recipe
    new = TrainConfig(model="mobilenet_v3_small", data=DataConfig("fashion-mnist"), recipe=resolve_recipe("default"),
                      out="run").to_dict()
    assert TrainConfig.from_dict(new).data.val_split == "holdout"
    del new["data"]["val_split"]  # as config.json files written before the field existed
    assert TrainConfig.from_dict(new).data.val_split == "test"


def test_val_split_is_refused_where_there_is_no_test_split(tmp_path, capsys):
    folder = write_folder(tmp_path / "images")
    assert main(["train", "--data", str(folder), "--val-split", "test", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--val-split is for classification on Fashion-MNIST" in err
    assert not (tmp_path / "run").exists()
