"""`mobilenets models` and `mobilenets summary`, and one-line errors."""
from mobilenets.cli import main


def test_models_lists_every_variant_with_counts(capsys):
    assert main(["models", "--task", "classify"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_large" in out and "5,483,032" in out and "3,504,872" in out


def test_summary_prints_table_and_paper_figures(capsys):
    assert main(["summary", "mobilenet_v3_large", "--width-multiplier", "0.75"]) == 0
    out = capsys.readouterr().out
    assert "stages.0.0.dw.conv" in out
    assert "3,993,528" in out and "155 M MACs" in out and "-0.3%" in out


def test_summary_minimal(capsys):
    assert main(["summary", "mobilenet_v3_large", "--minimal"]) == 0
    assert "209 M MACs" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(capsys):
    for argv, fragment in ((["summary", "mobilenet_v9"], "unknown model"),
                           (["summary", "mobilenet_v2", "--width-multiplier", "0"], "width_multiplier must be > 0"),
                           (["summary", "mobilenet_v2", "--resolution", "0"], "at least 1 pixel")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
