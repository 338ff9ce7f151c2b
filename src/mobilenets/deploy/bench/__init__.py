"""Cross-runtime benchmark: our models and the reference implementations, side by side, on each backend.

For each model and batch size, every *path* (model x backend, :mod:`.paths`) lives in its own worker process
and holds its loaded runtime; the coordinator asks the workers, in a new random order every round, for a short
burst of timed inferences (at least 3, about ``burst_ms``), round after round (:mod:`.harness`), so slow drifts
of a shared machine hit all paths alike and no runtime's thread pool runs inside another's process. Per path:
the median of all runs, and the "best-of-burst" figure, the median over rounds of each burst's fastest run (on a
machine shared with other jobs the median mostly measures the scheduler, the fastest run the code). The ratios
are :mod:`.stats`'; :mod:`.report` formats them.
"""
from .paths import MODELS, PathSpec
from .report import BenchReport, format_table
from .run import BenchOptions, run_bench
from .stats import PathResult

__all__ = ["MODELS", "BenchOptions", "BenchReport", "PathResult", "PathSpec", "format_table", "run_bench"]
