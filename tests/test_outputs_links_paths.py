"""Symlinks a stage writes into its outputs, project folders whose names are not UTF-8, a
store inside a stage's input, and --lock-timeout values that say no duration."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TRACEBACK, Proj

TWO = """
stages:
  - id: up
    type: shell
    config:
      cmd: "tr a-z A-Z < {inputs.a} > {outputs.o}"
      inputs: {a: data/a.txt}
      outputs: {o: build/up.txt}
  - id: d
    type: shell
    config:
      cmd: "mkdir -p {outputs.d} && cp {inputs.x} {outputs.d}/x.txt"
      inputs: {x: "{up.o}"}
      outputs: {d: build/dir}
"""

# -- a project folder whose name is not UTF-8 ---------------------------------------------


def _latin1_project(tmp_path: Path, name: bytes = b"caf\xe9") -> Proj:
    proj = Proj(tmp_path / os.fsdecode(name))
    proj.pipeline(TWO)
    proj.write("data/a.txt", "hello\n")
    return proj


def test_build_in_a_folder_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """Build, a second build (answered by the no-op snapshot), status and a restore all work
    in a Latin-1 ``café`` folder; the lock file stays UTF-8 text."""
    proj = _latin1_project(tmp_path)
    first = proj.sub("build", "--no-progress")
    assert TRACEBACK not in first.stderr and "2 ran" in first.stderr, first.stderr
    assert proj.read("build/dir/x.txt") == "HELLO\n"
    again = proj.sub("build", "--no-progress")
    assert "0 ran, 0 restored, 2 up to date" in again.stderr, again.stderr
    status = proj.sub("status", "--check")
    assert "up to date" in status.stdout and TRACEBACK not in status.stderr
    (proj.root / "pipemake.lock").read_bytes().decode("utf-8")  # raises if not UTF-8
    os.remove(proj.path("build/dir/x.txt"))
    restored = proj.sub("build", "--no-progress")
    assert "0 ran, 1 restored" in restored.stderr, restored.stderr
    assert proj.read("build/dir/x.txt") == "HELLO\n"


def test_gc_from_another_workspace_keeps_a_latin1_workspaces_entries(tmp_path: Path) -> None:
    """The store's roots record of a workspace in a Latin-1 folder is read back as that
    folder (not a damaged record), so ``cache gc`` run from another workspace keeps what it
    needs; two such folders differing in one byte keep two records."""
    cache = str(tmp_path / "cache")
    one, two = _latin1_project(tmp_path), _latin1_project(tmp_path, b"caf\xe8")
    two.write("data/a.txt", "other\n")
    other = Proj(tmp_path / "plain")
    other.pipeline(TWO)
    other.write("data/a.txt", "third\n")
    for proj in (one, two, other):
        proj.sub("build", "--no-progress", "--cache-dir", cache)
    records = [json.loads(p.read_text()) for p in Path(cache, "roots").glob("*.json")]
    assert len(records) == 3
    other.sub("cache", "gc", "--keep-days", "0", "--grace", "0", "--cache-dir", cache)
    for proj, text in ((one, "HELLO\n"), (two, "OTHER\n")):
        os.remove(proj.path("build/dir/x.txt"))
        os.remove(proj.path("build/up.txt"))
        out = proj.sub("build", "--no-progress", "--cache-dir", cache).stderr
        assert "0 ran, 2 restored" in out, out
        assert proj.read("build/dir/x.txt") == text


def test_a_file_whose_name_is_not_utf8_as_an_input(tmp_path: Path) -> None:
    """A file named in Latin-1 inside an input folder, in a Latin-1 project folder: the stage
    fails naming the file and the fix (rename it), with no traceback."""
    proj = _latin1_project(tmp_path)
    proj.pipeline(
        TWO.replace("{a: data/a.txt}", "{a: data}").replace("< {inputs.a}", "< /dev/null")
    )
    (proj.root / os.fsdecode(b"data/n\xe9e.txt")).write_text("x\n")
    out = proj.sub("build", "--no-progress", code=1)
    text = out.stdout + out.stderr
    assert "data/n\\xe9e.txt is not valid UTF-8" in text and "rename it" in text, text
    assert TRACEBACK not in text


# -- a store inside an input ---------------------------------------------------------------

COUNT = """
stages:
  - id: c
    type: shell
    config:
      cmd: "find {inputs.d} -type f | wc -l > {outputs.o}"
      inputs: {d: data}
      outputs: {o: build/n.txt}
"""


@pytest.mark.parametrize(
    ("cache", "words"),
    [
        ("data/cache", "holds the store"),
        ("data", "holds the store"),
        ("data/deep/er", "holds the store"),
        (".", "holds the store"),
    ],
)
def test_a_store_inside_an_input_is_refused_before_anything_runs(
    project: Callable[..., Proj], cache: str, words: str
) -> None:
    """``--cache-dir`` inside (or equal to, or above) a stage's input would change the input
    while the stage runs: exit 2 naming the stage, the input and the store, nothing built,
    no store made there (``.`` holds the outputs too: refused either way)."""
    proj = project(COUNT, {"data/a.txt": "a\n"})
    for command in ("build", "status", "dry-run"):
        out = (
            proj.cli(command, "--cache-dir", cache, code=2).output
            if command == "build"
            else (proj.cli("--cache-dir", cache, command, code=2).output)
        )
        assert "stage 'c'" in out and TRACEBACK not in out, out
        if cache != ".":
            assert f"input 'd' (data) {words}" in out and "outside every input" in out, out
    assert not proj.exists("build")
    assert not proj.exists("data/cache") and not proj.exists("data/deep")


def test_an_input_inside_the_store_is_refused(project: Callable[..., Proj]) -> None:
    """A stage reading a folder inside the store (its ``objects``) is refused the same way."""
    proj = project(COUNT.replace("{d: data}", "{d: store/objects}"), {"store/objects/a": "a\n"})
    out = proj.cli("build", "--cache-dir", "store", code=2).output
    assert "input 'd' (store/objects) lies inside the store" in out, out
    assert not proj.exists("build")


def test_an_input_in_pipemakes_own_folder_is_refused(project: Callable[..., Proj]) -> None:
    proj = project(COUNT.replace("{d: data}", "{d: .pipemake/runs}"), {".pipemake/runs/a": "a"})
    out = proj.cli("build", code=2).output
    assert "input 'd' (.pipemake/runs) overlaps pipemake's own folder" in out, out


# -- --lock-timeout ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "nan", "-inf", "", "abc", "NaN"])
@pytest.mark.parametrize("command", [["build"], ["build", "-n"], ["clean"], ["cache", "gc"]])
def test_lock_timeout_that_says_no_duration_is_a_usage_error(
    project: Callable[..., Proj], command: list[str], value: str
) -> None:
    proj = project(COUNT, {"data/a.txt": "a\n"})
    out = proj.cli(*command, "--lock-timeout", value, code=2).output
    assert "--lock-timeout must be a number of seconds, 0 or more" in out, out
    assert repr(value) in out and TRACEBACK not in out
    assert not proj.exists("build")


def test_lock_timeout_inf_waits_as_without_the_option(project: Callable[..., Proj]) -> None:
    proj = project(COUNT, {"data/a.txt": "a\n"})
    proj.cli("build", "--lock-timeout", "inf")
    assert proj.read("build/n.txt").strip() == "1"
    proj.cli("build", "--lock-timeout", "0")
