"""Image classification: Fashion-MNIST (idx files) or an image folder; cross-entropy; top-1 / top-5 accuracy and a
confusion matrix; the exported graph's output is the logits."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from ..checkpoint import CheckpointMeta
from ..data.loaders import DataConfig, build_eval, build_train_val, data_kind, default_preprocessing
from ..data.transforms import decode_image, preprocess
from ..errors import UserError
from ..registry import create_model
from .base import Parity, Task, TaskData, default_min_agreement, relative_tolerance, to_input

FASHION_IMG_SIZE = 32  # the demo's and the default Fashion-MNIST input (28x28 images resized)


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    confusion: Tensor  # (classes, classes): rows true class, columns predicted
    class_names: list[str] = field(default_factory=list)

    @property
    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count,
                "per_class": dict(zip(self.class_names, self.per_class)),
                "confusion": self.confusion.tolist()}


class FlipAverage(nn.Module):
    """Test-time augmentation: the log of the mean class probabilities of each image and its mirror image.

    Returns log-probabilities, so ``argmax`` and ``cross_entropy`` work on it as on logits. Only for data whose
    classes are unchanged by a horizontal flip (the training augmentation flips too); figures obtained with it
    are reported as such (``"tta": "flip"``), never as the plain single-view accuracy."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        views = torch.stack([self.model(x).float().log_softmax(1), self.model(x.flip(-1)).float().log_softmax(1)])
        return views.logsumexp(0) - math.log(2)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, batches: Iterable, num_classes: int, class_names: list[str], *,
                        device: torch.device = torch.device("cpu"), channels_last: bool = False,
                        progress: bool = True, desc: str = "eval") -> EvalResult:
    """Top-1/top-5 accuracy, mean cross-entropy and the confusion matrix over ``batches``."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5 = 0
    loss = torch.zeros((), dtype=torch.float64)
    k = min(5, num_classes)
    for x, y in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        logits = model(to_input(x, device, channels_last)).float().cpu()
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        confusion += torch.bincount(y * num_classes + pred, minlength=num_classes ** 2).view(num_classes, -1)
        top5 += int((logits.topk(k, 1).indices == y[:, None]).any(1).sum())
    count = int(confusion.sum())
    return EvalResult(top1=int(confusion.diag().sum()) / max(count, 1), top5=top5 / max(count, 1),
                      loss=float(loss) / max(count, 1), count=count, confusion=confusion,
                      class_names=list(class_names))


class Classify(Task):
    name = "classify"
    metric = "top1"
    outputs = ("logits",)
    default_recipe = "default"
    default_bn_recalibrate = 20
    resizable_inputs = True
    distillation = True
    quantization_aware = True
    curves = (("loss", "cross-entropy", (("train_loss", "train (smoothed targets)"), ("val_loss", "val"))),
              ("accuracy", "accuracy", (("train_acc", "train (augmented)"), ("val_top1", "val top-1"))))

    def open_data(self, cfg: DataConfig, *, img_size: int | None, in_chans: int | None, rank: int = 0,
                  world_size: int = 1) -> TaskData:
        kind, _ = data_kind(cfg.data)
        in_chans = in_chans or (1 if kind == "fashion" else 3)
        img_size = img_size or self.default_img_size(cfg.data)
        pre = default_preprocessing(cfg.data, img_size, in_chans)
        train, val, class_names = build_train_val(cfg, pre, rank, world_size)
        return TaskData(train, val, list(class_names), pre, meta=asdict(cfg), num_train=train.num_samples,
                        num_val=val.num_samples)

    def default_img_size(self, data: str) -> int:
        return FASHION_IMG_SIZE if data_kind(data)[0] == "fashion" else 224

    def has_test_split(self, data: str) -> bool:
        return data_kind(data)[0] == "fashion"  # Fashion-MNIST and idx folders; image folders bring a val folder

    def flip_averaged(self, model: nn.Module) -> nn.Module:
        return FlipAverage(model)

    def build_model(self, model: str, *, num_classes: int, in_chans: int, options: dict,
                    backbone: str | None = None, weights: str | None = None) -> nn.Module:
        if backbone is not None:
            raise UserError(f"backbone={backbone!r} is for detection and segmentation models; for classification "
                            "pass the classification model itself as model")
        return create_model(model, weights=weights, num_classes=num_classes, in_chans=in_chans, **options)

    def loss(self, model, inputs, targets, label_smoothing=0.0, soft_targets=None):
        """Cross-entropy against the labels; with ``soft_targets = (teacher probabilities at T, T, weight)``
        (``--teacher``) ``(1 - weight) * CE + weight * T^2 * KL``, both terms logged."""
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        terms = {}
        if soft_targets is not None:
            probs, temperature, weight = soft_targets
            kd = distillation_loss(logits, probs, temperature)
            terms = {"loss_ce": loss.detach(), "loss_kd": kd.detach()}
            loss = (1 - weight) * loss + weight * kd
        return loss, terms, {"correct": (logits.detach().argmax(1) == targets).sum()}

    def evaluate(self, model, val, *, preprocessing, class_names, device, channels_last=False, progress=False):
        result = evaluate_classifier(model, val, len(class_names), class_names, device=device,
                                     channels_last=channels_last, progress=progress)
        return {"top1": result.top1, "top5": result.top5, "loss": result.loss, "result": result,
                "skipped_images": val.bad}

    def epoch_record(self, epoch, step, train, metrics, lr):
        return {"epoch": epoch, "train_loss": train["loss"],
                "train_acc": train.get("correct", 0) / max(train["seen"], 1),
                "train_images_per_s": train["images_per_s"], "train_seconds": train["seconds"],
                **({"train_size": train["size"]} if train.get("size") else {}),
                **{k: train[k] for k in ("loss_ce", "loss_kd") if k in train},
                "val_loss": metrics["loss"], "val_top1": metrics["top1"], "val_top5": metrics["top5"], "lr": lr,
                "skipped_images": train["skipped"] + metrics["skipped_images"]}

    def summary(self, metrics: dict) -> str:
        return f"val top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}"

    def checkpoint_extra(self, metrics, record):
        return {"val_top1": metrics["top1"], "val_top5": metrics["top5"]}

    def figures(self, run, history, metrics, class_names, title):
        from ..plots import plot_confusion
        plot_confusion(run.confusion, metrics["result"].confusion, class_names,
                       f"{title}: top-1 {metrics['top1']:.4f}")

    # -- evaluation of a checkpoint ------------------------------------------------------------------------
    def open_eval_data(self, meta: CheckpointMeta, cfg: DataConfig):
        batches, class_names = build_eval(cfg, meta.preprocessing)
        if list(meta.class_names) != list(class_names):
            raise UserError(f"the checkpoint was trained on {len(meta.class_names)} classes "
                            f"({', '.join(meta.class_names[:6])}{', ...' if len(meta.class_names) > 6 else ''}) "
                            f"but data={str(cfg.data)!r} has {len(class_names)} ({', '.join(class_names[:6])}"
                            f"{', ...' if len(class_names) > 6 else ''}); evaluate it on the data it was trained for")
        return batches

    def eval_defaults(self, trained: dict) -> dict:
        """DataConfig fields ``mobilenets eval`` takes from the checkpoint's data record."""
        return {"seed": trained.get("seed", 0), "val_fraction": trained.get("val_fraction", 0.1)}

    def report(self, metrics: dict, class_names: list[str]) -> dict:
        return {**metrics["result"].as_dict(), "skipped_images": metrics["skipped_images"]}

    def report_lines(self, report: dict) -> list[str]:
        lines = [f"{report['count']} images",
                 f"top-1 {report['top1']:.4f}   top-5 {report['top5']:.4f}   loss {report['loss']:.4f}"]
        totals = [sum(row) for row in report["confusion"]]
        width = max(len(n) for n in report["per_class"])
        for (name, acc), total in zip(report["per_class"].items(), totals):
            lines.append(f"  {name:<{width}}  {acc:.4f}  ({total} images)")
        if report["skipped_images"]:
            lines.append(f"skipped {report['skipped_images']} unreadable image(s)")
        return lines

    # -- export ----------------------------------------------------------------------------------------------
    def compare(self, reference, got, *, inputs, int8, properties, tolerance=None, min_agreement=None) -> Parity:
        ref, out = reference[0], got[0]
        if min_agreement is None:
            min_agreement = default_min_agreement(int8)
        if tolerance is None and not int8:
            tolerance = relative_tolerance(ref, 5e-4)
        agree = out.argmax(1) == ref.argmax(1)
        if tolerance is not None:
            # Near-ties cannot be decided in fp32: count agreement where the reference's top-2 margin exceeds
            # twice the tolerance (all inputs, for any model with well separated logits).
            top2 = np.sort(ref, axis=1)[:, -2:]
            decisive = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
            agree = agree[decisive] if decisive.any() else np.ones(1, bool)
        return Parity(n=len(ref), inputs=inputs, max_abs_diff=float(np.abs(out - ref).max()),
                      agreement=float(agree.mean()), tolerance=tolerance, min_agreement=min_agreement)

    # -- results for a person --------------------------------------------------------------------------------
    def load(self, path, meta):
        image = decode_image(path, meta.preprocessing.input_size[0])
        return image, self.inputs(image, meta)

    def inputs(self, image, meta):
        return preprocess(image, meta.preprocessing).unsqueeze(0)

    def postprocess(self, outputs, meta, properties, image_size, *, top_k: int = 3, **options):
        probs = outputs[0].float().softmax(1)[0]
        p, idx = probs.topk(min(top_k, len(probs)))
        return {"top": [{"class": meta.class_names[i] if i < len(meta.class_names) else str(i), "index": int(i),
                         "probability": float(q)} for q, i in zip(p.tolist(), idx.tolist())]}

    def result_line(self, result: dict) -> str:
        return ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])


def distillation_loss(student_logits, teacher_probs, temperature: float):
    """``T^2 * KL(teacher || student)`` at temperature ``T``, averaged over the batch (Hinton et al. 2015; the T^2
    keeps the gradient's scale independent of ``T``)."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_q, teacher_probs, reduction="batchmean") * temperature ** 2
