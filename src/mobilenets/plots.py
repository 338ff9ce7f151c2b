"""The figures of a run folder: training curves and a confusion matrix (matplotlib, files only)."""
from __future__ import annotations

from pathlib import Path

import torch

from .files import atomic_write


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


# A figure's panels: (title, y label, [(metrics.jsonl key, legend label), ...]); each task names its own.
Panels = tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]


def plot_curves(path: Path, history: list[dict], panels: Panels) -> None:
    """One panel per entry of ``panels``, each key of the per-epoch ``history`` a line over the epochs."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, ylabel, lines) in zip(axes[0], panels):
        for key, label in lines:
            if all(key in h for h in history):
                ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def plot_confusion(path: Path, confusion: torch.Tensor, class_names: list[str], title: str) -> None:
    plt = _pyplot()
    n = len(class_names)
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
