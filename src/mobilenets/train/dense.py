"""What the detection and segmentation entry points (``detect.py``, ``segment.py``) share: their command-line
options, the model name resolution, the optimizer and schedule, and the training loop itself (:func:`fit`),
time-boxed and resumable. A task module describes only what differs, as a :class:`DenseTask`: its data, its loss
and its metric.

A run folder holds ``config.json`` (the options, read back by ``--resume``), ``metrics.jsonl`` (one record per
epoch), ``last.safetensors`` / ``best.safetensors`` and ``state.pt`` (weights, EMA, optimizer, schedule, epoch,
history), all replaced atomically after every epoch, ``state.pt`` last: a killed run loses at most the epoch in
progress, and ``mobilenets train --resume RUN_DIR`` continues it. Each epoch re-seeds its shuffling and
augmentation from (seed, epoch), so a resumed run repeats the uninterrupted one exactly when no ``--time-limit``
bends its schedule.

The options the classification task already defines (``--model``, ``--data``, ``--epochs``, ``--lr`` ...) are
read from ``args`` as they are; options only added here are skipped when another task module added them first,
so every task module can be loaded into the same sub-parser.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm import tqdm

from ..checkpoint import CheckpointMeta, Preprocessing, atomic_write, load_checkpoint, save_checkpoint
from ..errors import UserError
from .recipes import Deadline, decay_groups, warmup_cosine
from .state import RunFiles, ensure_dir, load_state, read_config, save_state, seed_epoch, write_config

log = logging.getLogger(__name__)

SCENES = "scenes"  # --data value of the built-in Fashion-MNIST scenes
MEAN = (0.5, 0.5, 0.5)  # SSDLite / LR-ASPP inputs: (x - 0.5) / 0.5 of [0, 1] images, as torchvision's
STD = (0.5, 0.5, 0.5)


def add_option(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """``parser.add_argument`` unless one of ``flags`` is already taken (by another task module)."""
    taken = parser._option_string_actions  # argparse has no public lookup for this
    if any(f in taken for f in flags):
        return
    parser.add_argument(*flags, **kwargs)


def add_dense_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Options common to detection and segmentation."""
    if command == "train":
        add_option(parser, "--backbone", default=None,
                   help="detect/segment: zoo backbone of the task model (default: --model when it is a "
                        "classification model)")
        add_option(parser, "--scenes", type=int, default=None,
                   help="detect/segment on --data scenes: number of training scenes (default 10000)")
        add_option(parser, "--time-limit", type=float, default=None,
                   help="detect/segment: stop training after this many minutes, then evaluate")
        add_option(parser, "--val-data", default=None,
                   help="detect/segment: validation data (default: the test split of scenes, or DATA/val)")
    if command in ("train", "eval"):
        add_option(parser, "--scene-size", type=int, default=None,
                   help="detect/segment: canvas size of the Fashion-MNIST scenes (default 128)")
        add_option(parser, "--annotations", default=None,
                   help="detect: COCO instances JSON of --data (default: DATA/instances.json)")
    if command == "predict":
        add_option(parser, "--out", type=Path, default=None,
                   help="detect/segment: folder for the drawn predictions (PNG), default predictions/")
        add_option(parser, "--score-thresh", type=float, default=0.3,
                   help="detect: draw and list detections scoring at least this (default 0.3)")


def resolve_model(args: argparse.Namespace, task: str, generic: str) -> tuple[str, dict]:
    """Registry name and options of the task model: ``--model`` if it is a ``task`` model, else ``generic``
    on the backbone ``--backbone`` or ``--model``."""
    from ..registry import get_entry

    name = getattr(args, "model", None) or generic
    entry = get_entry(name)
    options: dict = {}
    backbone = getattr(args, "backbone", None)
    if entry.task == "classify":
        options["backbone"] = backbone or name
        name = generic
    elif entry.task != task:
        raise UserError(f"--model {name} is a {entry.task} model; pass a {task} model "
                        f"(e.g. {generic}) or a classification backbone")
    elif backbone is not None:
        options["backbone"] = backbone
    for key, attr in (("width_multiplier", "width"), ("output_stride", "output_stride"),
                      ("norm_layer", "norm_layer")):
        value = getattr(args, attr, None)
        if value is not None:
            options[key] = value
    return name, options


