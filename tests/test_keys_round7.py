"""A stage's key holds, of each upstream stage's outputs, only those it reads whole: a change
of another output of that stage, or of a file beside the one it reads inside that stage's
folder (hashed as its own input), does not rerun it, as DVC, whose dependencies are files,
would not. Keys stay the ones they were where a stage reads all of an upstream's outputs
whole, lists it in ``depends_on`` or uses one of its computed values, so a project built
before stays up to date."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import TRACEBACK, Proj, counted

Make = Callable[..., Proj]

#: a pipeline of every way of reading an upstream stage whose keys must not move, and of
#: the two ways (``only_x``, ``sub``) whose keys changed
PINNED = """
name: pinned
stages:
  - id: a
    type: python
    version: "1"
    config:
      function: "k7mk:make"
      inputs: {i: data/in.txt}
      outputs: {x: build/a/x.txt, y: build/a/y.txt}
  - id: both
    type: shell
    config:
      cmd: "cat {inputs.x} {inputs.y} > {outputs.o}"
      inputs: {x: "{a.x}", y: "{a.y}"}
      outputs: {o: build/both.txt}
  - id: after
    type: shell
    depends_on: [a]
    config:
      cmd: "cat {inputs.x} > {outputs.o}"
      inputs: {x: "{a.x}"}
      outputs: {o: build/after.txt}
  - id: value
    type: shell
    config:
      cmd: "echo {a.n} | cat - {inputs.x} > {outputs.o}"
      inputs: {x: "{a.x}"}
      outputs: {o: build/value.txt}
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {outputs.d}/sub; cp {inputs.a} {outputs.d}/sub/a; cp {inputs.b} {outputs.d}/b"
      inputs: {a: data/a, b: data/b}
      outputs: {d: build/d}
  - id: whole
    type: shell
    config:
      cmd: "cat {inputs.d}/sub/a > {outputs.o}"
      inputs: {d: "{mk.d}"}
      outputs: {o: build/whole.txt}
  - id: literal
    type: shell
    config:
      cmd: "cat {inputs.d}/b > {outputs.o}"
      inputs: {d: build/d}
      outputs: {o: build/literal.txt}
  - id: in_cmd
    type: shell
    config:
      cmd: "cat {mk.d}/sub/a > {outputs.o}"
      inputs: {s: data/in.txt}
      outputs: {o: build/in_cmd.txt}
  - id: one
    type: shell
    config:
      cmd: "cat {inputs.s} > {outputs.o}"
      inputs: {s: data/a}
      outputs: {o: build/one.txt}
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "cat {inputs.extra} {inputs.src} > {outputs.o}/{item.name}"
      inputs: {src: "{mk.d}", extra: "{one.o}"}
      outputs: {o: build/each}
  - id: only_x
    type: shell
    config:
      cmd: "cat {inputs.x} > {outputs.o}"
      inputs: {x: "{a.x}"}
      outputs: {o: build/only_x.txt}
  - id: sub
    type: shell
    config:
      cmd: "cat {inputs.s} > {outputs.o}"
      inputs: {s: "{mk.d}/sub/a"}
      outputs: {o: build/sub.txt}
"""

MAKE_PY = """import pathlib


def make(ctx):
    src = pathlib.Path(ctx.inputs["i"]).read_text()
    pathlib.Path(ctx.outputs["x"]).write_text("x:" + src)
    pathlib.Path(ctx.outputs["y"]).write_text("y:" + src)
    return {"n": len(src)}
