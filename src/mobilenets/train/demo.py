"""``mobilenets demo``: a MobileNetV3-Small trained on part of Fashion-MNIST in a few minutes on 2 CPU cores,
evaluated on all 10,000 test images, then asked to classify a few test images saved as PNG files."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..data import fashion_mnist
from ..data.loaders import FASHION, DataConfig
from ..tasks import get_task
from .config import TrainConfig
from .recipes import resolve_recipe
from .state import RunFiles
from .trainer import fit

# About 4 minutes on 2 idle Zen 3 cores (~300 img/s): 30,000 training images x 2 epochs at 32x32. So short a
# run fits faster without augmentation and label smoothing, and needs BN statistics that follow the weights
# closely (momentum 0.1 instead of V3's 0.01).
DEMO_TRAIN_IMAGES = 30_000
DEMO_EPOCHS = 2
SAMPLES = 6


def run_demo(out: str | Path, threads: int | None = None, progress: bool = True) -> dict:
    """Train, then save a few test images to classify; returns the run folder, its files, the last epoch's record,
    the last checkpoint and the sample images (``mobilenets demo`` prints them and the predictions)."""
    run = RunFiles(Path(out))
    if run.state.exists():  # a fresh demo every time: old run files would be mistaken for resume state
        for f in run.root.iterdir():
            if f.is_file():
                f.unlink()
    cfg = TrainConfig(model="mobilenet_v3_small",
                      # the test split as validation: the printed figure is the last epoch's, the predictions
                      # use last.safetensors, so nothing is chosen on it
                      data=DataConfig(data=FASHION, batch_size=128, augment="none",
                                      limit_train=DEMO_TRAIN_IMAGES, val_split="test"),
                      recipe=resolve_recipe("default", lr=4e-3, warmup_epochs=0.3, ema_decay=0.998,
                                            label_smoothing=0.0),
                      out=str(run.root), epochs=DEMO_EPOCHS, model_options={"bn_momentum": 0.1}, img_size=32,
                      in_chans=1, threads=threads, progress=progress, bn_recalibrate=20)
    record = fit(get_task("classify"), cfg, run)
    images, labels, names = fashion_mnist.load_fashion_mnist("test")
    sample_dir = run.root / "samples"
    sample_dir.mkdir(exist_ok=True)
    paths = []
    for i in range(SAMPLES):
        path = sample_dir / f"test_{i:05d}_{names[labels[i]].replace('/', '-').replace(' ', '_')}.png"
        Image.fromarray(images[i].numpy()).save(path)
        paths.append(str(path))
    files = [(str(f.relative_to(run.root)), f.stat().st_size) for f in sorted(run.root.rglob("*")) if f.is_file()]
    return {"run": str(run.root), "files": files, "record": record, "checkpoint": str(run.last), "samples": paths}
