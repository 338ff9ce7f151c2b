"""Small models and images for the serve tests (tests/test_serve*.py): tiny random-weight checkpoints whose
outputs depend on the input, and image files made here."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
from mobilenets.data.dense import MEAN, STD
from mobilenets.data.transforms import preprocess

SIZE = 64
CLASSES = [f"class{i}" for i in range(10)]
DENSE_CLASSES = ["background"] + [f"c{i}" for i in range(1, 6)]


def _vary(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics, so that different images give clearly different outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_((torch.rand(m.running_mean.shape, generator=g) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)


def classifier(path) -> None:
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=len(CLASSES), width_multiplier=0.5)
    pre = Preprocessing(input_size=(3, SIZE, SIZE), resize=72)
    # BN statistics of pictures like the test's (so outputs vary with the image), a strong classifier
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
    batch = torch.stack([torch.from_numpy(picture(100 + i).copy()).permute(2, 0, 1) for i in range(32)])
    with torch.no_grad():
        model.train()(preprocess(batch, pre))
        model.classifier.weight.normal_(0, 0.5)
    meta = CheckpointMeta(model="mobilenet_v3_small", options=dict(model.arch_options), class_names=CLASSES,
                          preprocessing=pre)
    save_checkpoint(path, model.eval(), meta)


@contextlib.contextmanager
def cached_classifier(folder):
    """A ``classifier`` checkpoint, ``folder/cls.safetensors``, with MOBILENETS_CACHE (where exports are kept)
    pointed at ``folder/cache`` until the block ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBILENETS_CACHE", str(folder / "cache"))
        ckpt = folder / "cls.safetensors"
        classifier(ckpt)
        yield ckpt


def dense(path, task: str, name: str | None = None, **options) -> None:
    """An untrained detector (SSDLite, or ``name`` with ``options``) or LR-ASPP segmenter with varied BN
    statistics; a detector's class scores made confident, so that a few detections are clear-cut."""
    torch.manual_seed(0)
    name = name or ("ssdlite" if task == "detect" else "lraspp")
    model = mobilenets.create_model(name, backbone="mobilenet_v3_small", num_classes=len(DENSE_CLASSES),
                                    width_multiplier=0.5, **options)
    _vary(model)
    if task == "detect":
        with torch.no_grad():
            heads = [model.head, getattr(model, "head_o2o", model.head)] if name == "yolo" else []
            outputs = [b[-1] for h in heads for b in h.cls_branches] or [b[-1] for b in model.cls_head.blocks]
            for conv in set(outputs):
                conv.weight.mul_(30)
                if name == "yolo":  # from the 0.01 prior to 0.5: scores spread across the threshold
                    conv.bias.zero_()
    meta = CheckpointMeta(model=name, options=dict(model.arch_options), task=task, class_names=DENSE_CLASSES,
                          preprocessing=Preprocessing(input_size=(3, SIZE, SIZE), resize=SIZE, mean=MEAN, std=STD,
                                                      interpolation="bilinear"))
    save_checkpoint(path, model.eval(), meta)


def picture(seed: int, size=(96, 80)) -> np.ndarray:
    """A smooth random RGB picture (uint8 (H, W, 3)): blobs of colour, like a photo more than noise is."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


def encoded(a: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def bomb(side: int = 4000) -> bytes:
    """A PNG of side x side black pixels: a few kB on the wire, side**2 pixels decoded."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
