"""Upload bytes -> a decoded image, refusing what would cost more than :class:`~.limits.Limits` allows.

- nothing sent: 400; not an image format we read (text, PDF, ...): 415; a known format that fails to decode
  (truncated, corrupt): 400;
- more than ``max_pixels`` pixels (width x height from the header, checked before any pixel is decoded, so a
  decompression bomb costs nothing): 413. Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``) stays on behind it;
- a JPEG much larger than the model needs is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``: libjpeg's DCT
  scaling), never below the size the preprocessing resizes to. That is cheaper than a full decode and changes
  the pixels the model sees only as much as a different resampler would; other formats decode in full.

The pixels then follow :func:`mobilenets.data.transforms.image_pixels` (modes, alpha, 16-bit, EXIF orientation),
so an upload gives the model what ``mobilenets predict`` gives it for the same file (smaller JPEGs exactly).
"""
from __future__ import annotations

import io
import warnings

import torch

from ..data.transforms import image_pixels, to_channels
from .limits import Limits, ServeError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # Pillow's names of the formats the server reads


def decode_upload(data: bytes, in_chans: int, limits: Limits, need: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(image, (height, width))``: float (in_chans, H, W) in [0, 1] and the original size in pixels. ``need``:
    the smallest side the preprocessing resizes to (JPEGs are decoded no smaller)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ServeError(400, "empty upload: send the bytes of an image file (JPEG, PNG, WebP, BMP, GIF or TIFF)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below decides
            im = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as e:
        raise ServeError(415, "not an image in a format this server reads; send JPEG, PNG, WebP, BMP, GIF or "
                              "TIFF bytes") from e
    except Image.DecompressionBombError as e:
        raise ServeError(413, f"image too large to decode ({e}); send at most {limits.max_pixels:,} pixels") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ServeError(400, f"cannot read the image header ({e}); send an intact image file") from e
    width, height = im.size
    if width * height > limits.max_pixels:
        raise ServeError(413, f"image of {width}x{height} = {width * height:,} pixels is over the limit of "
                              f"{limits.max_pixels:,}; send a smaller image")
    if width < 1 or height < 1:
        raise ServeError(400, f"image of {width}x{height} pixels has no pixels; send a real image")
    try:
        if im.format == "JPEG" and need and min(width, height) >= 2 * need:
            im.draft(im.mode, (need, need))  # keeps both sides >= need
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()  # decode now, so a truncated file fails here
        upright = ImageOps.exif_transpose(im)
        if upright.size != im.size:  # turned by 90 degrees: report the size of the upright image
            width, height = height, width
        pixels = image_pixels(upright)
    except Image.DecompressionBombError as e:
        raise ServeError(413, f"image too large to decode ({e}); send at most {limits.max_pixels:,} pixels") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ServeError(400, f"cannot decode the {im.format} image ({e}); the file is truncated or corrupt") from e
    finally:
        im.close()
    return to_channels(torch.from_numpy(pixels).permute(2, 0, 1), in_chans), (height, width)
