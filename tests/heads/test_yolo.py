"""The YOLOv8-style detector: the task-aligned assigner on hand-computed cases, DFL, the loss on real batches (and on
images without objects), export parity, the CLI round trip and the profile."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mobilenets
from checks import die_at_step
from mobilenets.checkpoint import CheckpointMeta, load_checkpoint, read_checkpoint
from mobilenets.cli import main
from mobilenets.data.scenes import FashionScenes, SceneConfig
from mobilenets.deploy import ExportOptions
from mobilenets.errors import UserError
from mobilenets.heads.yolo import (
    TaskAlignedAssigner,
    annealed_topk,
    dfl_targets,
    distances_to_boxes,
    expected_distance,
    grid_points,
)
from mobilenets.preprocessing import Preprocessing
from mobilenets.tasks import get_task
from mobilenets.tasks.detect import Detect
from mobilenets.train.distributed import World
from mobilenets.train.loop import TrainingStep, train_one_epoch

pytestmark = pytest.mark.usefixtures("one_thread")


def _scene_batch(n=8, size=64):
    scenes = FashionScenes("train", n, SceneConfig(image_size=size, scale=(1.0, 1.6), max_items=3),
                           transforms=get_task("detect").train_transforms(size, scenes=False), targets="detect")
    return Detect().collate([scenes[i] for i in range(n)])[:2]


def _small_yolo(**options):
    torch.manual_seed(0)
    return mobilenets.create_model("yolo", backbone="mobilenet_v3_small", num_classes=11, width_multiplier=0.5,
                                   **options)


# ------------------------------------------------------------------------------------------- assigner
def test_grid_points_are_cell_centres_row_major_per_level():
    points, strides = grid_points([(2, 3), (1, 2)], (8, 16))
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert strides.tolist() == [8] * 6 + [16] * 2


def test_assigner_on_a_hand_made_case():
    """A 4x4 grid at stride 8 (32 px). GT1 [0,0,16,16] (class 0) holds points 0, 1, 4, 5; GT2 [8,8,24,24] (class 1)
    holds 5, 6, 9, 10. Predicted boxes are squares, so CIoU's aspect term is 0 and CIoU = IoU - centre distance^2 /
    enclosing diagonal^2, computed here by hand. With top-k 2: GT1 takes {0, 5}, GT2 {10, 5}; point 5 overlaps GT1
    more and stays with it. Image 2 has no boxes (padding)."""
    points, _ = grid_points([(4, 4)], (8,))
    scores = torch.full((2, 16, 2), 0.25)  # s ** 0.5 = 0.5 unless set
    pred = torch.tensor([28.0, 28.0, 30.0, 30.0]).repeat(2, 16, 1)
    pred[0, 0], scores[0, 0, 0] = torch.tensor([0.0, 0, 16, 16]), 0.81  # = GT1
    pred[0, 1], scores[0, 1, 0] = torch.tensor([4.0, 4, 12, 12]), 0.64  # concentric with GT1, IoU 64/256
    pred[0, 4] = torch.tensor([5.0, 5, 11, 11])  # IoU 36/256
    pred[0, 5], scores[0, 5, 0], scores[0, 5, 1] = torch.tensor([6.0, 6, 16, 16]), 0.64, 0.81
    pred[0, 6] = pred[0, 9] = torch.tensor([14.0, 14, 18, 18])  # concentric with GT2, IoU 16/256
    pred[0, 10], scores[0, 10, 1] = torch.tensor([9.0, 9, 23, 23]), 0.49  # IoU 196/256
    gt_boxes = torch.tensor([[[0.0, 0, 16, 16], [8, 8, 24, 24]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    gt_labels = torch.tensor([[0, 1], [0, 0]])
    valid = torch.tensor([[True, True], [False, False]])

    boxes, target, fg, which = TaskAlignedAssigner(topk=2)(scores, pred, points, gt_labels, gt_boxes, valid)

    # by hand: point 5's CIoU with GT1: IoU 100/256, centres (11,11)-(8,8), enclosing [0,0,16,16]
    ciou5_gt1 = 100 / 256 - 18 / 512
    align5_gt1 = 0.64 ** 0.5 * ciou5_gt1 ** 6  # 0.0016 > point 1's 0.8 * 0.25**6: 5 is GT1's 2nd
    ciou5_gt2 = 64 / 292 - 50 / 648  # 0.142 < 0.355: point 5 stays with GT1
    assert 0.9 * ciou5_gt2 ** 6 > 0.5 * (16 / 256) ** 6  # ... though it is GT2's 2nd choice
    assert fg[0].nonzero().flatten().tolist() == [0, 5, 10] and not fg[1].any()
    assert which[0, [0, 5, 10]].tolist() == [0, 0, 1]
    assert boxes[0, 5].tolist() == [0, 0, 16, 16] and boxes[0, 10].tolist() == [8, 8, 24, 24]
    expected = torch.zeros(2, 16, 2)
    expected[0, 0, 0] = 1.0  # GT1's best point: its alignment 0.9 is the max, its IoU 1.0 the best
    expected[0, 5, 0] = align5_gt1 / 0.9  # scaled by GT1's best IoU, 1
    expected[0, 10, 1] = 196 / 256  # GT2's only positive: asked for GT2's best IoU
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-7)


def test_assigner_without_objects_and_with_a_zero_area_box():
    points, _ = grid_points([(4, 4)], (8,))
    scores, pred = torch.full((1, 16, 3), 0.5), torch.tensor([0.0, 0, 32, 32]).repeat(1, 16, 1)
    assigner = TaskAlignedAssigner()
    empty = assigner(scores, pred, points, torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, 4),
                     torch.zeros(1, 0, dtype=torch.bool))
    assert not empty[2].any() and empty[1].abs().sum() == 0
    # a zero-width box through the centres of points 1, 5, 9 has no point strictly inside: no positives, no NaN
    boxes, target, fg, _ = assigner(scores, pred, points, torch.tensor([[2]]), torch.tensor([[[12.0, 0, 12, 32]]]),
                                    torch.tensor([[True]]))
    assert not fg.any() and torch.isfinite(target).all() and target.abs().sum() == 0


# ----------------------------------------------------------------------------------------------- DFL
def test_dfl_targets_round_trip_and_clamp():
    d = torch.tensor([0.0, 0.3, 1.0, 7.25, 14.5, 14.99, 15.0, 22.0, -1.0])
    t = dfl_targets(d, 16)
    assert t.shape == (9, 16)
    torch.testing.assert_close(t.sum(-1), torch.ones(9))
    assert ((t > 0).sum(-1) <= 2).all()  # two neighbouring bins at most
    torch.testing.assert_close(t[3, 7:9], torch.tensor([0.75, 0.25]))
    # the expectation gives back the distance, clamped at reg_max - 1 (minus the 0.01 margin) and 0
    torch.testing.assert_close(expected_distance(t), d.clamp(0, 14.99), rtol=0, atol=1e-5)
    # decoding works on logits: a softmax of the targets' logs is the targets
    torch.testing.assert_close(expected_distance(torch.log(t + 1e-12).softmax(-1)), d.clamp(0, 14.99), atol=1e-4,
                               rtol=0)
    points = torch.tensor([[10.0, 20.0]])
    assert distances_to_boxes(points, torch.tensor([[1.0, 2, 3, 4]])).tolist() == [[9, 18, 13, 24]]


# ---------------------------------------------------------------------------------------------- loss
def test_yolo_learns_a_batch():
    x, targets = _scene_batch()
    model = _small_yolo()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        loss, terms, _ = get_task("detect").loss(model, x, targets)  # the loss the trainer minimises
        assert set(terms) == {"loss_box", "loss_dfl", "loss_cls"}
        assert loss == terms["loss_box"] + terms["loss_dfl"] + terms["loss_cls"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < 0.4 * history[0]


def test_images_without_objects_give_a_finite_loss_and_a_gradient():
    model = _small_yolo()
    x = torch.randn(2, 3, 64, 64)
    nothing = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    loss, terms, _ = get_task("detect").loss(model, x, [nothing, nothing])
    assert torch.isfinite(loss) and terms["loss_box"] == 0 and terms["loss_dfl"] == 0 and terms["loss_cls"] > 0
    loss.backward()
    grads = [p.grad for p in model.head.cls_branches.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # one empty image next to one with a box, and a zero-area box: finite, and the box terms train
    model.zero_grad()
    some = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0], [20.0, 20.0, 20.0, 30.0]]), "labels": torch.tensor([3, 4])}
    loss, terms, _ = get_task("detect").loss(model, x, [nothing, some])
    loss.backward()
    assert torch.isfinite(loss) and terms["loss_box"] > 0 and terms["loss_dfl"] > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_class_ids_out_of_range_are_refused_in_one_line():
    model = _small_yolo()
    bad = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([11])}
    with pytest.raises(UserError, match=r"class id 11 is outside 1\.\.10 .*num_classes"):
        get_task("detect").loss(model, torch.randn(1, 3, 64, 64), [bad])
    with pytest.raises(UserError, match="class id 0 is outside"):  # 0 is the background, never an object
        get_task("detect").loss(model, torch.randn(1, 3, 64, 64), [{**bad, "labels": torch.tensor([0])}])


# ------------------------------------------------------------------------------------ model and export
@pytest.mark.parametrize("name", ["yolo_mobilenet_v3_small", "yolo_mobilenet_v3_large", "yolo_mobilenet_v2",
                                  "yolo_mobilenet_v1", "yolo_mobilenet_v4_conv_small"])
def test_variants_decode_static_shapes_at_any_size(name):
    model = mobilenets.create_model(name, num_classes=4, width_multiplier=0.35 if "v1" in name else 0.5).eval()
    x = torch.randn(1, 3, 100, 76)  # odd maps: 13x10, 7x5, 4x3
    with torch.no_grad():
        boxes, scores = model.decode(model(x))
    a = 13 * 10 + 7 * 5 + 4 * 3
    assert boxes.shape == (1, a, 4) and scores.shape == (1, a, 4)
    assert (scores[..., 0] == 0).all() and ((scores[..., 1:] > 0) & (scores[..., 1:] < 1)).all()
    assert [len(p) for p in model.predict(x)[0].values()] == [len(model.predict(x)[0]["labels"])] * 3


def test_export_parity(tmp_path):
    """ONNX of the decoded graph against eager PyTorch. The class biases are raised so that most scores pass
    0.05 and the matched-detection agreement compares hundreds of boxes, not the prior's empty set; an untrained
    head's near-equal boxes and scores swap places in NMS within fp32 noise, so it is not 100%."""
    from mobilenets.deploy.export import export_model

    model = _small_yolo().eval()
    with torch.no_grad():
        for branch in model.head.cls_branches:
            branch[-1].bias.zero_()
    meta = CheckpointMeta(model="yolo", options=dict(model.arch_options), task="detect",
                          class_names=["background"] + [str(i) for i in range(10)],
                          preprocessing=Preprocessing(input_size=(3, 96, 96), resize=96, mean=(0.5,) * 3,
                                                      std=(0.5,) * 3))
    result = export_model(model, meta, tmp_path / "yolo.onnx", "onnx", ExportOptions(parity_n=4))
    assert result.parity.passed and result.parity.max_abs_diff < 1e-3 and result.parity.agreement > 0.5
    settings = json.loads(result.properties["mobilenets.postprocess"])
    assert settings == {"score_thresh": 0.001, "nms_thresh": 0.7, "topk_candidates": 300, "detections_per_img": 300}


