"""int8 of a YOLO detector (issue 30): the decode tail -- everything after the head's last convolutions: the
per-side softmax over the bins, the expectation (DFL), distances x stride -> boxes, the class sigmoid, and the two
top-k of an end-to-end graph -- stays float in both int8 schemes (ONNX Runtime QDQ, also under ``--format ort``,
and NNCF for OpenVINO), found by graph structure; classifiers and segmenters have no such tail and quantize as
before.

The detector is an end-to-end YOLO on MobileNetV3-Small (width 0.5, neck 32) trained for 150 steps on 64 px scenes
by the library's trainer (15-26 s on one core of the shared EPYC, by load), enough for peaked box distributions and
hundreds of confident detections; it is exported through each of its heads: the usual one (boxes and scores, NMS
outside) and the one-to-one head ((N, K, 6) detections). Agreement of the confident detections on 64 test scenes,
measured on the AMD EPYC, tail quantized -> float: NMS graph, QDQ 0.75 -> 0.94, NNCF 0.89 -> 0.89; end-to-end
graph, QDQ 0.00 (its labels come back as multiples of 2.08 and its scores as 0 through the output's one uint8
scale) -> 0.96, NNCF 0.93 -> 0.94. With the kernels capped at AVX2 (the lowered-ISA pass): QDQ 0.96, NNCF 0.92
(NMS graph).
"""
from __future__ import annotations

import copy

import pytest
import torch

import mobilenets
from mobilenets.checkpoint import load_checkpoint
from mobilenets.cli import main
from mobilenets.data.samples import sample_inputs
from mobilenets.data.scenes import FashionScenes, SceneConfig, export_scenes
from mobilenets.deploy import ExportOptions, export_model, open_runner
from mobilenets.deploy.formats import installed
from mobilenets.deploy.onnx_graph import fold_batchnorm, to_onnx
from mobilenets.deploy.quantize import decode_tail_onnx, decode_tail_openvino, float_nodes_onnx, float_nodes_openvino
from mobilenets.tasks import get_task

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_thread")]

SIZE = 64
SCENES = 64  # calibration scenes (training split, another seed) and parity scenes (test split)
# Least agreement of the confident detections (task.compare, int8) on the parity scenes (measured: module docstring)
MIN_QDQ_AGREEMENT = 0.85
MIN_NNCF_AGREEMENT = 0.8
DECODE_OPS = {"Softmax", "Sigmoid", "ReduceSum"}  # YOLO's, in ONNX and OpenVINO alike
HEADS = ["nms", "end-to-end"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory, one_thread):
    """``(model, meta, calibration folder, parity folder)``: the briefly trained end-to-end YOLO and scene images."""
    root = tmp_path_factory.mktemp("yolo_int8")
    assert main(["train", "--task", "detect", "--model", "yolo", "--backbone", "mobilenet_v3_small", "--width", "0.5",
                 "--neck-width", "32", "--end-to-end", "--data", "scenes", "--scenes", "2400", "--scene-size",
                 str(SIZE), "--limit-val", "8", "--epochs", "1", "--batch-size", "16", "--lr", "0.02",
                 "--ema-decay", "0", "--out", str(root / "run"), "--no-progress", "--threads", "1"]) == 0
    calibration = export_scenes(FashionScenes("train", SCENES, SceneConfig(image_size=SIZE), seed=1), root / "cal")
    parity = export_scenes(FashionScenes("test", SCENES, SceneConfig(image_size=SIZE)), root / "parity")
    model, meta = load_checkpoint(root / "run" / "last.safetensors")
    return model, meta, str(calibration / "images"), str(parity / "images")


def _reading(model, head: str):
    """``model`` read through its usual head (boxes and scores, NMS outside: "nms") or its one-to-one head."""
    model = copy.deepcopy(model).eval()
    model.one_to_one = head == "end-to-end"
    return model


def _export(detector, head, out, fmt):
    model, meta, calibration, parity = detector
    return export_model(_reading(model, head), meta, out, fmt,
                        ExportOptions(int8=True, calibration_data=calibration, calibration_n=SCENES,
                                      parity_data=parity, parity_n=SCENES))


def _onnx_of(model, task: str = "detect"):
    """The fp32 ONNX graph the exporter quantizes, of ``model`` for ``task``."""
    task = get_task(task)
    return to_onnx(fold_batchnorm(task.export_module(model.eval())), (3, SIZE, SIZE),
                   task.output_names(task.export_properties(model)), name="m")


def _downstream(proto, starts):
    """The nodes fed, directly or not, by the nodes ``starts``."""
    feeds = {}
    for n in proto.graph.node:
        for i in n.input:
            feeds.setdefault(i, []).append(n)
    seen, stack = set(), list(starts)
    while stack:
        for o in stack.pop().output:
            for c in feeds.get(o, []):
                if c.name not in seen:
                    seen.add(c.name)
                    stack.append(c)
    return [n for n in proto.graph.node if n.name in seen]


