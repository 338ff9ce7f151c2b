"""Fashion-MNIST test accuracy of eager PyTorch and of an exported file, for the export report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ..checkpoint import CheckpointMeta
from ..data.samples import fashion_mnist_inputs
from ..errors import UserError
from .formats import RUNS_ON, installed
from .open import open_runner
from .runtime import module_outputs


def accuracy(predict, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((predict(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(images)


def accuracy_report(model: nn.Module, meta: CheckpointMeta, exported: Path, *, backend: str | None = None,
                    limit: int | None = None) -> str:
    """One line: eager accuracy, the exported file's accuracy and the change in points (a classifier's top-1 on
    the Fashion-MNIST test split: ``meta.task`` must be classify)."""
    if meta.task != "classify":
        raise UserError(f"the accuracy report measures a classifier's Fashion-MNIST top-1; {exported.name} holds a "
                        f"{meta.task} model (its own metrics: mobilenets eval)")
    images, labels, _ = fashion_mnist_inputs(meta.preprocessing, "test", limit=limit)
    model = model.eval()
    backend = backend or next((b for b in RUNS_ON[exported.suffix] if installed(b)), None)
    if backend is None:
        raise UserError(f"the accuracy report needs a backend that runs {exported.name} here, and none does "
                        f"({', '.join(RUNS_ON[exported.suffix])})")
    runner = open_runner(exported, backend=backend)

    base = accuracy(lambda x: module_outputs(model, x)[0], images, labels)
    got = accuracy(runner.run, images, labels)
    return (f"Fashion-MNIST test accuracy ({len(images)} images): eager PyTorch {base:.2%}, {exported.name} on "
            f"{backend} {got:.2%} ({(got - base) * 100:+.2f} points)")
