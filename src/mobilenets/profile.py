"""Per-layer parameters and MACs (multiply-accumulates of conv and linear layers and of attention's matrix
products: the papers' "Mult-Adds").

Counted by running one forward pass with hooks on every leaf module, so the count follows the real output
shapes (any resolution, dilation, non-square input) rather than a formula that could drift from the code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str  # module class name
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class Profile:
    rows: list[LayerRow]
    params: int  # all parameters of the model (not only those the forward pass touched)
    macs: int

    def table(self) -> str:
        """The per-layer table as aligned text, with totals."""
        name_w = max([len("layer")] + [len(r.name) for r in self.rows])
        kind_w = max([len("kind")] + [len(r.kind) for r in self.rows])
        lines = [f"{'layer':<{name_w}}  {'kind':<{kind_w}}  {'output':<18}  {'params':>10}  {'MACs':>13}"]
        for r in self.rows:
            shape = "x".join(str(s) for s in r.output_shape)
            lines.append(f"{r.name:<{name_w}}  {r.kind:<{kind_w}}  {shape:<18}  {r.params:>10,}  {r.macs:>13,}")
        lines.append(f"{'total':<{name_w}}  {'':<{kind_w}}  {'':<18}  {self.params:>10,}  {self.macs:>13,}")
        return "\n".join(lines)


def _macs(module: nn.Module, inputs: tuple, out: torch.Tensor) -> int:
    count = getattr(module, "count_macs", None)  # layers without weights that multiply, e.g. attention
    if count is not None:
        return count(*inputs, out)
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        return out.numel() // out.shape[0] * k  # per image
    if isinstance(module, nn.Linear):
        return out.numel() // out.shape[0] * module.in_features
    return 0


@torch.no_grad()
def profile(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> Profile:
    """Rows for every leaf layer that has parameters or MACs, for one image of ``input_size`` (C, H, W)."""
    if len(input_size) != 3:
        raise UserError(f"input_size must be (channels, height, width), got {input_size}")
    rows: list[LayerRow] = []
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                return
            params = sum(p.numel() for p in module.parameters(recurse=False))
            macs = _macs(module, inputs, output)
            if params or macs:
                rows.append(LayerRow(name, type(module).__name__, tuple(output.shape[1:]), params, macs))
        return record

    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Profile(rows, sum(p.numel() for p in model.parameters()), sum(r.macs for r in rows))
