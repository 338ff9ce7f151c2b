"""Quantization-aware training (QAT) by PyTorch's PT2E path: the network as ``torch.export`` sees it, with fake
quantization inserted by torchao's ``prepare_qat_pt2e`` under ExecuTorch's ``XNNPACKQuantizer`` (symmetric
per-channel weights in the 7-bit range -63..63, static per-tensor int8 activations). The 7-bit weights are what
the exporter's post-training int8 uses by default: on CPUs without VNNI, ONNX Runtime and OpenVINO multiply
u8 x s8 with VPMADDUBSW, whose 16-bit sums saturate with full-range weights; QAT learns around the lost bit.

:class:`FakeQuantized` wraps that prepared graph as a module the trainer, ``eval``, ``predict`` and the exporter
take like any model:

* ``train()`` / ``eval()`` move the exported graph between its training and inference forms (BatchNorm and
  dropout, torchao's ``move_exported_model_to_train`` / ``_eval``) and switch the observers: they learn the
  activation ranges while training and hold them still in evaluation, so evaluating a checkpoint never changes it.
  Conv + BN pairs train in the quantizer's simulated-fold form, so the weights that are fake-quantized are the
  folded ones a deployed int8 graph holds.
* Its state dict (weights, BN statistics and every observer's learned scale and zero point) is what a checkpoint
  holds; ``CheckpointMeta.extra["qat"]`` (:func:`describe`) says how to rebuild the graph the state belongs to
  (:func:`mobilenets.checkpoint.load_checkpoint` does so).
* :meth:`FakeQuantized.int8_program` is the int8 graph with the learned scales (``convert_pt2e``: quantize and
  dequantize ops around int8 weights), which ONNX (QDQ), OpenVINO, ONNX Runtime and ExecuTorch take as it is;
  :meth:`FakeQuantized.float_model` is the fine-tuned network without fake quantization, for formats whose int8
  can only re-calibrate.
"""
from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .errors import UserError

SCHEME = "pt2e-xnnpack-w7"  # what describe() records; the only scheme so far
WEIGHT_RANGE = 63  # 7-bit weights: as the exporter's default post-training int8 (deploy/quantize.py), so that the
#                   int8 graph cannot saturate VPMADDUBSW's 16-bit sums on CPUs without VNNI (2 x 255 x 63 < 2^15)
MAX_BATCH = 4096  # the exported graph's batch dimension is dynamic up to this
TORCHAO_BN_EPS = 1e-5  # the eps torchao's conv + BN patterns are written with


