"""The `signdistill` console script: dispatch to each stage's main, one-line input errors, tracebacks for bugs."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluate import cli
from preprocess import commandline
from preprocess.commandline import device_arg, is_user_error

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("signdistill")


def _run(args: list[str], cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    """The installed script with ``args`` (or ``python -c code``), run in ``cwd`` with a clean PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-c", code] if code else [str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_script_is_installed_and_lists_every_command(tmp_path):
    assert SCRIPT.is_file(), f"{SCRIPT}: no console script; reinstall with pip install -e '.[serve,test]'"
    proc = _run(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert listed == set(cli.COMMANDS)
    for stage in ("features", "train", "distill", "eval", "score", "export", "infer", "bench", "demo"):
        assert stage in cli.COMMANDS
    assert _run([], tmp_path).returncode == 2  # no command: usage on stderr


def test_each_command_shows_its_module_help(capsys):
    for name, command in cli.COMMANDS.items():
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0, name
        out = capsys.readouterr().out
        assert out.startswith("usage: "), (name, out[:200])
        assert "-h, --help" in out, name
    assert commandline.invoked_as is None  # `python -m <module>` afterwards names itself again


def test_usage_names_the_dispatched_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert capsys.readouterr().out.startswith("usage: signdistill eval ")
    with pytest.raises(SystemExit):
        from evaluate.eval import main as eval_main

        eval_main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m evaluate.eval ")


def test_unknown_command_is_one_line(capsys):
    assert cli.main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'evaluate'" in err and "eval" in err


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    ref = tmp_path / "ref.txt"
    ref.write_text("u1 A B\n", encoding="utf-8")
    assert cli.main(["score", "--hyp", str(tmp_path / "missing.ctm"), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing.ctm" in err


def test_from_another_directory(tmp_path):
    """Relative input paths are the caller's; a repository-relative preset path still resolves."""
    (tmp_path / "hyp.txt").write_text("u1 A B\nu2 C\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("u1 A B\nu2 C D\n", encoding="utf-8")
    proc = _run(["score", "--hyp", "hyp.txt", "--ref", "ref.txt", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '"wer": 25.0' in proc.stdout  # 1 deletion of 4 reference glosses
    proc = _run(["train", "--config", "configs/teachers/synthsign_fusion_attention.yaml", "--cache", "nocache",
                 "--out", "run"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "nocache" in proc.stderr and "config not found" not in proc.stderr  # the preset was found


def test_a_bug_keeps_its_traceback(tmp_path):
    code = ("import evaluate.wer as w\n"
            "def broken(*a, **k):\n    return {}['rules']\n"
            "w.score_files = broken\n"
            "from evaluate.cli import main\n"
            "raise SystemExit(main(['score', '--hyp', 'h', '--ref', 'r']))\n")
    proc = _run([], tmp_path, code=code)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "KeyError: 'rules'" in proc.stderr


def test_is_user_error_tells_input_checks_from_bugs(tmp_path):
    from preprocess.synthsign.config import preset

    def caught(fn) -> BaseException:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the test inspects whatever was raised
            return e
        raise AssertionError("nothing raised")

    assert is_user_error(caught(lambda: preset("no-such-preset")))  # a project `raise ValueError(...)`
    assert is_user_error(caught(lambda: open(tmp_path / "missing.yaml")))  # the OS names the file
    assert not is_user_error(caught(lambda: np.zeros(3) + np.zeros(4)))  # raised inside numpy
    assert not is_user_error(caught(lambda: {}["key"]))

    src = tmp_path / "check.py"
    src.write_text("def check(x):\n    if x < 0:\n        raise ValueError(f'x must be >= 0, got {x}')\n"
                   "    return int('not a number')\n", encoding="utf-8")
    for module, ours in (("evaluate.check", True), ("somelib.check", False)):
        ns = {"__name__": module}
        exec(compile(src.read_text(encoding="utf-8"), str(src), "exec"), ns)
        assert is_user_error(caught(lambda: ns["check"](-1))) is ours, module  # its own raise statement
        assert not is_user_error(caught(lambda: ns["check"](1)))  # a builtin's ValueError: a bug


def test_device_option_accepts_cuda_n_and_refuses_others():
    assert device_arg("auto") == "auto" and device_arg("cuda:1") == "cuda:1"
    for bad in ("gpu", "cuda:", "cpu:0", "auto:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a device"):
            device_arg(bad)
