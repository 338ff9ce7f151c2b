"""Flags that ``train``, ``eval`` and ``predict`` share."""
from __future__ import annotations

import argparse

from ..tasks import TASKS


def add_task_and_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=tuple(TASKS), default=None,
                   help="classify (default for train), detect or segment; eval/predict default to the "
                        "checkpoint's task")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
