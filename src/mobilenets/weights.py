"""Weights as data: where the official ImageNet weights live, how to read checkpoints of torchvision, timm and
mobilenets itself, and how their parameter names map onto ours.

Loading never unpickles arbitrary objects: safetensors files are read with safetensors, PyTorch files with
``torch.load(..., weights_only=True)``. A checkpoint that does not fit is reported key by key, in words.
"""
from __future__ import annotations

import logging
import os
import urllib.error
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import nn

from .blocks import ConvBlock, DepthwiseSeparable, FusedInvertedBottleneck, MobileMQA, UniversalInvertedBottleneck
from .errors import UserError
from .files import cache_root, file_sha256
from .layers import PooledConvNorm
from .model import MobileNet
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocessing

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# The official weights
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightEntry:
    """One published checkpoint."""

    model: str  # our registry name
    source: str  # "torchvision" or "timm"
    url: str
    sha256: str | None  # full digest or its leading hex digits (torchvision puts 8 in the file name)
    preprocessing: Preprocessing
    top1: float | None  # ImageNet-1k val accuracy the publisher reports (at preprocessing.input_size); None: none
    options: dict = field(default_factory=dict)  # architecture options the weights were trained with
    variant: str = ""  # "" for the source's default checkpoint of the model and width; else weights="timm:VARIANT"
    licence: str = ""  # "": the source's permissive licence (BSD / Apache-2.0); else a key of LICENCES, which the
    #                    caller must accept explicitly (create_model(..., accept_licence=KEY))
    classifier: bool = True  # False: a feature extractor's weights; the model's classifier keeps its random init

    @property
    def tag(self) -> str:
        """What ``create_model(..., weights=TAG)`` names this checkpoint by (with the width it was trained at)."""
        return f"{self.source}:{self.variant}" if self.variant else self.source

    @property
    def key(self) -> tuple[str, str, float]:
        return self.model, self.tag, float(self.options.get("width_multiplier", 1.0))


# Licences that must be accepted by name before their weights are downloaded or loaded.
LICENCES = {
    "gemma": "the Gemma Terms of Use (https://ai.google.dev/gemma/terms) and the Gemma Prohibited Use Policy "
             "(https://ai.google.dev/gemma/prohibited_use_policy)",
}
ACCEPT_ENV = "MOBILENETS_ACCEPT_LICENCE"  # comma-separated LICENCES keys; what the CLI's --accept-licence sets


def check_licence(entry: WeightEntry, accept_licence: str | None = None) -> None:
    """Refuse ``entry`` unless its licence is permissive or accepted by name (``accept_licence``, or the
    environment variable ACCEPT_ENV that ``--accept-licence`` sets for the command and its worker processes)."""
    if not entry.licence:
        return
    accepted = {a.strip() for a in (accept_licence or "").split(",") + os.environ.get(ACCEPT_ENV, "").split(",")}
    if entry.licence not in accepted:
        raise UserError(f"the {entry.model} weights {entry.tag!r} are published under {LICENCES[entry.licence]}, "
                        f"not an open-source licence; read it, and if you accept it pass "
                        f"accept_licence={entry.licence!r}")


_TV = "https://download.pytorch.org/models/"
_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
# keyword bundles for Preprocessing / _timm (typed Any: mypy cannot match a dict's keys to parameters)
_IMAGENET: dict[str, Any] = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
_INCEPTION: dict[str, Any] = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)
_UNIT: dict[str, Any] = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # images in [0, 1], not normalised
_TIMM_BN: dict[str, Any] = {"bn_eps": 1e-5, "bn_momentum": 0.1}  # timm's MobileNetV2/V3 (PyTorch's BN defaults)
_TF_PORT: dict[str, Any] = {"bn_eps": 1e-3, "padding": "tf_same"}  # timm's tf_ ports of TF checkpoints


def _torchvision(model: str, file_name: str, resize: int, top1: float) -> WeightEntry:
    """A torchvision checkpoint: 224 px crops of images resized to ``resize`` px, bilinear, ImageNet statistics (as
    its transforms say). The file name carries the leading 8 hex digits of the file's sha256, which are checked."""
    digest = file_name.rsplit("-", 1)[1].split(".")[0]
    return WeightEntry(model, "torchvision", _TV + file_name, digest, Preprocessing((3, 224, 224), resize, **_IMAGENET),
                       top1)


