import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def _randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BN layer non-trivial statistics, so that a wrong mapping of BN keys changes the output."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


@pytest.fixture
def randomize_bn():
    """``randomize_bn(model)``: BN statistics and affine parameters made non-trivial (returns the model)."""
    return _randomize_bn
