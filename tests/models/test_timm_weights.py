"""The timm weight entries added with issue 31 (V1 1.25, V2 1.4 / 0.5, the TF-ported V3s with TF padding and BN eps
1e-3, V3-Large MIIL in21k, V4 Conv-L anti-aliased): each entry's key map, options and preprocessing, checked by
serving timm's random-init state dict of that model from a file:// URL through the real download path and
comparing outputs with timm's. No network: the files are written here."""
import pytest
import torch
from safetensors.torch import save_file

import mobilenets
from mobilenets import UserError, weights
from mobilenets.layers import TFSameConv2d

timm = pytest.importorskip("timm")  # test-only reference implementation

pytestmark = pytest.mark.usefixtures("one_thread")


def timm_reference(name: str, size: tuple[int, int], **kwargs) -> torch.nn.Module:
    """timm's random-init ``name`` with random BN affine parameters and statistics measured on random inputs, so
    that logits are O(1) and a wrong mapping, padding or eps shows."""
    model = timm.create_model(name, **kwargs)
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, *size, generator=g))
    return model.eval()


def serve(tmp_path, monkeypatch, key, state) -> None:
    """Serve ``state`` as the hub file of WEIGHTS[key] (a file:// URL shaped like the hub's)."""
    entry = weights.WEIGHTS[key]
    repo = entry.url.split("/timm/")[1].split("/")[0]
    path = tmp_path / "hub" / "timm" / repo / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    monkeypatch.setitem(weights.WEIGHTS, key, weights.WeightEntry(
        entry.model, entry.source, path.as_uri(), None, entry.preprocessing, entry.top1, entry.options,
        entry.variant, entry.licence, entry.classifier))
    monkeypatch.setenv("MOBILENETS_CACHE", str(tmp_path / "cache"))


# (our model, tag, width), timm model, input size (odd sizes where TF padding matters), top-1, input px, resize
ENTRIES = [
    (("mobilenet_v2", "timm", 1.4), "mobilenetv2_140", (64, 64), 76.528, 224, 256),
    (("mobilenet_v2", "timm", 0.5), "mobilenetv2_050", (64, 64), 65.928, 224, 256),
    (("mobilenet_v1", "timm", 1.25), "mobilenetv1_125", (64, 64), 76.92, 224, 248),
    (("mobilenet_v3_large", "timm:tf", 1.0), "tf_mobilenetv3_large_100", (64, 65), 75.51, 224, 256),
    (("mobilenet_v3_large", "timm:tf", 0.75), "tf_mobilenetv3_large_075", (64, 64), 73.442, 224, 256),
    (("mobilenet_v3_small", "timm:tf", 1.0), "tf_mobilenetv3_small_100", (67, 64), 67.922, 224, 256),
    (("mobilenet_v3_small", "timm:tf", 0.75), "tf_mobilenetv3_small_075", (64, 64), 65.706, 224, 256),
    (("mobilenet_v3_large", "timm:tf_minimal", 1.0), "tf_mobilenetv3_large_minimal_100", (64, 64), 72.27, 224,
     256),
    (("mobilenet_v3_small", "timm:tf_minimal", 1.0), "tf_mobilenetv3_small_minimal_100", (65, 65), 62.892, 224,
     256),
    (("mobilenet_v3_large", "timm:miil_in21k_ft_in1k", 1.0), "mobilenetv3_large_100", (64, 64), 77.92, 224, 256),
    (("mobilenet_v4_conv_large", "timm:aa_e230_r448_in12k_ft_in1k", 1.0), "mobilenetv4_conv_aa_large", (64, 96),
     84.99, 544, 544),
]


@pytest.mark.parametrize("key, tname, size, top1, px, resize", ENTRIES, ids=[e[1] for e in ENTRIES])
def test_entry_loads_timms_weights(tmp_path, monkeypatch, key, tname, size, top1, px, resize):
    model, tag, width = key
    ref = timm_reference(tname, size)
    serve(tmp_path, monkeypatch, key, ref.state_dict())
    ours = mobilenets.create_model(model, weights=tag, width_multiplier=width).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, want.abs().max().item())
    entry = ours.weights_entry
    assert (entry.top1, entry.preprocessing.input_size, entry.preprocessing.resize) == (top1, (3, px, px), resize)
    tf_port = tname.startswith("tf_")
    assert any(isinstance(m, TFSameConv2d) for m in ours.modules()) == tf_port
    assert {m.eps for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3 if tf_port else 1e-5}
    if tf_port or "miil" in tag:
        assert entry.preprocessing.interpolation == "bilinear"


