"""The tasks: what differs between classification, detection and segmentation (see base.py)."""
from __future__ import annotations

from ..errors import UserError
from .base import Parity, Task, TaskData
from .classify import Classify
from .detect import Detect
from .segment import Segment

TASKS: dict[str, Task] = {t.name: t for t in (Classify(), Detect(), Segment())}


def get_task(name: str) -> Task:
    """The task called ``name`` ("classify", "detect", "segment")."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Parity", "Task", "TaskData", "get_task"]
