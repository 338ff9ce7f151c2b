"""The lowered-ISA pass of ``make test``: the numerics-sensitive tests (marked ``numerics``, see conftest.py) run
again with the CPU kernels held below this host's best instruction set, so that a tolerance tuned on one CPU fails
here, on any host, instead of on a user's older CPU.

Caps only go down: an AVX-512 (or AMX) host runs the pass as an AVX2 CPU would, an AVX2 host as a pre-AVX CPU
(SSE4.1). The caps are PyTorch's ``ATEN_CPU_CAPABILITY`` (its vectorised ATen kernels) and oneDNN's
``ONEDNN_MAX_CPU_ISA`` (PyTorch's convolutions and OpenVINO's CPU plugin); ONNX Runtime and XNNPACK have no such
switch and run as usual. ``tests/test_lowered_isa.py`` checks that the cap is really in force during the pass.

    .venv/bin/python tests/lowered_isa.py [pytest options]
"""
from __future__ import annotations

import os
import subprocess
import sys

ENV_FLAG = "MOBILENETS_LOWERED_ISA"  # set during the pass to the ATen capability it must run at


def caps(host_capability: str) -> dict[str, str]:
    """The environment of the pass for a host whose PyTorch CPU capability is ``host_capability``."""
    if host_capability.upper().startswith("AVX512"):
        return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", ENV_FLAG: "AVX2"}
    return {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", ENV_FLAG: "DEFAULT"}


def main(argv: list[str]) -> int:
    import torch

    host = torch.backends.cpu.get_cpu_capability()
    env = caps(host)
    print(f"lowered-ISA pass: host {host}; " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", "-m", "numerics", *argv], env={**os.environ, **env})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
