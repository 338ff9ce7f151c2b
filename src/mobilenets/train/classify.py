"""Image classification: ``train``, ``evaluate`` and ``predict`` entry points of the CLI (``--task classify``).

A run folder (``--out``) ends up with::

    config.json              the resolved configuration (``--resume`` reads it back)
    metrics.jsonl / .csv     one record per epoch
    training_curves.png      loss and accuracy per epoch
    confusion_matrix.png     of the last epoch's evaluation
    best.safetensors         the weights with the best val top-1 (EMA weights when EMA is on)
    last.safetensors         the weights after the last finished epoch
    state.pt                 optimizer, scheduler, EMA, epoch, history: what --resume needs

Every file is replaced atomically at the end of each epoch, ``state.pt`` last, so killing the process at any
moment loses at most the epoch in progress.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
from ..data.loaders import DataConfig, build_eval, build_train_val, data_kind, default_preprocessing
from ..data.transforms import AUGMENTATIONS, STRONG_ERASE_P, erase_probability, load_image
from ..errors import UserError
from ..model import MIN_RESOLUTION
from . import distributed
from .config import TrainConfig
from .ema import create_ema
from .freeze import freeze
from .loop import Diverged, FlipAverage, evaluate as evaluate_model, recalibrate_bn, train_one_epoch
from .recipes import (PROGRESSIVE_RAMP_END, Deadline, build_optimizer, build_scheduler, progressive_size,
                      resolve_recipe, scaled_lr)
from .report import plot_confusion, plot_curves, write_metrics
from .state import RunFiles, ensure_dir, load_state, read_config, save_state, seed_epoch, write_config

log = logging.getLogger(__name__)

FASHION_IMG_SIZE = 32  # the smallest input the five stride-2 stages accept (model.MIN_RESOLUTION)


# -- command-line options ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Classification-only options of ``command`` (the task-independent ones live in commands/train.py)."""
    group = parser.add_argument_group("classification")
    if command == "train":
        group.add_argument("--augment", choices=AUGMENTATIONS, default="basic",
                           help="none; basic: random crop + flip (default); strong: + random erasing "
                                "(image folders: + TrivialAugment)")
        group.add_argument("--erase", type=float, default=None, metavar="P",
                           help=f"random-erasing probability (default: {STRONG_ERASE_P:g} with --augment strong, "
                                "else 0)")
        group.add_argument("--label-smoothing", type=float, default=None, help="overrides the recipe's (0.1)")
        group.add_argument("--progressive-resize", type=int, default=None, metavar="PX",
                           help="train at PX pixels first, growing linearly to --img-size by "
                                f"{PROGRESSIVE_RAMP_END:.0%} of the run (epochs or --time-limit), then at "
                                "--img-size to the end; evaluation and checkpoints always use --img-size")
        group.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                           help="input channels (default: 1 for Fashion-MNIST, 3 for image folders)")
    if command in ("train", "eval"):
        group.add_argument("--val-fraction", type=float, default=None,
                           help="share of an image folder without a val/ subfolder held out for validation "
                                "(train: 0.1; eval: the checkpoint's)")
    if command == "eval":
        group.add_argument("--tta", choices=("none", "flip"), default="none",
                           help="flip: average the class probabilities of each image and its mirror image "
                                "(reported as such; default none, the single-view figure)")
    if command == "predict":
        group.add_argument("--top-k", type=int, default=3, help="classes shown per image (default 3)")


# -- train -------------------------------------------------------------------------------------------------

