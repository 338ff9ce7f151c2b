"""Small models the deploy tests export: a classifier whose logits depend on the input (``small_model``) and
a detector / segmenter checkpoint (``dense_checkpoint``). A helper module, like checks.py: test modules import it,
never each other."""
from __future__ import annotations

import torch

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint

OPTIONS = {"num_classes": 10, "in_chans": 1, "width_multiplier": 0.5}
SIZE = 64


def small_model(name: str = "mobilenet_v3_small", seed: int = 0, in_chans: int = 1
                ) -> tuple[torch.nn.Module, CheckpointMeta]:
    """A small random model whose logits are O(1) and depend on the input, so parity checks mean something (a
    freshly initialised MobileNet in eval mode gives ~1e-9 logits, the same for every input, where any export
    'agrees'): random BN affine parameters, running statistics measured on random inputs."""
    torch.manual_seed(seed)
    options = {**OPTIONS, "in_chans": in_chans}
    model = mobilenets.create_model(name, **options)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.momentum = None  # cumulative average over the calibration batches below
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, in_chans, SIZE, SIZE))
    pre = Preprocessing(input_size=(in_chans, SIZE, SIZE), resize=SIZE, mean=(0.5,) * in_chans, std=(0.5,) * in_chans)
    meta = CheckpointMeta(model=name, options=options, class_names=[f"c{i}" for i in range(10)], preprocessing=pre)
    return model.eval(), meta


def dense_checkpoint(task: str, folder, size=(96, 96)):
    """A random SSDLite (detect) or LR-ASPP (segment) on a V3-Small at half width, saved in ``folder``."""
    torch.manual_seed(0)
    name = "ssdlite" if task == "detect" else "lraspp"
    model = mobilenets.create_model(name, backbone="mobilenet_v3_small", num_classes=4, width_multiplier=0.5)
    meta = CheckpointMeta(model=name, options=dict(model.arch_options), task=task,
                          class_names=["background", "a", "b", "c"],
                          preprocessing=Preprocessing(input_size=(3, *size), resize=size[0], mean=(0.5,) * 3,
                                                      std=(0.5,) * 3))
    path = folder / f"{task}.safetensors"
    save_checkpoint(path, model.eval(), meta)
    return model.eval(), meta, path
