"""A stage's key holds every file its params read however they spell it: a foreach item's
sidecar named through the item (``data/{item.stem}.json``, ``{mk.d}/{item.stem}.json``,
``{inputs.src}.meta``, ``$(dirname {inputs.src})/common.cfg``) is in that item's key, a
folder or glob holding upstream outputs (``build/d/*.txt``, a param ``root: build/d``)
counts every output in it, and a path is read as normalized (``{inputs.x}/../y.txt``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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


# what the folder and per-item rules leave out ------------------------------------------
NOT_READ = f"""
name: t
stages:
  - id: a
    type: shell
    config:
      inputs: {{log: src/log}}
      outputs: {{x: out/a.csv, log: out/log.txt}}
      cmd: "mkdir -p out && echo a > {{outputs.x}} && cp {{inputs.log}} {{outputs.log}}"
  - id: dest
    type: shell
    config:
      inputs: {{x: "{{a.x}}"}}
      outputs: {{y: res/dest.csv}}
      cmd: "{counted("dest", "true --outdir out/; cat {inputs.x} > {outputs.y}")}"
  - id: own
    type: shell
    config:
      inputs: {{x: "{{a.x}}"}}
      outputs: {{y: out/own.csv}}
      cmd: "{counted("own", "cd out/ && cd ..; cat {inputs.x} > {outputs.y}")}"
  - id: comment
    type: shell
    config:
      inputs: {{x: "{{a.x}}"}}
      outputs: {{y: res/comment.csv}}
      cmd: "{counted("comment", "cat {inputs.x} > {outputs.y} # not out/ yet")}"
  - id: word
    type: python
    config:
      function: "k8copy:run"
      inputs: {{x: "{{a.x}}"}}
      outputs: {{y: res/word.csv}}
      params: {{kind: out}}
"""

COPY_PY = """import pathlib


def run(ctx):
    pathlib.Path("runs").mkdir(exist_ok=True)
    with open("runs/word.count", "a") as f:
        f.write("x\\n")
    ctx.outputs["y"].write_text(pathlib.Path(ctx.inputs["x"]).read_text())
"""


def test_a_folder_a_stage_writes_comments_or_names_bare_is_not_read(project: Make) -> None:
    """``--outdir out/`` (where a tool writes), ``cd out/`` where the stage writes its own
    output, ``# not out/`` (a comment) and a param ``kind: out`` (a bare word) name the
    folder holding a's outputs without reading them: when a's output log alone changes,
    those stages keep their keys and stay up to date."""
    proj = project(NOT_READ, {"src/log": "l1\n", "k8copy.py": COPY_PY})
    proj.cli("build", "--no-progress")
    runs = {"comment": 1, "dest": 1, "own": 1, "word": 1}
    assert proj.run_counts() == runs
    keys = _keys(proj)
    proj.write("src/log", "l2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.run_counts() == runs, out
    for sid in runs:
        assert f"{sid}: up to date" in out, out
        assert _keys(proj)[sid] == keys[sid], sid
    assert TRACEBACK not in out


FRAMES = f"""
name: t
stages:
  - id: a
    type: shell
    foreach: s
    config:
      inputs: {{s: src}}
      outputs: {{d: build/frames}}
      cmd: "cp {{inputs.s}} {{outputs.d}}/{{item.name}}"
  - id: b
    type: shell
    foreach: f
    config:
      inputs: {{f: "{{a.d}}"}}
      outputs: {{o: build/thumbs}}
      cmd: "{counted("b", "cat {inputs.f} > {outputs.o}/{item.name} # --tmp build/")}"
