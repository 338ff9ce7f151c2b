"""Weight import: files of torchvision, timm and mobilenets; the download cache; stem adaptation; reports."""
import hashlib

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import mobilenets
from mobilenets import UserError, weights
from mobilenets.checkpoint import CheckpointMeta, Preprocessing, load_checkpoint, save_checkpoint, weights_meta


def _outputs_equal(a, b, x):
    a.eval(), b.eval()
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item() < 1e-4


def test_torchvision_pth_file(tmp_path, randomize_bn):
    ref = randomize_bn(torchvision.models.mobilenet_v3_small())
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = mobilenets.load_weights(mobilenets.create_model("mobilenet_v3_small"), tmp_path / "tv.pth")
    assert _outputs_equal(ours, ref, torch.randn(1, 3, 64, 64))


def test_timm_safetensors_file(tmp_path, randomize_bn):
    timm = pytest.importorskip("timm")
    ref = randomize_bn(timm.create_model("mobilenetv2_100"))
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    ours = mobilenets.load_weights(mobilenets.create_model("mobilenet_v2"), tmp_path / "model.safetensors")
    assert _outputs_equal(ours, ref, torch.randn(1, 3, 64, 64))


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"weights": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="cannot be loaded safely|not a PyTorch state dict"):
        mobilenets.load_weights(mobilenets.create_model("mobilenet_v2"), tmp_path / "evil.pth")


def test_mismatch_is_reported_key_by_key():
    v2 = torchvision.models.mobilenet_v2().state_dict()
    with pytest.raises(UserError) as info:
        mobilenets.load_weights(mobilenets.create_model("mobilenet_v3_large"), v2)
    text = str(info.value)
    assert "missing key" in text and "unexpected key" in text and "wrong shape" in text
    with pytest.raises(UserError, match="wrong shape.*classifier"):
        ours = mobilenets.create_model("mobilenet_v2", num_classes=10)
        mobilenets.load_weights(ours, v2)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        mobilenets.load_weights(mobilenets.create_model("mobilenet_v2"), tmp_path / "nope.pth")


@pytest.fixture
def local_release(tmp_path, monkeypatch, randomize_bn):
    """A torchvision release served from a file:// URL, so the real download code runs offline."""
    ref = randomize_bn(torchvision.models.mobilenet_v2())
    path = tmp_path / "release" / "mobilenet_v2-test.pth"
    path.parent.mkdir()
    torch.save(ref.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = weights.WEIGHTS[("mobilenet_v2", "torchvision", 1.0)]
    fake = weights.WeightEntry(entry.model, entry.source, path.as_uri(), digest[:8], entry.preprocessing, entry.top1)
    monkeypatch.setitem(weights.WEIGHTS, ("mobilenet_v2", "torchvision", 1.0), fake)
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    return ref, fake


def test_download_into_cache_with_checksum(local_release, tmp_path):
    ref, entry = local_release
    ours = mobilenets.create_model("mobilenet_v2", weights="torchvision")
    assert (tmp_path / "cache" / "weights" / "mobilenet_v2-test.pth").is_file()
    assert ours.weights_entry.top1 == entry.top1 and ours.weights_entry.preprocessing.resize == 232
    assert _outputs_equal(ours, ref, torch.randn(1, 3, 64, 64))
    # fine-tuning: a new head of 10 classes, everything else loaded
    tuned = mobilenets.create_model("mobilenet_v2", weights="torchvision", num_classes=10)
    torch.testing.assert_close(tuned.stages[2][0].dw.conv.weight, ref.features[4].conv[1][0].weight)
    assert tuned.classifier.out_features == 10


def test_checksum_mismatch_deletes_the_file(local_release, monkeypatch, tmp_path):
    _, entry = local_release
    bad = weights.WeightEntry(entry.model, entry.source, entry.url, "deadbeef", entry.preprocessing, entry.top1)
    monkeypatch.setitem(weights.WEIGHTS, ("mobilenet_v2", "torchvision", 1.0), bad)
    with pytest.raises(UserError, match="checksum mismatch"):
        mobilenets.create_model("mobilenet_v2", weights="torchvision")
    assert not (tmp_path / "cache" / "weights" / "mobilenet_v2-test.pth").exists()


def test_offline_names_the_url_and_the_local_alternative(monkeypatch, tmp_path):
    entry = weights.WEIGHTS[("mobilenet_v3_small", "torchvision", 1.0)]
    offline = weights.WeightEntry(entry.model, entry.source, "http://127.0.0.1:9/mobilenet_v3_small-047dcff4.pth",
                                  entry.sha256, entry.preprocessing, entry.top1)
    monkeypatch.setitem(weights.WEIGHTS, ("mobilenet_v3_small", "torchvision", 1.0), offline)
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"could not download http://127.0.0.1:9/.*weights='/path/"):
        mobilenets.create_model("mobilenet_v3_small", weights="torchvision")


def test_no_such_release():
    with pytest.raises(UserError, match="publishes no weights for mobilenet_v1"):
        mobilenets.create_model("mobilenet_v1", weights="torchvision")


