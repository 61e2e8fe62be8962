"""Round 7 fixes: a removed current folder, whole-reference ``env`` values that are not
strings, and ``{item.*}`` outside a ``foreach`` stage, all said before anything runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, _env, refused_before_running

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


ENV = """
name: t
params: params.yaml
stages:
  - id: m
    type: shell
    config:
      cmd: "printf '%s\\\\n' \\"$L\\" \\"$N\\" \\"$M\\" \\"$B\\" \\"$Z\\" \\"$S\\" > {outputs.o}"
      env: {L: "{params.models}", N: "{params.n}", M: "{params.m}", B: "{params.b}",
            Z: "{params.z}", S: "{params.s}"}
      outputs: {o: build/m.txt}
"""

PARAMS = 'models: [a, "x {y} \\"q\\""]\nn: 3\nm: {k: [1.5, null]}\nb: true\nz:\ns: "a{b}"\n'


def test_env_whole_param_that_is_not_a_string_is_its_json(project: Callable[..., Proj]) -> None:
    proj = project(ENV, {"params.yaml": PARAMS})
    proj.cli("build", "--no-progress")
    lines = proj.read("build/m.txt").splitlines()
    assert lines == ['["a", "x {y} \\"q\\""]', "3", '{"k": [1.5, null]}', "true", "null", "a{b}"]
    # a changed list is a changed key: the stage runs again
    proj.write("params.yaml", PARAMS.replace("[a,", "[c,"))
    proj.cli("build", "--no-progress")
    assert proj.read("build/m.txt").startswith('["c", ')


def test_env_literal_values_are_json_too(project: Callable[..., Proj]) -> None:
    text = ONE.replace(
        'cmd: "cp {inputs.a}', 'env: {T: true, L: [1, two]}\n      cmd: "echo $T $L >'
    )
    proj = project(text, {"data/a.txt": "a\n"})
    proj.cli("build", "--no-progress")
    assert proj.read("build/a.txt") == 'true [1, "two"]\n'


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ('{N: ["{outputs.o}", b]}', ["env N: {outputs.o} inside a list", 'N: "{outputs.o}"']),
        ("{N: !!binary aGk=}", ["env N: bytes", "quote it"]),
        ("hello", ["'env' must map variable names to values, got a string"]),
    ],
)
def test_env_value_with_no_text_names_the_variable(
    project: Callable[..., Proj], env: str, words: list[str]
) -> None:
    proj = project(ONE.replace('cmd: "cp', f'env: {env}\n      cmd: "cp'), {"data/a.txt": "a\n"})
    refused_before_running(proj, 6, "mk", words)


ITEM = """
name: t
stages:
  - id: s
    type: shell
    config:
      cmd: {cmd}
      inputs: {{src: data/items}}
      outputs: {{o: build/o}}
"""


@pytest.mark.parametrize(
    ("cmd", "where", "ref"),
    [
        ('["mkdir -p {outputs.o}", "echo {item.name} > {outputs.o}/x"]', "cmd[1]", "item.name"),
        ('"mkdir -p {outputs.o}; echo {item.stem}"', "cmd", "item.stem"),
    ],
)
def test_item_without_foreach_is_refused_before_running(
    project: Callable[..., Proj], cmd: str, where: str, ref: str
) -> None:
    proj = project(ITEM.format(cmd=cmd), {"data/items/a": "1\n"})
    words = [f"{{{ref}}} in {where}", "add foreach: src", f"or remove {{{ref}}}"]
    refused_before_running(proj, 6, "s", words)
    assert "only defined in" not in proj.cli("dry-run", code=2).output  # not the run-time one


def test_item_in_env_without_foreach_names_the_variable(project: Callable[..., Proj]) -> None:
    text = ITEM.format(cmd='"mkdir -p {outputs.o}"').replace(
        "      inputs:", '      env: {NAME: "{item.name}"}\n      inputs:')  # fmt: skip
    proj = project(text, {"data/items/a": "1\n"})
    refused_before_running(proj, 7, "s", ["{item.name} in env NAME", "add foreach: src"])


def test_item_with_foreach_still_builds(project: Callable[..., Proj]) -> None:
    text = ITEM.format(cmd='"mkdir -p {outputs.o}; echo {item.name} > {outputs.o}/{item.name}"')
    proj = project(text.replace("    type: shell\n", "    type: shell\n    foreach: src\n"),
                   {"data/items/a": "1\n"})  # fmt: skip
    proj.cli("build", "--no-progress")
    assert proj.read("build/o/a") == "a\n"
