"""A stage's key holds every file its params read however they spell it: a foreach item's
sidecar named through the item (``data/{item.stem}.json``, ``{mk.d}/{item.stem}.json``,
``{inputs.src}.meta``, ``$(dirname {inputs.src})/common.cfg``) is in that item's key, a
folder or glob holding upstream outputs (``build/d/*.txt``, a param ``root: build/d``)
counts every output in it, and a path is read as normalized (``{inputs.x}/../y.txt``)."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import TRACEBACK, Proj, counted

Make = Callable[..., Proj]


def _keys(proj: Proj) -> dict[str, str]:
    lock = json.loads(proj.read("pipemake.lock"))
    return {sid: section["key"] for sid, section in lock["stages"].items()}


SIDECAR = f"""
name: t
stages:
  - id: pair
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "{counted("pair", "cat {inputs.src} data/{item.stem}.json > {outputs.o}/{item.stem}")}"
"""


def test_a_sidecar_an_item_names_through_itself_in_a_source_folder_reruns_that_item(
    project: Make,
) -> None:
    proj = project(
        SIDECAR,
        {"data/a.txt": "A\n", "data/b.txt": "B\n", "data/a.json": "a1\n", "data/b.json": "b1\n"},
    )
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"pair": 2}
    proj.write("data/a.json", "a2\n")
    assert "pair: run: 1 of 2 items" in proj.cli("dry-run").output
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/a") == "A\na2\n", out
    assert proj.run_counts() == {"pair": 3}  # item a alone
    proj.write("data/b.json", "b2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/b") == "B\nb2\n", out
    assert proj.run_counts() == {"pair": 4}
    assert "pair: up to date" in proj.cli("build", "--no-progress").output
    assert TRACEBACK not in out


UPSTREAM_SIDECAR = f"""
name: t
stages:
  - id: mk
    type: shell
    config:
      inputs: {{ja: src/ja}}
      outputs: {{d: build/d}}
      cmd: "mkdir -p {{outputs.d}}; echo A > {{outputs.d}}/a.txt; echo B > {{outputs.d}}/b.txt; cp {{inputs.ja}} {{outputs.d}}/a.json; echo b1 > {{outputs.d}}/b.json"
  - id: pair
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: "{{mk.d}}"}}
      outputs: {{o: build/o}}
      cmd: "{counted("pair", "cat {inputs.src} {mk.d}/{item.stem}.json > {outputs.o}/{item.stem}")}"
"""


def test_a_sidecar_an_item_names_through_itself_in_an_upstream_folder_reruns_that_item(
    project: Make,
) -> None:
    proj = project(UPSTREAM_SIDECAR, {"src/ja": "a1\n"})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"pair": 2}
    proj.write("src/ja", "a2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/a") == "A\na2\n", out
    assert proj.run_counts() == {"pair": 3}, out  # item a alone
    assert TRACEBACK not in out


ITEM_SPELLINGS = f"""
name: t
stages:
  - id: e
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: '{counted("e", 'cat {inputs.src} {inputs.src}.meta "$(dirname {inputs.src})/common.cfg" > {outputs.o}/{item.name}')}'
"""


def test_a_sidecar_spelled_from_the_item_path_or_its_folder_counts(project: Make) -> None:
    """``{inputs.src}.meta`` is one item's file; ``$(dirname {inputs.src})/common.cfg`` is
    every item's."""
    proj = project(
        ITEM_SPELLINGS,
        {"data/a.txt": "A\n", "data/b.txt": "B\n", "data/a.txt.meta": "m1\n",
         "data/b.txt.meta": "m1\n", "data/common.cfg": "c1\n"},
    )  # fmt: skip
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"e": 2}
    proj.write("data/a.txt.meta", "m2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/a.txt") == "A\nm2\nc1\n", out
    assert proj.run_counts() == {"e": 3}, out
    proj.write("data/common.cfg", "c2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/b.txt") == "B\nm1\nc2\n", out
    assert proj.run_counts() == {"e": 5}, out
    assert TRACEBACK not in out


READ_PY = """import pathlib


def run(ctx):
    root = pathlib.Path(ctx.params["root"])
    text = "".join(p.read_text() for p in sorted(root.iterdir()))
    ctx.outputs["o"].write_text(text + pathlib.Path(ctx.params["other"]).read_text())
"""

