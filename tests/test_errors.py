"""User-caused failures end in one line naming the thing and the problem; bugs keep their traceback."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from casd.config import load_params, run_stage
from casd.errors import ConfigError, DataError, user_error_message


@pytest.mark.parametrize("error, expected", [
    (DataError("a.csv", "bad row", row=3), "a.csv, row 3: bad row"),
    (OSError(errno.ENOSPC, "No space left on device", "out/x.png"), "out/x.png: no space left on the device"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/dir"), "/ro/dir: permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "reports"), "reports: is a folder, expected a file"),
    (OSError(errno.EROFS, "Read-only file system", "m.pt"), "m.pt: read-only file system"),
])
def test_user_errors_become_one_line(error, expected):
    assert user_error_message(error) == expected


@pytest.mark.parametrize("error", [KeyError("x"), ValueError("bug"), OSError(errno.EIO, "I/O error")])
def test_bugs_are_not_disguised(error):
    assert user_error_message(error) is None


def test_run_stage_prints_one_line_and_exits_1(capsys):
    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "data/generated/a.png")

    with pytest.raises(SystemExit) as stop:
        run_stage(full_disk)
    assert stop.value.code == 1
    assert capsys.readouterr().err == "error: data/generated/a.png: no space left on the device\n"


def test_run_stage_keeps_the_traceback_of_a_bug():
    with pytest.raises(ZeroDivisionError):
        run_stage(lambda: 1 / 0)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("train:\n  lr: [0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml, line \d+: not valid YAML"):
        load_params(bad)


def test_cli_os_error_of_a_command_is_one_line(tmp_path):
    """An output path that cannot be created (below a regular file: fails even as root) through the
    console script's handler: one line naming the path, exit 1, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub"
    script = ("import argparse, pathlib, casd.cli as cli;"
              f"run = lambda args: pathlib.Path({str(out)!r}).mkdir(parents=True);"
              "cli.COMMANDS['mk'] = cli.Command('', argparse.ArgumentParser, run); cli.main(['mk'])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], result.stderr


def test_section_checks_collect_every_problem_and_the_params_file_read_is_named():
    from casd.config import Checks, SettingError, from_dict
    from casd.data.pose import PoseConfig

    with pytest.raises(ConfigError) as raised:
        from_dict(PoseConfig, {"mode": "x", "sigma": 0}, "pose", "other.yaml")
    assert str(raised.value) == ("other.yaml [pose]: mode must be one of onehot, gaussian, got 'x'; "
                                 "sigma must be a number > 0, got 0")
    with pytest.raises(SettingError, match=r"^params\.yaml \[pose\]: sigma"):  # built directly: the default file
        PoseConfig(sigma=-1.0)
    checks = Checks("demo")
    assert checks.number("n", 3, minimum=1, maximum=3, integer=True)
    assert not checks.number("n", 2.5, minimum=1, integer=True) and not checks.number("n", True, minimum=0)
    assert not checks.flag("on", "yes") and checks.choice("k", "a", ("a", "b"))
    assert checks.problems == ["n must be an integer >= 1, got 2.5", "n must be a number >= 0, got True",
                               "on must be true or false, got 'yes'"]
