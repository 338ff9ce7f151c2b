"""Image decoding and preprocessing: a file becomes exactly the tensor a checkpoint's model expects.

:func:`load_image` is the one public entry point for inference (``predict``, the deploy runtimes): it decodes
PNG/JPEG/BMP/TIFF/GIF/WebP files of any mode and applies the checkpoint's :class:`Preprocessing`. Training uses
the same :func:`preprocess` on batches, so train, eval and predict see identical pixels for identical images.

Mode handling (Pillow modes):
- ``L``/``1``: grayscale; ``I;16*`` and ``I`` (16-bit PNG/TIFF): scaled by 1/65535, not clipped to 8 bits;
  ``F``: taken as already in [0, 1];
- ``P``/``PA`` (palette): expanded through the palette, with its transparency;
- ``LA``/``RGBA``: composited onto black, i.e. fully transparent pixels become 0. Black, not white, because the
  Fashion-MNIST convention is a bright object on a black background, and it makes the result independent of the
  colour values hidden under transparent pixels;
- ``CMYK``/``YCbCr``/``LAB``/``HSV``: converted to RGB;
- then to the model's channel count: RGB -> 1 channel by ITU-R 601-2 luma (as Pillow's ``convert("L")``),
  1 channel -> 3 by repetition. EXIF orientation is applied.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from ..preprocessing import Preprocessing

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights Pillow uses for RGB -> L
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# the image files that data folders are searched for (image folders, mask folders, calibration samples)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _pixels(path: Path) -> np.ndarray:
    """Decode ``path`` to float32 (H, W, 1 or 3) in [0, 1]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    im: Image.Image
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncated files fail here and not somewhere later
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise UserError(f"cannot open image {path}: {e.strerror}") from e
        raise UserError(f"cannot decode image {path}: {e} (corrupt or not an image; replace or delete the file, "
                        "or pass skip_bad=True)") from e
    return image_pixels(im)


def image_pixels(im) -> np.ndarray:
    """A decoded Pillow image (loaded, EXIF orientation applied) as float32 (H, W, 1 or 3) in [0, 1], by the
    mode rules of the module notes."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        a = np.asarray(im, dtype=np.float32) / 65535.0
    elif mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    else:
        if mode in ("P", "PA"):
            im = im.convert("RGBA")
        elif mode == "1":
            im = im.convert("L")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGB")
        a = np.asarray(im, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] in (2, 4):  # trailing alpha: composite onto black
        a = a[:, :, :-1] * a[:, :, -1:]
    return np.ascontiguousarray(a)


def decode_image(path: str | os.PathLike, in_chans: int = 3) -> torch.Tensor:
    """Decode an image file to a float32 tensor (in_chans, H, W) in [0, 1]; see the module notes for modes."""
    if in_chans not in (1, 3):
        raise UserError(f"in_chans={in_chans} is not supported for image files; use 1 (grayscale) or 3 (RGB)")
    return to_channels(torch.from_numpy(_pixels(Path(path))).permute(2, 0, 1), in_chans)


def to_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A (1 or 3, H, W) image with ``in_chans`` channels: RGB -> luma, grey -> repeated; contiguous."""
    if in_chans == 1 and x.shape[0] == 3:
        x = torch.tensordot(torch.tensor(LUMA), x, dims=1).unsqueeze(0)
    elif in_chans == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.contiguous()


