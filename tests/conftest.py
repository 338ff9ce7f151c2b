import os
from pathlib import Path

import pytest
import torch

# The numerics-sensitive test files: they compare floats across runtimes, hosts, golden files or reference
# implementations, or int8 against fp32. `make test` runs them a second time with the CPU kernels held to a lower
# instruction set (tests/lowered_isa.py), so that a tolerance tuned on one CPU fails on every host.
NUMERICS = {"test_compat.py", "test_export.py", "test_heads.py", "test_lowered_isa.py", "test_quantize.py",
            "test_reference.py", "test_runtime.py", "test_serve_oip.py", "test_task_predict.py", "test_timm_weights.py",
            "test_triton_export.py", "test_v4.py", "test_v5.py", "test_weights.py",
            "test_yolo.py", "test_yolo_int8.py", "test_v4_heads.py", "test_v4_deploy.py"}
# The files that take longest (converters, subprocesses, 300M-parameter models): `pytest -m "not slow"` is the quick
# inner loop (about half the time); `make test` and CI run everything.
SLOW = {"test_distributed.py", "test_litert.py", "test_mobile_formats.py", "test_serve_process.py",
        "test_v4_heads.py", "test_v4_train.py", "test_v4_deploy.py", "test_v5.py"}
TRAINED_ENV = "MOBILENETS_TEST_TRAINED"  # a folder for the trained classifiers, shared by make test's two passes


def pytest_configure(config):
    config.addinivalue_line("markers", "numerics: numerics-sensitive; rerun with lowered CPU kernels (make test)")
    config.addinivalue_line("markers", "slow: the longest files; -m 'not slow' for a quick inner loop")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = Path(str(item.fspath)).name
        if name in NUMERICS:
            item.add_marker(pytest.mark.numerics)
        if name in SLOW:
            item.add_marker(pytest.mark.slow)


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
    shared = os.environ.get(TRAINED_ENV)
    if shared:  # make test: one folder for both passes
        return TrainedClassifiers(Path(shared))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one folder for the workers of this run
        return TrainedClassifiers(tmp_path_factory.getbasetemp().parent / "trained")
    return TrainedClassifiers(tmp_path_factory.mktemp("trained"))