"""

#: the keys the build gave PINNED before a key held only the outputs a stage reads whole
KEYS_BEFORE = {
    "a": "68ba98e83c4aae9e42f53498918cffd9",
    "after": "74744f8dd106593002a4bb1e6cb52fd2",
    "both": "632a559483e850699319ff04412e2ec2",
    "each": "94cfa36b0470af94398b9d4421b68394",
    "in_cmd": "a694852fd3d55fdfd34cb1f8d8b29b7b",
    "literal": "8d570d36fb17ad2443222dcc26918696",
    "mk": "a0731173094111aa77bcd4d8c1c7d18e",
    "one": "8f14bbc6c0c0ad97d2942ccfecda4488",
    "value": "d715db14e50ff8a954e72790c4408cb0",
    "whole": "a3a481eb8c2fbeda909e6451472c6d3a",
}
#: the keys of the stages reading a proper part of an upstream's outputs, pinned so the
#: format cannot slip by (before: ``only_x`` 74744f8d…, as ``after``; ``sub`` 6f5fa6cf…,
#: so each reruns once after the upgrade)
KEYS_NARROWED = {
    "only_x": "da19867ea656c00387066628a35d849c",
    "sub": "118bd9fc27565b4ddf0904899530cf36",
}


def _keys(proj: Proj) -> dict[str, str]:
    lock = json.loads(proj.read("pipemake.lock"))
    return {sid: section["key"] for sid, section in lock["stages"].items()}


def test_keys_of_stages_reading_all_or_by_order_or_value_are_the_ones_before(
    project: Make,
) -> None:
    proj = project(
        PINNED,
        {"k7mk.py": MAKE_PY, "data/in.txt": "hello\n",
         "data/a": "A\n", "data/b": "B\n"},
    )  # fmt: skip
    proj.cli("build", "--no-progress")
    assert _keys(proj) == {**KEYS_BEFORE, **KEYS_NARROWED}


TWO_OUTPUTS = f"""
name: t
stages:
  - id: w
    type: shell
    config:
      cmd: "cp {{inputs.p}} {{outputs.x}}; cp {{inputs.q}} {{outputs.y}}"
      inputs: {{p: data/p, q: data/q}}
      outputs: {{x: build/x.txt, y: build/y.txt}}
  - id: reads_x
    type: shell
    config:
      cmd: "{counted("reads_x", "cat {inputs.x} > {outputs.o}")}"
      inputs: {{x: "{{w.x}}"}}
      outputs: {{o: build/reads_x.txt}}
  - id: ordered
    type: shell
    depends_on: [w]
    config:
      cmd: "{counted("ordered", "cat {inputs.x} > {outputs.o}")}"
      inputs: {{x: "{{w.x}}"}}
      outputs: {{o: build/ordered.txt}}
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "{counted("each", "cat {inputs.x} {inputs.src} > {outputs.o}/{item.name}")}"
      inputs: {{src: data/items, x: "{{w.x}}"}}
      outputs: {{o: build/each}}