def test_grayscale_stem_adapted_from_rgb(local_release):
    ref, _ = local_release
    gray = mobilenets.create_model("mobilenet_v2", weights="torchvision", in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # a gray image through the summed filters == the same image as RGB through the original
        torch.testing.assert_close(gray(x), ref.eval()(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
    four = weights.adapt_stem(torch.randn(8, 3, 3, 3), 4)
    assert four.shape == (8, 4, 3, 3)


def test_own_checkpoint_round_trip(tmp_path):
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=3, in_chans=1, width_multiplier=0.75)
    meta = CheckpointMeta(model="mobilenet_v3_small", options=model.arch_options, class_names=["a", "b", "c"],
                          preprocessing=Preprocessing((1, 32, 32), 32, (0.5,), (0.25,)))
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    loaded, meta2 = load_checkpoint(tmp_path / "m.safetensors")
    assert meta2 == meta
    assert _outputs_equal(loaded, model, torch.randn(1, 1, 32, 32))
    # load_weights accepts our own files too
    other = mobilenets.create_model("mobilenet_v3_small", num_classes=3, in_chans=1, width_multiplier=0.75)
    assert _outputs_equal(mobilenets.load_weights(other, tmp_path / "m.safetensors"), model, torch.randn(1, 1, 32, 32))
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_foreign_safetensors_is_not_a_checkpoint(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(UserError, match="not a mobilenets checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")


def test_published_weights_carry_preprocessing_and_imagenet_names():
    meta = weights_meta(weights.WEIGHTS[("mobilenet_v3_large", "torchvision", 1.0)])
    assert len(meta.class_names) == 1000 and meta.class_names[0] == "tench"
    assert meta.preprocessing.input_size == (3, 224, 224) and meta.preprocessing.resize == 232
    assert all(e.url.startswith("https://") for e in weights.WEIGHTS.values())


def test_timm_file_gets_timms_bn_eps(tmp_path, randomize_bn, caplog):
    """A default V3 has the TF reference's BN eps 1e-3; timm's V3 weights were trained with 1e-5 (loading them
    unchanged shifted the logits by ~6e-3 without a word)."""
    timm = pytest.importorskip("timm")
    ref = randomize_bn(timm.create_model("mobilenetv3_large_100")).eval()
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    ours = mobilenets.create_model("mobilenet_v3_large")
    assert ours.stem.bn.eps == 1e-3
    with caplog.at_level("INFO", logger="mobilenets.weights"):
        mobilenets.load_weights(ours, tmp_path / "model.safetensors")
    assert "BN eps of" in caplog.text and ours.stem.bn.eps == 1e-5
    assert _outputs_equal(ours, ref, torch.randn(2, 3, 96, 128))
    rebuilt = mobilenets.create_model("mobilenet_v3_large", **ours.arch_options)  # what a checkpoint rebuilds
    assert rebuilt.stem.bn.eps == 1e-5
    with pytest.raises(UserError, match="built with bn_eps=0.001; build it with bn_eps=1e-05"):
        model = mobilenets.create_model("mobilenet_v3_large", bn_eps=1e-3)
        mobilenets.load_weights(model, tmp_path / "model.safetensors")


def test_timm_v3_small_050_loads_with_timms_stem(tmp_path, monkeypatch, randomize_bn):
    """timm keeps V3's 16-channel stem at width 0.5, where the TF rule (our default) gives 8."""
    timm = pytest.importorskip("timm")
    ref = randomize_bn(timm.create_model("mobilenetv3_small_050")).eval()
    x = torch.randn(2, 3, 96, 128)
    default = mobilenets.create_model("mobilenet_v3_small", width_multiplier=0.5)
    assert default.stem.conv.out_channels == 8
    with pytest.raises(UserError, match="build the model with fix_stem=True"):
        mobilenets.load_weights(default, ref.state_dict())
    ours = mobilenets.create_model("mobilenet_v3_small", width_multiplier=0.5, fix_stem=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert _outputs_equal(mobilenets.load_weights(ours, ref.state_dict()), ref, x)
    # weights="timm" at width 0.5 picks timm's checkpoint and its stem rule (downloaded from a file:// URL)
    key = ("mobilenet_v3_small", "timm", 0.5)
    entry = weights.WEIGHTS[key]
    path = tmp_path / "timm" / "mobilenetv3_small_050.lamb_in1k" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file(ref.state_dict(), str(path))
    monkeypatch.setitem(weights.WEIGHTS, key, weights.WeightEntry(entry.model, entry.source, path.as_uri(), None,
                                                                  entry.preprocessing, entry.top1, entry.options))
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))
    picked = mobilenets.create_model("mobilenet_v3_small", weights="timm", width_multiplier=0.5)
    assert picked.stem.conv.out_channels == 16 and picked.arch_options["fix_stem"] is True
    assert _outputs_equal(picked, ref, x) and picked.weights_entry.top1 == 57.918
