"""Turn ``CHECKPOINT_OR_NAME`` into an eval-mode ``nn.Module`` plus the :class:`CheckpointMeta` that travels
with every exported file.

Accepted: a mobilenets checkpoint (``.safetensors`` with mobilenets metadata), a torchvision or timm MobileNet
state dict (``.pth`` / ``.pt`` / foreign ``.safetensors``, matched against the registry with
:func:`mobilenets.load_weights`), or a registered model name (random init, or ``weights="torchvision"`` /
``"timm"``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..checkpoint import CheckpointMeta, Preprocessing, load_checkpoint, weights_meta
from ..errors import UserError
from ..preprocessing import INCEPTION_MEAN, INCEPTION_STD, crop_resize
from ..weights import read_state_dict

log = logging.getLogger(__name__)


def load_source(spec: str, *, weights: str | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """The model and metadata ``spec`` names; one-line :class:`UserError` when it is neither a known model nor a
    MobileNet checkpoint."""
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise UserError(f"weights={weights!r} only applies to a model name, but {spec} is a file; drop weights")
        return _load_file(path)
    if path.suffix in {".safetensors", ".pth", ".pt", ".bin"} or "/" in spec:
        raise UserError(f"checkpoint {spec} not found; pass an existing checkpoint file or a model name "
                        "(see 'mobilenets models')")
    from ..registry import create_model, get_entry

    entry = get_entry(spec)  # UserError with close matches for a typo
    if entry.task != "classify":
        raise UserError(f"model {spec!r} is a {entry.task} model; a model name exports only classifiers (a "
                        f"{entry.task} model exports from its trained checkpoint)")
    model = create_model(spec, weights=weights).eval()
    published = getattr(model, "weights_entry", None)
    options = cast(dict, model.arch_options)  # create_model sets it (nn.Module types attributes as Tensor | Module)
    if published is not None:  # published weights: their own preprocessing and ImageNet's class names
        return model, weights_meta(published, options)
    return model, meta_for(model, spec, options)


def meta_for(model: nn.Module, name: str, options: dict, class_names: list[str] | None = None,
             resolution: int | None = None) -> CheckpointMeta:
    """Metadata for a model that did not come from a mobilenets checkpoint (ImageNet-style preprocessing) at
    ``resolution``, by default the model's native one (the registry's: 224 for V1-V3, 224-384 for V4)."""
    from ..registry import get_entry

    in_chans = _first_conv(model).in_channels
    size = resolution or get_entry(name).default_resolution
    shape, resize = (in_chans, size, size), crop_resize(size)  # 224 -> 256, ImageNet's centre crop
    pre = Preprocessing(input_size=shape, resize=resize)
    if in_chans != 3:  # no ImageNet statistics for other channel counts: (x - 0.5) / 0.5 in every channel
        pre = Preprocessing(input_size=shape, resize=resize, mean=INCEPTION_MEAN[:1] * in_chans,
                            std=INCEPTION_STD[:1] * in_chans)
    return CheckpointMeta(model=name, options=dict(options), class_names=list(class_names or []),
                          preprocessing=pre)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise UserError(f"{type(model).__name__} has no Conv2d layer; it is not a MobileNet")


def _load_file(path: Path) -> tuple[nn.Module, CheckpointMeta]:
    if path.suffix == ".safetensors" and _is_mobilenets_checkpoint(path):
        model, meta = load_checkpoint(path)
        return model.eval(), meta
    return _match_registry(path, read_state_dict(path))


def _is_mobilenets_checkpoint(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == "mobilenets"
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); pass a mobilenets, torchvision or "
                        "timm MobileNet checkpoint") from e


def _match_registry(path: Path, state: dict[str, torch.Tensor]) -> tuple[nn.Module, CheckpointMeta]:
    """Find the registered classifier whose torchvision/timm key mapping accepts ``state``."""
    from ..registry import create_model, list_models
    from ..weights import load_weights

    convs = [v for v in state.values() if v.ndim == 4]
    linears = [v for v in state.values() if v.ndim == 2]
    if not convs or not linears:
        raise UserError(f"{path} is not a MobileNet checkpoint (no conv and classifier weights); pass a "
                        "mobilenets, torchvision or timm MobileNet checkpoint")
    options: dict[str, Any] = {"in_chans": int(convs[0].shape[1]), "num_classes": int(linears[-1].shape[0])}
    for name in list_models(task="classify"):
        try:  # probe on the meta device: key names and shapes only, no 300M-parameter builds for a mismatch
            with torch.device("meta"):
                load_weights(create_model(name, **options), state)
        except (UserError, RuntimeError, KeyError):
            continue
        model = create_model(name, **options)
        load_weights(model, state)
        log.info("%s matched %s %s", path, name, options)
        return model.eval(), meta_for(model, name, options)
    raise UserError(f"{path} is not a mobilenets, torchvision or timm MobileNet checkpoint (its {len(state)} "
                    f"tensors match no registered model); check the file, or build the model in Python and "
                    "call mobilenets.deploy.export_model")