def test_cli_train_eval_predict_export(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "detect", "--model", "yolo", "--backbone", "mobilenet_v3_small", "--width", "0.5",
                 "--data", "scenes", "--scenes", "16", "--limit-val", "4", "--scene-size", "64", "--epochs", "1",
                 "--batch-size", "8", "--out", str(out), "--no-progress", "--threads", "1", "--neck-width", "32"]) == 0
    _, meta = read_checkpoint(out / "best.safetensors")
    assert meta.model == "yolo" and meta.options["backbone"] == "mobilenet_v3_small" and len(meta.class_names) == 11
    assert meta.options["neck_width"] == 32 and load_checkpoint(out / "best.safetensors")[0].neck_width == 32
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_box", "loss_dfl", "loss_cls"} <= set(record) and record["images"] == 4

    capsys.readouterr()
    assert main(["eval", str(out / "best.safetensors"), "--json", "--limit-val", "4"]) == 0  # of 1,000 test scenes
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and 0.0 <= report["map"] <= 1.0

    image = tmp_path / "scene.png"
    scene = FashionScenes("test", 1, SceneConfig(image_size=64)).render(0)[0]
    Image.fromarray((scene * 255).byte().permute(1, 2, 0).numpy()).save(image)
    found = {}
    for backend in ("torch", "onnxruntime"):  # onnxruntime: a cached, parity-checked export, NMS outside
        assert main(["predict", str(out / "best.safetensors"), str(image), "--out", str(tmp_path / backend),
                     "--score-thresh", "0.0", "--backend", backend, "--json", "--threads", "1"]) == 0
        found[backend] = json.loads(capsys.readouterr().out)[0]["detections"]
        assert (tmp_path / backend / "scene.png").is_file() and found[backend]
    confident = [d for d in found["torch"] if d["score"] > 0.05]
    for d in confident:
        assert any(e["label"] == d["label"] and max(abs(a - b) for a, b in zip(e["box"], d["box"])) < 0.2
                   for e in found["onnxruntime"])

    assert main(["export", str(out / "best.safetensors"), "--format", "onnx", "--out", str(tmp_path / "y.onnx")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "y.onnx").is_file() and "PASS" in text and '"nms_thresh": 0.7' in text


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch, capsys):
    def train(out):
        return main(["train", "--task", "detect", "--model", "yolo", "--backbone", "mobilenet_v3_small", "--width",
                     "0.5", "--data", "scenes", "--scenes", "16", "--limit-val", "4", "--scene-size", "64", "--epochs",
                     "2", "--batch-size", "8", "--seed", "3", "--out", str(out), "--no-progress", "--threads", "1"])

    def history(out):
        return [{k: v for k, v in json.loads(line).items() if k not in ("train_img_s", "eval_seconds")}
                for line in (out / "metrics.jsonl").read_text().splitlines()]

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train(straight) == 0
    die_at_step(monkeypatch, get_task("detect"), 3)  # 2 steps per epoch: the first step of epoch 2
    assert train(broken) != 0 and "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["train", "--resume", str(broken), "--no-progress", "--threads", "1"]) == 0
    assert history(broken) == history(straight) and len(history(straight)) == 2
    a, b = load_file(straight / "last.safetensors"), load_file(broken / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_profile_and_summary(capsys):
    model = mobilenets.create_model("yolo_mobilenet_v3_small", num_classes=11)
    p = mobilenets.profile(model, (3, 128, 128))
    assert p.params == sum(q.numel() for q in model.parameters())
    parts = {r.name.split(".")[0] for r in p.rows}
    assert parts == {"features", "neck", "head"}
    assert 18e6 < p.macs < 30e6  # the backbone alone is 14 M at 128 px
    assert main(["summary", "yolo_mobilenet_v3_small", "--resolution", "128", "--num-classes", "11"]) == 0
    text = capsys.readouterr().out
    assert "neck.laterals.0" in text and f"{p.params / 1e6:.3f} M params" in text


def test_neck_width_is_for_yolo_only(tmp_path, capsys):
    for model, width, message in (("ssdlite", "32", "only the YOLO head has a neck"), ("yolo", "4", "at least 8")):
        assert main(["train", "--task", "detect", "--model", model, "--data", "scenes", "--neck-width", width,
                     "--out", str(tmp_path / model), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
        assert not (tmp_path / model).exists()


# ------------------------------------------------------------------------------------------- end-to-end
def test_one_to_one_selection_is_two_topk_without_iou():
    """Against a brute force over every (point, class) pair: the best k pairs among the k points of best class
    score, best first, boxes of their points, labels 1..C. Two classes of one point may both be kept."""
    from mobilenets.heads.yolo import select_one_to_one

    torch.manual_seed(0)
    boxes, scores = torch.rand(2, 40, 4) * 100, torch.rand(2, 40, 3) * 0.9
    scores[0, 7] = torch.tensor([0.99, 0.98, 0.0])  # point 7 holds the two best pairs of image 0
    got = select_one_to_one(boxes, scores, 5)
    assert got.shape == (2, 5, 6)
    for i in range(2):
        points = scores[i].amax(-1).topk(5).indices
        pairs = sorted(((float(scores[i, p, c]), int(p), c) for p in points for c in range(3)), reverse=True)[:5]
        for row, (s, p, c) in zip(got[i], pairs):
            assert float(row[4]) == s and int(row[5]) == c + 1 and torch.equal(row[:4], boxes[i, p])
    assert got[0, :2, 5].tolist() == [1, 2] and torch.equal(got[0, 0, :4], got[0, 1, :4])
    assert select_one_to_one(boxes, scores, 300).shape == (2, 40, 6)  # k is capped at the number of points


def test_end_to_end_trains_both_heads_and_the_one_to_one_head_leaves_the_neck_alone():
    model = _small_yolo(end_to_end=True).train()
    x, targets = _scene_batch()
    outputs = model(x)
    terms = model.loss(outputs, targets)
    assert set(terms) == {"box", "dfl", "cls", "box_o2o", "dfl_o2o", "cls_o2o"}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    sum(v for k, v in terms.items() if k.endswith("_o2o")).backward()
    assert all(p.grad is None for p in [*model.neck.parameters(), *model.features.parameters(),
                                        *model.head.parameters()])
    assert all(p.grad is not None for p in model.head_o2o.parameters())
    # the one-to-one targets are top-1: at most one positive per box
    gt = model._pad(targets, outputs["cls_logits_o2o"])
    pred = model.boxes(outputs, outputs["box_logits_o2o"])
    _, _, fg, which = model.assigner_o2o(outputs["cls_logits_o2o"].detach().sigmoid(), pred.detach(),
                                         outputs["points"], *gt)
    for i, t in enumerate(targets):
        assert int(fg[i].sum()) <= len(t["labels"])
        assert len(set(which[i][fg[i]].tolist())) == int(fg[i].sum())

    model.eval()
    with torch.no_grad():
        detections = model.decode(model(x))
        assert detections.shape == (len(x), 84, 6)  # 64 px: 64 + 16 + 4 = 84 points, fewer than 300
        model.one_to_one = False  # the one-to-many head with NMS, as eval --nms reads it
        boxes, scores = model.decode(model(x))
    assert boxes.shape[:2] == scores.shape[:2] and scores.shape[-1] == 11


def test_undetached_one_to_one_trains_the_neck_and_backbone_and_runs_the_same_graph():
    """detach_one_to_one=False: the one-to-one loss reaches the neck and backbone (not the other head); at inference
    the graph is the detached model's, so the same weights give the same detections."""
    torch.manual_seed(0)
    detached = _small_yolo(end_to_end=True)
    model = _small_yolo(end_to_end=True, detach_one_to_one=False)
    model.load_state_dict(detached.state_dict())
    x, targets = _scene_batch()
    model.train()
    terms = model.loss(model(x), targets)
    sum(v for k, v in terms.items() if k.endswith("_o2o")).backward()
    assert all(p.grad is None for p in model.head.parameters())
    for part in (model.neck, model.features, model.head_o2o):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    detached.load_state_dict(model.state_dict())  # (the training forward moved the BN statistics)
    model.eval()
    detached.eval()
    with torch.no_grad():
        assert torch.equal(model.decode(model(x)), detached.decode(detached(x)))
    with pytest.raises(UserError, match="for an end-to-end model"):
        _small_yolo(detach_one_to_one=False)


def test_annealed_one_to_one_topk_follows_the_run_and_defaults_to_top_1():
    """one_to_one_topk=K: the trainer's hook sets the one-to-one assigner's top-k from K at the start, linearly
    (rounded) to 1 at half the run, then 1; without it (K=1, or no hook called) the assigner is top-1, as YOLOv10."""
    assert [annealed_topk(10, f) for f in (0.0, 0.1, 0.25, 0.45, 0.5, 0.9, 1.0, 2.0)] == [10, 8, 6, 2, 1, 1, 1, 1]
    assert annealed_topk(1, 0.0) == 1 and annealed_topk(3, -1.0) == 3
    model = _small_yolo(end_to_end=True, one_to_one_topk=10)
    assert model.assigner_o2o.topk == 1  # until a trainer says where the run is
    steps = []
    for fraction in (0.0, 0.2, 0.4, 0.6):
        model.set_training_progress(fraction)
        steps.append(model.assigner_o2o.topk)
    assert steps == [10, 6, 3, 1] and model.assigner.topk == 10  # the one-to-many assigner is untouched
    plain = _small_yolo(end_to_end=True)
    plain.set_training_progress(0.0)
    assert plain.assigner_o2o.topk == 1
    _small_yolo().set_training_progress(0.0)  # no one-to-one head: nothing to set
    with pytest.raises(UserError, match="for an end-to-end model"):
        _small_yolo(one_to_one_topk=10)
    with pytest.raises(UserError, match="at least 1 point"):
        _small_yolo(end_to_end=True, one_to_one_topk=0)


def test_train_one_epoch_passes_the_run_fraction_to_the_model_before_every_step():
    """The hook sees the run's progress before each step's loss: more than one positive per object early on."""
    model = _small_yolo(end_to_end=True, one_to_one_topk=10)
    seen = []
    original = model.loss

    def loss(outputs, targets):
        seen.append(model.assigner_o2o.topk)
        return original(outputs, targets)

    model.loss = loss
    x, targets = _scene_batch()
    fractions = iter([0.0, 0.5])
    step = TrainingStep(get_task("detect"), model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    stats = train_one_epoch(step, [(x, targets)] * 2, optimizer, scheduler, epoch=0, world=World(),
                            progress=False, run_fraction=lambda: next(fractions))
    assert stats["steps"] == 2 and seen == [10, 1]


def test_cli_end_to_end_round_trip(tmp_path, capsys):
    """train --end-to-end --neck-depth 2 --no-detach-one-to-one: stored options; eval reads the one-to-one head and,
    with --nms, the other;
    the ONNX export ends in `detections` and predict through it matches eager PyTorch."""
    out = tmp_path / "run"
    assert main(["train", "--task", "detect", "--model", "yolo", "--backbone", "mobilenet_v3_small", "--width", "0.5",
                 "--data", "scenes", "--scenes", "16", "--limit-val", "4", "--scene-size", "64", "--epochs", "1",
                 "--batch-size", "8", "--out", str(out), "--no-progress", "--threads", "1", "--end-to-end",
                 "--neck-depth", "2", "--no-detach-one-to-one", "--one-to-one-topk", "4"]) == 0
    ckpt = out / "last.safetensors"
    model, meta = load_checkpoint(ckpt)
    assert meta.options["end_to_end"] is True and meta.options["neck_depth"] == 2
    assert meta.options["detach_one_to_one"] is False and not model.detach_one_to_one
    assert meta.options["one_to_one_topk"] == 4 and model.one_to_one_topk == 4
    assert model.end_to_end and model.one_to_one and len(model.neck.top_down[0]) == 2
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_box", "loss_cls_o2o", "loss_dfl_o2o"} <= set(record)

    capsys.readouterr()
    heads = {}
    for extra in ([], ["--nms"]):
        assert main(["eval", str(ckpt), "--json", "--limit-val", "4", *extra]) == 0
        report = json.loads(capsys.readouterr().out)
        heads[report["head"]] = report["map"]
    assert set(heads) == {"one-to-one (no NMS)", "one-to-many + NMS"}

    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "e2e.onnx")]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and '"end_to_end": true' in text
    import onnxruntime as ort
    assert [o.name for o in ort.InferenceSession(str(tmp_path / "e2e.onnx")).get_outputs()] == ["detections"]

    image = tmp_path / "scene.png"
    scene = FashionScenes("test", 1, SceneConfig(image_size=64)).render(0)[0]
    Image.fromarray((scene * 255).byte().permute(1, 2, 0).numpy()).save(image)
    found = {}
    for backend in ("torch", "onnxruntime"):
        assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / backend), "--score-thresh", "0.0",
                     "--backend", backend, "--json", "--threads", "1"]) == 0
        found[backend] = json.loads(capsys.readouterr().out)[0]["detections"]
    assert len(found["torch"]) == len(found["onnxruntime"]) == 84  # every point: 64 + 16 + 4, no NMS
    for a, b in zip(found["torch"], found["onnxruntime"]):
        assert abs(a["score"] - b["score"]) < 1e-3
        assert a["label"] != b["label"] or max(abs(u - v) for u, v in zip(a["box"], b["box"])) < 0.2


