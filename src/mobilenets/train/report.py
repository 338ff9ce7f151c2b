"""Per-epoch metrics of a run folder: JSON lines and CSV (the figures are in mobilenets.plots)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..files import atomic_write


def write_metrics(jsonl: Path, csv_path: Path, history: list[dict]) -> None:
    """Rewrite both files from the whole history (so a resumed run never duplicates lines)."""
    atomic_write(jsonl, lambda tmp: Path(tmp).write_text("".join(json.dumps(h) + "\n" for h in history)))
    keys = list(dict.fromkeys(k for h in history for k in h))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write(csv_path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
