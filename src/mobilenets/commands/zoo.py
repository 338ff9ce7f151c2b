"""`mobilenets models` and `mobilenets summary`: the zoo, with parameters and MACs next to the papers'."""
from __future__ import annotations

import argparse

from ..errors import UserError
from ..preprocessing import INCEPTION_MEAN

# the mean/std column of `models --weights`
STATS_NAMES: dict[tuple[float, ...], str] = {INCEPTION_MEAN: "inception", (0.0, 0.0, 0.0): "[0, 1]"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every model with params and MACs at its default resolution")
    p.add_argument("--task", choices=("classify", "detect", "segment"), help="only models of this task")
    p.add_argument("--weights", action="store_true",
                   help="list every published checkpoint instead: its --weights tag, width, preprocessing, "
                        "ImageNet top-1 and licence")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("summary", help="per-layer params/MACs table of one model, next to the paper's figures")
    p.add_argument("name", help="model name (see 'mobilenets models')")
    p.add_argument("--width-multiplier", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--minimal", action="store_true", help="V3 minimalistic variant")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=None)
    p.set_defaults(handler=cmd_summary)


def _on_meta(name: str, **options):
    """The model built on PyTorch's meta device: shapes without storage or arithmetic, so parameters and MACs of
    even the 300M-parameter MobileNetV5 count in about a second (the counts equal a real build's)."""
    import torch

    from ..registry import create_model
    with torch.device("meta"):
        return create_model(name, **options)


def _paper_figures(model) -> dict:
    arch = getattr(model, "arch", None)
    return arch.paper_figures if arch is not None else {}


def cmd_weights(args) -> int:
    from ..registry import list_models
    from ..weights import WEIGHTS

    print(f"{'model':<28} {'--weights':<34} {'width':>5} {'input':>5} {'resize':>6} {'mean/std':<9} "
          f"{'top-1':>6}  licence")
    for key in list_models(args.task, weights=True):
        e = WEIGHTS[key]
        pre = e.preprocessing
        stats = STATS_NAMES.get(tuple(pre.mean), "imagenet")
        top1 = "-" if e.top1 is None else f"{e.top1:.3f}"
        print(f"{e.model:<28} {e.tag:<34} {key[2]:>5g} {pre.input_size[-1]:>5} {pre.resize:>6} {stats:<9} "
              f"{top1:>6}  {e.licence or 'open'}")
    return 0


def cmd_models(args) -> int:
    from ..profile import profile
    from ..registry import get_entry, list_models

    if args.weights:
        return cmd_weights(args)

    print(f"{'model':<34} {'task':<9} {'input':>5} {'params':>12} {'MACs':>14}  reference")
    for name in list_models(args.task):
        entry = get_entry(name)
        model = _on_meta(name)
        r = entry.default_resolution
        p = profile(model, (getattr(model, "in_chans", 3), r, r))
        print(f"{name:<34} {entry.task:<9} {r:>5} {p.params:>12,} {p.macs:>14,}  {entry.paper}")
    return 0


def cmd_summary(args) -> int:
    from ..profile import profile
    from ..registry import get_entry

    entry = get_entry(args.name)
    options = {"width_multiplier": args.width_multiplier, "in_chans": args.in_chans}
    if args.minimal:
        options["minimal"] = True
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    r = entry.default_resolution if args.resolution is None else args.resolution
    if r < 1:
        raise UserError(f"--resolution {r} must be at least 1 pixel")
    model = _on_meta(args.name, **options)
    p = profile(model, (args.in_chans, r, r))
    print(p.table())
    print(f"\n{args.name} width {args.width_multiplier:g} at {r}x{r}: {p.params / 1e6:.3f} M params, "
          f"{p.macs / 1e6:.1f} M MACs")
    paper = _paper_figures(model).get((args.width_multiplier, r))
    if paper:
        top1, macs, params = paper
        acc = f", ImageNet top-1 {top1}" if top1 else ""
        print(f"paper ({entry.paper}): {params} M params, {macs} M MACs{acc} -> MACs "
              f"{(p.macs / 1e6 / macs - 1) * 100:+.1f}%")
    else:
        print(f"paper ({entry.paper}): no figure published for this width and resolution")
    return 0
