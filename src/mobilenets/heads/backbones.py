"""Zoo backbones for the task heads: a ``features_only`` build of a classification model, and the maps of
torchvision's task checkpoints onto it."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import UserError
from ..model import MobileNet, Select
from ..registry import create_model, get_entry, list_models


def build_backbone(name: str, taps: Sequence[Select], *, width_multiplier: float = 1.0,
                   reduced_tail: bool | None = None, default_reduced_tail: bool = False, in_chans: int = 3,
                   norm_layer: str | None = None, output_stride: int = 32,
                   dilation_policy: str | None = None) -> MobileNet:
    """``create_model(name, features_only=True, out_indices=taps)`` for a classification model of the zoo: no
    pooling, head or classifier, and nothing after the deepest tap; ``forward`` returns the tapped maps in the
    order of ``taps``, their channels are ``channels_of(backbone)``.

    ``reduced_tail`` exists for MobileNetV3 only (last stage at half the channels, Table 6 of arXiv:1905.02244);
    ``None`` means ``default_reduced_tail`` for V3 and off for the others.
    """
    entry = get_entry(name)
    if entry.task != "classify":
        raise UserError(f"backbone={name!r} is a {entry.task} model; pick a classification backbone: "
                        f"{', '.join(list_models(task='classify'))}")
    takes_tail = "reduced_tail" in inspect.signature(entry.builder).parameters
    if reduced_tail is None:
        reduced_tail = default_reduced_tail and takes_tail
    options: dict[str, Any] = dict(features_only=True, out_indices=list(taps), width_multiplier=width_multiplier,
                   in_chans=in_chans, output_stride=output_stride)
    if reduced_tail:
        if not takes_tail:
            raise UserError(f"reduced_tail=True is a MobileNetV3 option, {name!r} has no reduced tail; "
                            "drop reduced_tail or use backbone=mobilenet_v3_large / mobilenet_v3_small")
        options["reduced_tail"] = True
    elif takes_tail:
        options["reduced_tail"] = False
    if norm_layer is not None:
        options["norm_layer"] = norm_layer
    if dilation_policy is not None:
        options["dilation_policy"] = dilation_policy
    backbone = create_model(name, **options)
    assert isinstance(backbone, MobileNet)  # (every classification model of the zoo is one)
    return backbone


def channels_of(backbone: MobileNet) -> list[int]:
    """Channels of each map a features_only backbone returns, in order."""
    return backbone.feature_info.channels()


def leaf_modules(module: nn.Module, prefix: str) -> list[str]:
    """Paths (under ``prefix``) of the sub-modules of ``module`` that own parameters or buffers directly."""
    return [f"{prefix}{name}" for name, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]


def rename_prefixes(paths: list[str], renames: dict[str, str]) -> dict[str, str]:
    """Module map for ``paths`` whose names differ from the foreign ones only by a prefix."""
    out = {}
    for path in paths:
        for ours, theirs in renames.items():
            if path.startswith(ours):
                out[path] = theirs + path[len(ours):]
    return out


def torchvision_backbone_map(backbone: MobileNet, prefix: str) -> dict[str, str]:
    """Our backbone module paths -> torchvision's classification ``features`` paths, renamed to ``prefix``."""
    from ..weights import torchvision_module_map

    return {ours: prefix + theirs[len("features"):] for ours, theirs in torchvision_module_map(backbone).items()
            if theirs.startswith("features.")}


def torchvision_segmenter_map(model: nn.Module, source_keys, head_renames: dict[str, str]) -> dict[str, str] | None:
    """Module map of a segmentation model (``features`` backbone, ``head`` / ``aux_head``) onto
    torchvision's ``lraspp_*`` / ``deeplabv3_*`` layout (``backbone.N``, ``classifier``, ``aux_classifier``).
    None for checkpoints that are not torchvision's (our own use our names)."""
    if not any(k.startswith("backbone.") for k in source_keys):
        return None
    features = model.features
    assert isinstance(features, MobileNet)  # (a build_backbone backbone)
    mapping = {f"features.{ours}": theirs
               for ours, theirs in torchvision_backbone_map(features, "backbone").items()}
    heads = [p for name in ("head", "aux_head") if getattr(model, name, None) is not None
             for p in leaf_modules(getattr(model, name), name + ".")]
    mapping.update(rename_prefixes(heads, head_renames))
    return mapping
