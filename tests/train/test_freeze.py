"""``--freeze backbone|STAGE`` for every task: the MobileNet under a detection / segmentation head is what freezes
(SSDLite's extras, YOLO's neck, the LR-ASPP and DeepLabV3 heads keep training), its weights and BN statistics stay
as loaded through a training run, and bad values are refused in one line."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, save_checkpoint
from mobilenets.cli import main
from mobilenets.data.dense import MEAN, STD
from mobilenets.errors import UserError
from mobilenets.preprocessing import Preprocessing
from mobilenets.train.freeze import backbone_of, freeze

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = {"ssdlite": ("extras", "cls_head", "box_head"), "yolo": ("neck", "head"), "lraspp": ("head",),
         "deeplabv3": ("head", "aux_head")}
NAMES = ["background"] + [f"c{i}" for i in range(1, 11)]


def _task_model(name: str) -> torch.nn.Module:
    options = {"aux_loss": True} if name == "deeplabv3" else {}
    return mobilenets.create_model(name, backbone="mobilenet_v3_small", num_classes=len(NAMES), width_multiplier=0.5,
                                   **options)


@pytest.mark.parametrize("name", list(HEADS))
def test_backbone_of_a_task_model_is_its_features_and_the_head_stays_trainable(name):
    model = _task_model(name)
    assert backbone_of(model) is model.features
    parts = freeze(model, "backbone")
    assert set(parts) >= {model.features.stem, *model.features.stages}
    for n, p in model.named_parameters():
        assert p.requires_grad == (not n.startswith("features.")), n
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == set(HEADS[name])

    model = _task_model(name)
    freeze(model, "1")  # the stem and stages 0..1 of the backbone
    first = ("features.stem.", "features.stages.0.", "features.stages.1.")
    for n, p in model.named_parameters():
        assert p.requires_grad == (not n.startswith(first)), n
    assert any(n.startswith("features.stages.2.") for n, _ in model.named_parameters())


def test_classifier_freezing_is_unchanged():
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=10, width_multiplier=0.5)
    assert backbone_of(model) is model
    freeze(model, "backbone")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head_fc", "classifier"}  # V3's pooled 1x1 head conv and the classifier


@pytest.mark.parametrize("spec, message", [
    ("head", "freeze='head': use 'backbone', 'none' or a stage index 0.."),
    ("99", "freeze='99': the backbone has stages 0.."),
    ("-1", "freeze='-1': the backbone has stages 0.."),
])
def test_bad_freeze_values_name_the_choices(spec, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        freeze(_task_model("yolo"), spec)


class _NoBackbone(torch.nn.Module):
    features = torch.nn.Conv2d(3, 3, 1)


def test_a_model_without_a_mobilenet_backbone_is_refused():
    with pytest.raises(UserError, match="_NoBackbone has no MobileNet backbone to freeze; use freeze='none'"):
        freeze(_NoBackbone(), "backbone")
    assert freeze(_NoBackbone(), "none") == []


@pytest.mark.parametrize("task, name, spec", [("detect", "ssdlite", "backbone"), ("segment", "lraspp", "backbone"),
                                              ("detect", "yolo", "2")])
def test_training_keeps_the_frozen_backbone_and_trains_the_head(task, name, spec, tmp_path, randomize_bn, capsys):
    """A tiny run from a checkpoint (non-trivial BN statistics) with ``--freeze``: every frozen weight and BN
    buffer in ``last.safetensors`` (the EMA weights, BN re-estimated) equals the loaded one; every other
    parameter moved."""
    torch.manual_seed(0)
    model = randomize_bn(_task_model(name))
    start = tmp_path / "start.safetensors"
    save_checkpoint(start, model, CheckpointMeta(model=name, options=dict(model.arch_options), task=task,
                                                 class_names=NAMES, preprocessing=Preprocessing(
                                                     input_size=(3, 64, 64), resize=64, mean=MEAN, std=STD)))
    out = tmp_path / "run"
    argv = ["train", "--task", task, "--data", "scenes", "--model", name, "--backbone", "mobilenet_v3_small",
            "--width", "0.5", "--scenes", "8", "--limit-val", "2", "--scene-size", "64", "--epochs", "1",
            "--batch-size", "4", "--bn-recalibrate", "2", "--weights", str(start), "--freeze", spec,
            "--out", str(out), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    before, after = load_file(start), load_file(out / "last.safetensors")
    assert before.keys() == after.keys()
    frozen_prefixes = (("features.",) if spec == "backbone" else
                       ("features.stem.", *(f"features.stages.{i}." for i in range(int(spec) + 1))))
    params = {n for n, _ in model.named_parameters()}
    frozen = [k for k in before if k.startswith(frozen_prefixes)]
    trained = [k for k in before if k in params and not k.startswith(frozen_prefixes)]
    assert any(k.endswith("running_var") for k in frozen) and trained
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []
    unchanged = [k for k in trained if torch.equal(before[k], after[k])]
    # SSDLite's last level is a 1x1 map at 64 px: no anchor there matches an object, so its box branch gets no
    # gradient (its 1-D parameters carry no weight decay either)
    assert all(k.startswith("box_head.blocks.5.") for k in unchanged) if name == "ssdlite" else unchanged == []
    for head in HEADS[name]:
        assert any(k.startswith(head + ".") for k in trained)

    capsys.readouterr()
    argv[argv.index("--freeze") + 1] = "neck"
    assert main([*argv[:-5], "--out", str(tmp_path / "bad"), "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "freeze='neck': use 'backbone', 'none' or a stage index 0.." in err


def test_v5_classifier_on_the_frozen_encoder():
    """V5's encoder is the stem, the stages and the fusion neck (what the Gemma 3n weights hold): --freeze backbone
    leaves only the classifier to train, on the encoder's pooled 2048 features."""
    model = mobilenets.create_model("mobilenet_v5_base", num_classes=10, width_multiplier=0.25)
    freeze(model, "backbone")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
