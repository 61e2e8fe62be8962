"""Bounded, clear failure: hostile or unlucky input ends in an error that says what and
where, never in a hang, a traceback or a lost summary (issue 13, findings 11-15)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj

from pipemake.yamlload import YamlError, YamlTooBig, load_yaml

LAUGHS = """\
name: bomb
vars:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
stages:
  - id: s
    type: shell
    config: {cmd: "echo {vars.i} > {outputs.o}", outputs: {o: out.txt}}
"""


# finding 11: YAML alias bombs --------------------------------------------------------------


def test_billion_laughs_is_refused_naming_file_and_line(project: Callable[..., Proj]) -> None:
    proj = project(LAUGHS)
    assert len(LAUGHS) < 600
    proc = proj.sub("validate", code=2, timeout=30)
    out = proc.stdout + proc.stderr
    assert TRACEBACK not in out
    assert "pipemake.yaml:8" in out  # `f:`, the first line that expands past the bound
    assert "alias" in out
    assert not proj.exists(".pipemake/plan.json")


def test_merge_maps_and_mapping_key_bombs_are_refused() -> None:
    merges = "a: &a {x: 1, y: 2, z: 3}\n" + "".join(
        f"{c}: &{c} {{<<: [{', '.join([f'*{p}'] * 9)}]}}\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(YamlTooBig):
        load_yaml(merges)
    long_string = "a: &a " + "x" * 200_000 + "\nb: [" + ", ".join(["*a"] * 500) + "]\n"
    with pytest.raises(YamlTooBig) as info:
        load_yaml(long_string)
    assert info.value.line == 2


def test_ordinary_anchors_and_merges_still_load() -> None:
    doc = load_yaml(
        "defaults: &d {retries: 1, timeout: 10}\n"
        "stages:\n"
        "  - {id: a, <<: *d, timeout: 20}\n"
        "  - {id: b, <<: [*d, {retries: 5, x: 1}]}\n"
        "  - {id: c, env: &e {A: '1'}, more: *e}\n"
    )
    a, b, c = doc["stages"]
    assert a == {"retries": 1, "timeout": 20, "id": "a"}  # a written key overrides a merge
    assert b == {"retries": 1, "timeout": 10, "x": 1, "id": "b"}  # the first map wins
    assert c["more"] == {"A": "1"}
    with pytest.raises(YamlError, match="duplicate key 'timeout'"):
        load_yaml("d: &d {timeout: 1}\ns: {<<: *d, timeout: 2, timeout: 3}\n")
    with pytest.raises(YamlError, match="recursive"):
        load_yaml("a: &a [1, *a]\n")


def test_a_pipeline_with_merged_defaults_builds(project: Callable[..., Proj]) -> None:
    proj = project(
        """
        name: merged
        x-defaults: &shell
          type: shell
          retries: 1
        stages:
          - <<: *shell
            id: one
            config: {cmd: "echo 1 > {outputs.o}", outputs: {o: one.txt}}
          - <<: *shell
            id: two
            retries: 0
            config: {cmd: "cat {inputs.i} > {outputs.o}", inputs: {i: "{one.o}"},
                     outputs: {o: two.txt}}
        """.replace("x-defaults", "vars")
    )
    proj.cli("build")
    assert proj.read("two.txt") == "1\n"


# finding 14: the project root never shadows the standard library ----------------------------

SHADOWED = """
name: shadow
stages:
  - id: py
    type: python
    config:
      function: steps.mod:run
      outputs: {o: build/out.json}
  - id: sh
    type: shell
    config:
      cmd: "cp {inputs.i} {outputs.o}"
      inputs: {i: "{py.o}"}
      outputs: {o: build/copy.json}
"""
STEP = """\
import copy
import json
import random


def run(ctx):
    with open(ctx.outputs["o"], "w") as fh:
        json.dump(copy.deepcopy({"n": random.Random(1).randint(1, 9)}), fh)
    return {"n": 1}
"""


def test_stdlib_names_in_the_project_root_do_not_break_python_stages(
    project: Callable[..., Proj],
) -> None:
    boom = "raise RuntimeError('the project file {} was imported instead of the stdlib')\n"
    files = {name: boom.format(name) for name in ("copy.py", "json.py", "random.py", "queue.py")}
    files |= {"steps/__init__.py": "", "steps/mod.py": STEP}
    proj = project(SHADOWED, files)
    proc = proj.sub("build", "-j", "2")
    assert "imported instead" not in proc.stdout + proc.stderr
    assert proj.read("build/copy.json").startswith('{"n": ')
    proj.sub("dry-run", "--check")  # up to date, and the code hash found steps/mod.py
