"""``mobilenets train | eval | predict | demo``.

The task-independent options live here; each task module (``mobilenets.train.classify``, ``.detect``,
``.segment``) adds its own with ``add_arguments(parser, command)`` and does the work in ``train(args)``,
``evaluate(args)`` and ``predict(args)``. The task is ``--task``, else the checkpoint's ``meta.task``, else
classify. Task modules are imported only when present, so a missing one costs just that task.
"""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from ..errors import UserError

TASKS = ("classify", "detect", "segment")
ENTRY = {"train": "train", "eval": "evaluate", "predict": "predict"}


def _task_module(task: str, required: bool = True):
    name = f"mobilenets.train.{task}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:  # a real missing dependency inside the module: surface it
            raise
        if required:
            raise UserError(f"task {task} is not available in this installation ({name} is missing); "
                            "use --task classify") from None
        return None


def _checkpoint_task(path: str) -> str:
    """The task of a checkpoint or of an exported model file (classify when it cannot tell)."""
    suffix = Path(path).suffix
    if not Path(path).is_file():
        return "classify"
    if suffix == ".safetensors":
        from ..checkpoint import read_checkpoint
        return read_checkpoint(path)[1].task
    if suffix == ".onnx":
        from ..checkpoint import CheckpointMeta
        from ..deploy.runtime import onnx_properties
        from ..deploy.export import META_KEY
        text = onnx_properties(Path(path)).get(META_KEY)
        return CheckpointMeta.from_json(text).task if text else "classify"
    return "classify"


def _run_task(run_dir: Path) -> str:
    config = run_dir / "config.json"
    return json.loads(config.read_text()).get("task", "classify") if config.is_file() else "classify"


def _dispatch(args: argparse.Namespace):
    task = args.task
    if task is None:
        if args.command == "train":
            task = _run_task(args.resume) if args.resume else "classify"
        else:
            task = _checkpoint_task(args.checkpoint)
    getattr(_task_module(task), ENTRY[args.command])(args)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, default=None,
                   help="classify (default for train), detect or segment; eval/predict default to the "
                        "checkpoint's task")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mobilenet_v3_small", help="registry name (mobilenets models)")
    p.add_argument("--data", default=None, help="fashion-mnist, a folder of its idx files, or an image folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="run folder for checkpoints, metrics and figures")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue a stopped run from its folder (its config.json; other options are ignored)")
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--img-size", type=int, default=None,
                   help="input resolution (default: 32 for Fashion-MNIST, 224 for image folders)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="wall-time budget: the cosine schedule decays by whichever of epochs and time runs out "
                        "first; classification stops before an epoch that would end past it, detection and "
                        "segmentation at the limit")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes for image folders")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images instead of failing")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images")
    m = p.add_argument_group("model")
    m.add_argument("--width", type=float, default=None, help="width multiplier")
    m.add_argument("--dropout", type=float, default=None)
    m.add_argument("--output-stride", type=int, choices=(8, 16, 32), default=None)
    m.add_argument("--bn-momentum", type=float, default=None,
                   help="BN running-statistics momentum (PyTorch convention; short runs want ~0.1)")
    m.add_argument("--bn-recalibrate", type=int, default=20, metavar="BATCHES",
                   help="re-estimate BN statistics of the evaluated weights (EMA or model) on this many training "
                        "batches before each evaluation (default 20; 0: off)")
    m.add_argument("--norm-layer", default=None, help="batchnorm (default), frozenbatchnorm, groupnorm")
    m.add_argument("--weights", default=None, help="start from torchvision, timm or a checkpoint PATH "
                                                  "(the classifier gets a new head for this data)")
    m.add_argument("--freeze", default="none", help="backbone, none or a stage index: frozen weights and BN stats")
    o = p.add_argument_group("recipe")
    o.add_argument("--recipe", default="default", help="default (AdamW, warm-up + cosine, label smoothing, EMA), "
                                                      "sgd, or rmsprop (the papers')")
    o.add_argument("--opt", default=None, choices=("sgd", "adamw", "rmsprop"), help="override the recipe's optimizer")
    o.add_argument("--lr", type=float, default=None, help="learning rate at the actual global batch")
    o.add_argument("--wd", type=float, default=None, help="weight decay")
    o.add_argument("--depthwise-wd", type=float, default=None,
                   help="weight decay of depthwise filters (default: --wd's; the V1 paper uses little or none)")
    o.add_argument("--momentum", type=float, default=None)
    o.add_argument("--warmup-epochs", type=float, default=None)
    o.add_argument("--ema-decay", type=float, default=None, help="0 turns EMA off")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--compile", action="store_true", help="torch.compile the training step")
    r.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (GPU only)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_task_arguments(p: argparse.ArgumentParser, command: str) -> None:
    for task in TASKS:
        module = _task_module(task, required=False)
        if module is not None:
            module.add_arguments(p, command)


def _run_demo(args: argparse.Namespace):
    from ..train.demo import run_demo
    return run_demo(args.out, threads=args.threads, progress=not args.no_progress)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (single process, or torchrun for DDP)",
                              description="Train a MobileNet. Distributed: torchrun --nproc_per_node N -m "
                                          "mobilenets train ...")
    _common(p)
    _train_options(p)
    _add_task_arguments(p, "train")
    p.set_defaults(handler=_dispatch)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1/top-5 and per-class accuracy")
    p.add_argument("checkpoint")
    _common(p)
    p.add_argument("--data", default=None, help="default: the data set the checkpoint was trained on")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images")
    p.add_argument("--limit-val", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    _add_task_arguments(p, "eval")
    p.set_defaults(handler=_dispatch)

    p = subparsers.add_parser("predict", help="top-k classes of image files")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _common(p)
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="torch")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    _add_task_arguments(p, "predict")
    p.set_defaults(handler=_dispatch)

    p = subparsers.add_parser("demo", help="train a small MobileNetV3 on Fashion-MNIST in a few minutes")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_demo)
