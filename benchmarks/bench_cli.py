"""Command-line glue shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder is on
``sys.path``)."""
from __future__ import annotations


def join_flag_values(argv: list[str], *flags: str) -> list[str]:
    """``argv`` with each ``FLAG VALUE`` of ``flags`` written as ``FLAG=VALUE``: such a value is a string of further
    flags to pass on (``--ours-args "--end-to-end"``), which argparse would otherwise read as an option of its own."""
    argv = list(argv)
    for flag in flags:
        if flag in argv[:-1]:
            i = argv.index(flag)
            argv[i:i + 2] = [f"{flag}={argv[i + 1]}"]
    return argv