def test_end_to_end_parity_fails_on_a_wrong_export():
    """The end-to-end comparison is not vacuous: moved boxes or a swapped label fail it."""
    task = get_task("detect")
    properties = {"mobilenets.postprocess": json.dumps({"score_thresh": 0.001, "nms_thresh": 0.7,
                                                        "topk_candidates": 300, "detections_per_img": 300,
                                                        "end_to_end": True})}
    assert task.output_names(properties) == ("detections",)
    torch.manual_seed(0)
    ref = torch.cat((torch.rand(2, 20, 4) * 60, torch.rand(2, 20, 1).sort(1, descending=True).values,
                     torch.randint(1, 11, (2, 20, 1)).float()), -1)

    def parity(got):
        return task.compare([ref.numpy()], [got.numpy()], inputs="random", int8=False, properties=properties)

    assert parity(ref.clone()).passed and parity(ref.clone()).max_abs_diff == 0
    assert parity(ref[:, torch.randperm(20)]).passed  # order among the rows does not matter
    moved, relabelled = ref.clone(), ref.clone()
    moved[:, :3, :4] += 1.0
    relabelled[0, 0, 5] = relabelled[0, 0, 5] % 10 + 1
    assert not parity(moved).passed and not parity(relabelled).passed


def test_neck_depth_and_end_to_end_are_for_yolo_only(tmp_path, capsys):
    for model, flags, message in (("ssdlite", ["--neck-depth", "2"], "only the YOLO head has a neck"),
                                  ("ssdlite", ["--end-to-end"], "only the YOLO head has a one-to-one mode"),
                                  ("yolo", ["--no-detach-one-to-one"], "only an --end-to-end YOLO"),
                                  ("yolo", ["--one-to-one-topk", "10"], "only an --end-to-end YOLO")):
        assert main(["train", "--task", "detect", "--model", model, "--data", "scenes", *flags,
                     "--out", str(tmp_path / "x"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert main(["train", "--task", "detect", "--model", "yolo", "--data", "scenes", "--neck-depth", "0",
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "at least 1 unit" in capsys.readouterr().err