FOLDERS = f"""
name: t
stages:
  - id: mk
    type: shell
    config:
      inputs: {{y: src/y}}
      outputs: {{x: build/d/x.txt, y: build/d/y.txt, f: build/f, g: build/g.txt}}
      cmd: "echo X > {{outputs.x}}; cp {{inputs.y}} {{outputs.y}}; mkdir -p {{outputs.f}}; echo F > {{outputs.f}}/f; cp {{inputs.y}} {{outputs.g}}"
  - id: glob
    type: shell
    config:
      inputs: {{x: "{{mk.x}}"}}
      outputs: {{o: build/glob.txt}}
      cmd: "{counted("glob", "cat build/d/*.txt > {outputs.o}")}"
  - id: dotdot
    type: shell
    config:
      inputs: {{f: "{{mk.f}}"}}
      outputs: {{o: build/dotdot.txt}}
      cmd: "{counted("dotdot", "cat {inputs.f}/../g.txt > {outputs.o}")}"
  - id: py
    type: python
    config:
      function: "k8read:run"
      inputs: {{x: "{{mk.x}}"}}
      outputs: {{o: build/py.txt}}
      params: {{root: build/d, other: "{{mk.f}}/../g.txt"}}
  - id: made
    type: shell
    config:
      inputs: {{x: "{{mk.x}}"}}
      outputs: {{o: build/made/o.txt}}
      cmd: "{counted("made", "mkdir -p build/made build/d; cat {inputs.x} > {outputs.o}")}"
"""


def _folders_rebuilt(project: Make) -> tuple[Proj, str]:
    """FOLDERS built, then mk's outputs y and g changed (x and f kept) and built again."""
    proj = project(FOLDERS, {"src/y": "y1\n", "k8read.py": READ_PY})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"dotdot": 1, "glob": 1, "made": 1}
    proj.write("src/y", "y2\n")
    out = proj.cli("build", "--no-progress").output
    assert TRACEBACK not in out
    return proj, out


def test_a_glob_holding_an_upstream_output_counts_it(project: Make) -> None:
    """``cat build/d/*.txt`` reads mk's output y beside its input x."""
    proj, out = _folders_rebuilt(project)
    assert proj.read("build/glob.txt") == "X\ny2\n", out
    assert proj.run_counts()["glob"] == 2


def test_a_param_naming_a_folder_of_upstream_outputs_counts_them(project: Make) -> None:
    """A python stage's param ``root: build/d`` reads mk's outputs x and y."""
    proj, out = _folders_rebuilt(project)
    assert proj.read("build/py.txt").startswith("X\ny2\n"), out


def test_a_dotdot_path_into_an_upstream_output_counts_it(project: Make) -> None:
    """``{inputs.f}/../g.txt`` in a cmd and ``{mk.f}/../g.txt`` in a param read mk's g."""
    proj, out = _folders_rebuilt(project)
    assert proj.read("build/dotdot.txt") == "y2\n", out
    assert proj.read("build/py.txt").endswith("y2\ny2\n"), out
    assert proj.run_counts()["dotdot"] == 2


def test_a_folder_a_mkdir_makes_is_not_read(project: Make) -> None:
    """``mkdir -p build/d`` names the folder holding mk's outputs without reading it: that
    stage keeps its key and stays up to date."""
    proj = project(FOLDERS, {"src/y": "y1\n", "k8read.py": READ_PY})
    proj.cli("build", "--no-progress")
    keys = _keys(proj)
    proj.write("src/y", "y2\n")
    out = proj.cli("build", "--no-progress").output
    assert "made: up to date" in out, out
    assert proj.run_counts()["made"] == 1
    assert _keys(proj)["made"] == keys["made"]


KEPT = f"""
name: t
stages:
  - id: each
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "{counted("each", "cat {inputs.src} data/{item.relpath} > {outputs.o}/{item.stem}.out; echo {item.stem}")}"
"""


def test_an_item_naming_only_itself_keeps_its_key_and_other_files_rerun_nothing(
    project: Make,
) -> None:
    """``{inputs.src}`` and ``data/{item.relpath}`` are the item: a change of another file of
    the folder reruns no item."""
    proj = project(KEPT, {"data/a.txt": "A\n", "data/a.json": "j\n"})
    proj.cli("build", "--no-progress")
    proj.write("data/a.json", "j2\n")
    out = proj.cli("build", "--no-progress").output
    assert "each: up to date" in out, out
    assert proj.run_counts() == {"each": 1}


OTHER_OUTPUT = f"""
name: t
stages:
  - id: mk
    type: shell
    config:
      inputs: {{j: src/j}}
      outputs: {{x: build/x.txt, d: build/d}}
      cmd: "echo X > {{outputs.x}}; mkdir -p {{outputs.d}}; cp {{inputs.j}} {{outputs.d}}/a.json"
  - id: each
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data, x: "{{mk.x}}"}}
      outputs: {{o: build/o}}
      cmd: "{counted("each", "cat {inputs.src} build/d/{item.stem}.json > {outputs.o}/{item.name}")}"
"""


def test_a_path_made_from_the_item_in_another_upstream_output_counts_it(project: Make) -> None:
    """``build/d/{item.stem}.json`` written out, d an output of a stage the foreach stage
    reads another output of: a change in d reruns the items."""
    proj = project(OTHER_OUTPUT, {"src/j": "j1\n", "data/a.txt": "A\n"})
    proj.cli("build", "--no-progress")
    proj.write("src/j", "j2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/a.txt") == "A\nj2\n", out
    assert proj.run_counts() == {"each": 2}
