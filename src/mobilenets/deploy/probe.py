"""``python -m mobilenets.deploy.probe PATH BACKEND THREADS SECONDS``: print the median ms of one inference.

Run by :func:`mobilenets.deploy.auto.choose_backend` in a fresh process per backend, so one runtime's thread pool
cannot slow down another's measurement.
"""
import sys

import numpy as np

from .bench.harness import median_ms
from .open import open_runner


def main(argv: list[str]) -> None:
    path, backend, threads, seconds = argv[0], argv[1], int(argv[2]) or None, float(argv[3])
    runner = open_runner(path, backend=backend, threads=threads)
    shape = runner.meta.preprocessing.input_size if runner.meta else (3, 224, 224)
    x = np.random.default_rng(0).standard_normal((runner.batch or 1, *shape), dtype=np.float32)
    sys.stdout.write(f"{median_ms(lambda: runner.run(x), seconds):.4f}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
