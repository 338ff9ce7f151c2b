"""The zoo's contract, parametrised over the registry so a new variant is covered automatically."""
import pytest
import torch

import mobilenets
from mobilenets import UserError
from mobilenets.registry import get_entry

CLASSIFIERS = mobilenets.list_models("classify")


def test_registry_lists_the_four_papers_variants():
    assert {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("size", [(32, 32), (64, 96), (224, 224)])
def test_output_shape_at_several_resolutions(name, size):
    model = mobilenets.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_contract_features_head_and_reset(name):
    model = mobilenets.create_model(name, num_classes=5, in_chans=1).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (1, 3) and model.num_classes == 3
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_parameter_receives_a_gradient(name):
    model = mobilenets.create_model(name, num_classes=4).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_info_matches_real_feature_maps(name, output_stride):
    model = mobilenets.create_model(name, output_stride=output_stride).eval()
    size = 96
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, size, size))
    assert len(feats) == len(model.feature_info)
    for info, f in zip(model.feature_info, feats):
        assert f.shape[1] == info.channels
        assert size // f.shape[-1] == info.reduction <= output_stride
        assert model.get_submodule(info.module) is not None
    assert model.feature_info[-1].reduction == output_stride
    assert [i.reduction for i in model.feature_info] == sorted(i.reduction for i in model.feature_info)
    # a subset of indices returns just those maps
    with torch.no_grad():
        sub = model.forward_intermediates(torch.randn(1, 3, size, size), indices=[1, 2])
    assert [s.shape[1] for s in sub] == [model.feature_info[1].channels, model.feature_info[2].channels]


def test_output_stride_dilates_instead_of_striding():
    model = mobilenets.create_model("mobilenet_v3_large", output_stride=16, num_classes=0).eval()
    dilations = [m.dilation[0] for m in model.stages[-1].modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert dilations == [1, 2, 2]  # TF/DeepLab policy: the block that loses its stride is not dilated yet
    tv = mobilenets.create_model("mobilenet_v3_large", output_stride=16, dilation_policy="torchvision")
    assert [m.dilation[0] for m in tv.stages[-1].modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1] == [2, 2, 2]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_torch_export(name):
    model = mobilenets.create_model(name, num_classes=3, width_multiplier=0.5).eval()
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
    with pytest.raises(UserError, match=r"smaller than 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(UserError, match=r"in_chans=1"):
        model(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("norm", ["batchnorm", "frozenbatchnorm", "groupnorm"])
def test_norm_layer_choice(norm):
    model = mobilenets.create_model("mobilenet_v3_small", norm_layer=norm, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    assert get_entry("mobilenet_v3_small").task == "classify"
