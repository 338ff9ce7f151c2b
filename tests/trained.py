"""Small classifiers trained on Fashion-MNIST once per test run (about 8 s each on one core), for the tests whose
meaning depends on a trained model: int8 files (a random model's near-tied logits say nothing about what int8 costs
a user) and anything that compares top-1 classes across runtimes.

Each is ``name`` at width 0.5, one input channel, 32 x 32 px, trained for one epoch on 12,000 training images by the
library's own trainer (``fit``), validated on its default held-out split; ``last.safetensors`` is what tests use.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from mobilenets.checkpoint import CheckpointMeta, load_checkpoint
from mobilenets.data.loaders import DataConfig
from mobilenets.tasks import get_task
from mobilenets.train.config import TrainConfig
from mobilenets.train.recipes import resolve_recipe
from mobilenets.train.state import RunFiles
from mobilenets.train.trainer import fit

SIZE = 32
TRAIN_IMAGES = 12_000


def train_classifier(name: str, out: Path) -> Path:
    """Train ``name`` into the run folder ``out``; return its last checkpoint."""
    cfg = TrainConfig(model=name, out=str(out), epochs=1, img_size=SIZE, in_chans=1, threads=1, progress=False,
                      data=DataConfig(data="fashion-mnist", batch_size=64, augment="none", limit_train=TRAIN_IMAGES,
                                      limit_val=500),
                      recipe=resolve_recipe("default", lr=4e-3, warmup_epochs=0.1, ema_decay=0.0,
                                            label_smoothing=0.0),
                      model_options={"bn_momentum": 0.1, "width_multiplier": 0.5}, bn_recalibrate=5)
    run = RunFiles(out)
    fit(get_task("classify"), cfg, run)
    return run.last


class TrainedClassifiers:
    """``trained(name)`` -> ``(model, meta, checkpoint path)``, trained on first use and kept for the session.

    ``root`` may be shared by several processes (pytest-xdist workers, and the lowered-ISA pass of ``make test``
    through ``MOBILENETS_TEST_TRAINED``): a lock per name makes the first one train and the others wait and load
    its checkpoint; a ``done`` file marks a finished training, so an interrupted one is made again."""

    def __init__(self, root: Path):
        self.root = root
        self._done: dict[str, Path] = {}

    def __call__(self, name: str):
        if name not in self._done:
            from filelock import FileLock
            self.root.mkdir(parents=True, exist_ok=True)
            out, done = self.root / name, self.root / f"{name}.done"
            with FileLock(str(self.root / f"{name}.lock")):
                if not done.is_file():
                    if out.exists():
                        shutil.rmtree(out)
                    last = train_classifier(name, out)
                    done.write_text(str(last))
                self._done[name] = Path(done.read_text())
        model, meta = load_checkpoint(self._done[name])
        return model, meta, self._done[name]

    def checkpoint(self, name: str) -> Path:
        return self(name)[2]


__all__ = ["SIZE", "TrainedClassifiers", "CheckpointMeta"]
