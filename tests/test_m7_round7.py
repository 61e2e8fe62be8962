"""Round 7 fixes: a removed current folder, whole-reference ``env`` values that are not
strings, and ``{item.*}`` outside a ``foreach`` stage, all said before anything runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, _env

GONE = "the current folder no longer exists"

ONE = """
name: t
stages:
  - id: mk
    type: shell
    config:
      cmd: "cp {inputs.a} {outputs.o}"
      inputs: {a: data/a.txt}
      outputs: {o: build/a.txt}
"""


def _in_removed_folder(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pipemake ARGS`` started in a folder removed just before it starts."""
    gone = tmp_path / "gone"
    gone.mkdir()
    script = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    argv = ["sh", "-c", script, "sh", str(gone), sys.executable, "-m", "pipemake", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=_env(None), timeout=60)


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["build", "--help"]])
def test_help_and_version_need_no_current_folder(tmp_path: Path, args: list[str]) -> None:
    proc = _in_removed_folder(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert TRACEBACK not in proc.stderr
    assert ("version" if args == ["--version"] else "Usage:") in proc.stdout


@pytest.mark.parametrize(
    "args", [["status"], ["build"], ["validate"], ["init"], ["-C", "rel", "status"],
             ["-f", "rel.yaml", "validate"]],
)  # fmt: skip
def test_commands_needing_the_folder_say_it_is_gone(tmp_path: Path, args: list[str]) -> None:
    proc = _in_removed_folder(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert GONE in proc.stderr and "cd to a folder that exists" in proc.stderr
    assert TRACEBACK not in proc.stderr + proc.stdout


def test_absolute_c_and_f_work_from_a_removed_folder(
    tmp_path: Path, project: Callable[..., Proj]
) -> None:
    proj = project(ONE, {"data/a.txt": "a\n"})
    proc = _in_removed_folder(tmp_path, "-C", str(proj.root), "build", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proj.read("build/a.txt") == "a\n"
    proc = _in_removed_folder(tmp_path, "-C", str(proj.root), "status")
    assert proc.returncode == 0, proc.stderr
    assert "mk" in proc.stdout
    proc = _in_removed_folder(tmp_path, "-f", str(proj.root / "pipemake.yaml"), "status")
    assert proc.returncode == 0, proc.stderr
    assert TRACEBACK not in proc.stderr


def test_absolute_c_that_is_missing_too(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = _in_removed_folder(tmp_path, "-C", str(missing), "status")
    assert proc.returncode == 2, proc.stderr
    assert f"-C {missing}: no such file or directory" in proc.stderr
    assert TRACEBACK not in proc.stderr
