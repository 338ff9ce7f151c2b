"""``--teacher``: logit distillation for classification. The loss against a hand computation, the teacher seeing
the batch in its own preprocessing, a student trained from one teacher and from an ensemble (loss terms logged,
the teacher's weights untouched), and one-line refusals."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from mobilenets.checkpoint import save_checkpoint
from mobilenets.cli import main
from mobilenets.preprocessing import Preprocessing
from mobilenets.tasks import get_task
from mobilenets.tasks.classify import distillation_loss
from mobilenets.train.distill import to_teacher_input
from synthetic_data import write_fashion

pytestmark = pytest.mark.usefixtures("one_thread")


def test_distillation_loss_is_t2_kl():
    torch.manual_seed(0)
    s, t, temp = torch.randn(4, 5), torch.randn(4, 5), 3.0
    p = F.softmax(t / temp, 1)
    q = F.softmax(s / temp, 1)
    want = float((p * (p.log() - q.log())).sum(1).mean()) * temp ** 2
    assert float(distillation_loss(s, p, temp)) == pytest.approx(want, rel=1e-5)
    assert float(distillation_loss(t, p, temp)) == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher


def test_classify_loss_mixes_the_terms():
    model = torch.nn.Linear(6, 5)
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    probs = F.softmax(torch.randn(8, 5), 1)
    task = get_task("classify")
    plain, _, _ = task.loss(model, x, y)
    mixed, terms, counts = task.loss(model, x, y, soft_targets=(probs, 2.0, 0.25))
    assert float(terms["loss_ce"]) == pytest.approx(float(plain))
    assert float(mixed) == pytest.approx(0.75 * float(plain) + 0.25 * float(terms["loss_kd"]), rel=1e-6)
    only_ce, _, _ = task.loss(model, x, y, soft_targets=(probs, 2.0, 0.0))
    assert float(only_ce) == pytest.approx(float(plain))


def test_teacher_sees_its_own_preprocessing():
    """A grey 32 px batch normalised for the student becomes, for an RGB 48 px teacher with ImageNet statistics,
    what that teacher's preprocessing gives the same pixels."""
    student = Preprocessing(input_size=(1, 32, 32), resize=32, mean=(0.286,), std=(0.353,))
    teacher = Preprocessing(input_size=(3, 48, 48), resize=48)
    pixels = torch.rand(2, 1, 32, 32)
    x = (pixels - 0.286) / 0.353
    got = to_teacher_input(x, student, teacher)
    rgb = F.interpolate(pixels, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
    rgb = rgb.expand(-1, 3, -1, -1)
    want = (rgb - torch.tensor(teacher.mean).view(1, 3, 1, 1)) / torch.tensor(teacher.std).view(1, 3, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (2, 3, 48, 48)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def student_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "32", "--threads", "1",
            "--no-progress", "--width", "0.5", "--seed", "3", *extra]


def test_student_trains_from_a_teacher_and_an_ensemble(data, trained, tmp_path):
    _, _, teacher = trained("mobilenet_v1")  # Fashion-MNIST's 10 classes, 32 px, like this data
    before = load_file(teacher)
    single, ensemble, plain = tmp_path / "single", tmp_path / "ensemble", tmp_path / "plain"
    assert main(student_args(data, plain)) == 0
    assert main(student_args(data, single, "--teacher", str(teacher), "--kd-weight", "0.7")) == 0
    assert main(student_args(data, ensemble, "--teacher", str(teacher), str(trained.checkpoint("mobilenet_v2")))) == 0
    for run in (single, ensemble):
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert math.isfinite(record["loss_kd"]) and record["loss_kd"] > 0 and math.isfinite(record["loss_ce"])
    config = json.loads((single / "config.json").read_text())
    assert config["teachers"] == [str(teacher)] and config["kd_weight"] == 0.7 and config["kd_temperature"] == 4.0
    plain_loss = json.loads((plain / "metrics.jsonl").read_text())["train_loss"]
    assert json.loads((single / "metrics.jsonl").read_text())["train_loss"] != plain_loss
    after = load_file(teacher)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher is frozen


def test_bad_teachers_are_refused_in_one_line(data, trained, tmp_path, capsys):
    model, meta, _ = trained("mobilenet_v1")
    other = tmp_path / "other.safetensors"
    meta.class_names = [f"c{i}" for i in range(10)]
    save_checkpoint(other, model, meta)
    cases = [(["--teacher", str(tmp_path / "missing.safetensors")], "no such checkpoint"),
             (["--teacher", str(other)], "has other classes"),
             (["--teacher", str(other), "--kd-weight", "2"], "within 0..1"),
             (["--task", "segment", "--teacher", str(other)], "--teachers is for classification")]
    for i, (extra, message) in enumerate(cases):
        assert main(student_args(data, tmp_path / f"r{i}", *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
