"""``mobilenets demo``: a MobileNetV3-Small trained on part of Fashion-MNIST in a few minutes on 2 CPU cores,
evaluated on all 10,000 test images, then asked to classify a few test images saved as PNG files."""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ..data import fashion_mnist
from ..data.loaders import DataConfig
from .classify import fit, predict
from .config import TrainConfig
from .recipes import resolve_recipe
from .state import RunFiles

# About 4 minutes on 2 idle Zen 3 cores (~300 img/s): 30,000 training images x 2 epochs at 32x32. So short a
# run fits faster without augmentation and label smoothing, and needs BN statistics that follow the weights
# closely (momentum 0.1 instead of V3's 0.01).
DEMO_TRAIN_IMAGES = 30_000
DEMO_EPOCHS = 2
SAMPLES = 6


def run_demo(out: str | Path, threads: int | None = None, progress: bool = True) -> int:
    run = RunFiles(Path(out))
    if run.state.exists():  # a fresh demo every time: old run files would be mistaken for resume state
        for f in run.root.iterdir():
            if f.is_file():
                f.unlink()
    cfg = TrainConfig(model="mobilenet_v3_small",
                      data=DataConfig(data="fashion-mnist", batch_size=128, augment="none",
                                      limit_train=DEMO_TRAIN_IMAGES),
                      recipe=resolve_recipe("default", lr=4e-3, warmup_epochs=0.3, ema_decay=0.998,
                                            label_smoothing=0.0),
                      out=str(run.root), epochs=DEMO_EPOCHS, model_options={"bn_momentum": 0.1}, img_size=32,
                      in_chans=1, threads=threads, progress=progress)
    record = fit(cfg, run)
    images, labels, names = fashion_mnist.load_fashion_mnist("test")
    sample_dir = run.root / "samples"
    sample_dir.mkdir(exist_ok=True)
    paths = []
    for i in range(SAMPLES):
        path = sample_dir / f"test_{i:05d}_{names[labels[i]].replace('/', '-').replace(' ', '_')}.png"
        Image.fromarray(images[i].numpy()).save(path)
        paths.append(str(path))
    print(f"\nrun folder {run.root}:")
    for f in sorted(run.root.rglob("*")):
        if f.is_file():
            print(f"  {f.relative_to(run.root)}  ({f.stat().st_size:,} bytes)")
    print(f"\ntest accuracy (10,000 images): top-1 {record['val_top1']:.4f}, top-5 {record['val_top5']:.4f}")
    print("\npredictions for a few test images (true class in the file name):")
    predict(argparse.Namespace(checkpoint=str(run.best), images=paths, top_k=3, backend="torch",
                               threads=threads, json=False))
    print(f"\nnext: mobilenets eval {run.best} --data fashion-mnist ; mobilenets predict {run.best} IMAGE.png")
    return 0


