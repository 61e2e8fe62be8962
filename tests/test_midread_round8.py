"""A file a stage's key holds beside its inputs, edited while the stage runs, never leaves
that run recorded under the old key: a file of a foreach stage's items' folder its cmd
names (in every item's key) and a file inside an upstream output its cmd names (counted
through that output's manifest) are re-checked after the run, as its inputs are."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj, wait_for

#: waits for ``go`` (written by the test), so the edit lands while the item runs
WAIT = "touch runs/started; while [ ! -e go ]; do sleep 0.02; done"

FOREACH_READS_CFG = f"""
name: t
stages:
  - id: e
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "echo x >> runs/e.count; {WAIT}; mkdir -p {{outputs.o}}; cat data/b.cfg {{inputs.src}} > {{outputs.o}}/{{item.name}}"
"""


def test_a_file_of_the_items_folder_edited_while_an_item_runs_is_not_kept_under_the_old_key(
    project: Callable[..., Proj],
) -> None:
    p = project(FOREACH_READS_CFG, {"data/b.cfg": "AAAA\n", "data/a.txt": "1\n"})
    proc = p.popen("build", "--no-progress")
    wait_for(lambda: p.exists("runs/started"), what="the item to start")
    p.write("data/b.cfg", "BBBB\n")
    p.write("go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "data/b.cfg changed while the stage ran" in err + out, err
    assert TRACEBACK not in err
    # put AAAA back: its key holds nothing made from BBBB, so the item runs again
    p.write("data/b.cfg", "AAAA\n")
    p.cli("build")
    assert p.read("build/o/a.txt") == "AAAA\n1\n"
    assert p.runs("e") == 2


def _upstream_sibling(foreach: bool) -> str:
    each = '    foreach: {input: src, pattern: "*.txt"}\n' if foreach else ""
    src = "src: data, " if foreach else ""
    out = "{outputs.o}/{item.name}" if foreach else "{outputs.o}"
    mk = "mkdir -p {outputs.o}; " if foreach else ""
    return f"""
name: t
stages:
  - id: A
    type: shell
    config:
      inputs: {{i: data/a.txt}}
      outputs: {{d: build/d}}
      cmd: "mkdir -p {{outputs.d}}; echo F > {{outputs.d}}/f.txt; echo AAAA > {{outputs.d}}/g.txt"
  - id: B
    type: shell
{each}    config:
      inputs: {{{src}f: "{{A.d}}/f.txt"}}
      outputs: {{o: build/o}}
      cmd: "echo x >> runs/B.count; {WAIT}; {mk}cat {{inputs.f}} build/d/g.txt > {out}"
"""


@pytest.mark.parametrize("foreach", [False, True], ids=["stage", "foreach"])
def test_a_file_of_an_upstream_output_the_cmd_names_edited_while_it_runs_is_not_kept(
    project: Callable[..., Proj], foreach: bool
) -> None:
    """B takes ``build/d/f.txt`` of A as its input and its cmd also reads ``build/d/g.txt``
    (counted through A's output manifest): an edit of g.txt while B runs fails B, said so;
    the next build puts A's output back and runs B on it."""
    p = project(_upstream_sibling(foreach), {"data/a.txt": "1\n"})
    proc = p.popen("build", "--no-progress")
    wait_for(lambda: p.exists("runs/started"), what="stage B to start")
    p.write("build/d/g.txt", "BBBB\n")
    p.write("go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "build/d/g.txt" in err and "changed while the stage ran" in err, err
    assert TRACEBACK not in err
    assert p.runs("B") == 1  # not run again: its key stays A's manifest's
    p.cli("build")
    assert p.read("build/d/g.txt") == "AAAA\n"
    assert p.read("build/o/a.txt" if foreach else "build/o") == "F\nAAAA\n"
    assert p.runs("B") == 2


FOREACH_SIDECAR = f"""
name: t
stages:
  - id: e
    type: shell
    foreach: {{input: src, pattern: "*.txt"}}
    config:
      inputs: {{src: data}}
      outputs: {{o: build/o}}
      cmd: "echo x >> runs/e.count; {WAIT}; mkdir -p {{outputs.o}}; cat data/{{item.stem}}.json {{inputs.src}} > {{outputs.o}}/{{item.name}}"
"""


def test_an_items_sidecar_edited_while_it_runs_is_not_kept_under_the_old_key(
    project: Callable[..., Proj],
) -> None:
    """``data/{item.stem}.json`` is in its item's key alone: edited while that item runs,
    the item's work is not committed (it fails saying so), and after putting the old
    content back the item runs again, never restoring what was made from the edit."""
    p = project(FOREACH_SIDECAR, {"data/a.json": "AAAA\n", "data/a.txt": "1\n"})
    proc = p.popen("build", "--no-progress")
    wait_for(lambda: p.exists("runs/started"), what="the item to start")
    p.write("data/a.json", "BBBB\n")
    p.write("go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "its file data/a.json changed while it ran" in err + out, err
    assert TRACEBACK not in err
    p.write("data/a.json", "AAAA\n")
    p.cli("build")
    assert p.read("build/o/a.txt") == "AAAA\n1\n"
    assert p.runs("e") == 2