def test_tf_port_without_its_padding_differs():
    """Without TF padding (or with BN eps 1e-5) the ported weights give other outputs: the options matter."""
    ref = timm_reference("tf_mobilenetv3_small_100", (64, 64))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
        plain = mobilenets.load_weights(mobilenets.create_model("mobilenet_v3_small", bn_eps=1e-3),
                                        ref.state_dict(), timm_bn_eps=1e-3).eval()
        assert (plain(x) - want).abs().max() > 1e-2 * want.abs().max()
    with pytest.raises(UserError, match="trained with BN eps 1e-05, but the model was built with bn_eps=0.001"):
        mobilenets.load_weights(mobilenets.create_model("mobilenet_v3_small", bn_eps=1e-3), ref.state_dict())


def test_in21k_backbone_keeps_a_fresh_classifier(tmp_path, monkeypatch):
    """The MIIL 21k checkpoint's 11,221-class head is not loaded: the backbone is, and the classifier is the
    model's own (here 10 classes for fine-tuning)."""
    key = ("mobilenet_v3_large", "timm:miil_in21k", 1.0)
    ref = timm_reference("mobilenetv3_large_100", (64, 64), num_classes=11221)
    serve(tmp_path, monkeypatch, key, ref.state_dict())
    ours = mobilenets.create_model("mobilenet_v3_large", weights="timm:miil_in21k", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = ours.forward_head(ours.forward_features(x), pre_logits=True)
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max() and ours.classifier.out_features == 10
    assert ours.weights_entry.top1 is None and not ours.weights_entry.classifier


def test_antialiased_downsampling_option():
    plain = mobilenets.create_model("mobilenet_v4_conv_large")
    aa = mobilenets.create_model("mobilenet_v4_conv_large", antialias=True)
    pools = [m for m in aa.modules() if isinstance(m, torch.nn.AvgPool2d)]
    assert len(pools) == 4 and aa.stem.conv.stride == (2, 2)  # the first block of each stage; not the stem
    assert aa.stages[3][0].dw.conv.stride == (1, 1) and isinstance(aa.stages[3][0].dw.aa, torch.nn.AvgPool2d)
    assert [k for k, _ in aa.state_dict().items()] == [k for k, _ in plain.state_dict().items()]
    # MACs: the four strided convs at full resolution (timm: 9.54 vs 8.68 GMACs at 448 px)
    assert mobilenets.profile(aa, (3, 448, 448)).macs == 9_537_203_200
    assert mobilenets.profile(plain, (3, 448, 448)).macs == 8_677_838_848


def test_every_tag_is_listed_and_builds_on_the_meta_device():
    listed = mobilenets.list_models(weights=True)
    assert listed == sorted(weights.WEIGHTS) and len(listed) == 38
    for name, tag, width in listed:
        entry = weights.WEIGHTS[(name, tag, width)]
        with torch.device("meta"):  # the entry's options build (no download: the model only)
            mobilenets.create_model(name, **{"width_multiplier": width, **entry.options})


def test_models_command_lists_every_weight_tag(capsys):
    from mobilenets.cli import main
    assert main(["models", "--weights"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(weights.WEIGHTS)
    gemma = [ln for ln in lines if "timm:gemma3n" in ln]
    assert len(gemma) == 2 and all(ln.split()[-1] == "gemma" and " - " in ln for ln in gemma)
    assert any(ln.split()[:3] == ["mobilenet_v4_conv_large", "timm:aa_e230_r448_in12k_ft_in1k", "1"] and
               "84.990" in ln for ln in lines)


def test_bench_peers_of_v5_are_timms_same_models():
    from mobilenets.deploy.bench.paths import PEERS
    for name in ("mobilenet_v5_300m", "mobilenet_v5_300m_enc", "mobilenet_v5_base"):
        library, peer = PEERS[name]
        with torch.device("meta"):
            ours, ref = mobilenets.create_model(name, num_classes=0 if "enc" not in name else None), \
                timm.create_model(peer, num_classes=0)
        assert library == "timm" and peer == name.replace("mobilenet_v5_", "mobilenetv5_")
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
