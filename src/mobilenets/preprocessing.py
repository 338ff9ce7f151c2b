"""How an image becomes a model's input tensor: the vocabulary that data/, weights, checkpoints and deploy share.
A leaf module: it imports nothing of the package."""
from __future__ import annotations

from dataclasses import dataclass

# ImageNet channel statistics of torchvision's and timm's weights (RGB, images in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Inception-style statistics: (x - 0.5) / 0.5 maps images in [0, 1] to [-1, 1] (TF-trained weights, torchvision's
# SSDLite and LR-ASPP, the dense tasks).
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# ImageNet's evaluation crop: the centre ``CROP_FRACTION`` of an image (224 px of 256).
CROP_FRACTION = 0.875


def crop_resize(size: int) -> int:
    """The shorter side to resize to before a centre crop of ``size`` px: ``size / CROP_FRACTION``, rounded
    (224 -> 256)."""
    return round(size / CROP_FRACTION)


@dataclass
class Preprocessing:
    """How an image becomes the model's input tensor (mirrors torchvision's weight transforms)."""

    input_size: tuple[int, int, int] = (3, 224, 224)  # C, H, W fed to the network
    resize: int = 256  # shorter side before the centre crop (== input size: no crop)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
