"""The lowered-ISA pass (tests/lowered_isa.py) really runs the kernels it names: outside the pass this test checks
the caps' mapping; inside it, that PyTorch runs at the capped level and that oneDNN reports the capped ISA."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lowered_isa import ENV_FLAG, caps


def test_caps_only_go_down():
    assert caps("AVX512")["ATEN_CPU_CAPABILITY"] == "avx2" and caps("AVX512")["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert caps("AVX2")["ATEN_CPU_CAPABILITY"] == "default" and caps("AVX2")["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    assert caps("DEFAULT")[ENV_FLAG] == "DEFAULT"


@pytest.mark.skipif(ENV_FLAG not in os.environ, reason="only inside the lowered-ISA pass (make test runs it)")
def test_the_pass_runs_at_the_capped_level():
    assert torch.backends.cpu.get_cpu_capability() == os.environ[ENV_FLAG]
    # a depthwise convolution: PyTorch hands it to oneDNN (a small dense one may take its own kernel)
    code = "import torch; torch.nn.functional.conv2d(torch.ones(1, 16, 32, 32), torch.ones(16, 1, 3, 3), groups=16)"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                          capture_output=True, text=True, check=True)
    isa = next(line for line in done.stdout.splitlines() if ",info,cpu,isa:" in line)
    want = {"AVX2": "Intel AVX2", "SSE41": "Intel SSE4.1"}[os.environ["ONEDNN_MAX_CPU_ISA"]]
    assert isa.rsplit("isa:", 1)[1].startswith(want), isa
