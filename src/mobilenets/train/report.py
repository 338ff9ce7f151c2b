"""What a run folder shows a person: per-epoch metrics (JSON lines + CSV) and two figures."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from ..checkpoint import atomic_write


def write_metrics(jsonl: Path, csv_path: Path, history: list[dict]) -> None:
    """Rewrite both files from the whole history (so a resumed run never duplicates lines)."""
    atomic_write(jsonl, lambda tmp: Path(tmp).write_text("".join(json.dumps(h) + "\n" for h in history)))
    keys = list(dict.fromkeys(k for h in history for k in h))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(csv_path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    return plt


def plot_curves(path: Path, history: list[dict]) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train (smoothed targets)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], marker="o", label="train (augmented)")
    ax_acc.plot(epochs, [h["val_top1"] for h in history], marker="o", label="val top-1")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
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
