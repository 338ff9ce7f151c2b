"""Model registry: ``create_model(name, **options)`` and ``list_models()``.

Architectures and task models register a builder with :func:`register_model`; the registry knows nothing about
any of them (``mobilenets/__init__`` imports the modules that register).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .errors import UserError
from .model import BUILD_OPTIONS
from .weights import WEIGHTS, create_with_weights


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    task: str  # "classify", "detect" or "segment"
    default_resolution: int
    paper: str  # citation of the table the architecture mirrors
    summary: str = ""
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, task: str = "classify", default_resolution: int = 224, paper: str = "",
                   summary: str = "", **defaults):
    """Decorator: register ``builder(**options) -> nn.Module`` under ``name``."""

    def wrap(builder):
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, task, default_resolution, paper, summary, dict(defaults))
        return builder

    return wrap


def list_models(task: str | None = None, weights: bool = False) -> list:
    """Names of every registered model, optionally only those of one task. With ``weights=True``: every published
    checkpoint instead, as ``(name, tag, width_multiplier)``: build it with
    ``create_model(name, weights=tag, width_multiplier=width_multiplier)``."""
    names = sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)
    if not weights:
        return names
    return sorted(key for key in WEIGHTS if key[0] in names)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def accepted_options(entry: ModelEntry) -> list[str]:
    """Option names a model's builder takes (its own keywords, plus the generic builder's for ``**options``)."""
    params = inspect.signature(entry.builder).parameters
    names = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names += [n for n in BUILD_OPTIONS if n not in names]
    return names


def create_model(name: str, *, weights: str | None = None, accept_licence: str | None = None,
                 **options) -> nn.Module:
    """Build a registered model.

    ``weights`` is ``None`` (random init), ``"torchvision"`` / ``"timm"`` / ``"timm:TAG"`` (published weights,
    downloaded into the cache with a checksum check; ``list_models(weights=True)`` lists the tags) or a path to a
    local checkpoint. Weights under a restrictive licence (MobileNetV5's ``"timm:gemma3n"``: the Gemma Terms of
    Use) load only with ``accept_licence`` naming it (``accept_licence="gemma"``). Every other keyword is an
    architecture option (``width_multiplier``, ``num_classes``, ``in_chans``, ...).
    """
    entry = get_entry(name)
    accepted = accepted_options(entry)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"model {name!r} does not take option(s) {', '.join(unknown)}; "
                        f"it takes {', '.join(accepted)}")
    kwargs = {**entry.defaults, **options}
    if weights is None:
        model = entry.builder(**kwargs)
    else:
        model = create_with_weights(entry, weights, kwargs, accept_licence)
    # What a checkpoint needs to rebuild this exact network (see checkpoint.py), including the options that
    # published weights imply (fix_stem, bn_eps: set by create_with_weights / load_weights).
    # (setattr: task models are plain nn.Modules, which mypy types as holding only tensors and modules)
    setattr(model, "arch_name", name)
    setattr(model, "arch_options", {**getattr(model, "arch_options", {}), **options})
    return model
