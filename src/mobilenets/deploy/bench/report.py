"""The benchmark's report: :class:`BenchReport` (JSON-able) and its Markdown table."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .stats import PathResult


@dataclass
class BenchReport:
    date: str
    cpu: str
    threads: int
    sgemm_gflops: float
    versions: dict
    results: list[PathResult]
    ratios: list[dict]  # per model and batch: our fastest / peers' fastest

    def to_json(self) -> dict:
        return asdict(self)


def format_table(report: BenchReport) -> str:
    lines = [f"# {report.date}  {report.cpu}  threads={report.threads}  sgemm roof {report.sgemm_gflops:.1f} GFLOP/s",
             "# " + "  ".join(f"{k} {v}" for k, v in report.versions.items()),
             "",
             "| model | px | batch | path | median ms | p10-p90 ms | best-of-burst ms | img/s | GFLOP/s | % roof |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.results:
        lines.append(f"| {r.model} | {r.resolution} | {r.batch} | {r.path} | {r.median_ms:.2f} | "
                     f"{r.p10_ms:.2f}-{r.p90_ms:.2f} | {r.best_ms:.2f} | {r.images_per_s:.0f} | {r.gflops:.1f} | "
                     f"{r.roof_fraction:.0%} |")
    if report.ratios:
        lines += ["", "| model | batch | ours / peers, medians (p25-p75 over rounds) | ours / peers, best-of-burst "
                  "(p25-p75) | our int8 / our fp32, medians | our int8 / our fp32, best-of-burst |",
                  "|---|---|---|---|---|---|"]
        for q in report.ratios:
            b, i8 = q.get("best") or {}, q["int8_vs_fp32"]
            best_text = (f"{b['ratio']:.3f} ({b['ratio_p25']:.2f}-{b['ratio_p75']:.2f}): {b['ours']} "
                         f"{b['ours_ms']:.2f} ms / {b['peer']} {b['peer_ms']:.2f} ms") if b.get("ratio") else "-"
            i8_text = f"{i8['ratio']:.2f} ({i8['path']})" if i8 else "-"
            i8_best = f"{i8['best_ratio']:.2f} ({i8['best_path']}, {i8['best_ms']:.2f} ms)" if i8 else "-"
            lines.append(f"| {q['model']} | {q['batch']} | {q['ratio']:.3f} "
                         f"({q['ratio_p25']:.2f}-{q['ratio_p75']:.2f}): {q['ours']} {q['ours_ms']:.2f} ms / "
                         f"{q['peer']} {q['peer_ms']:.2f} ms | {best_text} | {i8_text} | {i8_best} |")
    return "\n".join(lines)
