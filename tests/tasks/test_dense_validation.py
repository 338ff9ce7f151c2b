"""Detection / segmentation on the built-in scenes choose checkpoints on held-out training items, never on the test
scenes: validation scenes draw only training items that the training scenes never draw; ``mobilenets eval`` reports
a fixed test set (the first 1,000 test scenes at seed 0) whatever the checkpoint validated on; runs written before
this resume on the split they were made with."""
from __future__ import annotations

import pytest
import torch

import mobilenets
from mobilenets.checkpoint import CheckpointMeta, save_checkpoint
from mobilenets.cli import build_parser, main
from mobilenets.commands.train import config_from_args
from mobilenets.data import fashion_mnist
from mobilenets.data.loaders import DataConfig, holdout_indices
from mobilenets.data.scenes import FashionScenes, SceneConfig
from mobilenets.errors import UserError
from mobilenets.preprocessing import Preprocessing
from mobilenets.tasks import get_task
from mobilenets.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _scenes_of(data) -> tuple[FashionScenes, FashionScenes]:
    """The training and validation datasets of a task's ``open_data``."""
    return data.train.loader.dataset, data.val


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_val_scenes_draw_held_out_training_items_that_training_scenes_never_draw(task):
    data = get_task(task).open_data(DataConfig("scenes", batch_size=2, scenes=4, limit_val=3, scene_size=64, seed=0),
                                    img_size=None, in_chans=None)
    train, val = _scenes_of(data)
    assert (train.split, val.split, len(train), len(val)) == ("train", "val", 4, 3)
    kept, held = set(train.item_indices.tolist()), set(val.item_indices.tolist())
    assert not kept & held and len(kept | held) == 60_000 and len(held) == 6_000
    assert torch.bincount(val.item_labels, minlength=10).tolist() == [600] * 10  # stratified: 10% of each class
    # the items the scenes paste are those rows: train scenes index only train.items, val scenes only val.items
    images, labels, _ = fashion_mnist.load_fashion_mnist("train")
    assert torch.equal(val.items, images[val.item_indices]) and torch.equal(val.item_labels, labels[val.item_indices])
    assert torch.equal(train.items, images[train.item_indices])
    # the cut of the classification holdout with the same seed and fraction: one held-out set for both
    assert torch.equal(val.item_indices, holdout_indices(labels, 0.1, seed=0)[1])
    assert data.meta["val_split"] == "holdout" and data.meta["val_fraction"] == 0.1
    # validation scenes are a stream of their own, not the training scenes' layouts with other items
    assert not torch.equal(val.render(0)[0], FashionScenes("train", 1, SceneConfig(image_size=64)).render(0)[0])


def test_scenes_holdout_follows_seed_and_fraction_and_refuses_bad_values():
    a = FashionScenes("val", 1, SceneConfig(image_size=64), seed=0, holdout=0.1)
    b = FashionScenes("val", 1, SceneConfig(image_size=64), seed=1, holdout=0.1)
    c = FashionScenes("train", 1, SceneConfig(image_size=64), seed=0, holdout=0.2)
    assert not torch.equal(a.item_indices, b.item_indices)
    assert len(c.item_indices) == 48_000
    assert FashionScenes("train", 1, SceneConfig(image_size=64)).item_indices is None  # no holdout: every item
    for split, holdout in (("val", 0.0), ("train", 1.0), ("train", -0.1)):
        with pytest.raises(UserError, match=r"\(val_fraction\)"):
            FashionScenes(split, 1, SceneConfig(image_size=64), holdout=holdout)


class _Evaluated(Exception):
    pass


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_eval_reports_the_fixed_test_scenes_whatever_the_checkpoint_validated_on(task, tmp_path, monkeypatch):
    """The checkpoint says it validated on 4 scenes of seed 5: eval still renders the first 1,000 test scenes at
    seed 0 on the checkpoint's 64 px canvas (``--limit-val N``: the first N of them)."""
    t = get_task(task)
    meta = CheckpointMeta(model="m", task=task, class_names=["background"] + [str(i) for i in range(10)],
                          preprocessing=Preprocessing(input_size=(3, 64, 64), resize=64),
                          extra={"data": {"data": "scenes", "seed": 5, "image_size": 64, "train_scenes": 16,
                                          "val_scenes": 4, "val_split": "holdout", "input_size": 64}})
    defaults = t.eval_defaults(meta.extra["data"])  # what `mobilenets eval` builds its DataConfig with
    test = t.open_eval_data(meta, DataConfig("scenes", **defaults))
    assert (test.split, len(test), test.seed, test.config.image_size) == ("test", 1000, 0, 64)
    reference = FashionScenes("test", 3, SceneConfig(image_size=64), seed=0)
    assert all(torch.equal(x, y) for x, y in zip(test.render(2), reference.render(2)))
    assert len(t.open_eval_data(meta, DataConfig("scenes", limit_val=7, **defaults))) == 7

    # the same through the CLI, on a real checkpoint (stopped before the 1,000 scenes are measured)
    name = "ssdlite" if task == "detect" else "lraspp"
    model = mobilenets.create_model(name, backbone="mobilenet_v3_small", num_classes=11, width_multiplier=0.35)
    meta.model, meta.options = name, dict(model.arch_options)
    save_checkpoint(tmp_path / "c.safetensors", model, meta)
    seen = []

    def evaluate(model, val, **kwargs):
        seen.append((val.split, len(val), val.seed))
        raise _Evaluated

    monkeypatch.setattr(t, "evaluate", evaluate)
    for extra, n in (([], 1000), (["--limit-val", "9"], 9)):
        with pytest.raises(_Evaluated):
            main(["eval", str(tmp_path / "c.safetensors"), "--json", *extra])
        assert seen.pop() == ("test", n, 0)


def _cli_config(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv, "--out", "unused"]))


def test_old_dense_run_configs_resume_on_the_test_scenes_and_new_ones_on_the_holdout():
    new = _cli_config("--task", "detect", "--data", "scenes").to_dict()
    assert new["data"]["scenes_val"] == "holdout" and TrainConfig.from_dict(new).data.scenes_val == "holdout"
    old = dict(new, data={k: v for k, v in new["data"].items() if k not in ("scenes_val", "val_split")})
    between = dict(new, data={k: v for k, v in new["data"].items() if k != "scenes_val"})  # val_split, no scenes_val
    for written_before in (old, between):
        cfg = TrainConfig.from_dict(written_before).data
        assert cfg.scenes_val == "test"
        data = get_task("segment").open_data(DataConfig(**{**vars(cfg), "scenes": 2, "limit_val": 2,
                                                           "scene_size": 64, "batch_size": 2}),
                                             img_size=None, in_chans=None)
        train, val = _scenes_of(data)
        assert val.split == "test" and train.item_indices is None  # as those runs trained: every training item
        assert data.meta["val_split"] == "test"
        reference = FashionScenes("test", 1, SceneConfig(image_size=64), seed=cfg.seed)
        assert torch.equal(val.render(0)[0], reference.render(0)[0])
    # --val-split test asks for the old split on purpose; on a folder it is refused as before
    assert _cli_config("--task", "segment", "--data", "scenes", "--val-split", "test").data.scenes_val == "test"
    with pytest.raises(UserError, match="--val-split is for"):
        _cli_config("--task", "detect", "--data", "/nonexistent/folder", "--val-split", "test")
