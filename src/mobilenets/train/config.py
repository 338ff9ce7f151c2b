"""The resolved configuration of a training run of any task: what ``config.json`` in the run folder holds and
what ``--resume`` reads back. Built by commands/ from the flags; the library never sees argparse."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from ..data.loaders import DataConfig
from ..errors import UserError
from .recipes import Recipe


@dataclass
class TrainConfig:
    model: str
    data: DataConfig
    recipe: Recipe
    out: str
    epochs: int = 10
    model_options: dict = field(default_factory=dict)  # create_model options the user set
    img_size: int | None = None  # None: the task's default for the data (32 for Fashion-MNIST, 224 for folders, ...)
    in_chans: int | None = None  # None: 1 for Fashion-MNIST, 3 otherwise
    weights: str | None = None
    freeze: str = "none"
    channels_last: bool = True
    compile: bool = False
    precision: str = "fp32"  # the training step's autocast: fp32, bf16 or fp16 (train/precision.py)
    teachers: list[str] = field(default_factory=list)  # --teacher: classification checkpoints to distil from
    kd_temperature: float = 4.0
    kd_weight: float = 0.5
    qat: bool = False  # quantization-aware training (mobilenets.qat): fake-quantized fine-tuning of ``weights``
    sync_bn: bool = False
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    bn_recalibrate: int | None = None  # training batches that re-estimate BN statistics before each evaluation
    #                                    (None: the task's default, 20 for classification, 8 for dense tasks)
    time_limit: float | None = None  # minutes; the cosine follows it and no epoch starts that would end past it
    progressive_resize: int | None = None  # training px at the start, growing to img_size (progressive_size)
    task: str = "classify"
    backbone: str | None = None  # detect / segment: the classification backbone of a generic task model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of a run folder; one written before the task layer (mobilenets 0.1) for a detection or
        segmentation run is refused in one line. One without ``data.val_split`` (``data.scenes_val``) validated on the
        test split (the test scenes)."""
        if "recipe" not in d or "data" not in d or not isinstance(d["data"], dict):
            raise UserError(f"this run folder was written by mobilenets 0.1, whose {d.get('task', 'dense')} runs "
                            "kept a different config; its checkpoints still evaluate, predict and export, but it "
                            "cannot be resumed: start a new run with weights='RUN_DIR/last.safetensors'")
        d = dict(d)
        # runs written before val_split (scenes_val) existed validated Fashion-MNIST / idx data (the scenes) on the
        # test split: keep that, so that they resume exactly
        d["data"] = DataConfig(**{"val_split": "test", "scenes_val": "test", **d["data"]})
        d["recipe"] = Recipe(**d["recipe"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
