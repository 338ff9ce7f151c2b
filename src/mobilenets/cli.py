"""The ``mobilenets`` command line.

Each group of sub-commands lives in a module of :mod:`mobilenets.commands` that exposes
``register(subparsers)``; the handlers import heavy dependencies lazily. User mistakes
(:class:`~mobilenets.errors.UserError`, missing files, unwritable paths) become one line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .errors import UserError

COMMAND_MODULES = (
    "mobilenets.commands.zoo",      # models, summary
    "mobilenets.commands.train",    # train
    "mobilenets.commands.eval",     # eval
    "mobilenets.commands.predict",  # predict
    "mobilenets.commands.demo",     # demo
    "mobilenets.commands.deploy",   # export, bench
    "mobilenets.commands.serve",    # serve
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilenets", description="MobileNet V1 to V5: zoo, training, deployment")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if getattr(args, "accept_licence", None):  # for this process and the workers it starts (torchrun)
        from .weights import ACCEPT_ENV
        os.environ[ACCEPT_ENV] = ",".join(filter(None, (os.environ.get(ACCEPT_ENV), args.accept_licence)))
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"mobilenets {args.command}: error: {e}", file=sys.stderr)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"mobilenets {args.command}: error: {e.strerror}: {e.filename}", file=sys.stderr)
    except BrokenPipeError:  # `mobilenets models | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