# ----------------------------------------------------------------------------------------------- the tail
def test_decode_tail_by_structure_and_none_for_classifiers_and_segmenters():
    for end_to_end in (False, True):
        yolo = mobilenets.create_model("yolo", backbone="mobilenet_v3_small", width_multiplier=0.5, neck_width=32,
                                       num_classes=11, end_to_end=end_to_end)
        proto = _onnx_of(yolo)
        types = {n.name: n.op_type for n in proto.graph.node}
        tail = decode_tail_onnx(proto)
        found = {types[n] for n in tail}
        assert DECODE_OPS | {"Mul", "Sub", "Add", "Concat"} <= found
        assert not found & {"Conv", "Gemm", "MatMul"}
        if end_to_end:  # the two top-k and their gathers come after the decode
            assert "TopK" in found and found & {"Gather", "GatherElements"}
        tail_nodes = [n for n in proto.graph.node if n.name in tail]
        assert not [n for n in _downstream(proto, tail_nodes) if n.op_type == "Conv"]
        # and it is all of what follows the last convolutions: every node after a Conv that feeds no Conv
        after = _downstream(proto, [n for n in proto.graph.node if n.op_type == "Conv"])
        last = [n for n in after if n.op_type != "Conv" and all(c.op_type != "Conv" for c in _downstream(proto, [n]))]
        assert {n.name for n in last} <= set(tail)
        if installed("openvino"):
            from mobilenets.deploy.openvino_io import from_onnx
            ov_model = from_onnx(proto)
            ov_types = {op.get_friendly_name(): op.get_type_name() for op in ov_model.get_ops()}
            assert DECODE_OPS <= {ov_types[n] for n in decode_tail_openvino(ov_model)}

    # classifiers (logits out of a Gemm) and segmenters (Conv -> Add -> Resize) keep nothing float: as before
    for name in ("mobilenet_v3_small", "lraspp_mobilenet_v3_small"):
        model = mobilenets.create_model(name, width_multiplier=0.5)
        proto = _onnx_of(model, "segment" if name.startswith("lraspp") else "classify")
        assert float_nodes_onnx(proto) == {}, name
        if installed("openvino"):
            from mobilenets.deploy.openvino_io import from_onnx
            assert float_nodes_openvino(from_onnx(proto)) == {}, name


# ----------------------------------------------------------------------------------------------- int8 files
def test_the_detector_is_trained(detector):
    """Hundreds of confident detections (score > 0.05, the parity check's sample) on the parity scenes through the
    usual head: the agreements below are over real detections, not an untrained model's empty set. The one-to-one
    head (top-1 targets) learns slower: a few dozen pass 0.05 (the parity check of its graph also compares the 10
    best rows of every image)."""
    model, meta, _, parity = detector
    x = torch.from_numpy(sample_inputs(meta.preprocessing, parity, SCENES))
    for head, least in zip(HEADS, (300, 10)):
        with torch.no_grad():
            found = _reading(model, head).predict(x)
        assert sum(int((p["scores"] > 0.05).sum()) for p in found) >= least, head


@pytest.mark.parametrize("head", HEADS)
def test_onnxruntime_qdq_keeps_the_decode_float_and_passes_parity(detector, tmp_path, head):
    result = _export(detector, head, tmp_path / "y.onnx", "onnx")
    assert result.parity.passed and result.parity.agreement >= MIN_QDQ_AGREEMENT, result.parity
    assert any(op.startswith("decode (") for op in result.details["fp32_ops"])
    proto = onnx.load(str(result.path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    decode = [n for n in proto.graph.node if n.op_type in DECODE_OPS | {"TopK"}]
    assert {n.op_type for n in decode} == DECODE_OPS | ({"TopK"} if head == "end-to-end" else set())
    for n in decode:  # nothing quantized feeds the decode ops, nothing after them is quantized
        assert all(producers[i].op_type != "DequantizeLinear" for i in n.input if i in producers), n.name
    assert not [n for n in _downstream(proto, decode) if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) > 50  # the network itself is int8

    # the same QDQ file on OpenVINO (which failed to compile it with the DFL multiply quantized), and as .ort
    model, meta, _, parity = detector
    if installed("openvino"):
        task = get_task("detect")
        x = sample_inputs(meta.preprocessing, parity, SCENES)
        with torch.no_grad():
            out = task.export_module(_reading(model, head))(torch.from_numpy(x))
        reference = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        on_openvino = task.compare(reference, open_runner(result.path, backend="openvino").outputs(x),
                                   inputs="scenes", int8=True, properties=result.properties)
        assert on_openvino.agreement >= MIN_QDQ_AGREEMENT, on_openvino
    if head == "nms":  # the same quantizer: one graph is enough
        ort = _export(detector, head, tmp_path / "y.ort", "ort")
        assert ort.parity.passed and ort.parity.agreement >= MIN_QDQ_AGREEMENT, ort.parity


@pytest.mark.parametrize("head", HEADS)
def test_openvino_nncf_keeps_the_decode_float_and_passes_parity(detector, tmp_path, head):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    from mobilenets.deploy.openvino_io import from_onnx

    fp32 = from_onnx(_onnx_of(_reading(detector[0], head)))
    ignored = decode_tail_openvino(fp32)
    fp32 = {op.get_friendly_name(): op.get_type_name() for op in fp32.get_ops()}
    assert DECODE_OPS <= {fp32[n] for n in ignored}  # what NNCF is told to ignore

    result = _export(detector, head, tmp_path / "y.xml", "openvino")
    assert result.parity.passed and result.parity.agreement >= MIN_NNCF_AGREEMENT, result.parity
    assert any(op.startswith("decode (") for op in result.details["fp32_ops"])
    ir = ov.Core().read_model(str(result.path))
    decode = [op for op in ir.get_ops() if op.get_type_name() in DECODE_OPS | {"TopK"}]
    assert {op.get_type_name() for op in decode} == DECODE_OPS | ({"TopK"} if head == "end-to-end" else set())
    seen, stack = set(), list(decode)
    while stack:  # no FakeQuantize on the inputs of the decode ops, nor anywhere after them
        op = stack.pop()
        if op in decode:
            assert all(i.get_source_output().get_node().get_type_name() != "FakeQuantize" for i in op.inputs())
        for out in op.outputs():
            for t in out.get_target_inputs():
                node = t.get_node()
                assert node.get_type_name() != "FakeQuantize", node.get_friendly_name()
                if node.get_friendly_name() not in seen:
                    seen.add(node.get_friendly_name())
                    stack.append(node)
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ops()) > 20  # the network itself is int8
