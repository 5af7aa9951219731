"""The command line: --help everywhere, exit codes, one-line errors, end-to-end commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fashionlab.cli import COMMANDS, build_parser, main


def subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_for_every_command(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: fashionlab" in out
    assert "%%" not in out  # argparse formats help= strings, not descriptions: no escaping


def test_every_registered_module_is_a_subcommand():
    assert set(COMMANDS) <= set(subcommands())


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_option_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochz", "3"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "unrecognized arguments: --epochz" in err
    assert len(err.splitlines()) == 1


def test_train_evaluate_roundtrip(tiny_data, tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["train", "quick-fc", "--data-dir", str(tiny_data), "--out", str(out),
                 "--epochs", "1", "--set", "data.dataset=any", "--set", "data.val=none",
                 "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "test accuracy:" in printed
    run = next(out.iterdir())
    accuracy = printed.split("test accuracy: ")[1].split()[0]
    for where in (["--data-dir", str(tiny_data)], []):  # without: the folder the run recorded
        assert main(["evaluate", str(run), *where]) == 0
        report = capsys.readouterr().out
        assert f"test accuracy: {accuracy}" in report  # evaluate reproduces the run's figure
        assert "confusion matrix" in report and report.count("\n") > 20


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["train", "quick-fc", "--set", "train.lrate=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key train.lrate" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # a bad config creates no run folder


def test_evaluate_missing_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_command(capsys):
    assert main(["summary", "quick-cnn"]) == 0
    assert "Total params: 56,714" in capsys.readouterr().out


def test_data_info_on_tiny(tiny_data, capsys):
    assert main(["data", "info", "--data-dir", str(tiny_data), "--dataset", "any"]) == 0
    out = capsys.readouterr().out
    assert "verified: no" in out and "train:    200 images 28x28" in out


def test_console_script_module_entry():
    done = subprocess.run([sys.executable, "-m", "fashionlab", "--version"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("fashionlab ")


def test_a_run_at_chance_level_is_flagged(tiny_data, tiny_config, tmp_path, capsys):
    """A learning rate that wrecks training without a nan finishes; the user is told that
    the result is chance, not left to read 10% as a model's score."""
    from fashionlab import config as cfg

    spec = tmp_path / "spec.toml"
    spec.write_text(cfg.dumps(tiny_config))
    args = ["train", str(spec), "--data-dir", str(tiny_data), "--out", str(tmp_path / "runs"),
            "-q", "--no-plots"]
    assert main([*args, "--lr", "0.000000001"]) == 0
    err = capsys.readouterr().err
    assert "is chance level (10 classes): the net learned nothing" in err
    assert main(args) == 0
    assert "chance level" not in capsys.readouterr().err