def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.data is None:
        raise UserError("train needs --data: fashion-mnist or a folder of images with one subfolder per class")
    if args.out is None:
        raise UserError("train needs --out RUN_DIR (the folder for checkpoints, metrics and figures)")
    kind, _ = data_kind(args.data)
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs} must be at least 1")
    if args.batch_size < 2:
        raise UserError(f"--batch-size {args.batch_size} must be at least 2 (BatchNorm needs 2 samples)")
    recipe = resolve_recipe(args.recipe, optimizer=args.opt, lr=args.lr, weight_decay=args.wd,
                            depthwise_weight_decay=args.depthwise_wd, momentum=args.momentum,
                            warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                            ema_decay=args.ema_decay)
    options = {k: v for k, v in (("width_multiplier", args.width), ("dropout", args.dropout),
                                 ("output_stride", args.output_stride), ("norm_layer", args.norm_layer),
                                 ("bn_momentum", args.bn_momentum))
               if v is not None}
    erase_probability(args.augment, args.erase)  # a bad --erase fails here, before the run folder is made
    in_chans = args.in_chans or (1 if kind == "fashion" else 3)
    img_size = args.img_size or (FASHION_IMG_SIZE if kind == "fashion" else 224)
    if args.progressive_resize is not None and not MIN_RESOLUTION <= args.progressive_resize < img_size:
        raise UserError(f"--progressive-resize {args.progressive_resize} must be at least {MIN_RESOLUTION} and "
                        f"smaller than --img-size {img_size}; raise --img-size or leave the option out")
    data = DataConfig(data=args.data, batch_size=args.batch_size, augment=args.augment, erase=args.erase,
                      seed=args.seed, val_fraction=0.1 if args.val_fraction is None else args.val_fraction,
                      num_workers=args.workers, skip_bad=args.skip_bad, limit_train=args.limit_train,
                      limit_val=args.limit_val)
    return TrainConfig(model=args.model, data=data, recipe=recipe, out=str(args.out), epochs=args.epochs,
                       model_options=options, img_size=img_size, in_chans=in_chans, weights=args.weights,
                       freeze=args.freeze, channels_last=args.channels_last, compile=args.compile,
                       sync_bn=args.sync_bn, device=args.device, threads=args.threads,
                       progress=not args.no_progress, time_limit=args.time_limit,
                       bn_recalibrate=args.bn_recalibrate, progressive_resize=args.progressive_resize)


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from ..registry import create_model
    return create_model(cfg.model, weights=cfg.weights, num_classes=num_classes, in_chans=cfg.in_chans,
                        **cfg.model_options)


def _meta(cfg: TrainConfig, model: nn.Module, class_names: list[str], pre: Preprocessing, extra: dict
          ) -> CheckpointMeta:
    return CheckpointMeta(model=cfg.model, options=dict(model.arch_options), task="classify",
                          class_names=list(class_names), preprocessing=pre,
                          extra={"data": asdict(cfg.data), "recipe": cfg.recipe.name, **extra})


def train(args: argparse.Namespace) -> dict:
    """``mobilenets train``: fit a classifier; returns the last epoch's record."""
    if args.resume:
        run = RunFiles(Path(args.resume))
        cfg = TrainConfig.from_dict(read_config(run.config))
        cfg.progress = not args.no_progress
    else:
        cfg = config_from_args(args)
        run = RunFiles(Path(cfg.out))
        if run.state.exists():
            raise UserError(f"{run.root} already holds a run; continue it with --resume {run.root} or pass "
                            "another --out")
    return fit(cfg, run, resume=bool(args.resume))


def fit(cfg: TrainConfig, run: RunFiles, resume: bool = False) -> dict:
    world = distributed.setup(cfg.device)
    try:
        return _fit(cfg, run, world, resume)
    finally:
        distributed.cleanup(world)


