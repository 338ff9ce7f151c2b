"""mobilenets checkpoints: one safetensors file holding the weights and, in its metadata, everything needed
to rebuild and use the model (architecture name and options, task, class names, preprocessing).

Layout of the safetensors metadata (all values are strings, as safetensors requires)::

    {"format": "mobilenets", "version": "2", "meta": <json of CheckpointMeta fields>}

Version-1 files (mobilenets 0.1) still load: their keys are renamed on reading (see ``RENAMED_IN_2``).

Writes are atomic (temporary file in the same folder, then ``os.replace``), so a crash never leaves a
half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError
from .files import atomic_write
from .preprocessing import Preprocessing
from .qat import rebuild
from .registry import create_model
from .weights import imagenet_class_names, load_state_dict_checked

FORMAT = "mobilenets"
VERSION = "2"
# Version 1 (mobilenets 0.1, up to commit 5fac75e) wrapped a task model's backbone in a tap module: its keys
# read "features.body.<backbone key>" where version 2 has "features.<backbone key>". Classification
# checkpoints are the same in both versions.
RENAMED_IN_2 = ("features.body.", "features.")


@dataclass
class CheckpointMeta:
    model: str  # registry name
    options: dict = field(default_factory=dict)  # create_model options (num_classes, width_multiplier, ...)
    task: str = "classify"
    class_names: list[str] = field(default_factory=list)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    extra: dict = field(default_factory=dict)  # free-form: metrics, epoch, recipe, ...

    def data_record(self) -> dict:
        """What the checkpoint records about the data it was trained on (``extra["data"]``; {} when absent)."""
        return self.extra.get("data", {}) if isinstance(self.extra, dict) else {}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CheckpointMeta":
        d = json.loads(text)
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in d.get("preprocessing", {}).items()}
        d["preprocessing"] = Preprocessing(**fields)
        return cls(**d)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write ``model``'s state dict and ``meta`` to a safetensors file, atomically."""
    state, storages = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().contiguous().cpu()
        if t.untyped_storage().data_ptr() in storages:  # one module under several names (a quantization-aware
            t = t.clone()  # graph's shared observers): safetensors stores each name's own copy
        storages.add(t.untyped_storage().data_ptr())
        state[k] = t
    metadata = {"format": FORMAT, "version": VERSION, "meta": meta.to_json()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a mobilenets checkpoint without building the model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass the path of a .safetensors file written by "
                        "'mobilenets train'")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors checkpoint ({e}); pass a file written by "
                        "'mobilenets train' or 'mobilenets export'") from e
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not a mobilenets checkpoint (no model metadata); "
                        "load foreign weights with mobilenets.load_weights(model, path) instead")
    version = metadata.get("version", "1")
    if version not in ("1", VERSION):
        raise UserError(f"{path} is a version-{version} mobilenets checkpoint, newer than this installation reads "
                        f"(version {VERSION}); upgrade mobilenets")
    if version == "1":
        state = upgrade_state_v1(state)
    return state, CheckpointMeta.from_json(metadata["meta"])


def upgrade_state_v1(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a version-1 state dict (a checkpoint, or the weights in a 0.1 run's state.pt) under version 2."""
    old, new = RENAMED_IN_2
    return {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}


def check_task(source: str | os.PathLike, meta: CheckpointMeta, task: str | None) -> None:
    """Refuse a model of another task than ``task`` (None: any task); ``source`` names the file in the message."""
    if task is not None and meta.task != task:
        raise UserError(f"{source} holds a {meta.task} model, not a {task} model; pass task={meta.task!r} or leave "
                        "task out")


def load_checkpoint(path: str | os.PathLike, task: str | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes and load its weights (strict). With ``task``, a checkpoint of
    another task is refused."""

    state, meta = read_checkpoint(path)
    check_task(path, meta, task)
    model = create_model(meta.model, **meta.options)
    if meta.extra.get("qat"):  # trained with fake quantization: rebuild that graph around the model
        return rebuild(model, meta.extra["qat"], state, str(path)), meta
    load_state_dict_checked(model, state, source=str(path))
    model.eval()
    return model, meta


def weights_meta(entry, options: dict | None = None) -> CheckpointMeta:
    """The metadata of a model built on published weights (a :class:`~mobilenets.weights.WeightEntry`): ImageNet
    class names and the publisher's preprocessing, so that ``predict`` names classes as the publisher does."""
    return CheckpointMeta(model=entry.model, options={**entry.options, **(options or {})},
                          class_names=imagenet_class_names() if entry.classifier else [],
                          preprocessing=entry.preprocessing,
                          extra={"weights": entry.tag, "url": entry.url, "imagenet_top1": entry.top1})
