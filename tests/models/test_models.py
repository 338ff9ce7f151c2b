"""The zoo's contract, parametrised over the registry so a new variant is covered automatically."""
import pytest
import torch

import mobilenets
from mobilenets import UserError
from mobilenets.model import Location, Select
from mobilenets.registry import get_entry

# MobileNetV5-300M (294M parameters) is covered by test_v5.py on the meta device and, block for block, by
# mobilenet_v5_base, which is built here at width 0.25 (12M parameters) so that these tests stay quick.
LARGE = {"mobilenet_v5_300m", "mobilenet_v5_300m_enc"}
pytestmark = pytest.mark.usefixtures("one_thread")  # two shared cores: one thread each is faster
CLASSIFIERS = [n for n in mobilenets.list_models("classify") if n not in LARGE]
NARROW = {"mobilenet_v5_base": {"width_multiplier": 0.25}}


def create(name, **options):
    return mobilenets.create_model(name, **{**NARROW.get(name, {}), **options})


def test_registry_lists_the_five_generations():
    assert {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v4_conv_small",
            "mobilenet_v5_base"} <= set(CLASSIFIERS)
    assert LARGE <= set(mobilenets.list_models("classify"))


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("size", [(32, 32), (64, 96), (224, 224)])
def test_output_shape_at_several_resolutions(name, size):
    model = create(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_contract_features_head_and_reset(name):
    model = create(name, num_classes=5, in_chans=1).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        size = (2, 2) if model.neck is None else (model.arch.neck.resolution,) * 2  # V5's neck: 16x16 always
        assert feats.shape == (1, model.num_features, *size)
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (1, 3) and model.num_classes == 3
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_parameter_receives_a_gradient(name):
    model = create(name, num_classes=4).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_info_matches_real_feature_maps(name, output_stride):
    """Every feature_info entry is the map its module really computes: captured here with hooks on the named
    module (the input of the block's depthwise conv for an expansion), independently of forward_intermediates."""
    model = create(name, output_stride=output_stride).eval()
    size = 96
    captured, handles = {}, []
    for i, info in enumerate(model.feature_info):
        module = model.get_submodule(info.module)
        if info.location == Location.EXPANSION:
            handles.append(module.dw.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out)))
    x = torch.randn(1, 3, size, size)
    every = list(range(len(model.feature_info)))
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_intermediates(x, indices=every)
    for h in handles:
        h.remove()
    assert len(feats) == len(model.feature_info) == len(captured)
    for i, (info, f) in enumerate(zip(model.feature_info, feats)):
        assert torch.equal(f, captured[i]), info
        assert f.shape[1] == info.channels
        assert size // f.shape[-1] == info.reduction <= output_stride
    assert model.feature_info[-1].reduction == output_stride
    assert [i.reduction for i in model.feature_info] == sorted(i.reduction for i in model.feature_info)
    # the default maps are the stage outputs and the final conv, as timm's
    with torch.no_grad():
        default = model.forward_intermediates(x)
    assert [f.shape[1] for f in default] == [i.channels for i in model.feature_info
                                             if i.location in (Location.STAGE, Location.FINAL)]
    # features_only: the same maps from a network without pooling, head or classifier
    torch.manual_seed(0)
    backbone = create(name, output_stride=output_stride, features_only=True, out_indices=[1, 2])
    assert not hasattr(backbone, "classifier") and not hasattr(backbone, "global_pool")
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if k in backbone.state_dict()})
    with torch.no_grad():
        sub = backbone.eval()(x)
    assert [torch.equal(s, feats[i]) for i, s in zip((1, 2), sub)] == [True, True]
    assert logits.shape == (1, 1000)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_features_only_builds_nothing_after_the_deepest_map(name):
    full = create(name, features_only=True)
    assert sum(p.numel() for p in full.parameters()) < sum(p.numel() for p in create(name).parameters())
    stride8 = Select(Location.STAGE, 8)
    early = create(name, features_only=True, out_indices=[stride8])
    assert early.feature_info.reduction() == [8] == [early.taps[early.out_indices[0]].reduction]
    assert len(early.stages) < len(full.stages) and isinstance(early.final_conv, torch.nn.Identity)
    with pytest.raises(mobilenets.UserError, match="out_indices"):
        create(name, features_only=True, out_indices=[99])
    with pytest.raises(mobilenets.UserError, match="features_only"):
        create(name, out_indices=[0])


