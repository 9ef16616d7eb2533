"""The `loopline` command: every subcommand has --help; a command runs its module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loopline.cli import COMMANDS, build_parser, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: loopline " + name in capsys.readouterr().out


def test_missing_command_module_raises(monkeypatch):
    """Every command ships its module: a missing one is a broken install, not a placeholder."""
    import loopline.cli as cli

    monkeypatch.setitem(cli.COMMANDS, "future", "loopline.no_such_feature.command")
    with pytest.raises(ModuleNotFoundError):
        build_parser()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: loopline" in capsys.readouterr().out


def test_console_script_entry_point():
    cmd = [sys.executable, "-m", "loopline", "--version"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("loopline ")


def test_synth_command_and_preview(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["--preset", "M1", "--count", "2", "--seed", "3", "--out", str(out), "--preview",
            "--set", "width=128", "--set", "height=128", "--jobs", "1"]  # fmt: skip
    rc = main(["synth", *args])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 images" in text and "preview" in text
    for p in ("coco.json", "truth.json", "data.yaml", "preview.png"):
        assert (out / p).exists(), p
    assert len(list((out / "images").glob("*.png"))) == 2
    assert len(list((out / "labels").glob("*.txt"))) == 2
    assert len(list((out / "params").glob("*.json"))) == 2


def test_synth_command_rejects_bad_values_by_name(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path / "x"), "--set", "line_width=-3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("loopline synth: error:") and "'line_width'" in err
    assert "Traceback" not in err


def test_parser_builds_without_heavy_imports():
    code = ("import sys; from loopline.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ultralytics', 'onnxruntime', 'openvino') "
            "if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert build_parser().prog == "loopline"


def _option_help(command: str) -> dict[str, tuple[str | None, str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s: (a.metavar, a.help) for a in sub._actions for s in a.option_strings}


def test_model_commands_share_one_vocabulary():
    """analyze, eval and serve take --model --imgsz --conf --device (and analyze, serve
    --nm-per-px --fps) with one meaning: the help text of loopline/cli_args.py."""
    from loopline.cli_args import CALIBRATION_ARGS, MODEL_ARGS

    for command in ("analyze", "eval", "serve"):
        opts = _option_help(command)
        words = {**MODEL_ARGS, **(CALIBRATION_ARGS if command != "eval" else {})}
        for flag, kw in words.items():
            metavar, text = opts[flag]
            assert metavar == kw["metavar"], (command, flag)
            assert text.startswith(kw["help"]), (command, flag, text)


def test_serve_help_reads_well(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "OPT_" not in out and "--model NAME|PATH" in out and "--nm-per-px NM" in out
    assert "does not\narm" in out or "does not arm" in out
    assert "examples:" in out and out.count("loopline serve --") >= 3