def model_inputs(images: list[Tensor], size: int) -> Tensor:
    """The model's input batch for raw images (float (3, H, W) in [0, 1], any sizes): each stretched to ``size``
    squared (bilinear, antialiased), then normalised to [-1, 1] -- evaluation, predict and export use it alike."""
    out = []
    for im in images:
        im = im.as_subclass(Tensor)
        if tuple(im.shape[-2:]) != (size, size):
            im = F.interpolate(im[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(im)
    return v2.functional.normalize(torch.stack(out), list(MEAN), list(STD))


def open_scenes(args: argparse.Namespace, split: str, transforms, scene_cfg: dict | None, targets: str):
    """The ``split`` ("train" / "val") of the built-in Fashion-MNIST scenes; ``scene_cfg`` (a checkpoint's data
    record) fixes size, seed and count for evaluation. Training scenes are rendered once and kept in memory
    when no DataLoader workers would each need a copy."""
    from ..data.scenes import FashionScenes, SceneConfig

    cfg = dict(scene_cfg or {})
    size = getattr(args, "scene_size", None) or cfg.get("image_size") or 128
    if split == "train":
        n = getattr(args, "scenes", None) or getattr(args, "limit_train", None) or 10000
    else:
        n = getattr(args, "limit_val", None) or cfg.get("val_scenes") or 1000
    seed = cfg.get("seed", getattr(args, "seed", 0) or 0)
    cache = split == "train" and not (getattr(args, "workers", 0) or 0)
    return FashionScenes("train" if split == "train" else "test", n, SceneConfig(image_size=size), seed=seed,
                         transforms=transforms, targets=targets, cache=cache)


def build_optimizer(model: nn.Module, args: argparse.Namespace, *, lr: float, weight_decay: float
                    ) -> torch.optim.Optimizer:
    opt = getattr(args, "opt", None) or "adamw"
    lr = getattr(args, "lr", None) or lr
    wd = getattr(args, "wd", None)
    wd = weight_decay if wd is None else wd
    groups = decay_groups(model, wd, getattr(args, "depthwise_wd", None))
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    momentum = getattr(args, "momentum", None) or 0.9
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, alpha=0.9, eps=0.0316)
    raise UserError(f"--opt {opt} is not supported for dense tasks; use adamw, sgd or rmsprop")


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise UserError(f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower --lr "
                        "(the data passed validation, so this is an unstable learning rate)")


LOG_EVERY = 200  # training steps between progress log lines
TRAIN_BN_MOMENTUM = 0.1
RECALIBRATION_BATCHES = 8


def set_bn_momentum(model: nn.Module, momentum: float = TRAIN_BN_MOMENTUM) -> None:
    """Short from-scratch schedules move the weights fast; V3's TF momentum (0.01) lets the running statistics
    lag so far behind that the eval-mode network ignores its input. 0.1 (PyTorch's default) keeps up."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, channels_last: bool = False) -> None:
    """Precise BN (Wu & Johnson, arXiv:2105.07576): recompute the running statistics of ``model`` (the EMA
    weights, whose averaged statistics belong to no single set of weights) as a plain average over a few
    training batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for x in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
    model.train(was_training)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


def load_initial_weights(model: nn.Module, weights: str | None) -> None:
    """``--weights PATH``: start from a checkpoint of the same task model (same options), e.g. to continue a
    time-boxed run, or from a torchvision detection / segmentation checkpoint (mapped by load_weights)."""
    if not weights:
        return
    if weights in ("torchvision", "timm"):
        raise UserError(f"--weights {weights} names ImageNet classification weights; for --task detect/segment pass "
                        "the PATH of a checkpoint of the same model")
    from ..weights import load_weights

    load_weights(model, weights)
    log.info("initialised from %s", weights)


def set_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def evaluate(task: DenseTask, args: argparse.Namespace) -> dict:
    """``mobilenets eval --task detect|segment``: the task's metrics of a checkpoint on ``--data`` (default: the
    validation data it was trained with, e.g. the same test scenes)."""
    set_threads(args)
    model, meta = load_checkpoint(args.checkpoint, task=task.name)
    trained = meta.extra.get("data", {})
    data = getattr(args, "data", None) or trained.get("data", SCENES)
    scene_cfg = {"image_size": trained.get("image_size"), "seed": trained.get("seed", 0),
                 "val_scenes": trained.get("val_scenes")} if data == SCENES else None
    dataset = task.open_split(data, "val", args, None, scene_cfg, class_names=meta.class_names)
    quiet = getattr(args, "no_progress", False) or getattr(args, "json", False)
    result = task.evaluate(model, dataset, meta.preprocessing.input_size[-1],
                           batch_size=getattr(args, "batch_size", 32) or 32, progress=not quiet)
    values = result[task.per_class]
    names = meta.class_names[-len(values):]  # detection has no background AP
    report = {"checkpoint": str(args.checkpoint), "data": data, **{k: result[k] for k in task.headline},
              **{k: result[k] for k in ("images", "objects") if k in result}, task.per_class: dict(zip(names, values))}
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
        return report
    counted = ", ".join(f"{result[k]} {k}" for k in ("images", "objects") if k in result)
    print(f"{args.checkpoint} on {data}: {counted}")
    print(task.summary(result))
    width = max(len(n) for n in names)
    for n, v in zip(names, values):
        print(f"  {n:<{width}}  {task.per_class_label} {v:.4f}")
    return report


def open_network(checkpoint: str, task: str, backend: str = "torch", threads: int | None = None):
    """``(run, meta, properties)`` of a detect / segment checkpoint (or its ONNX export) on ``backend``.
    ``run(x)`` maps a normalised (N, 3, H, W) batch to the network's outputs as tensors: ``[logits]`` for
    segmentation, ``[boxes, scores]`` (decoded, before NMS) for detection, the same on every backend;
    ``properties`` holds a detector's NMS settings (mobilenets.heads.export.POSTPROCESS_KEY)."""
    from ..deploy.runtime import open_runner

    runner = open_runner(checkpoint, backend=backend, threads=threads)
    if runner.meta is None or runner.meta.task != task:
        found = "no mobilenets metadata" if runner.meta is None else f"a {runner.meta.task} model"
        raise UserError(f"{checkpoint} holds {found}, not a {task} model; pass a {task} checkpoint or its export")
    log.info("running %s on %s", checkpoint, runner.backend)

    def run(x: Tensor) -> list[Tensor]:
        return [torch.from_numpy(out) for out in runner.outputs(x.numpy())]
    return run, runner.meta, runner.properties


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a (3, H, W) uint8 tensor as PNG (Pillow: torchvision.io's encoders are deprecated)."""
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(path)


# -- the training loop -----------------------------------------------------------------------------------------

@dataclass
class DenseData:
    """What a task's data gives the loop: the two splits, the class names (background first) and the model's
    square input size; ``meta`` goes into the checkpoints (where the data came from, what was skipped)."""
    train: Any
    val: Any
    class_names: list[str]
    size: int
    meta: dict


@dataclass(frozen=True)
class DenseTask:
    """What differs between detection and segmentation training."""
    name: str  # "detect" | "segment": the checkpoint's task
    generic_model: str  # the registry model a bare classification backbone is wrapped in
    open_data: Callable[[argparse.Namespace, str], DenseData]
    open_split: Callable[..., Any]  # (data, split, args, transforms, scene_cfg, class_names) -> raw dataset
    collate: Callable  # DataLoader collate_fn of training samples -> (images, targets)
    losses: Callable[[nn.Module, Tensor, Any], dict[str, Tensor]]  # named loss terms; their sum is minimised
    evaluate: Callable[..., dict]  # (model, dataset, size, batch_size=, progress=, channels_last=) -> metrics
    metric: str  # the metric that picks best.safetensors ("map", "miou")
    headline: tuple[str, ...]  # the metrics eval reports first
    per_class: str  # the per-class metric list (one value per object class)
    per_class_label: str  # its name in eval's table ("AP", "IoU")
    summary: Callable[[dict], str]  # one line of the metrics


RUNTIME_OPTIONS = ("threads", "no_progress")  # taken from the resuming command, not from config.json


def _options_of(args: argparse.Namespace, task: str) -> dict:
    """The JSON-able options of ``args``: config.json of the run."""
    options = {"task": task}
    for k, v in vars(args).items():
        if k in ("resume", "command", "task") or callable(v):
            continue
        options[k] = str(v) if isinstance(v, Path) else v
    return options


def _open_run(task: DenseTask, args: argparse.Namespace) -> tuple[argparse.Namespace, RunFiles, dict | None]:
    """``(options, run files, resume state or None)``: a new run folder, or the one ``--resume`` names."""
    resume = getattr(args, "resume", None)
    if resume:
        run = RunFiles(Path(resume))
        config = read_config(run.config)
        if config.get("task") != task.name:
            raise UserError(f"--resume {run.root} is a {config.get('task', 'classify')} run, not {task.name}")
        state = load_state(run.state)
        options = argparse.Namespace(**config)
        for k in RUNTIME_OPTIONS:
            if getattr(args, k, None):
                setattr(options, k, getattr(args, k))
        return options, run, state
    out = getattr(args, "out", None)
    if out is None:
        raise UserError("train needs --out RUN_DIR (the folder for checkpoints and metrics)")
    run = RunFiles(Path(out))
    if run.state.exists() or run.last.exists():
        raise UserError(f"{run.root} already holds a run; continue it with --resume {run.root} or pass another --out")
    ensure_dir(run.root)
    write_config(run.config, _options_of(args, task.name))
    return args, run, None


def _write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in history)))


