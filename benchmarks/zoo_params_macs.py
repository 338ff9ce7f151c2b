"""Params and MACs of every published width/resolution against the papers' tables (REFERENCE figures; V4:
Table 6 of arXiv:2404.10518, whose figures are rounded and which the reference definitions of M/L exceed by 5-8%).

    .venv/bin/python benchmarks/zoo_params_macs.py            # prints a Markdown table
"""
import argparse

from mobilenets import create_model, profile
from mobilenets.archs import v1, v2, v3, v4

ROWS = ([("mobilenet_v1", {}, k, v) for k, v in v1.MOBILENET_V1.paper_figures.items()]
        + [("mobilenet_v2", {}, k, v) for k, v in v2.MOBILENET_V2.paper_figures.items()]
        + [("mobilenet_v3_large", {}, k, v) for k, v in v3.LARGE_FIGURES.items()]
        + [("mobilenet_v3_small", {}, k, v) for k, v in v3.SMALL_FIGURES.items()]
        + [("mobilenet_v3_large", {"minimal": True}, k, v) for k, v in v3.MINIMAL_FIGURES["large"].items()]
        + [("mobilenet_v3_small", {"minimal": True}, k, v) for k, v in v3.MINIMAL_FIGURES["small"].items()]
        + [(f"mobilenet_v4_{size}", {}, k, v) for size, figures in v4.PAPER_FIGURES.items()
           for k, v in figures.items()])


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("| model | width | resolution | params (M) | paper params (M) | MACs (M) | paper MACs (M) | MACs error |")
    print("|---|---|---|---|---|---|---|---|")
    for name, opts, (w, r), (_, macs, params) in ROWS:
        p = profile(create_model(name, width_multiplier=w, **opts), (3, r, r))
        label = name + (" minimal" if opts else "")
        print(f"| {label} | {w} | {r} | {p.params / 1e6:.3f} | {params} | {p.macs / 1e6:.1f} | {macs} | "
              f"{(p.macs / 1e6 / macs - 1) * 100:+.1f}% |")


if __name__ == "__main__":
    main()