def _fit(cfg: TrainConfig, run: RunFiles, world: distributed.World, resume: bool) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world.is_main:
        ensure_dir(run.root)
    pre = default_preprocessing(cfg.data.data, cfg.img_size, cfg.in_chans)
    train_batches, val_batches, class_names = build_train_val(cfg.data, pre, world.rank, world.world_size)
    if len(train_batches) == 0:
        raise UserError(f"{train_batches.num_samples} training images make no full batch of "
                        f"{cfg.data.batch_size} per process; lower --batch-size")

    seed_epoch(cfg.data.seed, -1)  # model initialisation (identical on every rank)
    model = build_model(cfg, len(class_names))
    frozen = freeze(model, cfg.freeze)
    frozen_names = tuple(name for name, m in model.named_modules() if any(m is f for f in frozen))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(world.device, memory_format=memory_format)
    ema = create_ema(model, cfg.recipe.ema_decay)
    net = distributed.wrap(model, world, cfg.sync_bn)
    global_batch = cfg.data.batch_size * world.world_size
    optimizer = build_optimizer(model, cfg.recipe, global_batch)
    state = load_state(run.state) if resume else None
    # wall time of earlier sessions of this run counts too
    deadline = Deadline(cfg.time_limit, state["elapsed"] if state else 0.0)
    scheduler = build_scheduler(optimizer, cfg.recipe, len(train_batches), cfg.epochs, deadline)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.recipe.label_smoothing)

    start_epoch, history, best = 0, [], -1.0
    if state is not None:  # after the scheduler, whose construction sets the learning rate of step 0
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        log.info("resuming %s after epoch %d of %d", run.root, start_epoch, cfg.epochs)
    elif world.is_main:
        write_config(run.config, cfg.to_dict())
    if world.is_main:
        log.info("%s on %s: %d train / %d val images, %d classes, %dx%d input, batch %d x %d process(es), "
                 "lr %.3g, %d epochs -> %s", cfg.model, cfg.data.data, train_batches.num_samples,
                 val_batches.num_samples, len(class_names), cfg.img_size, cfg.img_size, cfg.data.batch_size,
                 world.world_size, scaled_lr(cfg.recipe, global_batch), cfg.epochs, run.root)
    step_net = torch.compile(net) if cfg.compile else net
    eval_net = ema.module if ema is not None else model

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.monotonic()
        seed_epoch(cfg.data.seed, epoch, world.rank)
        train_batches.set_epoch(epoch)
        size = None  # --progressive-resize: this epoch's training resolution, from the share of the run done
        if cfg.progressive_resize:
            done = distributed.max_over_ranks(max(epoch / cfg.epochs, deadline.fraction()), world)
            size = progressive_size(cfg.progressive_resize, cfg.img_size, done)
        try:
            stats = train_one_epoch(step_net, train_batches, optimizer, scheduler, criterion, epoch=epoch,
                                    world=world, ema=ema, frozen=frozen, channels_last=cfg.channels_last,
                                    progress=cfg.progress, size=size)
        except Diverged as e:
            kept = (f"the last good checkpoint is {run.last} (epoch {epoch})" if epoch > 0
                    else "no checkpoint was written")
            raise UserError(f"training stopped: {e}; {kept}; lower --lr (now "
                            f"{scaled_lr(cfg.recipe, global_batch):.3g}) or raise --warmup-epochs") from None
        if world.is_main:
            recalibrate_bn(eval_net, train_batches, cfg.bn_recalibrate, frozen=frozen_names, device=world.device,
                           channels_last=cfg.channels_last)
            result = evaluate_model(eval_net, val_batches, len(class_names), class_names, device=world.device,
                                    channels_last=cfg.channels_last, progress=cfg.progress,
                                    desc=f"eval {epoch + 1}")
            record = {"epoch": epoch + 1, **stats, **({"train_size": size} if size else {}),
                      "val_loss": result.loss, "val_top1": result.top1, "val_top5": result.top5,
                      "lr": optimizer.param_groups[0]["lr"], "skipped_images": train_batches.bad + val_batches.bad}
            history.append(record)
            extra = {"epoch": epoch + 1, "val_top1": result.top1, "val_top5": result.top5,
                     "weights": "ema" if ema is not None else "model"}
            meta = _meta(cfg, model, class_names, pre, extra)
            save_checkpoint(run.last, eval_net, meta)
            if result.top1 > best:
                best = result.top1
                save_checkpoint(run.best, eval_net, meta)
            write_metrics(run.metrics, run.metrics_csv, history)
            plot_curves(run.curves, history)
            plot_confusion(run.confusion, result.confusion, class_names,
                           f"{cfg.model}, epoch {epoch + 1}: top-1 {result.top1:.4f}")
            save_state(run.state, {"epoch": epoch + 1, "model": model.state_dict(),
                                   "ema": ema.state_dict() if ema is not None else None,
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "history": history, "best": best, "elapsed": deadline.elapsed()})
            log.info("epoch %d/%d%s  loss %.4f  train %.4f  val top-1 %.4f  top-5 %.4f  %.0f img/s  %.0f s",
                     epoch + 1, cfg.epochs, f" at {size} px" if size else "", stats["train_loss"],
                     stats["train_acc"], result.top1, result.top5, stats["train_images_per_s"],
                     stats["train_seconds"])
        distributed.barrier(world)
        if deadline.seconds is not None and epoch + 1 < cfg.epochs and distributed.any_flag(
                deadline.elapsed() + (time.monotonic() - epoch_start) > deadline.seconds, world):
            log.warning("stopping after epoch %d of %d: another epoch would end past --time-limit %g min",
                        epoch + 1, cfg.epochs, cfg.time_limit)
            break
    if world.is_main and history:
        if train_batches.bad + val_batches.bad:
            log.warning("skipped %d unreadable image(s) (--skip-bad)", train_batches.bad + val_batches.bad)
        log.info("done: val top-1 %.4f (best %.4f); run folder %s", history[-1]["val_top1"], best, run.root)
    return history[-1] if history else {}


# -- eval --------------------------------------------------------------------------------------------------

