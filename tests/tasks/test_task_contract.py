"""The Task contract: an abstract base whose abstract methods are what the trainer, exporter, server and commands
call, so a task that lacks one fails when it is created, not when a command first reaches the missing method."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import mobilenets
from mobilenets.tasks import TASKS, Task
from mobilenets.tasks.dense import DenseTask

SRC = Path(mobilenets.__file__).parent


def test_a_task_missing_an_abstract_method_cannot_be_created():
    class Half(Task):
        name = "half"

        def summary(self, metrics):
            return ""

    with pytest.raises(TypeError, match="abstract"):
        Half()
    assert {"open_data", "loss", "evaluate", "compare", "eval_defaults", "report_lines"} <= Half.__abstractmethods__


def test_a_dense_task_missing_its_own_hooks_cannot_be_created():
    class Half(DenseTask):
        name = "half"

    with pytest.raises(TypeError, match="abstract"):
        Half()
    assert {"open_folder", "collate_targets", "tally", "counted", "train_transforms"} <= Half.__abstractmethods__


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_implements_the_contract(name):
    task = TASKS[name]
    assert not type(task).__abstractmethods__
    for attr in ("name", "metric", "outputs", "default_recipe", "default_bn_recalibrate", "curves"):
        assert getattr(task, attr) is not None, attr
    assert task.name == name


def test_every_method_the_callers_use_is_declared_on_task():
    """``task.<name>`` in train/, deploy/, serve/ and commands/ is part of the declared contract."""
    used = set()
    for room in ("train", "deploy", "serve", "commands"):
        for path in (SRC / room).rglob("*.py"):
            used |= set(re.findall(r"\btask\.([a-z_]+)\b", path.read_text()))
    assert used, "the scan found no calls"
    declared = {n for n, _ in inspect.getmembers(Task)} | set(Task.__annotations__)
    assert used - declared == set()
