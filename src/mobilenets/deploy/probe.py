"""``python -m mobilenets.deploy.probe PATH BACKEND THREADS SECONDS``: print the median ms of one inference.

Run by ``open_runner(backend="auto")`` in a fresh process per backend, so one runtime's thread pool cannot slow
down another's measurement.
"""
import sys

import numpy as np

from .runtime import open_runner, time_runner


def main(argv: list[str]) -> None:
    path, backend, threads, seconds = argv[0], argv[1], int(argv[2]) or None, float(argv[3])
    runner = open_runner(path, backend=backend, threads=threads)
    shape = runner.meta.preprocessing.input_size if runner.meta else (3, 224, 224)
    x = np.random.default_rng(0).standard_normal((runner.batch or 1, *shape), dtype=np.float32)
    print(f"{time_runner(runner, x, seconds):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