"""


def test_a_change_of_an_output_a_stage_does_not_read_keeps_it(project: Make) -> None:
    proj = project(
        TWO_OUTPUTS,
        {"data/p": "p\n", "data/q": "q\n", "data/items/i1": "1\n", "data/items/i2": "2\n"},
    )
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"each": 2, "ordered": 1, "reads_x": 1}
    proj.write("data/q", "q2\n")
    dry = proj.cli("dry-run").output
    assert "w: run: input data/q changed" in dry and "reads_x: maybe: upstream w will run" in dry
    out = proj.cli("build", "--no-progress").output
    assert "reads_x: up to date" in out and "each: up to date" in out, out
    # depends_on asks for the stage's whole order: every output counts, as before
    assert "ordered: running (upstream w output changed)" in out, out
    assert proj.run_counts() == {"each": 2, "ordered": 2, "reads_x": 1}
    proj.write("data/p", "p2\n")
    out = proj.cli("build", "--no-progress").output
    assert "reads_x: running (input build/x.txt changed; upstream w output changed)" in out
    assert proj.read("build/reads_x.txt") == "p2\n" and proj.read("build/each/i1") == "p2\n1\n"
    assert proj.run_counts() == {"each": 4, "ordered": 3, "reads_x": 2}
    # back to the first p: restored by key, nothing runs
    proj.write("data/p", "p\n")
    out = proj.cli("build", "--no-progress").output
    assert "reads_x: restored from the store" in out, out
    assert proj.run_counts() == {"each": 4, "ordered": 3, "reads_x": 2}
    assert proj.read("build/reads_x.txt") == "p\n"


def test_dropping_or_adding_an_output_a_stage_does_not_read_keeps_it(project: Make) -> None:
    proj = project(TWO_OUTPUTS, {"data/p": "p\n", "data/q": "q\n", "data/items/i1": "1\n"})
    proj.cli("build", "--no-progress")
    proj.edit("pipemake.yaml", "cp {inputs.q} {outputs.y}", "true")
    proj.edit("pipemake.yaml", "x: build/x.txt, y: build/y.txt", "x: build/x.txt")
    out = proj.cli("build", "--no-progress").output
    assert "w: running (" in out and "declared outputs changed)" in out, out
    assert "reads_x: up to date" in out and "each: up to date" in out, out
    assert proj.run_counts() == {"each": 1, "ordered": 2, "reads_x": 1}
    proj.edit("pipemake.yaml", "x: build/x.txt}", "x: build/x.txt, z: build/z.txt}")
    proj.edit("pipemake.yaml", "{outputs.x}; true", "{outputs.x}; echo z > {outputs.z}")
    out = proj.cli("build", "--no-progress").output
    assert "reads_x: up to date" in out and proj.read("build/z.txt") == "z\n", out
    assert proj.run_counts() == {"each": 1, "ordered": 3, "reads_x": 1}


FOLDER = f"""
name: t
stages:
  - id: reader
    type: shell
    config:
      cmd: "{counted("reader", "cat {inputs.s} > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      outputs: {{o: build/reader.txt}}
  - id: literal
    type: shell
    config:
      cmd: "{counted("literal", "cat {inputs.s}/a > {outputs.o}")}"
      inputs: {{s: build/d/sub}}
      outputs: {{o: build/literal.txt}}
  - id: in_cmd
    type: shell
    config:
      cmd: "{counted("in_cmd", "cat {inputs.s} {mk.d}/b > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      outputs: {{o: build/in_cmd.txt}}
  - id: whole
    type: shell
    config:
      cmd: "{counted("whole", "cat {inputs.d}/sub/a > {outputs.o}")}"
      inputs: {{d: "{{mk.d}}"}}
      outputs: {{o: build/whole.txt}}
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {{outputs.d}}/sub; cp {{inputs.a}} {{outputs.d}}/sub/a; cp {{inputs.b}} {{outputs.d}}/b"
      inputs: {{a: data/a, b: data/b}}
      outputs: {{d: build/d}}
