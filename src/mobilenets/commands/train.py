"""``mobilenets train``: every flag of the command, the :class:`~mobilenets.train.config.TrainConfig` built from
them, and the run it starts. The work is the library's: :func:`mobilenets.train.trainer.fit` with a task of
:mod:`mobilenets.tasks`.

The task is ``--task``, else the resumed run's, else classify.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import read_checkpoint
from ..data.loaders import VAL_SPLITS, DataConfig
from ..data.transforms import AUGMENTATIONS, STRONG_ERASE_P, erase_probability
from ..errors import UserError
from ..tasks import get_task
from ..train.config import TrainConfig
from ..train.precision import PRECISIONS
from ..train.recipes import PROGRESSIVE_RAMP_END, RECIPES, resolve_recipe
from ..train.state import read_config
from ..train.trainer import fit, open_run
from .common import add_task_and_threads

MODEL_DEFAULT = "mobilenet_v3_small"
RUNTIME_OPTIONS = ("threads",)  # taken from the resuming command, not from config.json


# -- flags -----------------------------------------------------------------------------------------------------

def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=MODEL_DEFAULT,
                   help="registry name (mobilenets models); for detect/segment a task model or a classification "
                        "backbone, which gets the task's generic head (SSDLite, LR-ASPP)")
    p.add_argument("--backbone", default=None,
                   help="detect/segment: zoo backbone of the task model (default: --model when it is a "
                        "classification model)")
    p.add_argument("--data", default=None,
                   help="classify: fashion-mnist, a folder of its idx files, or an image folder; detect/segment: "
                        "scenes (default), a COCO folder or a mask folder")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="run folder for checkpoints, metrics and figures")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue a stopped run from its folder (its config.json; other options are ignored)")
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--img-size", type=int, default=None,
                   help="input resolution (default: 32 for Fashion-MNIST, 224 for image folders, the scene size "
                        "for scenes, 320 / 512 for detection / segmentation folders)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="wall-time budget: the cosine schedule decays by whichever of epochs and time runs out "
                        "first; training stops when it is reached (mid-epoch), then evaluates")
    p.add_argument("--num-workers", "--workers", type=int, default=0, help="DataLoader processes")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) unreadable images and invalid annotations instead of failing")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-val", type=int, default=None,
                   help="use only the first N validation images (--data scenes: N validation scenes, default 1000)")
    d = p.add_argument_group("classification data")
    d.add_argument("--augment", choices=AUGMENTATIONS, default="basic",
                   help="none; basic: random crop + flip (default); strong: + random erasing "
                        "(image folders: + TrivialAugment). detect/segment: none turns their flips, crops and "
                        "photometric distortion off")
    d.add_argument("--erase", type=float, default=None, metavar="P",
                   help=f"random-erasing probability (default: {STRONG_ERASE_P:g} with --augment strong, else 0)")
    d.add_argument("--progressive-resize", type=int, default=None, metavar="PX",
                   help="train at PX pixels first, growing linearly to --img-size by "
                        f"{PROGRESSIVE_RAMP_END:.0%} of the run (epochs or --time-limit), then at "
                        "--img-size to the end; evaluation and checkpoints always use --img-size".replace("%", "%%"))
    d.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                   help="input channels (default: 1 for Fashion-MNIST, 3 otherwise)")
    d.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training images held out for validation (default 0.1): of an image folder "
                        "without a val/ subfolder, of Fashion-MNIST's / an idx folder's training split, and of the "
                        "items the scenes draw")
    d.add_argument("--val-split", choices=VAL_SPLITS, default=None,
                   help="Fashion-MNIST / idx data and --data scenes: validate on --val-fraction of the training "
                        "split, stratified by class (holdout, the default: best.safetensors is chosen on it; the "
                        "training scenes never draw those items), or on the test split (test: the curves then show "
                        "test figures, so report last.safetensors, never best)")
    s = p.add_argument_group("detection / segmentation data")
    s.add_argument("--scenes", type=int, default=None, help="--data scenes: number of training scenes (10000)")
    s.add_argument("--scene-size", type=int, default=None, help="canvas size of the scenes (default 128)")
    s.add_argument("--annotations", default=None, help="detect: COCO instances JSON of --data "
                                                       "(default: DATA/instances.json)")
    s.add_argument("--val-data", default=None,
                   help="validation folder of a data folder (default: DATA/val)")
    m = p.add_argument_group("model")
    m.add_argument("--width-multiplier", "--width", type=float, default=None, help="width multiplier")
    m.add_argument("--dropout", type=float, default=None)
    m.add_argument("--output-stride", type=int, choices=(8, 16, 32), default=None)
    m.add_argument("--neck-width", type=int, default=None, metavar="CHANNELS",
                   help="detect --model yolo: channels of the depthwise PAN neck and the head (default: 1.5x the "
                        "stride-16 tap, a multiple of 16 in 32..128; 64 on V3-Small)")
    m.add_argument("--neck-depth", type=int, default=None, metavar="UNITS",
                   help="detect --model yolo: depthwise separable units per neck fusion (default 1)")
    m.add_argument("--end-to-end", action="store_true",
                   help="detect --model yolo: add YOLOv10's one-to-one head (trained beside the usual one) and read "
                        "it at inference: no NMS; exports end in the final detections (N, K, 6)")
    m.add_argument("--detach-one-to-one", action=argparse.BooleanOptionalAction, default=None,
                   help="--end-to-end: the one-to-one head trains on detached neck maps (default, as YOLOv10); "
                        "--no-detach-one-to-one lets its loss train the neck and backbone too (better end to end, "
                        "worse with NMS; BENCHMARKS.md)")
    m.add_argument("--one-to-one-topk", type=int, default=None, metavar="K",
                   help="--end-to-end: the one-to-one assigner takes the top K points per object at the start and "
                        "anneals to 1 by half of the run (default 1: top-1 throughout, as YOLOv10; BENCHMARKS.md "
                        "measured 10)")
    m.add_argument("--bn-momentum", type=float, default=None,
                   help="BN running-statistics momentum (PyTorch convention; short runs want ~0.1)")
    m.add_argument("--bn-recalibrate", type=int, default=None, metavar="BATCHES",
                   help="re-estimate BN statistics of the evaluated weights (EMA or model) on this many training "
                        "batches before each evaluation (default 20 for classify, 8 for detect/segment; 0: off)")
    m.add_argument("--norm-layer", default=None, help="batchnorm (default), frozenbatchnorm, groupnorm")
    m.add_argument("--weights", default=None, help="start from torchvision, timm or a checkpoint PATH "
                                                  "(the classifier gets a new head for this data)")
    m.add_argument("--accept-licence", default=None, metavar="NAME",
                   help="accept the licence of --weights by name (e.g. gemma for MobileNetV5's timm:gemma3n, under the "
                        "Gemma Terms of Use); weights under such a licence are refused without it")
    m.add_argument("--freeze", default="none",
                   help="backbone, none or a stage index k (stem + stages 0..k): frozen weights and BN stats; for "
                        "detect / segment the backbone is the MobileNet under the head (extras, neck and heads "
                        "train)")
    o = p.add_argument_group("recipe")
    o.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help="default (AdamW, warm-up + cosine, label smoothing, EMA; classify's default), sgd, "
                        "rmsprop (the papers'), dense (detect/segment's default)")
    o.add_argument("--optimizer", "--opt", default=None, choices=("sgd", "adamw", "rmsprop"),
                   help="override the recipe's optimizer")
    o.add_argument("--lr", type=float, default=None, help="learning rate at the actual global batch")
    o.add_argument("--weight-decay", "--wd", type=float, default=None, help="weight decay")
    o.add_argument("--depthwise-weight-decay", "--depthwise-wd", type=float, default=None,
                   help="weight decay of depthwise filters (default: --weight-decay's; the V1 paper uses little or "
                        "none)")
    o.add_argument("--momentum", type=float, default=None)
    o.add_argument("--warmup-epochs", type=float, default=None)
    o.add_argument("--label-smoothing", type=float, default=None, help="classify: overrides the recipe's (0.1)")
    o.add_argument("--ema-decay", type=float, default=None, help="0 turns EMA off")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--compile", action="store_true", help="torch.compile the training step")
    r.add_argument("--teachers", "--teacher", nargs="+", default=None, metavar="CKPT",
                   help="classification: distil from these trained classifiers (the mean of their softmax for "
                        "several), each fed in its own preprocessing; same classes as the data")
    r.add_argument("--kd-temperature", type=float, default=4.0, help="--teachers: softmax temperature (default 4)")
    r.add_argument("--kd-weight", type=float, default=0.5,
                   help="--teachers: share of the distillation term in the loss, 0..1 (default 0.5)")
    r.add_argument("--qat", action="store_true",
                   help="classification: quantization-aware fine-tuning of the trained model in --weights CKPT "
                        "(its architecture, options and input size; head kept; EMA off; no warm-up unless "
                        "--warmup-epochs); the checkpoints export "
                        "to int8 with the learned scales (mobilenets export --int8)")
    r.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the training step's autocast (default fp32, the fast one on CPUs; bf16 / fp16 for GPUs, "
                        "fp16 with a gradient scaler); weights, BN and evaluation stay fp32")
    r.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (GPU only)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (single process, or torchrun for DDP)",
                              description="Train a MobileNet classifier, detector or segmenter. Distributed: "
                                          "torchrun --nproc_per_node N -m mobilenets train ...")
    add_task_and_threads(p)
    _train_options(p)
    p.set_defaults(handler=train_command)


# -- the run ---------------------------------------------------------------------------------------------------

def config_from_args(args: argparse.Namespace) -> TrainConfig:
    task = get_task(args.task or "classify")
    if args.out is None:
        raise UserError("train needs --out RUN_DIR (the folder for checkpoints, metrics and figures)")
    data = args.data or task.default_data
    if data is None:
        raise UserError("train needs --data: fashion-mnist or a folder of images with one subfolder per class")
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs} must be at least 1")
    if args.batch_size < 2:
        raise UserError(f"--batch-size {args.batch_size} must be at least 2 (BatchNorm needs 2 samples)")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} must be at least 1")
    if args.qat:
        _qat_defaults(args)
    recipe = resolve_recipe(args.recipe or task.default_recipe, optimizer=args.optimizer, lr=args.lr,
                            weight_decay=args.weight_decay,
                            depthwise_weight_decay=args.depthwise_weight_decay, momentum=args.momentum,
                            warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                            ema_decay=args.ema_decay)
    if args.teachers:
        if not task.distillation:
            raise UserError(f"--teachers is for classification; {task.name} has no distillation loss: drop it")
        missing = [t for t in args.teachers if not Path(t).is_file()]
        if missing:
            raise UserError(f"--teachers {missing[0]}: no such checkpoint; pass a trained classifier's "
                            ".safetensors file (RUN/last.safetensors)")
        if not args.kd_temperature > 0 or not 0 <= args.kd_weight <= 1:
            raise UserError(f"--kd-temperature {args.kd_temperature} must be above 0 and --kd-weight "
                            f"{args.kd_weight} within 0..1")
    if args.neck_width is not None and (args.model != "yolo" or args.neck_width < 8):
        raise UserError(f"--neck-width {args.neck_width}: " + ("at least 8 channels" if args.model == "yolo" else
                        f"only the YOLO head has a neck (--task detect --model yolo), not {args.model}; drop it"))
    if args.neck_depth is not None and (args.model != "yolo" or args.neck_depth < 1):
        raise UserError(f"--neck-depth {args.neck_depth}: " + ("at least 1 unit" if args.model == "yolo" else
                        f"only the YOLO head has a neck (--task detect --model yolo), not {args.model}; drop it"))
    if args.end_to_end and args.model != "yolo":
        raise UserError(f"--end-to-end: only the YOLO head has a one-to-one mode (--task detect --model yolo), not "
                        f"{args.model}; drop it")
    if args.detach_one_to_one is not None and not args.end_to_end:
        raise UserError("--detach-one-to-one / --no-detach-one-to-one: only an --end-to-end YOLO has a one-to-one "
                        "head; add --end-to-end or drop it")
    if args.one_to_one_topk is not None and not args.end_to_end:
        raise UserError(f"--one-to-one-topk {args.one_to_one_topk}: only an --end-to-end YOLO has a one-to-one "
                        "head; add --end-to-end or drop it")
    options = {k: v for k, v in (("width_multiplier", args.width_multiplier), ("dropout", args.dropout),
                                 ("neck_width", args.neck_width), ("neck_depth", args.neck_depth),
                                 ("end_to_end", args.end_to_end or None),
                                 ("detach_one_to_one", args.detach_one_to_one),
                                 ("one_to_one_topk", args.one_to_one_topk),
                                 ("output_stride", args.output_stride), ("norm_layer", args.norm_layer),
                                 ("bn_momentum", args.bn_momentum))
               if v is not None}
    options = {**getattr(args, "checkpoint_options", {}), **options}  # --qat: the checkpoint's, flags on top
    erase_probability(args.augment, args.erase)  # a bad --erase fails here, before the run folder is made
    if args.val_split is not None and not task.has_test_split(data):
        raise UserError(f"--val-split is for classification on Fashion-MNIST or idx data and for --data scenes, "
                        f"which have a test split; {task.name} on {data} validates on its own val data: drop "
                        "--val-split")
    full_size = args.img_size or task.default_img_size(data)
    if args.progressive_resize is not None and not (1 <= args.progressive_resize < (full_size or float("inf"))):
        raise UserError(f"--progressive-resize {args.progressive_resize} must be at least 1 and smaller than "
                        f"--img-size {full_size}; raise --img-size or leave the option out")
    cfg = DataConfig(data=data, batch_size=args.batch_size, augment=args.augment, erase=args.erase,
                     seed=args.seed, val_fraction=0.1 if args.val_fraction is None else args.val_fraction,
                     val_split=args.val_split or "holdout", scenes_val=args.val_split or "holdout",
                     num_workers=args.num_workers, skip_bad=args.skip_bad,
                     limit_train=args.limit_train, limit_val=args.limit_val, scenes=args.scenes,
                     scene_size=args.scene_size, annotations=args.annotations, val_data=args.val_data)
    return TrainConfig(model=args.model, data=cfg, recipe=recipe, out=str(args.out), epochs=args.epochs,
                       model_options=options, img_size=args.img_size, in_chans=args.in_chans, weights=args.weights,
                       freeze=args.freeze, channels_last=args.channels_last, compile=args.compile,
                       precision=args.precision, teachers=list(args.teachers or []),
                       kd_temperature=args.kd_temperature, kd_weight=args.kd_weight, qat=args.qat,
                       sync_bn=args.sync_bn, device=args.device, threads=args.threads,
                       progress=not args.no_progress, time_limit=args.time_limit,
                       bn_recalibrate=args.bn_recalibrate, progressive_resize=args.progressive_resize,
                       task=task.name, backbone=args.backbone)


def _qat_defaults(args: argparse.Namespace) -> None:
    """--qat: the model, its options and input size come from the --weights checkpoint; EMA is off."""
    if not args.weights or not Path(args.weights).is_file():
        raise UserError(f"--qat fine-tunes a trained classifier: pass its checkpoint with --weights "
                        f"RUN/last.safetensors (got {args.weights})")
    _, meta = read_checkpoint(args.weights)
    if meta.task != "classify" or (args.task or "classify") != "classify":
        raise UserError(f"--qat is for classification; {args.weights} is a {meta.task} checkpoint")
    if meta.extra.get("qat"):
        raise UserError(f"{args.weights} is already quantization-aware; continue its run with --resume, or pass "
                        "the float checkpoint it was fine-tuned from")
    if args.model not in (MODEL_DEFAULT, meta.model):
        raise UserError(f"--model {args.model} differs from {args.weights}'s {meta.model}: drop --model")
    if args.ema_decay:
        raise UserError(f"--qat keeps no EMA (averaged weights would not match the learned scales): drop "
                        f"--ema-decay {args.ema_decay}")
    args.model, args.ema_decay = meta.model, 0.0
    if args.warmup_epochs is None:  # fine-tuning from trained weights: no warm-up unless asked
        args.warmup_epochs = 0.0
    args.checkpoint_options = {k: v for k, v in meta.options.items() if k not in ("num_classes", "in_chans")}
    size = meta.preprocessing.input_size
    args.img_size = args.img_size or size[-1]
    args.in_chans = args.in_chans or size[0]


def train_command(args: argparse.Namespace) -> int:
    if args.resume:
        run = open_run(args.resume, resume=True)
        if not run.config.is_file():
            raise UserError(f"{run.root} has no config.json; pass the folder of a run started with --out")
        cfg = TrainConfig.from_dict(read_config(run.config))
        if args.task is not None and args.task != cfg.task:
            raise UserError(f"--resume {run.root} is a {cfg.task} run, not {args.task}")
        cfg.progress = not args.no_progress
        for k in RUNTIME_OPTIONS:
            if getattr(args, k) is not None:
                setattr(cfg, k, getattr(args, k))
    else:
        cfg = config_from_args(args)
        run = open_run(cfg.out, resume=False)
    fit(get_task(cfg.task), cfg, run, resume=bool(args.resume))
    return 0