def _timm(model: str, hub_name: str, size: int, crop_pct: float, top1: float | None, *, inception: bool = False,
          default: bool = True, variant: str | None = None, interpolation: str = "bicubic",
          stats: dict | None = None, classifier: bool = True, licence: str = "", **options) -> WeightEntry:
    """A timm checkpoint on the Hugging Face hub, evaluated at ``size`` px after resizing the shorter side to
    floor(size / crop_pct) (timm's ``crop_pct``), bicubic unless ``interpolation`` says otherwise, with ImageNet
    statistics (Inception's with ``inception``, or ``stats``); ``top1`` is timm's results-imagenet.csv figure there.
    Non-default checkpoints are named by their timm tag: ``weights="timm:e3600_r256_in1k"``, or by ``variant``.
    timm publishes on the Hugging Face hub without a digest we could pin here: the download is only checked for
    being a loadable safetensors file that fits the model."""
    pre = Preprocessing((3, size, size), int(size / crop_pct),
                        **(stats or (_INCEPTION if inception else _IMAGENET)), interpolation=interpolation)
    if variant is None:
        variant = "" if default else hub_name.split(".", 1)[1]
    return WeightEntry(model, "timm", _HF.format(hub_name), None, pre, top1, options, variant=variant,
                       licence=licence, classifier=classifier)


_V4 = "mobilenet_v4_"

