"""Fashion-MNIST scenes, COCO detection folders and VOC-style mask folders: determinism, ground truth that matches
the pixels, transforms that move boxes and masks with the image, and bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mobilenets.data.coco import CocoDetection, open_coco
from mobilenets.data.fashion_mnist import load_fashion_mnist
from mobilenets.data.masks import SegmentationFolder
from mobilenets.data.scenes import FashionScenes, SceneConfig, export_scenes
from mobilenets.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_scenes():
    return FashionScenes("train", 64, SceneConfig(image_size=96), seed=3)


def test_scenes_are_deterministic(train_scenes):
    again = FashionScenes("train", 64, SceneConfig(image_size=96), seed=3)
    other_seed = FashionScenes("train", 64, SceneConfig(image_size=96), seed=4)
    for i in (0, 7, 63):
        a, b = train_scenes.render(i), again.render(i)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(train_scenes.render(5)[0], other_seed.render(5)[0])
    assert not torch.equal(train_scenes.render(5)[0], train_scenes.render(6)[0])


def test_cached_scenes_are_the_renders_in_8_bits():
    plain = FashionScenes("train", 6, SceneConfig(image_size=64), seed=2)
    cached = FashionScenes("train", 6, SceneConfig(image_size=64), seed=2, cache=True)
    for i in (0, 3, 0, 5, 3):  # repeats come from the cache
        image, target = cached[i]
        ref_image, ref_target = plain[i]
        assert torch.equal(image, (ref_image * 255).round() / 255)
        assert torch.equal(target["boxes"], ref_target["boxes"]) and torch.equal(target["labels"], ref_target["labels"])
        assert torch.equal(target["mask"], ref_target["mask"]) and target["mask"].dtype == torch.int64
    assert sorted(cached._cache) == [0, 3, 5]


def test_boxes_are_tight_around_the_mask(train_scenes):
    objects = 0
    for i in range(32):
        image, boxes, labels, mask = train_scenes.render(i)
        assert image.shape == (3, 96, 96) and 0 <= image.min() and image.max() <= 1
        assert set(mask.unique().tolist()) <= {0, *labels.tolist()}
        assert ((labels >= 1) & (labels <= 10)).all()
        for (x1, y1, x2, y2), label in zip(boxes.int().tolist(), labels.tolist()):
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            inside = mask[y1:y2, x1:x2] == label
            # the object's pixels touch all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            objects += 1
    assert objects > 32  # several items per canvas


def test_empty_scenes_are_samples():
    scenes = FashionScenes("train", 16, SceneConfig(image_size=96, empty_fraction=0.5), seed=3)
    counts = [len(scenes.render(i)[2]) for i in range(16)]
    assert 0 in counts and max(counts) >= 3
    image, target = scenes[counts.index(0)]
    assert target["boxes"].shape == (0, 4) and (target["mask"] == 0).all()


def test_test_scenes_use_the_test_items():
    test = FashionScenes("test", 8, SceneConfig(image_size=96))
    images, _, _ = load_fashion_mnist("test")
    assert torch.equal(test.items, images)
    with pytest.raises(UserError, match="split 'val' with holdout=0"):  # val scenes need held-out items
        FashionScenes("val", 8)
    with pytest.raises(UserError, match="unknown scenes split"):
        FashionScenes("valid", 8)
    with pytest.raises(UserError, match="image_size"):
        SceneConfig(image_size=32)


def test_transforms_move_boxes_and_masks(train_scenes):
    i = next(i for i in range(64) if len(train_scenes.render(i)[2]) > 0)
    image, target = train_scenes[i]
    flipped_image, flipped = v2.RandomHorizontalFlip(p=1.0)(image, target)
    w = image.shape[-1]
    expected = target["boxes"].clone()
    expected[:, 0], expected[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
    torch.testing.assert_close(flipped["boxes"].as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))
    assert torch.equal(flipped["mask"], target["mask"].flip(-1))
    assert torch.equal(flipped_image, image.flip(-1))
    resized_image, resized = v2.Resize((48, 48))(image, target)
    torch.testing.assert_close(resized["boxes"].as_subclass(torch.Tensor),
                               target["boxes"].as_subclass(torch.Tensor) / 2)
    assert resized["mask"].shape == (48, 48) and resized["mask"].dtype == torch.int64


def test_export_reads_back_as_coco_and_masks(tmp_path, train_scenes):
    root = export_scenes(train_scenes, tmp_path / "scenes", limit=6)
    coco = open_coco(root)
    masks = SegmentationFolder(root)
    assert len(coco) == len(masks) == 6
    assert coco.class_names == train_scenes.class_names and masks.class_names[0] == "background"
    for i in range(6):
        image, boxes, labels, mask = train_scenes.render(i)
        got_image, target = coco[i]
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), boxes)
        assert torch.equal(target["labels"], labels)
        assert (got_image - image).abs().max() <= 1 / 255 + 1e-6
        assert torch.equal(masks[i][1]["mask"].as_subclass(torch.Tensor), mask)


def _coco(tmp_path, annotations, images=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "images" / "empty.png")
    data = {"images": images or [{"id": 1, "file_name": "a.png", "width": 50, "height": 40},
                                 {"id": 2, "file_name": "empty.png", "width": 50, "height": 40}],
            "annotations": annotations, "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path


GOOD = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 20]}


@pytest.mark.parametrize("bad,message", [
    ({"bbox": [45, 6, 20, 20]}, "leaves the 50x40 image"),
    ({"bbox": [5, 6, 0, 20]}, "width 0"),
    ({"bbox": [5, 6, -4, 20]}, "width -4"),
    ({"bbox": [5, 6, float("nan"), 20]}, "finite"),
    ({"category_id": 99}, "category_id 99"),
    ({"image_id": 42}, "image_id 42"),
])
def test_bad_coco_annotations_name_file_and_id(tmp_path, bad, message):
    root = _coco(tmp_path, [GOOD, {**GOOD, "id": 17, **bad}])
    with pytest.raises(UserError, match=message) as info:
        open_coco(root)
    assert "instances.json" in str(info.value) and "annotation id 17" in str(info.value)
    skipped = open_coco(root, skip_invalid=True)
    assert sum(skipped.skipped.values()) == 1
    assert len(skipped.annotation(0)[1]) == 1


def test_coco_labels_empty_images_and_clipping(tmp_path):
    root = _coco(tmp_path, [GOOD, {**GOOD, "id": 2, "category_id": 3, "bbox": [-0.5, 0, 50.4, 40]},
                            {**GOOD, "id": 3, "iscrowd": 1}])
    ds = open_coco(root)
    boxes, labels, size = ds.annotation(0)
    assert labels.tolist() == [2, 1] and size == (40, 50)  # contiguous labels, 0 is the background
    torch.testing.assert_close(boxes, torch.tensor([[5.0, 6.0, 15.0, 26.0], [0.0, 0.0, 49.9, 40.0]]))
    assert ds.skipped["crowd annotations"] == 1
    image, target = ds[1]  # no annotations: a valid, all-background sample
    assert image.shape == (3, 40, 50) and target["boxes"].shape == (0, 4)


def test_coco_image_size_mismatch(tmp_path):
    root = _coco(tmp_path, [GOOD], images=[{"id": 1, "file_name": "a.png", "width": 64, "height": 40}])
    ds = CocoDetection(root / "images", root / "instances.json")
    with pytest.raises(UserError, match="a.png is 50x40"):
        ds[0]


def _masks(tmp_path, mask_size=(40, 50), value=1, mode="L"):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "images" / "ok.jpg")
    Image.fromarray(np.ones((40, 50), np.uint8)).save(tmp_path / "masks" / "ok.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "images" / "bad.png")
    Image.fromarray(np.full(mask_size, value, np.uint8)).convert(mode).save(tmp_path / "masks" / "bad.png")
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    return tmp_path


@pytest.mark.parametrize("kwargs,message", [
    ({"mask_size": (40, 49)}, "bad.png is 49x40 but image"),
    ({"value": 5}, "class id 5"),
    ({"mode": "RGB"}, "RGB image"),
])
def test_bad_masks_name_the_file(tmp_path, kwargs, message):
    root = _masks(tmp_path, **kwargs)
    with pytest.raises(UserError, match=message):
        SegmentationFolder(root)
    ds = SegmentationFolder(root, skip_invalid=True)
    assert len(ds) == 1 and sum(ds.skipped.values()) == 1


def test_mask_ignore_index_is_allowed(tmp_path):
    ds = SegmentationFolder(_masks(tmp_path, value=255))
    assert len(ds) == 2
    assert set(ds[0][1]["mask"].unique().tolist()) == {255}  # bad.png sorts first
