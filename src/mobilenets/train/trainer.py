"""The one trainer: ``fit(task, cfg, run)`` for every task, single process or DDP under torchrun.

A run folder (``--out``) ends up with::

    config.json              the resolved configuration (``--resume`` reads it back)
    metrics.jsonl / .csv     one record per epoch
    training_curves.png      the task's loss and metric curves per epoch
    confusion_matrix.png     classification: of the last epoch's evaluation
    best.safetensors         the weights with the best validation metric (EMA weights when EMA is on)
    last.safetensors         the weights after the last finished epoch
    state.pt                 optimizer, scheduler, EMA, epoch, history: what --resume needs

Every file is replaced atomically at the end of each epoch, ``state.pt`` last, so killing the process at any
moment loses at most the epoch in progress. Each epoch re-seeds shuffling and augmentation from (seed, epoch,
rank), so a resumed run repeats the uninterrupted one exactly when no ``--time-limit`` bends its schedule. With a
time limit, training stops when it is reached (mid-epoch, on every rank alike), then evaluates and writes the
checkpoints; the cosine schedule follows the limit, so the run still ends at its low learning rate.
Before each evaluation the BN statistics of the evaluated weights are re-estimated on a few training batches
(``bn_recalibrate``). A NaN/Inf loss stops the run with one line naming the last good checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointMeta, save_checkpoint
from ..errors import UserError
from ..plots import plot_curves
from ..qat import FakeQuantized
from ..qat import describe as describe_qat
from ..tasks import Task
from . import distributed
from .config import TrainConfig
from .distill import Teachers
from .ema import create_ema
from .freeze import freeze
from .loop import BATCH_NORMS, Diverged, TrainingStep, recalibrate_bn, train_one_epoch
from .precision import check_precision, grad_scaler
from .recipes import Deadline, build_optimizer, build_scheduler, progressive_size, scaled_lr
from .report import write_metrics
from .state import RunFiles, ensure_dir, load_state, save_state, seed_epoch, write_config

log = logging.getLogger(__name__)


def fit(task: Task, cfg: TrainConfig, run: RunFiles, resume: bool = False) -> dict:
    """Train ``task`` as ``cfg`` says into ``run`` (continuing it when ``resume``); returns the last epoch's
    record (empty when a resumed run had nothing left to do)."""
    world = distributed.setup(cfg.device)
    try:
        return _fit(task, cfg, run, world, resume)
    finally:
        distributed.cleanup(world)


def _check_qat(task: Task, cfg: TrainConfig) -> None:
    """Quantization-aware training fine-tunes a trained classifier's every layer in fp32 through one fixed graph:
    refuse, in one line each, what cannot go with that."""
    clashes = {"task": (not task.quantization_aware, f"is for classification, not {task.name}"),
               "weights": (not cfg.weights, "fine-tunes a trained model: pass its checkpoint as weights"),
               "freeze": (cfg.freeze != "none", "fine-tunes every layer: leave freeze at 'none'"),
               "compile": (cfg.compile, "trains the exported graph as it is: leave compile off"),
               "precision": (cfg.precision != "fp32", "simulates int8 in fp32: leave precision at fp32"),
               "progressive_resize": (bool(cfg.progressive_resize),
                                      "traces one input size: leave progressive_resize off"),
               "ema_decay": (cfg.recipe.ema_decay > 0, "keeps no EMA (averaged weights would not match the learned "
                                                       "scales): set ema_decay 0")}
    for name, (clash, why) in clashes.items():
        if clash:
            raise UserError(f"quantization-aware training {why} ({name})")


def _set_bn_momentum(model: torch.nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, BATCH_NORMS):
            m.momentum = momentum


def _fit(task: Task, cfg: TrainConfig, run: RunFiles, world: distributed.World, resume: bool) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.progressive_resize and not task.resizable_inputs:
        raise UserError(f"progressive_resize is for classification; {task.name} targets would need resizing too")
    if cfg.qat:
        _check_qat(task, cfg)
    if world.is_main:
        ensure_dir(run.root)
    data = task.open_data(cfg.data, img_size=cfg.img_size, in_chans=cfg.in_chans, rank=world.rank,
                          world_size=world.world_size)
    if len(data.train) == 0:
        raise UserError(f"{data.num_train} training images make no full batch of {cfg.data.batch_size} per "
                        "process; lower batch_size")
    recipe = cfg.recipe
    seed_epoch(cfg.data.seed, -1)  # model initialisation (identical on every rank)
    model = task.build_model(cfg.model, num_classes=len(data.class_names), in_chans=data.preprocessing.input_size[0],
                             options=cfg.model_options, backbone=cfg.backbone, weights=cfg.weights)
    # (with --resume too: published weights may set build options, e.g. timm's BN eps, that the state needs)
    if recipe.bn_momentum is not None:
        _set_bn_momentum(model, recipe.bn_momentum)
    if cfg.qat:  # the trained weights, as the graph an int8 runtime will run (fake quantization in training)
        model = FakeQuantized(model, data.preprocessing.input_size)
    frozen = freeze(model, cfg.freeze)
    frozen_names = tuple(name for name, m in model.named_modules() if any(m is f for f in frozen))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(world.device, memory_format=memory_format)  # type: ignore[call-overload]  # (torch's overloads omit this pair)
    ema = create_ema(model, recipe.ema_decay)
    teachers = None
    if cfg.teachers:
        if task.name != "classify":
            raise UserError(f"teachers (distillation) are for classification; {task.name} has no distillation "
                            "loss: leave teachers empty")
        teachers = Teachers(tuple(cfg.teachers), data.class_names, data.preprocessing, world.device)
    step = distributed.wrap(TrainingStep(task, model, recipe.label_smoothing, teachers, cfg.kd_temperature,
                                         cfg.kd_weight), world, cfg.sync_bn)
    global_batch = cfg.data.batch_size * world.world_size
    optimizer = build_optimizer(model, recipe, global_batch)
    check_precision(cfg.precision)
    scaler = grad_scaler(cfg.precision, world.device)
    state = load_state(run.state) if resume else None
    # wall time of earlier sessions of this run counts too
    deadline = Deadline(cfg.time_limit, state["elapsed"] if state else 0.0)
    scheduler = build_scheduler(optimizer, recipe, len(data.train), cfg.epochs, deadline)
    total_steps = max(1, len(data.train) * cfg.epochs)

    def run_fraction() -> float:  # the share of the run done: of its steps or its time limit, as the schedule counts
        return max(scheduler.last_epoch / total_steps, deadline.fraction())

    start_epoch, history, best = 0, [], -float("inf")
    if state is not None:  # after the scheduler, whose construction sets the learning rate of step 0
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        if state.get("stopped"):
            log.info("%s ended at its time limit; nothing left to train", run.root)
            return history[-1] if history else {}
        log.info("resuming %s after epoch %d of %d", run.root, start_epoch, cfg.epochs)
    elif world.is_main:
        write_config(run.config, cfg.to_dict())
    if world.is_main:
        log.info("%s (%s) on %s: %d train / %d val images, %d classes, %dx%d input, batch %d x %d process(es), "
                 "lr %.3g, %d epochs -> %s", model.arch_name, model.arch_options, cfg.data.data, data.num_train,
                 data.num_val, len(data.class_names), *data.preprocessing.input_size[1:], cfg.data.batch_size,
                 world.world_size, scaled_lr(recipe, global_batch), cfg.epochs, run.root)
    # (torch.compile of a Module returns an OptimizedModule, a Module; torch annotates it as a plain callable)
    step_net: nn.Module = torch.compile(step) if cfg.compile else step  # type: ignore[assignment]
    evaluated: Any = ema.module if ema is not None else model  # zoo, task or FakeQuantized model: all have arch_name
    bn_batches = task.default_bn_recalibrate if cfg.bn_recalibrate is None else cfg.bn_recalibrate
    steps_done = history[-1].get("step", 0) if history else 0

    record = history[-1] if history else {}
    for epoch in range(start_epoch, cfg.epochs):
        seed_epoch(cfg.data.seed, epoch, world.rank)
        data.train.set_epoch(epoch)
        size = None  # --progressive-resize: this epoch's training resolution, from the share of the run done
        if cfg.progressive_resize:
            done = distributed.max_over_ranks(max(epoch / cfg.epochs, deadline.fraction()), world)
            size = progressive_size(cfg.progressive_resize, data.preprocessing.input_size[-1], done)
        try:
            stats = train_one_epoch(step_net, data.train, optimizer, scheduler, epoch=epoch, world=world, ema=ema,
                                    frozen=frozen, channels_last=cfg.channels_last, progress=cfg.progress,
                                    size=size, deadline=deadline, precision=cfg.precision, scaler=scaler,
                                    run_fraction=run_fraction)
        except Diverged as e:
            kept = (f"the last good checkpoint is {run.last} (epoch {epoch})" if epoch > 0
                    else "no checkpoint was written")
            raise UserError(f"training stopped: {e}; {kept}; lower lr (now "
                            f"{scaled_lr(recipe, global_batch):.3g}) or raise warmup_epochs") from None
        steps_done += stats["steps"]
        stats["skipped"] = data.train.bad
        stopped = deadline.seconds is not None and distributed.any_flag(deadline.passed(), world)
        if world.is_main:
            recalibrate_bn(evaluated, data.train, bn_batches, frozen=frozen_names, device=world.device,
                           channels_last=cfg.channels_last)
            metrics = task.evaluate(evaluated, data.val, preprocessing=data.preprocessing,
                                    class_names=data.class_names, device=world.device,
                                    channels_last=cfg.channels_last, progress=cfg.progress)
            record = task.epoch_record(epoch + 1, steps_done, stats, metrics, optimizer.param_groups[0]["lr"])
            history.append(record)
            meta = CheckpointMeta(model=evaluated.arch_name, options=dict(evaluated.arch_options), task=task.name,
                                  class_names=list(data.class_names), preprocessing=data.preprocessing,
                                  extra={"data": data.meta, "recipe": recipe.name, "epoch": epoch + 1,
                                         "weights": "ema" if ema is not None else "model",
                                         **task.checkpoint_extra(metrics, record),
                                         **({"qat": describe_qat(evaluated)} if cfg.qat else {})})
            save_checkpoint(run.last, evaluated, meta)
            if metrics[task.metric] > best:
                best = metrics[task.metric]
                save_checkpoint(run.best, evaluated, meta)
            write_metrics(run.metrics, run.metrics_csv, history)
            plot_curves(run.curves, history, task.curves)
            task.figures(run, history, metrics, data.class_names, f"{model.arch_name}, epoch {epoch + 1}")
            save_state(run.state, {"epoch": epoch + 1, "model": model.state_dict(),
                                   "ema": ema.state_dict() if ema is not None else None,
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "scaler": scaler.state_dict() if scaler is not None else None,
                                   "history": history, "best": best, "elapsed": deadline.elapsed(),
                                   "stopped": stopped})
            log.info("epoch %d/%d%s  loss %.4f  %s  %.0f img/s  %.0f s", epoch + 1, cfg.epochs,
                     f" at {size} px" if size else "", stats["loss"], task.summary(metrics),
                     stats["images_per_s"], stats["seconds"])
        distributed.barrier(world)
        if stopped:
            log.warning("stopping in epoch %d of %d: time_limit %g min reached", epoch + 1, cfg.epochs,
                        cfg.time_limit)
            break
    if world.is_main and history:
        skipped = data.train.bad + getattr(data.val, "bad", 0)
        if skipped:
            log.warning("skipped %d unreadable image(s) (skip_bad)", skipped)
        log.info("done: best %s %.4f; run folder %s", task.metric, best, run.root)
    return record


def open_run(path: str | Path, *, resume: bool) -> RunFiles:
    """The run folder: one that ``--resume`` continues, or a new one (refused when it already holds a run)."""
    run = RunFiles(Path(path))
    if not resume and (run.state.exists() or run.last.exists()):
        raise UserError(f"{run.root} already holds a run; resume it or choose another out folder")
    if resume and not run.state.exists():
        raise UserError(f"{run.root} holds no resumable run (no {run.state.name}); start a new run with out={run.root}")
    return run