"""


def test_a_folder_holding_the_items_output_keeps_per_item_runs(project: Make) -> None:
    """``build/`` (in a comment, holding b's own output and a's folder b's items come from)
    does not put a's folder whole in b's key: one changed file reruns one item."""
    proj = project(FRAMES, {f"src/f{i}.txt": f"{i}\n" for i in range(20)})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"b": 20}
    proj.write("src/f7.txt", "changed\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/thumbs/f7.txt") == "changed\n", out
    assert proj.run_counts() == {"b": 21}, out


OTHER_IN_FOLDER = f"""
name: t
stages:
  - id: mk
    type: shell
    config:
      inputs: {{s: src, log: logsrc}}
      outputs: {{d: build/frames, log: build/log.txt}}
      cmd: "cp -r {{inputs.s}} {{outputs.d}}; cp {{inputs.log}} {{outputs.log}}"
  - id: b
    type: shell
    foreach: f
    config:
      inputs: {{f: "{{mk.d}}"}}
      outputs: {{o: res/thumbs}}
      cmd: "{counted("b", "true --cache build/; cat {inputs.f} > {outputs.o}/{item.name}")}"
"""


def test_a_folder_holding_the_items_output_counts_only_the_other_outputs(
    project: Make,
) -> None:
    """``--cache build/`` holds mk's folder b's items come from and mk's log: a changed
    frame reruns its item alone, a changed log (read through the folder) every item."""
    files = {f"src/f{i}.txt": f"{i}\n" for i in range(5)}
    proj = project(OTHER_IN_FOLDER, {**files, "logsrc": "l1\n"})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"b": 5}
    proj.write("src/f3.txt", "changed\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("res/thumbs/f3.txt") == "changed\n", out
    assert proj.run_counts() == {"b": 6}, out
    proj.write("logsrc", "l2\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.run_counts() == {"b": 11}, out


DIRNAME = f"""
name: t
stages:
  - id: p
    type: shell
    foreach: src
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "{counted("p", "(cd $(dirname {inputs.src}) && true); cat {inputs.src} > {outputs.o}/{item.name}")}"
"""


def test_the_items_folder_through_dirname_is_no_read_of_one_item(
    project: Make, monkeypatch: Any
) -> None:
    """``cd $(dirname {inputs.src})`` names the items' folder, not a file an item reads:
    one changed file reruns one item, and no item's key hashes the folder (300 items: not
    300 walks of it)."""
    from pipemake.resolve import Resolver

    hashed: list[str] = []
    real = Resolver._input_hash

    def counting(self: Resolver, stage: Any, path: str, unknown: set[str]) -> str:
        hashed.append(path)
        return real(self, stage, path, unknown)

    monkeypatch.setattr(Resolver, "_input_hash", counting)
    proj = project(DIRNAME, {f"data/f{i}.txt": f"{i}\n" for i in range(300)})
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"p": 300}
    assert hashed.count("data") <= 2, len(hashed)
    proj.write("data/f7.txt", "changed\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/f7.txt") == "changed\n", out
    assert proj.run_counts() == {"p": 301}, out


GLOB_SIDECAR = f"""
name: t
stages:
  - id: g
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "{counted("g", "cat {inputs.src} data/{item.stem}_*.json > {outputs.o}/{item.stem}")}"
"""


def test_a_glob_made_from_the_item_counts_its_files_alone(project: Make) -> None:
    """``data/{item.stem}_*.json``: an item's key holds the files its glob matches (a_1,
    a_2 for a; not ab_1, b_1's for b)."""
    proj = project(
        GLOB_SIDECAR,
        {"data/a.txt": "A\n", "data/ab.txt": "AB\n", "data/b.txt": "B\n",
         "data/a_1.json": "1\n", "data/a_2.json": "2\n", "data/ab_1.json": "x\n",
         "data/b_1.json": "b\n"},
    )  # fmt: skip
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"g": 3}
    proj.write("data/a_2.json", "22\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/a") == "A\n1\n22\n", out
    assert proj.run_counts() == {"g": 4}, out
    proj.write("data/ab_1.json", "y\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/ab") == "AB\ny\n", out
    assert proj.run_counts() == {"g": 5}, out


MAYBE_SIDECAR = f"""
name: t
stages:
  - id: p
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "{counted("p", "cat {inputs.src} > {outputs.o}/{item.stem}; cat data/{item.stem}.json >> {outputs.o}/{item.stem} 2>/dev/null || true")}"
"""


def test_a_deleted_sidecar_never_gives_back_the_key_from_before_sidecars_counted(
    project: Make, monkeypatch: Any
) -> None:
    """Built by a pipemake keying items without their sidecars (the plain key), then by
    this one: deleting an item's sidecar reruns it, never restoring the output the plain
    key stored while the sidecar was there."""
    from pipemake.resolve import Resolver

    proj = project(
        MAYBE_SIDECAR,
        {"data/a.txt": "A\n", "data/b.txt": "B\n", "data/a.json": "j\n", "data/b.json": "k\n"},
    )
    with monkeypatch.context() as m:  # the older pipemake: every item's key is the plain one
        m.setattr(Resolver, "_per_item_reads", lambda *args: None)
        proj.cli("build", "--no-progress")
    assert proj.read("build/o/a") == "A\nj\n"
    proj.cli("build", "--no-progress")  # upgraded: the sidecars count, each item reruns once
    assert proj.run_counts() == {"p": 4}
    proj.path("data/a.json").unlink()
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/a") == "A\n", out
    assert proj.run_counts() == {"p": 5}, out
    assert "p: up to date" in proj.cli("build", "--no-progress").output


ASSETS = f"""
name: t
stages:
  - id: p
    type: shell
    foreach: {{input: src, pattern: "**/*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "{counted("p", "ls $(dirname {inputs.src}) > /dev/null; cat {inputs.src} > {outputs.o}/{item.stem}; find data/{item.stem}_assets -type f | xargs cat >> {outputs.o}/{item.stem}")}"
"""


def test_a_folder_made_from_the_item_counts_its_files_but_its_own_folder_not(
    project: Make,
) -> None:
    """``data/{item.stem}_assets`` is that item's folder of files, in its key;
    ``$(dirname {inputs.src})`` (``data/x``, holding the items a and b) is in none."""
    proj = project(
        ASSETS,
        {"data/x/a.txt": "A\n", "data/x/b.txt": "B\n", "data/a_assets/1": "1\n",
         "data/b_assets/1": "b\n"},
    )  # fmt: skip
    proj.cli("build", "--no-progress")
    assert proj.run_counts() == {"p": 2}
    proj.write("data/a_assets/1", "11\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/a") == "A\n11\n", out
    assert proj.run_counts() == {"p": 3}, out
    proj.write("data/x/b.txt", "BB\n")
    out = proj.cli("build", "--no-progress").output
    assert proj.read("build/o/b") == "BB\nb\n", out
    assert proj.run_counts() == {"p": 4}, out