def _pt2e():
    """torchao's PT2E modules (observer switches; prepare / convert) and ExecuTorch's quantizer module (the
    executorch extra), or one line naming the extra."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao re-registers an Enum: a warning
    try:
        from executorch.backends.xnnpack.quantizer import xnnpack_quantizer
        from torchao.quantization import pt2e
        from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as e:
        raise UserError(f"quantization-aware training needs ExecuTorch's quantizer and torchao ({e}); install "
                        "them with: pip install 'mobilenets[executorch]'") from e
    return pt2e, quantize_pt2e, xnnpack_quantizer


def _quantizer(xnnpack_quantizer):
    """The QAT quantizer: symmetric per-channel weights in the 7-bit range, static per-tensor int8 activations."""
    return xnnpack_quantizer.XNNPACKQuantizer().set_global(xnnpack_quantizer.get_symmetric_quantization_config(
        is_per_channel=True, is_qat=True, weight_qmin=-WEIGHT_RANGE, weight_qmax=WEIGHT_RANGE))


class FakeQuantized(nn.Module):
    """``model`` (C, H, W = ``input_size``) prepared for quantization-aware training; see the module docstring."""

    def __init__(self, model: nn.Module, input_size: Sequence[int]):
        super().__init__()
        _, quantize_pt2e, xnnpack_quantizer = _pt2e()
        self.arch_name = getattr(model, "arch_name", type(model).__name__)
        self.arch_options = dict(getattr(model, "arch_options", {}))
        self.num_classes = getattr(model, "num_classes", None)
        self.input_size = tuple(int(s) for s in input_size)
        model = copy.deepcopy(model).train()  # traced in training form, as the quantizer's conv + BN patterns are
        for m in model.modules():  # in-place activations would overwrite a tensor that a disabled fake quantizer
            if getattr(m, "inplace", False):  # passes through unchanged (and that something else still reads)
                setattr(m, "inplace", False)  # (mypy types a Module's attributes Tensor | Module)
        example = torch.zeros(2, *self.input_size)
        try:
            program = torch.export.export(model, (example,),
                                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},))
        except Exception as e:  # noqa: BLE001 - torch.export raises many types; the model is what the user gave us
            raise UserError(f"quantization-aware training needs torch.export of {self.arch_name}, which failed "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        traced = program.module()
        self.bn_settings = _bn_settings(traced)
        self.graph = quantize_pt2e.prepare_qat_pt2e(traced, _quantizer(xnnpack_quantizer))
        _restore_bn_settings(self.graph, self.bn_settings)
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> "FakeQuantized":
        # not nn.Module.train: the prepared graph refuses .train()/.eval(); its modes are graph rewrites
        self.training = mode
        _set_mode(self.graph, mode)
        pt2e = _pt2e()[0]
        self.graph.apply(pt2e.enable_observer if mode else pt2e.disable_observer)
        return self

    def _inference_copy(self) -> torch.fx.GraphModule:
        pt2e = _pt2e()[0]
        graph = copy.deepcopy(self.graph)
        _set_mode(graph, False)
        graph.apply(pt2e.disable_observer)
        for node in list(graph.graph.nodes):  # BN's step counter (traced in training form): a state an inference
            if node.target is torch.ops.aten.add_.Tensor and not node.users \
                    and str(_attr_name(node.args[0])).endswith("num_batches_tracked"):  # graph must not hold
                graph.graph.erase_node(node)
        graph.recompile()
        return graph

    def int8_program(self) -> torch.fx.GraphModule:
        """The int8 graph with the learned scales and zero points (``convert_pt2e`` of an eval-form copy).

        ``convert_pt2e`` folds each BN into its conv with eps 1e-5 whatever the BN's own (torchao's pattern
        literal); the copy it converts holds ``running_var + eps - 1e-5`` with eps 1e-5, the same
        ``sqrt(running_var + eps)`` in the form the fold reads."""
        graph = self._inference_copy()
        for name, (momentum, eps) in self.bn_settings.items():
            cast(torch.Tensor, functools.reduce(getattr, name.split("."), graph)).add_(eps - TORCHAO_BN_EPS)
        _restore_bn_settings(graph, {name: (momentum, TORCHAO_BN_EPS)
                                     for name, (momentum, _) in self.bn_settings.items()})
        return _pt2e()[1].convert_pt2e(graph)

    def float_model(self) -> torch.fx.GraphModule:
        """The fine-tuned network in float, without its fake quantizers (BN in its eval form)."""
        graph = self._inference_copy()
        for node in list(graph.graph.nodes):  # each fake quantizer out of the graph: its input goes on instead
            if node.op == "call_module" and hasattr(graph.get_submodule(node.target), "fake_quant_enabled"):
                node.replace_all_uses_with(node.args[0])
                graph.graph.erase_node(node)
        graph.delete_all_unused_submodules()
        graph.recompile()
        return graph


def _attr_name(node: torch.fx.Node) -> str | None:
    """The attribute a get_attr node reads (a buffer or parameter name), else None."""
    return str(node.target) if isinstance(node, torch.fx.Node) and node.op == "get_attr" else None  # (a str there)


def _bn_settings(graph: torch.fx.GraphModule) -> dict[str, tuple[float, float]]:
    """(momentum, eps) of every BatchNorm of an exported graph, by the name of its running variance."""
    return {name: (n.args[6], n.args[7]) for n in graph.graph.nodes
            if n.op == "call_function" and n.target is torch.ops.aten.batch_norm.default
            and (name := _attr_name(n.args[4])) is not None}


def _restore_bn_settings(graph: torch.fx.GraphModule, settings: dict[str, tuple[float, float]]) -> None:
    """Put each BatchNorm's own momentum and eps back after ``prepare_qat_pt2e``, whose conv + BN pattern (the
    simulated fold: ``sqrt(running_var + eps)`` and the BN op) is written with the defaults 0.1 and 1e-5 (a known
    torchao limitation); V3's BN (eps 0.001, momentum 0.01) would otherwise change under the quantizer."""
    aten = torch.ops.aten
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is aten.batch_norm.default and (name := _attr_name(node.args[4])) in settings:
            momentum, eps = settings[name]
            node.args = (*node.args[:6], momentum, eps, *node.args[8:])
        elif node.target is aten.add.Tensor and (name := _attr_name(node.args[0])) in settings \
                and isinstance(node.args[1], float):  # running_var + eps of the simulated fold
            node.args = (node.args[0], settings[name][1], *node.args[2:])
    graph.recompile()


def _set_mode(graph: torch.fx.GraphModule, training: bool) -> None:
    """BatchNorm and dropout of an exported graph in their training or inference form, by the ``training`` argument
    of their ATen ops. (torchao's ``move_exported_model_to_train`` / ``_eval`` rewrite BatchNorm to a pattern with
    the default eps and momentum, which V3's eps 0.001 does not survive: a BN of a near-dead channel then scales by
    up to 10x.)"""
    aten = torch.ops.aten
    flag = {aten.batch_norm.default: 5, aten.dropout.default: 2}  # the position of ``training`` / ``train``
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in flag:
            args = list(node.args)
            args[flag[node.target]] = training
            node.args = tuple(args)
    graph.recompile()


def describe(model: FakeQuantized) -> dict:
    """What a checkpoint records (``extra["qat"]``) to rebuild the graph its state belongs to."""
    return {"scheme": SCHEME, "input_size": list(model.input_size)}


def rebuild(model: nn.Module, qat: dict, state: dict[str, torch.Tensor], source: str) -> FakeQuantized:
    """The :class:`FakeQuantized` graph of a checkpoint's ``extra["qat"]`` around a freshly built ``model``, with
    the checkpoint's ``state`` loaded (strict; observers take their learned shapes, which a fresh graph lacks)."""
    if qat.get("scheme") != SCHEME:
        raise UserError(f"{source} was trained with quantization scheme {qat.get('scheme')!r}, which this "
                        f"installation does not know (it knows {SCHEME!r}); upgrade mobilenets")
    wrapped = FakeQuantized(model, qat["input_size"])
    try:
        wrapped.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{source} does not fit the quantization-aware graph of {wrapped.arch_name} "
                        f"({str(e).splitlines()[0][:200]}); it was written by another version of the model") from e
    return wrapped.eval()