def test_small_inputs_that_leave_a_map_are_accepted():
    """torchvision and timm run MobileNetV3 on 28x28 Fashion-MNIST images; so do we (issue #20 defect 2)."""
    model = mobilenets.create_model("mobilenet_v3_small", in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert model(torch.randn(1, 1, 1, 1)).shape == (1, 10)  # 1x1 in, 1x1 final map


def test_output_stride_dilates_instead_of_striding():
    model = mobilenets.create_model("mobilenet_v3_large", output_stride=16, num_classes=0).eval()
    dilations = [m.dilation[0] for m in model.stages[-1].modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert dilations == [1, 2, 2]  # TF/DeepLab policy: the block that loses its stride is not dilated yet
    tv = mobilenets.create_model("mobilenet_v3_large", output_stride=16, dilation_policy="torchvision")
    depthwise = [m for m in tv.stages[-1].modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert [m.dilation[0] for m in depthwise] == [2, 2, 2]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_torch_export(name):
    model = mobilenets.create_model(name, num_classes=3, width_multiplier=0.25 if name in NARROW else 0.5).eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_minimal_variant_has_no_se_no_hswish_and_3x3_kernels():
    model = mobilenets.create_model("mobilenet_v3_large", minimal=True)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SqueezeExcite" not in kinds and "Hardswish" not in kinds
    assert {m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1} == {(3, 3)}


def test_non_square_and_grayscale_input():
    model = mobilenets.create_model("mobilenet_v2", in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 40, 120)).shape == (3, 10)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(width_multiplier=0), "width_multiplier must be > 0"),
    (dict(width_multiplier=-0.5), "width_multiplier must be > 0"),
    (dict(output_stride=4), "output_stride must be one of"),
    (dict(in_chans=0), "in_chans must be a positive integer"),
    (dict(norm_layer="layernorm"), "unknown norm_layer"),
    (dict(minimal=True), "does not take option"),  # V2 has no minimal variant
])
def test_bad_options_are_clear_errors(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        mobilenets.create_model("mobilenet_v2", **kwargs)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="did you mean mobilenet_v3_small"):
        mobilenets.create_model("mobilenet_v3_smal")


def test_bad_inputs_name_the_value_and_the_fix():
    model = mobilenets.create_model("mobilenet_v3_small").eval()
    with pytest.raises(UserError, match=r"no pixels"):
        model(torch.randn(1, 3, 0, 64))
    with pytest.raises(UserError, match=r"in_chans=1"):
        model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("norm", ["batchnorm", "frozenbatchnorm", "groupnorm"])
def test_norm_layer_choice(norm):
    model = mobilenets.create_model("mobilenet_v3_small", norm_layer=norm, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    assert get_entry("mobilenet_v3_small").task == "classify"


def test_a_misspelt_block_is_refused_not_built_as_another():
    from mobilenets.archs.spec import BLOCKS, Unit
    with pytest.raises(ValueError, match="unknown block 'uibb': use one of depthwise_separable"):
        Unit("uibb", out=16, stride=1)
    assert all(Unit(name, out=16, stride=1).block == name for name in BLOCKS)


def test_a_table_is_a_tuple_of_stages():
    """Every table groups its rows into explicit stages (the builder no longer guesses stage ends from widths):
    flat rows or an empty stage are refused when the table is written."""
    import dataclasses

    from mobilenets.archs.v1 import MOBILENET_V1

    assert all(isinstance(stage, tuple) and stage for stage in MOBILENET_V1.rows)
    flat = tuple(row for stage in MOBILENET_V1.rows for row in stage)
    for rows in (flat, (), (MOBILENET_V1.rows[0], ())):
        with pytest.raises(ValueError, match="rows must be a non-empty tuple of stages"):
            dataclasses.replace(MOBILENET_V1, rows=rows)


def _describes_its_outputs(model, x) -> None:
    """timm's features_only contract: ``feature_info`` lists exactly the returned maps, in order."""
    with torch.no_grad():
        outs = model.eval()(x)
    info = model.feature_info
    assert len(info) == len(outs)
    assert info.channels() == [o.shape[1] for o in outs]
    assert info.reduction() == [x.shape[-1] // o.shape[-1] for o in outs]
    assert [info.channels(i) for i in range(len(outs))] == info.channels()
    assert info.reduction([0, len(outs) - 1]) == [info.reduction(0), info.reduction(-1)]
    assert len(info.module_name()) == len(outs) and all(isinstance(n, str) for n in info.module_name())


@pytest.mark.parametrize("out_indices", [None, [Select(Location.EXPANSION, 16), Select(Location.STAGE, 8)]])
def test_features_only_feature_info_describes_exactly_the_outputs_as_timms(out_indices):
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 128, 128)
    _describes_its_outputs(timm.create_model("mobilenetv3_small_100", pretrained=False, features_only=True), x)
    options = {} if out_indices is None else {"out_indices": out_indices}
    ours = create("mobilenet_v3_small", features_only=True, **options)
    _describes_its_outputs(ours, x)
    full = create("mobilenet_v3_small")
    assert len(full.feature_info) > len(ours.feature_info)  # the classifier lists every tap
    assert list(ours.feature_info) == [full.feature_info[i] for i in ours.out_indices] == [
        ours.taps[i] for i in ours.out_indices]
    if out_indices is not None:  # in the order asked, not the network's
        assert [f.location for f in ours.feature_info] == [Location.EXPANSION, Location.STAGE]
    assert all(f.module == (f"stages.{f.stage}" if f.block is None else f"stages.{f.stage}.{f.block}")
               for f in full.feature_info if f.stage is not None)