def preprocess(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Resize (shorter side to ``pre.resize``), centre-crop to ``pre.input_size`` and normalize.

    ``images``: float in [0, 1] or uint8, shape (C, H, W) or (B, C, H, W).
    """
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    c, h, w = pre.input_size
    if images.shape[-3] == 1 and c == 3:  # grayscale data into an RGB model
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    interpolation = INTERPOLATIONS.get(pre.interpolation)
    if interpolation is None:
        raise UserError(f"unknown interpolation {pre.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
    if min(images.shape[-2:]) != pre.resize:
        images = TF.resize(images, [pre.resize], interpolation=interpolation, antialias=True)
    if tuple(images.shape[-2:]) != (h, w):
        images = TF.center_crop(images, [h, w])
    return TF.normalize(images, list(pre.mean), list(pre.std))


def load_image(path: str | os.PathLike, pre: Preprocessing) -> torch.Tensor:
    """The model input for one image file: float32 (C, H, W) following the checkpoint's preprocessing."""
    return preprocess(decode_image(path, pre.input_size[0]), pre)


AUGMENTATIONS = ("none", "basic", "strong")
STRONG_ERASE_P = 0.25  # random-erasing probability of --augment strong unless --erase says otherwise


def erase_probability(level: str, erase: float | None) -> float:
    """Random-erasing probability: ``erase`` when given (any level), else ``STRONG_ERASE_P`` for ``strong`` and 0
    otherwise."""
    if erase is None:
        return STRONG_ERASE_P if level == "strong" else 0.0
    if not 0.0 <= erase <= 1.0:
        raise UserError(f"erase={erase} is not a probability; give a value from 0 to 1 (e.g. erase=0.5)")
    return erase


def random_crop_flip(images: torch.Tensor, size: tuple[int, int], pad: int) -> torch.Tensor:
    """Each image of the batch (B, C, H, W) cropped to ``size`` at its own random offset in the zero-padded batch
    and flipped horizontally with p 0.5: what ``v2.RandomCrop(size, padding=pad)`` then
    ``v2.RandomHorizontalFlip()`` do to one image, done for all of them by one gather.

    Why not v2 on the batch: a v2 transform draws one offset and one flip for the whole batch. Per image in a
    Python loop it cost 7.96 ms per batch of 128 against 1.24 ms for this, ~3% of a V1 0.75 step on 2 cores
    (``benchmarks/fashion_step_profile.py``, BENCHMARKS.md).
    """
    b = images.shape[0]
    h, w = size
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    if padded.shape[-2] < h or padded.shape[-1] < w:
        raise UserError(f"cannot crop {h}x{w} from {tuple(images.shape[-2:])} images padded by {pad}")
    rows = torch.randint(0, padded.shape[-2] - h + 1, (b, 1)) + torch.arange(h)
    cols = torch.randint(0, padded.shape[-1] - w + 1, (b, 1)) + torch.arange(w)
    cols = torch.where(torch.rand(b, 1) < 0.5, cols.flip(1), cols)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, h, w, C)
    return out.permute(0, 3, 1, 2).contiguous()


class TensorAugment:
    """Training augmentation for small images held in memory as a uint8 batch (B, C, H, W).

    ``basic``: random crop with ``pad`` pixels of zero padding + horizontal flip (the data set's benchmark
    "MobileNet" entry used flips), drawn per sample but applied to the whole batch at once by
    :func:`random_crop_flip`; resizing and normalizing then run once on the batch through :func:`preprocess`, the
    same code that evaluation and ``predict`` use. ``strong`` adds torchvision's random erasing (p=0.25, per
    sample) after normalization. ``erase`` sets that probability at any level (see :func:`erase_probability`).
    """

    def __init__(self, pre: Preprocessing, level: str, image_size: tuple[int, int], pad: int = 2,
                 erase: float | None = None):
        if level not in AUGMENTATIONS:
            raise UserError(f"unknown augment {level!r}; use one of {', '.join(AUGMENTATIONS)}")
        self.pre = pre
        self.crop = ((image_size[0], image_size[1]), pad) if level != "none" else None
        p = erase_probability(level, erase)
        self.erase = v2.RandomErasing(p=p, value=0) if p > 0 else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            images = random_crop_flip(images, *self.crop)
        x = preprocess(images, self.pre)
        if self.erase is not None:
            x = torch.stack([self.erase(img) for img in x])
        return x


def folder_transforms(pre: Preprocessing, level: str,
                      erase: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample training transform for decoded image-folder images (float (C, H, W) in [0, 1])."""
    if level not in AUGMENTATIONS:
        raise UserError(f"unknown augment {level!r}; use one of {', '.join(AUGMENTATIONS)}")
    p = erase_probability(level, erase)
    erasing = [v2.RandomErasing(p=p, value=0)] if p > 0 else []
    if level == "none":  # a partial, not a lambda: DataLoader workers pickle it
        base = functools.partial(preprocess, pre=pre)
        return v2.Compose([base, *erasing]) if erasing else base
    _, h, w = pre.input_size
    steps = [v2.RandomResizedCrop([h, w], scale=(0.25, 1.0), interpolation=INTERPOLATIONS[pre.interpolation],
                                  antialias=True),
             v2.RandomHorizontalFlip()]
    if level == "strong":
        steps.append(v2.TrivialAugmentWide())
    steps.append(v2.Normalize(list(pre.mean), list(pre.std)))
    return v2.Compose(steps + erasing)