"""


def test_a_sibling_change_in_a_folder_keeps_a_stage_reading_one_file_of_it(project: Make) -> None:
    proj = project(FOLDER, {"data/a": "A\n", "data/b": "B\n"})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"in_cmd": 1, "literal": 1, "reader": 1, "whole": 1}
    proj.write("data/b", "B2\n")
    dry = proj.cli("dry-run").output
    # not known before mk runs: maybe, never "up to date"
    for sid in ("reader", "literal", "in_cmd", "whole"):
        assert f"{sid}: maybe: upstream mk will run" in dry, dry
    out = proj.cli("build", "--no-progress").output
    assert "reader: up to date" in out and "literal: up to date" in out, out
    # a path used in cmd is not an input the key hashes: the whole folder counts
    assert "in_cmd: running (upstream mk output changed)" in out, out
    assert "whole: running (input build/d changed; upstream mk output changed)" in out
    assert proj.run_counts() == {"in_cmd": 2, "literal": 1, "reader": 1, "whole": 2}
    assert proj.read("build/in_cmd.txt") == "A\nB2\n"
    status = proj.cli("status").output
    assert "reader: up to date" in status, status
    proj.write("data/a", "A2\n")
    out = proj.cli("build", "--no-progress").output
    assert "reader: running (input build/d/sub/a changed)" in out, out
    assert "literal: running (input build/d/sub changed)" in out, out
    assert proj.read("build/reader.txt") == "A2\n" and proj.read("build/literal.txt") == "A2\n"
    assert proj.run_counts() == {"in_cmd": 3, "literal": 2, "reader": 2, "whole": 3}
    assert TRACEBACK not in out


def test_a_stage_reading_one_file_of_a_folder_restores_and_cuts_off(project: Make) -> None:
    proj = project(FOLDER, {"data/a": "A\n", "data/b": "B\n"})
    proj.cli("build", "--no-progress")
    proj.path("build/reader.txt").unlink()
    proj.write("data/b", "B2\n")
    dry = json.loads(proj.cli("dry-run", "--json").output)
    said = {d["stage"]: d for d in dry}
    assert said["reader"]["decision"] == "maybe", said["reader"]
    out = proj.cli("build", "--no-progress").output
    assert "reader: restored from the store (outputs missing)" in out, out
    assert proj.read("build/reader.txt") == "A\n"
    assert proj.runs("reader") == 1
    # mk reruns with the same bytes: it stops there (early cutoff), for both kinds of reader
    proj.cli("build", "--no-progress", "--force-stage", "mk")
    assert proj.run_counts() == {"in_cmd": 2, "literal": 1, "reader": 1, "whole": 2}
    dry = proj.cli("dry-run").output
    assert all(line.endswith("up to date") for line in dry.strip().splitlines()), dry


def test_a_foreach_stage_reading_a_file_of_an_upstream_folder_keeps_its_items(
    project: Make,
) -> None:
    proj = project(
        f"""
        name: t
        stages:
          - id: mk
            type: shell
            config:
              cmd: "mkdir -p {{outputs.d}}; cp {{inputs.a}} {{outputs.d}}/a; cp {{inputs.b}} {{outputs.d}}/b"
              inputs: {{a: data/a, b: data/b}}
              outputs: {{d: build/d}}
          - id: each
            type: shell
            foreach: src
            config:
              cmd: "{counted("each", "cat {inputs.a} {inputs.src} > {outputs.o}/{item.name}")}"
              inputs: {{src: data/items, a: "{{mk.d}}/a"}}
              outputs: {{o: build/each}}
        """,
        {"data/a": "A\n", "data/b": "B\n", "data/items/i1": "1\n", "data/items/i2": "2\n"},
    )
    proj.cli("build", "--no-progress")
    proj.write("data/b", "B2\n")
    out = proj.cli("build", "--no-progress").output
    assert "each: up to date" in out and proj.runs("each") == 2, out
    proj.write("data/a", "A2\n")
    proj.cli("build", "--no-progress")
    assert proj.runs("each") == 4 and proj.read("build/each/i2") == "A2\n2\n"


SPLIT_PY = """import pathlib


def split(ctx):
    p = pathlib.Path(ctx.inputs["p"]).read_text()
    pathlib.Path(ctx.outputs["x"]).write_text(p)
    pathlib.Path(ctx.outputs["y"]).write_text(pathlib.Path(ctx.inputs["q"]).read_text())
    return {"n": len(p)}
