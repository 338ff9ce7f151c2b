"""``--teacher CKPT [CKPT ...]``: logit distillation for classification (Hinton et al. 2015).

The loss of a batch is ``(1 - weight) * CE(student, labels) + weight * T^2 * KL(p_T || q_T)``, where ``q_T`` is the
student's softmax at temperature ``T`` and ``p_T`` the teachers' (the mean of each teacher's softmax at ``T`` for an
ensemble). Teachers are our own classification checkpoints (safetensors; nothing is unpickled), frozen, in eval
mode, never registered in the training module (DDP and ``model.train()`` do not touch them). Each sees the batch
in its own preprocessing: the student's normalisation undone, channels matched (grey <-> RGB), resized to the
teacher's input size, normalised with the teacher's mean and std. Their classes must be the student's, in order.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..preprocessing import Preprocessing


def to_teacher_input(x: torch.Tensor, student: Preprocessing, teacher: Preprocessing) -> torch.Tensor:
    """A batch normalised for the student, as the teacher's own preprocessing would have given it."""
    mean = torch.tensor(student.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(student.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    pixels = x * std + mean  # back to [0, 1]
    channels = teacher.input_size[0]
    if pixels.shape[1] != channels:
        if channels == 1:  # RGB -> grey
            pixels = pixels.mean(1, keepdim=True)
        elif pixels.shape[1] == 1:  # grey -> RGB
            pixels = pixels.expand(-1, channels, -1, -1)
        else:
            raise UserError(f"a teacher with {channels} input channels cannot read {x.shape[1]}-channel images")
    size = tuple(teacher.input_size[1:])
    if tuple(pixels.shape[-2:]) != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    return TF.normalize(pixels, list(teacher.mean), list(teacher.std))


class Teachers:
    """The frozen teacher checkpoints of a run; ``probs(x, T)`` is their mean softmax at temperature ``T``."""

    def __init__(self, paths: tuple[str, ...], class_names: list[str], student: Preprocessing,
                 device: torch.device):
        self.models: list[tuple[nn.Module, Preprocessing]] = []
        for path in paths:
            model, meta = load_checkpoint(path)  # a missing or foreign file is refused there, in one line
            if meta.task != "classify":
                raise UserError(f"teacher {path} is a {meta.task} checkpoint; a teacher must be a classifier")
            if list(meta.class_names) != list(class_names):
                raise UserError(f"teacher {path} has other classes ({len(meta.class_names)}: "
                                f"{', '.join(meta.class_names[:3])}...) than this data; train it on the same classes")
            model.requires_grad_(False)
            self.models.append((model.eval().to(device), meta.preprocessing))
        self.student = student

    @torch.no_grad()
    def probs(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        total: torch.Tensor | None = None
        for model, pre in self.models:
            p = F.softmax(model(to_teacher_input(x, self.student, pre)).float() / temperature, dim=1)
            total = p if total is None else total + p
        assert total is not None  # (at least one teacher)
        return total / len(self.models)
