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


# Flags are named after the Python parameters / TrainConfig fields they fill; the older spellings stay as aliases.
RENAMED = {"train": [("--width-multiplier", "--width", "0.5", "width_multiplier", 0.5),
                     ("--weight-decay", "--wd", "0.01", "weight_decay", 0.01),
                     ("--depthwise-weight-decay", "--depthwise-wd", "0", "depthwise_weight_decay", 0.0),
                     ("--optimizer", "--opt", "sgd", "optimizer", "sgd"),
                     ("--num-workers", "--workers", "2", "num_workers", 2),
                     ("--teachers", "--teacher", "a.safetensors", "teachers", ["a.safetensors"])],
           "eval": [("--num-workers", "--workers", "2", "num_workers", 2)]}


@pytest.mark.parametrize("command,new,old,value,dest,expected",
                         [(c, *r) for c, rows in RENAMED.items() for r in rows])
def test_new_flag_names_and_old_spellings(command, new, old, value, dest, expected):
    parser = build_parser()
    head = [command] if command == "train" else [command, "run/best.safetensors"]
    for flag in (new, old):
        args = parser.parse_args([*head, flag, value])
        assert getattr(args, dest) == expected, flag
    assert getattr(parser.parse_args(head), dest) in (None, 0)  # unset: the default


def test_train_config_takes_the_renamed_flags():
    from mobilenets.commands.train import config_from_args

    head = ["train", "--out", "unused", "--data", "fashion-mnist"]
    old = config_from_args(build_parser().parse_args(
        [*head, "--width", "0.5", "--wd", "0.01", "--opt", "sgd", "--workers", "2"]))
    new = config_from_args(build_parser().parse_args(
        [*head, "--width-multiplier", "0.5", "--weight-decay", "0.01", "--optimizer", "sgd", "--num-workers", "2"]))
    assert old == new
    assert (new.model_options["width_multiplier"], new.recipe.weight_decay, new.recipe.optimizer,
            new.data.num_workers) == (0.5, 0.01, "sgd", 2)


def test_demo_prints_its_predictions_through_predict(tmp_path, monkeypatch, capsys):
    """``demo`` after its training (stubbed here: it takes minutes) prints predict's lines for its samples."""
    from mobilenets.train import demo
    from serve_models import classifier, encoded, picture

    ckpt, image = tmp_path / "last.safetensors", tmp_path / "sample_3.png"
    classifier(ckpt)
    image.write_bytes(encoded(picture(1)))
    report = {"run": str(tmp_path), "files": [("last.safetensors", ckpt.stat().st_size)], "checkpoint": str(ckpt),
              "samples": [str(image)], "record": {"val_top1": 0.5, "val_top5": 0.9}}
    monkeypatch.setattr(demo, "run_demo", lambda out, threads=None, progress=True: report)
    assert main(["demo", "--out", str(tmp_path), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{image}: class" in out and "top-1 0.5000" in out and f"mobilenets eval {ckpt}" in out
