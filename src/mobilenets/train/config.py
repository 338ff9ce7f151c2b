"""The resolved configuration of a training run: what ``config.json`` in the run folder holds and what
``--resume`` reads back."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from ..data.loaders import DataConfig
from .recipes import Recipe


@dataclass
class TrainConfig:
    model: str
    data: DataConfig
    recipe: Recipe
    out: str
    epochs: int = 10
    model_options: dict = field(default_factory=dict)  # create_model options the user set
    img_size: int = 32
    in_chans: int = 1
    weights: str | None = None
    freeze: str = "none"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    bn_recalibrate: int = 20  # training batches that re-estimate BN statistics before each evaluation
    time_limit: float | None = None  # minutes; the cosine follows it and no epoch starts that would end past it
    progressive_resize: int | None = None  # training px at the start, growing to img_size (progressive_size)
    task: str = "classify"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["data"] = DataConfig(**d["data"])
        d["recipe"] = Recipe(**d["recipe"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