def fit(task: DenseTask, args: argparse.Namespace) -> dict:
    """``mobilenets train --task detect|segment`` (and ``--resume`` of such a run); returns the last epoch's
    record."""
    from ..registry import create_model
    from .ema import create_ema

    args, run, state = _open_run(task, args)
    set_threads(args)
    seed = getattr(args, "seed", 0) or 0
    data_name = getattr(args, "data", None) or SCENES
    name, options = resolve_model(args, task.name, task.generic_model)
    data = task.open_data(args, data_name)
    seed_epoch(seed, -1)  # model initialisation
    model = create_model(name, num_classes=len(data.class_names), **options)
    if state is None:
        load_initial_weights(model, getattr(args, "weights", None))
    set_bn_momentum(model)
    channels_last = bool(getattr(args, "channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_size = getattr(args, "batch_size", 32) or 32
    if batch_size < 2:
        raise UserError(f"--batch-size {batch_size} must be at least 2 (BatchNorm needs 2 samples)")
    workers = getattr(args, "workers", 0) or 0
    generator = torch.Generator()
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=task.collate,
                        num_workers=workers, generator=generator, persistent_workers=bool(workers))
    if len(loader) == 0:
        raise UserError(f"{len(data.train)} training images are fewer than --batch-size {batch_size}")
    epochs = getattr(args, "epochs", 10) or 10
    optimizer = build_optimizer(model, args, lr=3e-3, weight_decay=5e-4)
    total = epochs * len(loader)
    warmup = getattr(args, "warmup_epochs", None)
    warmup_steps = int(warmup * len(loader)) if warmup is not None else min(300, total // 10 + 1)
    ema_decay = getattr(args, "ema_decay", None)
    ema = create_ema(model, 0.999 if ema_decay is None else ema_decay)
    start_epoch, step, best, history, spent = 0, 0, -1.0, [], 0.0
    if state is not None:
        start_epoch, step, best, history, spent = (state["epoch"], state["step"], state["best"], state["history"],
                                                   state["elapsed"])
    deadline = Deadline(getattr(args, "time_limit", None), spent)
    scheduler = warmup_cosine(optimizer, total, warmup_steps, deadline, floor=0.01)
    if state is not None:  # after the scheduler, whose construction sets the learning rate of step 0
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log.info("resuming %s after epoch %d of %d", run.root, start_epoch, epochs)
    progress = not getattr(args, "no_progress", False)
    pre = Preprocessing(input_size=(3, data.size, data.size), resize=data.size, mean=MEAN, std=STD,
                        interpolation="bilinear")
    log.info("training %s (%s) on %s: %d images, %d val, %d epochs of %d steps", name, options, data_name,
             len(data.train), len(data.val), epochs, len(loader))
    evaluated = ema.module if ema is not None else model
    record = history[-1] if history else {}
    if state is not None and state.get("stopped"):
        log.info("%s ended at its time limit; nothing left to train", run.root)
        return record
    for epoch in range(start_epoch, epochs):
        seed_epoch(seed, epoch)
        generator.manual_seed(seed * 1_000_003 + epoch)
        model.train()
        sums: dict[str, float] = {}
        seen, start = 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=not progress)
        for i, (x, targets) in enumerate(bar):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            terms = task.losses(model, x, targets)
            loss = sum(terms.values())
            check_finite(loss, epoch, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            seen += len(x)
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(x)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step % LOG_EVERY == 0:
                log.info("step %d: loss %.4f, %.1f img/s, lr %.2e", step, float(loss.detach()),
                         seen / (time.perf_counter() - start), optimizer.param_groups[0]["lr"])
            if deadline.passed():
                break
        train_seconds = time.perf_counter() - start
        if ema is not None:
            recalibrate_bn(evaluated, (x for x, _ in itertools.islice(loader, RECALIBRATION_BATCHES)), channels_last)
        metrics = task.evaluate(evaluated, data.val, data.size, channels_last=channels_last)
        record = {"epoch": epoch + 1, "step": step, **{k: v / max(1, seen) for k, v in sums.items()},
                  "train_img_s": seen / train_seconds, "lr": optimizer.param_groups[0]["lr"],
                  **{k: v for k, v in metrics.items() if k != task.per_class}}
        log.info("epoch %d: loss %.4f, val %s (%.0f img/s)", epoch + 1, record["loss"], task.summary(metrics),
                 record["train_img_s"])
        history.append(record)
        meta = CheckpointMeta(model=evaluated.arch_name, options=dict(evaluated.arch_options), task=task.name,
                              class_names=list(data.class_names), preprocessing=pre,
                              extra={"data": data.meta, "metrics": {**record, task.per_class: metrics[task.per_class]},
                                     "resize": "stretch to input_size (no crop)"})
        _write_metrics(run.metrics, history)
        save_checkpoint(run.last, evaluated, meta)
        if metrics[task.metric] > best:
            best = metrics[task.metric]
            save_checkpoint(run.best, evaluated, meta)
        stopped = deadline.passed()
        save_state(run.state, {"epoch": epoch + 1, "step": step, "best": best, "history": history,
                               "elapsed": deadline.elapsed(), "stopped": stopped, "model": model.state_dict(),
                               "ema": ema.state_dict() if ema is not None else None,
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
        if stopped:
            log.info("time limit reached after epoch %d (step %d)", epoch + 1, step)
            break
    return record