def _check_classes(meta: CheckpointMeta, class_names: list[str], checkpoint: str, data: str) -> None:
    if list(meta.class_names) != list(class_names):
        raise UserError(f"checkpoint {checkpoint} was trained on {len(meta.class_names)} classes "
                        f"({', '.join(meta.class_names[:6])}{', ...' if len(meta.class_names) > 6 else ''}) but "
                        f"--data {data} has {len(class_names)} ({', '.join(class_names[:6])}"
                        f"{', ...' if len(class_names) > 6 else ''}); evaluate it on the data it was trained for")


def _load_classifier(path: str) -> tuple[nn.Module, CheckpointMeta]:
    from ..checkpoint import load_checkpoint
    model, meta = load_checkpoint(path)
    if meta.task != "classify":
        raise UserError(f"{path} is a {meta.task} checkpoint; pass --task {meta.task}")
    return model, meta


def evaluate(args: argparse.Namespace) -> dict:
    """``mobilenets eval``: top-1/top-5 and per-class accuracy of a checkpoint."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = _load_classifier(args.checkpoint)
    trained = meta.extra.get("data", {})
    data = args.data or trained.get("data")
    if data is None:
        raise UserError(f"{args.checkpoint} does not record its data set; pass --data fashion-mnist or --data DIR")
    val_fraction = args.val_fraction if args.val_fraction is not None else trained.get("val_fraction", 0.1)
    cfg = DataConfig(data=data, batch_size=args.batch_size, seed=trained.get("seed", 0), val_fraction=val_fraction,
                     num_workers=args.workers, skip_bad=args.skip_bad, limit_val=args.limit_val)
    batches, class_names = build_eval(cfg, meta.preprocessing)
    _check_classes(meta, class_names, args.checkpoint, data)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    model.to(device, memory_format=torch.channels_last)
    if args.tta == "flip":
        model = FlipAverage(model)
    result = evaluate_model(model, batches, len(class_names), class_names, device=device, channels_last=True,
                            progress=not (args.no_progress or args.json))
    report = {"checkpoint": str(args.checkpoint), "data": data, "tta": args.tta, **result.as_dict(),
              "skipped_images": batches.bad}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.checkpoint} on {data}: {result.count} images"
              + (" (flip test-time augmentation)" if args.tta == "flip" else ""))
        print(f"top-1 {result.top1:.4f}   top-5 {result.top5:.4f}   loss {result.loss:.4f}")
        width = max(len(n) for n in class_names)
        for name, acc, total in zip(class_names, result.per_class, result.confusion.sum(1).tolist()):
            print(f"  {name:<{width}}  {acc:.4f}  ({total} images)")
        if batches.bad:
            print(f"skipped {batches.bad} unreadable image(s)")
    return report


# -- predict -----------------------------------------------------------------------------------------------

def _open_predictor(checkpoint: str, backend: str, threads: int | None):
    """``(logits function of an NCHW float tensor, CheckpointMeta)`` for the chosen backend. Backends other
    than torch come from mobilenets.deploy.runtime; ``auto`` falls back to torch when that is not installed."""
    if backend != "torch":
        try:
            from ..deploy.runtime import open_runner
        except ModuleNotFoundError as e:
            if e.name not in ("mobilenets.deploy", "mobilenets.deploy.runtime"):
                raise
            if backend != "auto":
                raise UserError(f"--backend {backend} is not available in this installation "
                                "(mobilenets.deploy.runtime is missing); use --backend torch") from None
        else:
            runner = open_runner(checkpoint, backend=backend, threads=threads)
            return (lambda x: torch.from_numpy(runner.run(x.numpy().astype("float32")))), runner.meta
    if threads:
        torch.set_num_threads(threads)
    model, meta = _load_classifier(checkpoint)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)
    return run, meta


def predict(args: argparse.Namespace) -> list[dict]:
    """``mobilenets predict``: top-k class names and probabilities per image."""
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k} must be at least 1")
    model_run, meta = _open_predictor(args.checkpoint, args.backend, args.threads)
    results = []
    for path in args.images:
        x = load_image(path, meta.preprocessing).unsqueeze(0)
        probs = model_run(x).float().softmax(1)[0]
        k = min(args.top_k, len(probs))
        p, idx = probs.topk(k)
        top = [{"class": meta.class_names[i] if i < len(meta.class_names) else str(i), "index": int(i),
                "probability": float(q)} for q, i in zip(p.tolist(), idx.tolist())]
        results.append({"image": str(path), "top": top})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    return results

