from pathlib import Path

import pytest
import torch

# The numerics-sensitive test files: they compare floats across runtimes, hosts, golden files or reference
# implementations, or int8 against fp32. `make test` runs them a second time with the CPU kernels held to a lower
# instruction set (tests/lowered_isa.py), so that a tolerance tuned on one CPU fails on every host.
NUMERICS = {"test_compat.py", "test_export.py", "test_heads.py", "test_lowered_isa.py", "test_quantize.py",
            "test_reference.py", "test_runtime.py", "test_serve_oip.py", "test_task_predict.py",
            "test_triton_export.py", "test_v4.py", "test_weights.py", "test_yolo.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: numerics-sensitive; rerun with lowered CPU kernels (make test)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).name in NUMERICS:
            item.add_marker(pytest.mark.numerics)


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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: on a shared 2-core machine, 2 threads oversubscribed by other
    jobs run dense-task training steps up to 8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """``trained(name)`` -> ``(model, meta, checkpoint)``: a small classifier trained on Fashion-MNIST once per
    test run (tests/trained.py)."""
    from trained import TrainedClassifiers
    return TrainedClassifiers(tmp_path_factory.mktemp("trained"))