"""


def test_a_stage_using_a_computed_value_counts_every_output(project: Make) -> None:
    proj = project(
        f"""
        name: t
        stages:
          - id: w
            type: python
            config:
              function: "k7split:split"
              inputs: {{p: data/p, q: data/q}}
              outputs: {{x: build/x.txt, y: build/y.txt}}
          - id: value
            type: shell
            config:
              cmd: "{counted("value", "echo {w.n} | cat - {inputs.x} > {outputs.o}")}"
              inputs: {{x: "{{w.x}}"}}
              outputs: {{o: build/value.txt}}
          - id: plain
            type: shell
            config:
              cmd: "{counted("plain", "cat {inputs.x} > {outputs.o}")}"
              inputs: {{x: "{{w.x}}"}}
              outputs: {{o: build/plain.txt}}
        """,
        {"k7split.py": SPLIT_PY, "data/p": "p\n", "data/q": "q\n"},
    )
    proj.cli("build", "--no-progress")
    proj.write("data/q", "q2\n")
    out = proj.cli("build", "--no-progress").output
    # a path or name a value gives may lead anywhere in the stage's outputs
    assert "value: running (upstream w output changed)" in out, out
    assert "plain: up to date" in out, out
    assert proj.run_counts() == {"plain": 1, "value": 2}
    proj.write("data/p", "pp\n")
    out = proj.cli("build", "--no-progress").output
    assert "plain: running (input build/x.txt changed; upstream w output and computed" in out
    assert proj.read("build/value.txt") == "3\npp\n"


PATHS_WRITTEN_OUT = f"""
name: t
vars: {{sib: build/d/b}}
stages:
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {{outputs.d}}/sub; cp {{inputs.a}} {{outputs.d}}/sub/a; cp {{inputs.b}} {{outputs.d}}/b"
      inputs: {{a: data/a, b: data/b}}
      outputs: {{d: build/d}}
  - id: by_var
    type: shell
    config:
      cmd: "{counted("by_var", "cat {inputs.s} {vars.sib} > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      outputs: {{o: build/by_var.txt}}
  - id: by_env
    type: shell
    config:
      cmd: "{counted("by_env", "cat {inputs.s} $CFG > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      env: {{CFG: build/d/b}}
      outputs: {{o: build/by_env.txt}}
  - id: only_sub
    type: shell
    config:
      cmd: "{counted("only_sub", "cat {inputs.s} > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      outputs: {{o: build/only_sub.txt}}
