"""A newcomer's first command: ``mobilenets --help`` and ``mobilenets COMMAND --help`` of every sub-command print
their help and exit 0 (``train --help`` once died on a bare "%" in a help text)."""
from __future__ import annotations

import argparse

import pytest

from mobilenets.cli import build_parser, main


def _commands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_every_command_is_listed():
    assert {"models", "summary", "train", "eval", "predict", "demo", "export", "bench"} <= set(_commands())


@pytest.mark.parametrize("command", [None, *_commands()])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"] if command is None else [command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mobilenets") and (command is None or command in out.splitlines()[0])
