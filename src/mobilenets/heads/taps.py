"""Feature taps: the backbone feature maps a task head reads, chosen from ``feature_info`` metadata.

A zoo backbone describes its stages in ``model.feature_info`` (stage, channels, reduction, module path). Task
heads need three kinds of maps, all located from that metadata and never from private block indices:

- ``Tap.last()``: the last feature map (``forward_features``), e.g. the 1x1 conv before pooling of V3.
- ``Tap.stage_entry(r)``: the output of the block that takes the features to reduction ``r`` (the first strided
  block of the first stage that reaches ``r``). This is the map torchvision's LR-ASPP ("low", r=8) and DeepLabV3
  aux head read (``stage_indices[-4]`` there).
- ``Tap.expansion(r)``: the input of that block's depthwise conv; for an inverted residual block that is its 1x1
  expansion output, one stride earlier. SSDLite attaches its
  first prediction layer there: "the first layer of SSDLite is attached to the expansion of layer 15 (with
  output stride of 16)" (section 6.2 of arXiv:1801.04381; section 6.3 of arXiv:1905.02244). For MobileNetV1,
  which has no expansion, it is the output of the stride-16 stage (conv11 of the SSD-MobileNet reference).

The maps are captured with forward hooks on the named modules, so one backbone pass serves every tap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import depthwise_convs


@dataclass(frozen=True)
class Tap:
    kind: str  # "last", "stage_entry", "expansion"
    reduction: int = 0

    @classmethod
    def last(cls) -> "Tap":
        return cls("last")

    @classmethod
    def stage_entry(cls, reduction: int) -> "Tap":
        return cls("stage_entry", reduction)

    @classmethod
    def expansion(cls, reduction: int) -> "Tap":
        return cls("expansion", reduction)


def _stage_path(backbone: nn.Module, reduction: int) -> str:
    """Module path of the first stage in ``feature_info`` whose output reaches ``reduction``."""
    for info in backbone.feature_info:
        if info.reduction >= reduction:
            return info.module
    raise ValueError(f"backbone has no stage with reduction {reduction}: "
                     f"{[(i.module, i.reduction) for i in backbone.feature_info]}")


def _reducing_depthwise(stage: nn.Module) -> nn.Module:
    """The depthwise conv that brings ``stage`` to its reduction: its first strided (or dilated) one.

    Usually the stage's first conv, but a stage may start with stride-1 rows of the same width as the strided
    row (MobileNetV3-Small with the reduced tail: 48-channel rows at stride 16, then a 48-channel row of stride 2).
    """
    convs = depthwise_convs(stage)
    if not convs:
        raise ValueError("stage has no depthwise convolution to tap")
    return next((c for c in convs if c.stride[0] > 1 or c.dilation[0] > 1), convs[0])


def _entry_block(stage: nn.Module) -> nn.Module:
    """The block of ``stage`` holding its reducing depthwise conv (the stage itself if it has no children)."""
    conv = _reducing_depthwise(stage)
    return next((b for b in stage.children() if any(m is conv for m in b.modules())), stage)


class _Capture:
    """Forward (pre-)hook storing a module's output (or input) under a key of its owner.

    A class rather than a closure so that ``copy.deepcopy`` (EMA models) rebinds the copy to the copied owner.
    """

    def __init__(self, owner: "BackboneTaps", key: int):
        self.owner = owner
        self.key = key

    def __call__(self, module, inputs, output=None):
        self.owner._captured[self.key] = inputs[0] if output is None else output


class BackboneTaps(nn.Module):
    """Wraps a zoo backbone; ``forward(x)`` returns the requested feature maps, in order."""

    def __init__(self, backbone: nn.Module, taps: list[Tap]):
        super().__init__()
        self.body = backbone
        self.taps = list(taps)
        self._captured: dict[int, Tensor] = {}
        self.tap_modules: list[str] = []  # module path of each tap ("" for the last map), for reports
        names = {m: n for n, m in backbone.named_modules()}
        for i, tap in enumerate(self.taps):
            if tap.kind == "last":
                self.tap_modules.append("")
                continue
            stage = backbone.get_submodule(_stage_path(backbone, tap.reduction))
            if tap.kind == "stage_entry":
                module = _entry_block(stage)
                module.register_forward_hook(_Capture(self, i))
            elif tap.kind == "expansion":
                module = _reducing_depthwise(stage)
                module.register_forward_pre_hook(_Capture(self, i))
            else:
                raise ValueError(f"unknown tap kind {tap.kind!r}")
            self.tap_modules.append(names[module])
        self.channels = self._probe_channels()

    def _probe_channels(self) -> list[int]:
        first_conv = next(m for m in self.body.modules() if isinstance(m, nn.Conv2d))
        was_training = self.training
        self.eval()
        with torch.no_grad():
            feats = self(torch.zeros(1, first_conv.in_channels, 64, 64))
        self.train(was_training)
        return [f.shape[1] for f in feats]

    def forward(self, x: Tensor) -> list[Tensor]:
        self._captured = {}
        last = self.body.forward_features(x)
        out = [last if tap.kind == "last" else self._captured[i] for i, tap in enumerate(self.taps)]
        self._captured = {}
        return out
