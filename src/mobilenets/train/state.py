"""The files of a run folder and the resume state.

``state.pt`` holds everything ``--resume`` needs (weights, EMA, optimizer, scheduler, completed epochs, metrics
history) as tensors and plain containers, written atomically after every epoch and read back with
``torch.load(weights_only=True)``. Randomness needs no saved generator: every epoch re-seeds from
(seed, epoch, rank) (see :func:`seed_epoch`), so the epoch number alone fixes what comes next, on every rank.
"""
from __future__ import annotations

import json
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write


@dataclass(frozen=True)
class RunFiles:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def state(self) -> Path:
        return self.root / "state.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def best(self) -> Path:
        return self.root / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.root / "last.safetensors"

    @property
    def curves(self) -> Path:
        return self.root / "training_curves.png"

    @property
    def confusion(self) -> Path:
        return self.root / "confusion_matrix.png"


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch and Python for one epoch of one rank (augmentation, dropout)."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank) % (2 ** 63)
    torch.manual_seed(s)
    random.seed(s)


def save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"cannot resume: no {path.name} in {path.parent}; the run stopped before its first epoch "
                        "ended (start it again, not resuming) or the folder is not a run folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot resume: {path} is unreadable ({e}); start the run again, not resuming") from e


def write_config(path: Path, config: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))


def read_config(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"cannot resume {path.parent}: no config.json there; pass the out folder of an earlier run")
    return json.loads(path.read_text())


def ensure_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {path}: {e.strerror}; choose another out folder") from e
    return path