"""


def test_a_path_into_an_upstream_output_written_out_in_cmd_env_or_a_variable_counts(
    project: Make,
) -> None:
    """A stage reading a file of an upstream folder through its cmd, an env value or a
    variable (not an input port) reruns when that file changes; one that reads only its
    input inside the folder still does not."""
    proj = project(PATHS_WRITTEN_OUT, {"data/a": "A\n", "data/b": "B\n"})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"by_var": 1, "by_env": 1, "only_sub": 1}
    proj.write("data/b", "B2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/by_var.txt") == "A\nB2\n", out
    assert proj.read("build/by_env.txt") == "A\nB2\n", out
    assert "only_sub: up to date" in out, out
    assert proj.run_counts() == {"by_var": 2, "by_env": 2, "only_sub": 1}


FED_AND_CONFIG = f"""
name: t
stages:
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {{outputs.d}}; cp {{inputs.src}}/* {{outputs.d}}/"
      inputs: {{src: data}}
      outputs: {{d: build/d}}
  - id: each
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      cmd: "{counted("each", "cat {mk.d}/b.cfg {inputs.src} > {outputs.o}/{item.name}")}"
      inputs: {{src: "{{mk.d}}"}}
      outputs: {{o: build/each}}
"""


def test_a_foreach_stage_reading_a_file_of_its_items_folder_in_its_cmd_reruns_on_it(
    project: Make,
) -> None:
    """Items from an upstream folder whose cmd also reads another file of that folder: a
    change of that file reruns every item (each reads it); a change of one item's file
    still reruns that item alone."""
    proj = project(
        FED_AND_CONFIG, {"data/b.cfg": "c1\n", "data/i1.txt": "1\n", "data/i2.txt": "2\n"}
    )
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"each": 2}
    proj.write("data/b.cfg", "c2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/each/i1.txt") == "c2\n1\n", out
    assert proj.run_counts() == {"each": 4}
    proj.write("data/i2.txt", "22\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/each/i2.txt") == "c2\n22\n", out
    assert proj.run_counts() == {"each": 5}
    assert TRACEBACK not in out


SPELLINGS = f"""
name: t
vars: {{base: "build/"}}
params: p.json
stages:
  - id: mk
    type: shell
    config:
      cmd: "mkdir -p {{outputs.d}}/sub; cp {{inputs.a}} {{outputs.d}}/sub/a; cp {{inputs.b}} {{outputs.d}}/b"
      inputs: {{a: data/a, b: data/b}}
      outputs: {{d: build/d}}
  - id: dotdot
    type: shell
    config:
      cmd: "{counted("dotdot", "cat {inputs.s}/../b > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub"}}
      outputs: {{o: build/dotdot.txt}}
  - id: slashes
    type: shell
    config:
      cmd: "{counted("slashes", "cat {inputs.s} {vars.base}/d/b > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      outputs: {{o: build/slashes.txt}}
  - id: glued
    type: shell
    config:
      cmd: "{counted("glued", "grep -h -fbuild/d/b {inputs.s} > {outputs.o}; true")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      outputs: {{o: build/glued.txt}}
  - id: keyed
    type: shell
    config:
      cmd: "{counted("keyed", "cat {inputs.s} > {outputs.o}")}"
      inputs: {{s: "{{mk.d}}/sub/a"}}
      env: {{W: "{{params.weights}}"}}
      outputs: {{o: build/keyed.txt}}
"""


def test_every_spelling_of_a_path_into_an_upstream_folder_counts(project: Make) -> None:
    """``{inputs.s}/../b``, ``build//d/b`` (a variable ending in ``/``), a path glued to
    a one-letter option and a path that is a params mapping's key all name mk's folder:
    a change of ``b`` reruns each stage."""
    proj = project(
        SPELLINGS,
        {"data/a": "A\n", "data/b": "B\n", "p.json": '{"weights": {"build/d/b": 2}}'},
    )
    proj.cli("build", "--no-progress")
    first = proj.run_counts()
    proj.write("data/b", "B2\n")
    out = proj.cli("build", "--no-progress").output
    assert TRACEBACK not in out
    assert proj.run_counts() == {k: v + 1 for k, v in first.items()}, out


PLACED = f"""
name: t
stages:
  - id: w1
    type: shell
    config:
      cmd: "mkdir -p out; cp {{inputs.i}} {{outputs.o}}"
      inputs: {{i: data/i1.txt}}
      outputs: {{o: out/i1.txt}}
  - id: w2
    type: shell
    config:
      cmd: "mkdir -p out build; cp {{inputs.c}} {{outputs.cfg}}; cp {{inputs.c}} {{outputs.extra}}"
      inputs: {{c: data/cfg}}
      outputs: {{cfg: out/cfg, extra: build/extra}}
  - id: rd
    type: shell
    config:
      cmd: "{counted("rd", "ls {inputs.d} > {outputs.o}; cat build/extra >> {outputs.o}")}"
      inputs: {{d: out}}
      outputs: {{o: build/rd.txt}}
  - id: each
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      cmd: "{counted("each", "cat out/cfg {inputs.src} > {outputs.o}/{item.name}")}"
      inputs: {{src: out}}
      outputs: {{o: build/each}}
  - id: src_each
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      cmd: "{counted("src_each", "cat data/cfg data/{item.relpath} > {outputs.o}/{item.name}")}"
      inputs: {{src: data}}
      outputs: {{o: build/src_each}}
"""


def test_a_stage_reading_a_folder_others_write_into_counts_what_its_cmd_names(
    project: Make,
) -> None:
    """A stage reading ``out/`` (which ``w2`` writes into) whose cmd also reads w2's other
    output, and foreach stages over ``out/`` or a source folder whose cmd reads a file of
    that folder: a change of that file reruns them (every item); a change of one item's
    file reruns that item alone."""
    proj = project(PLACED, {"data/i1.txt": "1\n", "data/i2.txt": "2\n", "data/cfg": "c1\n"})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"rd": 1, "each": 1, "src_each": 2}
    proj.write("data/cfg", "c2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/rd.txt").endswith("c2\n"), out
    assert proj.read("build/each/i1.txt") == "c2\n1\n", out
    assert proj.read("build/src_each/i1.txt") == "c2\n1\n", out
    assert proj.run_counts() == {"rd": 2, "each": 2, "src_each": 4}
    proj.write("data/i2.txt", "22\n")  # one item of src_each: it alone reruns
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/src_each/i2.txt") == "c2\n22\n", out
    assert proj.run_counts() == {"rd": 2, "each": 2, "src_each": 5}