# key: (our model, weights tag, width multiplier)
WEIGHTS: dict[tuple[str, str, float], WeightEntry] = {
    e.key: e for e in (
        # torchvision's best (IMAGENET1K_V2 where it exists; resize 232 -> crop 224 as its transforms say)
        _torchvision("mobilenet_v2", "mobilenet_v2-7ebf99e0.pth", 232, 72.154),
        _torchvision("mobilenet_v3_large", "mobilenet_v3_large-5c1a4163.pth", 232, 75.274),
        _torchvision("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth", 256, 67.668),
        # timm's default checkpoint of each model and width
        _timm("mobilenet_v1", "mobilenetv1_100.ra4_e3600_r224_in1k", 224, 0.95, 75.38),
        _timm("mobilenet_v2", "mobilenetv2_100.ra_in1k", 224, 0.875, 72.97, bn_eps=1e-5),
        _timm("mobilenet_v3_large", "mobilenetv3_large_100.ra_in1k", 224, 0.875, 75.77, **_TIMM_BN),
        _timm("mobilenet_v3_small", "mobilenetv3_small_100.lamb_in1k", 224, 0.875, 67.636, **_TIMM_BN),
        _timm("mobilenet_v3_small", "mobilenetv3_small_075.lamb_in1k", 224, 0.875, 65.284, width_multiplier=0.75,
              **_TIMM_BN),
        # timm keeps V3's 16-channel stem below width 0.75; the TF rule (our default) gives 8
        _timm("mobilenet_v3_small", "mobilenetv3_small_050.lamb_in1k", 224, 0.875, 57.918, width_multiplier=0.5,
              fix_stem=True, **_TIMM_BN),
        # MobileNetV4: trained in timm by R. Wightman (no official weights exist). The first of each model is the
        # one at the paper's resolution. Left out: the 12k-class in12k checkpoints and timm's anti-aliased
        # "conv_aa"/"conv_blur" experiments (other architectures).
        _timm(_V4 + "conv_small", "mobilenetv4_conv_small.e2400_r224_in1k", 224, 0.875, 73.756),
        _timm(_V4 + "conv_small", "mobilenetv4_conv_small.e1200_r224_in1k", 224, 0.875, 73.450, default=False),
        _timm(_V4 + "conv_small", "mobilenetv4_conv_small.e3600_r256_in1k", 256, 0.95, 74.534, inception=True,
              default=False),
        _timm(_V4 + "conv_small", "mobilenetv4_conv_small_050.e3000_r224_in1k", 224, 0.875, 64.778, inception=True,
              width_multiplier=0.5),
        _timm(_V4 + "conv_medium", "mobilenetv4_conv_medium.e500_r256_in1k", 256, 0.95, 79.916),
        _timm(_V4 + "conv_medium", "mobilenetv4_conv_medium.e500_r224_in1k", 224, 0.95, 79.092, default=False),
        _timm(_V4 + "conv_medium", "mobilenetv4_conv_medium.e250_r384_in12k_ft_in1k", 384, 0.95, 82.776,
              default=False),
        _timm(_V4 + "conv_large", "mobilenetv4_conv_large.e600_r384_in1k", 384, 0.95, 82.974),
        _timm(_V4 + "conv_large", "mobilenetv4_conv_large.e500_r256_in1k", 256, 0.95, 81.864, default=False),
        _timm(_V4 + "hybrid_medium", "mobilenetv4_hybrid_medium.ix_e550_r256_in1k", 256, 0.95, 81.478),
        _timm(_V4 + "hybrid_medium", "mobilenetv4_hybrid_medium.e500_r224_in1k", 224, 0.95, 80.432, default=False),
        _timm(_V4 + "hybrid_medium", "mobilenetv4_hybrid_medium.ix_e550_r384_in1k", 384, 0.95, 82.952,
              default=False),
        _timm(_V4 + "hybrid_medium", "mobilenetv4_hybrid_medium.e200_r256_in12k_ft_in1k", 256, 0.95, 82.360,
              default=False),
        _timm(_V4 + "hybrid_large", "mobilenetv4_hybrid_large.ix_e600_r384_in1k", 384, 0.95, 83.996),
        _timm(_V4 + "hybrid_large", "mobilenetv4_hybrid_large.e600_r384_in1k", 384, 0.95, 83.826, default=False),
        # Further timm weights for architectures and widths the zoo builds with timm's exact parameters (issue 31);
        # top-1 from timm's results table as REFERENCE_V5.md section 2.1 records it.
        _timm("mobilenet_v2", "mobilenetv2_140.ra_in1k", 224, 0.875, 76.528, width_multiplier=1.4, **_TIMM_BN),
        _timm("mobilenet_v2", "mobilenetv2_050.lamb_in1k", 224, 0.875, 65.928, width_multiplier=0.5, **_TIMM_BN),
        _timm("mobilenet_v1", "mobilenetv1_125.ra4_e3600_r224_in1k", 224, 0.9, 76.92, inception=True,
              width_multiplier=1.25),
        # MobileNetV4 Conv-L with anti-aliased downsampling (timm mobilenetv4_conv_aa_large), pretrained on
        # ImageNet-12k, fine-tuned on 1k at 448 px and evaluated at 544 px without a crop: the best public MobileNet
        # ImageNet weights.
        _timm(_V4 + "conv_large", "mobilenetv4_conv_aa_large.e230_r448_in12k_ft_in1k", 544, 1.0, 84.99,
              variant="aa_e230_r448_in12k_ft_in1k", antialias=True),
        # MobileNetV3-Large pretrained on ImageNet-21k (Alibaba MIIL, arXiv:2104.10972): fine-tuned on 1k, and the
        # 21k backbone alone (its 11,221-class head is left out: a start for fine-tuning). [0, 1] inputs, bilinear.
        _timm("mobilenet_v3_large", "mobilenetv3_large_100.miil_in21k_ft_in1k", 224, 0.875, 77.92,
              variant="miil_in21k_ft_in1k", interpolation="bilinear", stats=_UNIT, **_TIMM_BN),
        _timm("mobilenet_v3_large", "mobilenetv3_large_100.miil_in21k", 224, 0.875, None, variant="miil_in21k",
              interpolation="bilinear", stats=_UNIT, classifier=False, **_TIMM_BN),
        # The TF-slim MobileNetV3 checkpoints ported by timm (tf_mobilenetv3_*): TF "SAME" padding, BN eps 1e-3,
        # Inception mean/std, bilinear; weights="timm:tf" (and timm:tf_minimal for the minimalistic models).
        *(_timm(model, f"tf_mobilenetv3_{size}_{tag}.in1k", 224, 0.875, top1, variant="tf" + minimal,
                inception=True, interpolation="bilinear", **_TF_PORT, **extra)
          for model, size, tag, minimal, top1, extra in (
              ("mobilenet_v3_large", "large", "100", "", 75.51, {}),
              ("mobilenet_v3_large", "large", "075", "", 73.442, {"width_multiplier": 0.75}),
              ("mobilenet_v3_small", "small", "100", "", 67.922, {}),
              ("mobilenet_v3_small", "small", "075", "", 65.706, {"width_multiplier": 0.75}),
              ("mobilenet_v3_large", "large", "minimal_100", "_minimal", 72.27, {"minimal": True}),
              ("mobilenet_v3_small", "small", "minimal_100", "_minimal", 62.892, {"minimal": True}))),
        # MobileNetV5: Gemma 3n's vision encoder (no classifier, no ImageNet figure), Gemma licence. 768 px in
        # [0, 1] (mean 0, std 1), no crop. One file for both builds; the _enc one pads as Gemma 3n does.
        *(_timm(name, "mobilenetv5_300m.gemma3n", 768, 1.0, None, variant="gemma3n", stats=_UNIT, licence="gemma",
                classifier=False)
          for name in ("mobilenet_v5_300m", "mobilenet_v5_300m_enc")),
    )
}


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names (from torchvision's weight metadata)."""
    from torchvision.models import MobileNet_V2_Weights
    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``weights/`` in the package's cache."""
    return cache_root() / "weights"


def fetch(entry: WeightEntry) -> Path:
    """Download ``entry`` into the cache once (atomically) and check its digest; return the local path."""
    name = entry.url.rstrip("/").split("/")[-1]
    if entry.source == "timm":  # every timm file is called model.safetensors: key it by repository
        name = entry.url.split("/timm/")[1].split("/")[0] + ".safetensors"
    dest = cache_dir() / name
    if not dest.exists():
        from torch.hub import download_url_to_file
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # download_url_to_file writes to a temporary file and moves it into place when complete.
            download_url_to_file(entry.url, str(dest), progress=False)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UserError(f"could not download {entry.url} ({getattr(e, 'reason', e)}); download it on a "
                            f"machine with internet and pass the file instead: weights='/path/{name}'") from e
    if entry.sha256 and not file_sha256(dest).startswith(entry.sha256):
        dest.unlink()
        raise UserError(f"checksum mismatch for {entry.url} (expected sha256 {entry.sha256}...); the corrupt "
                        "download was deleted, try again")
    return dest


def create_with_weights(entry, weights: str, options: dict, accept_licence: str | None = None) -> nn.Module:
    """``create_model(name, weights=...)``: build with the weights' own options, then load them.

    A ``num_classes`` other than the checkpoint's keeps a fresh classifier; an ``in_chans`` other than 3 adapts
    the stem (see :func:`adapt_stem`). Weights under a licence of LICENCES need ``accept_licence`` (see
    :func:`check_licence`) before anything is downloaded.
    """
    width = float(options.get("width_multiplier", 1.0))
    known = WEIGHTS.get((entry.name, weights, width))
    if known is not None:
        check_licence(known, accept_licence)
        path, opts = fetch(known), {**known.options, **options}
    elif weights.split(":")[0] in ("torchvision", "timm"):
        source = weights.split(":")[0]
        named = "" if weights == source else f" named {weights!r}"
        have = sorted(f"{t} (width_multiplier={w:g})" for (m, t, w) in WEIGHTS if m == entry.name)
        raise UserError(f"{source} publishes no weights for {entry.name}{named} at width_multiplier={width:g}; "
                        f"available: {', '.join(have) or 'none'}")
    else:
        path, opts = Path(weights), options
    state = read_state_dict(path)  # an unreadable file fails here, before a long build (V5: 300M parameters)
    model = entry.builder(**opts)
    # the weights' own options (fix_stem, bn_eps, ...) belong to the model's description (checkpoints rebuild it)
    model.arch_options = dict(opts)
    fresh_head = opts.get("num_classes", 1000) != 1000 or (known is not None and not known.classifier)
    skip = ("classifier.",) if fresh_head else ()
    eps = known.options.get("bn_eps", TIMM_BN_EPS) if known is not None and known.source == "timm" else TIMM_BN_EPS
    load_weights(model, state, skip=skip, source_name=str(path), timm_bn_eps=eps)
    if known is not None and not known.classifier and getattr(model, "num_classes", None):
        log.info("%s holds no classifier: %s's %d-class classifier keeps its random init; train it, e.g. with "
                 "freeze='backbone'", known.tag, entry.name, model.num_classes)
    model.weights_entry = known
    return model


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoint files
# ---------------------------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors or PyTorch checkpoint file, without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found; pass a .safetensors/.pth file, 'torchvision' or 'timm'")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; any of them means "not a plain state dict"
        raise UserError(f"{path} is not a PyTorch state dict that can be loaded safely ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); save it with torch.save(model.state_dict()) or as "
                        "safetensors") from e
    for wrapper in ("state_dict", "model", "model_state", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Key mapping: our module path -> their module path, for every module that owns parameters or buffers
# ---------------------------------------------------------------------------------------------------------------
def _block_parts(block: nn.Module) -> list[str]:
    """Our sub-modules of one block, in forward order, that hold weights."""
    if isinstance(block, DepthwiseSeparable):
        return ["dw", "pw"]
    return [p for p in ("expand", "dw", "se", "project") if not isinstance(getattr(block, p), nn.Identity)]


def _conv_bn(ours: str, theirs_conv: str, theirs_bn: str) -> dict[str, str]:
    return {f"{ours}.conv": theirs_conv, f"{ours}.bn": theirs_bn}


def torchvision_module_map(model: MobileNet, prefix: str = "features") -> dict[str, str]:
    """Our module paths -> torchvision's MobileNetV2/V3 paths (``features.*`` and ``classifier.*``)."""
    # torchvision's V3 (the only one with a head_fc before the classifier) wraps each block's layers in ``.block``
    # and keeps the projection as a ConvNormActivation; its V2 uses ``.conv`` and a bare conv + BN
    v3 = model.arch.head is not None
    m = _conv_bn("stem", f"{prefix}.0.0", f"{prefix}.0.1")
    index = 1
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(cast(nn.Sequential, stage)):  # a Sequential of Sequentials
            ours, theirs = f"stages.{s}.{b}", f"{prefix}.{index}.{'block' if v3 else 'conv'}"
            parts = _block_parts(block)
            for j, part in enumerate(parts):
                if part == "se":
                    m[f"{ours}.se.fc1"], m[f"{ours}.se.fc2"] = f"{theirs}.{j}.fc1", f"{theirs}.{j}.fc2"
                elif part == "project" and not v3:  # V2 keeps the linear projection as bare conv + BN
                    m.update(_conv_bn(f"{ours}.project", f"{theirs}.{j}", f"{theirs}.{j + 1}"))
                else:
                    m.update(_conv_bn(f"{ours}.{part}", f"{theirs}.{j}.0", f"{theirs}.{j}.1"))
            index += 1
    m.update(_conv_bn("final_conv", f"{prefix}.{index}.0", f"{prefix}.{index}.1"))
    if v3:
        m["head_fc"], m["classifier"] = "classifier.0", "classifier.3"
    else:
        m["classifier"] = "classifier.1"
    return m


def _timm_v4_block(block: nn.Module, ours: str, theirs: str) -> dict[str, str] | None:
    """timm's paths of one MobileNetV4 block (``ConvBnAct``, ``EdgeResidual``, ``UniversalInvertedResidual``,
    ``MobileAttention``); None for other blocks."""
    if isinstance(block, ConvBlock):
        return _conv_bn(ours, f"{theirs}.conv", f"{theirs}.bn1")
    if isinstance(block, FusedInvertedBottleneck):
        return {**_conv_bn(f"{ours}.expand", f"{theirs}.conv_exp", f"{theirs}.bn1"),
                **_conv_bn(f"{ours}.project", f"{theirs}.conv_pwl", f"{theirs}.bn2")}
    if isinstance(block, UniversalInvertedBottleneck):
        m = {f"{ours}.layer_scale": f"{theirs}.layer_scale"}
        for part, name in (("start_dw", "dw_start"), ("expand", "pw_exp"), ("dw", "dw_mid"),
                           ("project", "pw_proj")):
            m.update(_conv_bn(f"{ours}.{part}", f"{theirs}.{name}.conv", f"{theirs}.{name}.bn"))
        return m
    if isinstance(block, MobileMQA):
        a, t = f"{ours}.attn", f"{theirs}.attn"
        return {f"{ours}.norm": f"{theirs}.norm", f"{ours}.layer_scale": f"{theirs}.layer_scale",
                f"{a}.query": f"{t}.query.proj", f"{a}.key": f"{t}.key.proj", f"{a}.value": f"{t}.value.proj",
                f"{a}.output": f"{t}.output.proj",
                **_conv_bn(f"{a}.key_down", f"{t}.key.down_conv", f"{t}.key.norm"),
                **_conv_bn(f"{a}.value_down", f"{t}.value.down_conv", f"{t}.value.norm")}
    return None


def timm_module_map(model: MobileNet) -> dict[str, str]:
    """Our module paths -> timm's EfficientNet / MobileNetV3 / MobileNetV4 / MobileNetV5 paths (``conv_stem``,
    ``blocks.s.b.*``, ``msfa.*``, ...). Paths of modules the model does not have (e.g. an absent start depthwise
    conv) match nothing."""
    v5 = model.arch.neck is not None  # timm's MobileNetV5 keeps its stem as one ConvNormAct
    m = _conv_bn("stem", "conv_stem.conv", "conv_stem.bn") if v5 else _conv_bn("stem", "conv_stem", "bn1")
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(cast(nn.Sequential, stage)):  # a Sequential of Sequentials
            ours, theirs = f"stages.{s}.{b}", f"blocks.{s}.{b}"
            se = {f"{ours}.se.fc1": f"{theirs}.se.conv_reduce", f"{ours}.se.fc2": f"{theirs}.se.conv_expand"}
            v4 = _timm_v4_block(block, ours, theirs)
            if v4 is not None:
                m.update(v4)
            elif isinstance(block, DepthwiseSeparable):
                m.update(_conv_bn(f"{ours}.dw", f"{theirs}.conv_dw", f"{theirs}.bn1"))
                m.update(_conv_bn(f"{ours}.pw", f"{theirs}.conv_pw", f"{theirs}.bn2"))
            elif isinstance(block.expand, nn.Identity):  # timm builds t=1 blocks as DepthwiseSeparableConv
                m.update(_conv_bn(f"{ours}.dw", f"{theirs}.conv_dw", f"{theirs}.bn1"))
                m.update(_conv_bn(f"{ours}.project", f"{theirs}.conv_pw", f"{theirs}.bn2"))
                m.update(se)
            else:
                m.update(_conv_bn(f"{ours}.expand", f"{theirs}.conv_pw", f"{theirs}.bn1"))
                m.update(_conv_bn(f"{ours}.dw", f"{theirs}.conv_dw", f"{theirs}.bn2"))
                m.update(_conv_bn(f"{ours}.project", f"{theirs}.conv_pwl", f"{theirs}.bn3"))
                m.update(se)
    if model.arch.head is not None:  # V3/V4: the final 1x1 conv is timm's last block; conv_head is our head_fc
        m.update(_conv_bn("final_conv", f"blocks.{len(model.stages)}.0.conv", f"blocks.{len(model.stages)}.0.bn1"))
        if isinstance(getattr(model, "head_fc", None), PooledConvNorm):  # V4: conv_head + norm_head
            m.update(_conv_bn("head_fc", "conv_head", "norm_head"))
        else:
            m["head_fc"] = "conv_head"
    elif model.arch.final_conv is not None:  # V2: timm's conv_head + bn2
        m.update(_conv_bn("final_conv", "conv_head", "bn2"))
    if v5:  # the Multi-Scale Fusion Adapter
        m.update(_conv_bn("neck.ffn.expand", "msfa.ffn.pw_exp.conv", "msfa.ffn.pw_exp.bn"))
        m.update(_conv_bn("neck.ffn.project", "msfa.ffn.pw_proj.conv", "msfa.ffn.pw_proj.bn"))
        m["neck.norm"] = "msfa.norm"
    m["classifier"] = "classifier"
    return m


@runtime_checkable
class ForeignWeights(Protocol):
    """A model that maps other libraries' checkpoints onto itself: the task models (SSDLite, LR-ASPP and
    DeepLabV3 read torchvision's files; YOLO declares the method only to say that nobody publishes its heads).
    :func:`load_weights` asks such a model for the map instead of guessing the file's format from its keys, and
    never reads its file as timm's (no BN eps change)."""

    def foreign_module_map(self, source_keys: Iterable[str]) -> dict[str, str] | None:
        """Our module paths -> the checkpoint's, for a state dict with ``source_keys``; None: the keys are ours."""
        ...


def detect_format(keys) -> str:
    keys = set(keys)
    if any(k.startswith("conv_stem.") for k in keys):
        return "timm"
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    return "mobilenets"


def module_map_for(model: nn.Module, source_keys) -> dict[str, str] | None:
    """The module map from ``model`` to a state dict with ``source_keys`` (None: same names as ours)."""
    if isinstance(model, ForeignWeights):  # task models (detection/segmentation) map their own heads
        return model.foreign_module_map(source_keys)
    fmt = detect_format(source_keys)
    if fmt == "mobilenets":
        return None
    if not isinstance(model, MobileNet):  # (the only model with an ``arch``)
        raise UserError(f"cannot map a {fmt} checkpoint onto {type(model).__name__}")
    return timm_module_map(model) if fmt == "timm" else torchvision_module_map(model)


def _translate(key: str, module_map: dict[str, str]) -> str | None:
    module, _, suffix = key.rpartition(".")
    target = module_map.get(module)
    return f"{target}.{suffix}" if target is not None else None


def adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An RGB stem filter bank (out, 3, k, k) for ``in_chans`` inputs: summed over RGB for grayscale (a gray
    image fed as three equal channels gives the same response), repeated and rescaled for more channels."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "state dict",
                            module_map: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into ``model`` through ``module_map``; refuse with a report of every missing, unexpected
    and mis-shaped key when it does not fit. Keys of ours that start with a ``skip`` prefix keep their values."""
    ours = model.state_dict()
    new, missing, mismatched, used = {}, [], [], set()
    for key, target in ours.items():
        if key.startswith(skip):
            continue
        theirs = key if module_map is None else _translate(key, module_map)
        if theirs is None or theirs not in state:
            if not key.endswith("num_batches_tracked"):  # torchvision's FrozenBN/old files lack it: harmless
                missing.append(f"{key} (looked for {theirs})" if theirs and theirs != key else key)
            continue
        used.add(theirs)
        value = state[theirs]
        if value.shape != target.shape:
            if key == "stem.conv.weight" and value.dim() == 4 and value.shape[1] == 3 \
                    and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
                value = adapt_stem(value, target.shape[1])
                log.info("adapted the 3-channel stem of %s to %d input channels", source, target.shape[1])
            elif value.numel() == target.numel() and value.squeeze().shape == target.squeeze().shape:
                value = value.reshape(target.shape)  # 1x1 conv <-> linear
            else:
                mismatched.append(f"{key}: ours {tuple(target.shape)}, {source} has {tuple(value.shape)} at {theirs}")
                continue
        new[key] = value.to(target.dtype)
    skipped_theirs = set()
    if module_map is not None and skip:
        skipped_theirs = {_translate(k, module_map) for k in ours if k.startswith(skip)}
    unexpected = sorted(k for k in state if k not in used and k not in skipped_theirs
                        and not (module_map is None and k.startswith(skip)))
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit {getattr(model, 'arch_name', type(model).__name__)}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                shown = "; ".join(items[:8]) + (f"; ... {len(items) - 8} more" if len(items) > 8 else "")
                lines.append(f"{len(items)} {title} key(s): {shown}")
        lines.append("check the model name and options (width_multiplier, num_classes, in_chans, minimal)")
        raise UserError(" ".join(lines))
    model.load_state_dict({**ours, **new})


# timm's MobileNets normalise with PyTorch's BN eps (its tf_ ports use 1e-3 and TF "same" padding: their weight
# entries build with bn_eps=1e-3, padding="tf_same" and load with timm_bn_eps=1e-3); V3 here defaults to the TF
# reference's 1e-3, which shifts the outputs of timm's weights (~6e-3 on the logits with random statistics, more
# with trained ones).
TIMM_BN_EPS = 1e-5


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "eps") and getattr(m, "running_var", None) is not None]


def _check_timm_bn_eps(model: nn.Module, source: str, eps: float = TIMM_BN_EPS) -> None:
    chosen = (getattr(model, "arch_options", None) or {}).get("bn_eps")
    if chosen is not None and chosen != eps:
        raise UserError(f"{source} holds timm weights, trained with BN eps {eps:g}, but the model was built "
                        f"with bn_eps={chosen:g}; build it with bn_eps={eps:g} or without bn_eps")


def _fit_timm_bn_eps(model: nn.Module, source: str, eps: float = TIMM_BN_EPS) -> None:
    """Give every BN layer timm's eps, and record it in the model's options so that checkpoints keep it."""
    changed = [m for m in _bn_layers(model) if m.eps != eps]
    if changed:
        log.info("%s: timm weights: BN eps of %d layers set from %g to %g, as they were trained", source,
                 len(changed), changed[0].eps, eps)
        for m in changed:
            setattr(m, "eps", eps)  # (an nn.Module attribute set outside __init__: mypy types it Tensor | Module)
    arch_options: dict | None = getattr(model, "arch_options", None)
    if arch_options is not None and (changed or "bn_eps" in arch_options):
        arch_options["bn_eps"] = eps


# Where Hugging Face Transformers' Gemma 3n checkpoints keep the timm MobileNetV5 vision tower.
GEMMA3N_PREFIX = "model.vision_tower.timm_model."


def load_weights(model: nn.Module, source, *, skip: tuple[str, ...] = (), source_name: str | None = None,
                 timm_bn_eps: float = TIMM_BN_EPS) -> nn.Module:
    """Load a checkpoint saved by torchvision, timm or mobilenets into ``model`` (in place; returned too).

    ``source`` is a path (.safetensors, .pth, .pt) or a state dict. Parameter names are mapped automatically;
    anything that does not fit raises :class:`~mobilenets.errors.UserError` listing every bad key. A timm file
    also sets the model's BN eps to timm's 1e-5 (logged), unless the model was built with another ``bn_eps``,
    which is refused; ``timm_bn_eps=1e-3`` for timm's ``tf_`` ports (build those with ``padding="tf_same"``).
    ``source_name`` names a state dict in messages (default "state dict").
    """
    if isinstance(source, dict):
        state, name = source, source_name or "state dict"
    else:
        state, name = read_state_dict(source), str(source)
    if any(k.startswith(GEMMA3N_PREFIX) for k in state):  # a whole Gemma 3n checkpoint: keep its vision tower
        state = {k[len(GEMMA3N_PREFIX):]: v for k, v in state.items() if k.startswith(GEMMA3N_PREFIX)}
    timm_file = not isinstance(model, ForeignWeights) and detect_format(state.keys()) == "timm"
    if timm_file:
        _check_timm_bn_eps(model, name, timm_bn_eps)
    try:
        load_state_dict_checked(model, state, source=name, module_map=module_map_for(model, state.keys()),
                                skip=skip)
    except UserError as e:
        stem = state.get("conv_stem.weight") if timm_file else None
        ours = model.state_dict().get("stem.conv.weight")
        if stem is not None and ours is not None and stem.shape[0] != ours.shape[0]:
            raise UserError(f"{e}; timm keeps the stem's width below width_multiplier 1 ({stem.shape[0]} channels "
                            f"here): build the model with fix_stem=True") from None
        raise
    if timm_file:
        _fit_timm_bn_eps(model, name, timm_bn_eps)
    return model
