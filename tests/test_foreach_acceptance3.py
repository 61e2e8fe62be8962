"""A tester's findings on ``foreach`` stages, third round: a ``timeout`` is per item, a
worker that dies or a task that times out keeps what its items finished and names the item
that was running, items writing a file where another writes a folder fail the stage naming
both, ``status``/``dry-run`` after a collision, and a removed item's folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import TRACEBACK, Proj

#: a shell stage over ``data`` whose command logs each item it starts to ``runs/items.log``
LOGGED = """
name: t
stages:
  - id: up
    type: shell
    foreach: src
{extra}    config:
      cmd: 'echo {{item.relpath}} >> runs/items.log; {cmd}'
      inputs: {{src: data}}
      outputs: {{out: build/up}}
"""


def _logged(proj: Proj) -> list[str]:
    """The items run since the last call (from ``runs/items.log``), in order; the log is
    emptied."""
    log = proj.path("runs/items.log")
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    log.unlink()
    return lines


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _data(n: int) -> dict[str, str | bytes]:
    return {f"data/f{i:02d}.txt": f"v{i}\n" for i in range(1, n + 1)}


# 1. timeout per item --------------------------------------------------------------------
def test_timeout_is_per_item_not_per_hidden_batch(project: Callable[..., Proj]) -> None:
    # 24 items at -j 1 run in tasks of 3: f01..f03 take 0.6 s each, 1.8 s together, past
    # the 1.2 s timeout, which each of them stays well within
    slow = "case {item.name} in f0[123].txt) sleep 0.6;; esac; cp {inputs.src} {outputs.out}/"
    proj = project(LOGGED.format(extra="    timeout: 1.2\n", cmd=slow + "{item.name}"), _data(24))
    out = proj.cli("build", "--no-progress", "-j", "1").output
    assert "timed out" not in out and "FAILED" not in out, out
    assert len(list(proj.path("build/up").iterdir())) == 24


def test_a_timed_out_item_keeps_its_finished_batch_mates(project: Callable[..., Proj]) -> None:
    # f05 hangs in the task [f04, f05, f06]: f04 finished before it and is kept, f06 never
    # started and runs in this build, in a task of its own; only f05 fails, named
    hang = "if [ {item.name} = f05.txt ] && [ ! -e go ]; then sleep 30; fi; "
    proj = project(
        LOGGED.format(
            extra="    timeout: 1\n", cmd=hang + "cp {inputs.src} {outputs.out}/{item.name}"
        ),  # fmt: skip
        _data(24),
    )
    out = proj.cli("build", "--no-progress", "-j", "1", code=1).output
    assert "1 of 24 item(s) failed; the other 23 are kept" in out, out
    assert "item f05.txt: timed out after 1 s" in out, out
    assert sorted(_logged(proj)) == [f"f{i:02d}.txt" for i in range(1, 25)] and TRACEBACK not in out
    proj.write("go", "")
    proj.cli("build", "--no-progress", "-j", "1")
    assert _logged(proj) == ["f05.txt"]  # f04 and f06 were committed
    assert len(list(proj.path("build/up").iterdir())) == 24


def test_readme_says_a_foreach_timeout_is_per_item() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `timeout` |"))
    assert "per item" in row, row


# 2. a worker that dies ------------------------------------------------------------------
DIES = """
import os
import time
from pathlib import Path

def per(ctx):
    with open("runs/items.log", "a") as f:
        f.write(ctx.item.relpath + "\\n")
    if ctx.item.name == "f05.txt" and Path("die").exists():
        os._exit(9)
    if ctx.item.name in ("f04.txt", "f05.txt", "f06.txt") and Path("die-all").exists():
        os._exit(9)
    if ctx.item.name >= "f04.txt" and Path("die-every").exists():
        os._exit(9)
    if ctx.item.name == "f05.txt" and Path("hang").exists():
        time.sleep(60)
    (Path(ctx.outputs["out"]) / ctx.item.name).write_bytes(Path(ctx.inputs["src"]).read_bytes())
"""


PY_EACH = """
name: t
stages:
  - id: up
    type: python
    foreach: src
    config: {function: "mods:per", inputs: {src: data}, outputs: {out: build/up}}
"""


def test_a_dead_worker_names_its_item_and_keeps_the_others(project: Callable[..., Proj]) -> None:
    proj = project(PY_EACH, {**_data(24), "mods.py": DIES, "die": ""})
    out = proj.cli("build", "--no-progress", "-j", "1", code=1).output
    assert "1 of 24 item(s) failed; the other 23 are kept" in out, out
    assert "item f05.txt: the worker process exited unexpectedly (exit code 9) while it ran" in out
    assert "f04.txt" not in out and "f06.txt" not in out and TRACEBACK not in out
    # every item ran (f06 in a worker of its own), f05 once; an item that ended in the
    # moment before f05 started, not yet reported, may have run again with f06
    ran = _logged(proj)
    assert set(ran) == {f"f{i:02d}.txt" for i in range(1, 25)} and ran.count("f05.txt") == 1
    assert len(ran) <= 24 + 1, ran
    proj.path("die").unlink()
    proj.cli("build", "--no-progress", "-j", "1")
    assert _logged(proj) == ["f05.txt"]


# 3. a file where another item writes a folder -------------------------------------------
CONFLICT = (
    "if [ {item.name} = a.txt ]; then cp {inputs.src} {outputs.out}/a; "
    "elif grep -q conflict {inputs.src}; then mkdir -p {outputs.out}/a && "
    "cp {inputs.src} {outputs.out}/a/b; else cp {inputs.src} {outputs.out}/b; fi"
)


def _conflict_said(out: str) -> None:
    assert "items a.txt and b.txt wrote conflicting outputs" in out, out
    assert "out/a" in out and "out/a/b" in out and ".pipemake" not in out, out
    assert TRACEBACK not in out


def test_file_and_folder_of_one_name_fail_naming_both(project: Callable[..., Proj]) -> None:
    proj = project(LOGGED.format(extra="", cmd=CONFLICT),
                   {"data/a.txt": "a\n", "data/b.txt": "conflict\n"})  # fmt: skip
    _conflict_said(proj.cli("build", "--no-progress", code=1).output)
    assert not proj.exists("build/up")  # nothing half-written


def test_the_same_conflict_after_a_good_build_leaves_it_as_it_was(
    project: Callable[..., Proj],
) -> None:
    proj = project(LOGGED.format(extra="", cmd=CONFLICT),
                   {"data/a.txt": "a\n", "data/b.txt": "b\n"})  # fmt: skip
    proj.cli("build", "--no-progress")
    proj.write("data/b.txt", "conflict\n")
    for _ in range(2):  # and again: it never flips to one item's output
        _conflict_said(proj.cli("build", "--no-progress", code=1).output)
        assert _files(proj.path("build/up")) == ["a", "b"]
        assert proj.read("build/up/a") == "a\n" and proj.read("build/up/b") == "b\n"
    status = proj.cli("status").output
    assert "last: failed" in status and "none runs" not in status, status


# 4. status and dry-run after a collision ------------------------------------------------
def test_status_and_dry_run_after_a_collision_say_it_fails(project: Callable[..., Proj]) -> None:
    proj = project(
        LOGGED.format(extra="", cmd="cp {inputs.src} {outputs.out}/{item.name}"),
        {"data/a/x.txt": "A\n", "data/b/y.txt": "other\n"},
    )
    proj.cli("build", "--no-progress")
    proj.write("data/b/x.txt", "B\n")
    proj.cli("build", "--no-progress", code=1)
    status = proj.cli("status").output
    assert "last: failed" in status and "last: ok" not in status, status
    assert "none runs" not in status and "will fail" in status, status
    dry = proj.cli("dry-run").output
    assert "up: run: will fail: items a/x.txt and b/x.txt both wrote out/x.txt" in dry, dry
    [row] = json.loads(proj.cli("dry-run", "--json").output)
    assert row["decision"] == "run", row


# 5. a removed item's folders ------------------------------------------------------------
def test_a_removed_items_folders_go_with_it(project: Callable[..., Proj]) -> None:
    pipeline = """
    name: t
    stages:
      - id: up
        type: shell
        foreach: src
        config:
          cmd: "mkdir -p {outputs.out}/{item.stem}/deep && cp {inputs.src} {outputs.out}/{item.stem}/deep/x"
          inputs: {src: data}
          outputs: {out: build/up}
      - id: down
        type: shell
        foreach: src
        config:
          cmd: "mkdir -p $(dirname {outputs.out}/{item.relpath}) && cp {inputs.src} {outputs.out}/{item.relpath}"
          inputs: {src: "{up.out}"}
          outputs: {out: build/down}
    """
    proj = project(pipeline, {"data/f1.txt": "1\n", "data/f2.txt": "2\n", "data/f3.txt": "3\n"})
    proj.cli("build", "--no-progress")
    proj.path("data/f2.txt").unlink()
    proj.cli("build", "--no-progress")
    kept = ["f1", "f1/deep", "f1/deep/x", "f3", "f3/deep", "f3/deep/x"]
    assert _files(proj.path("build/up")) == kept
    assert _files(proj.path("build/down")) == kept
    proj.cli("clean", "--yes")
    proj.cli("build", "--no-progress")  # restored: the very same trees
    assert _files(proj.path("build/up")) == kept == _files(proj.path("build/down"))


def test_a_python_item_past_the_timeout_is_the_one_named(project: Callable[..., Proj]) -> None:
    # a worker process is ended whole: the item it said it started is the one named, not
    # f04, which ended just before and may not have been reported yet
    pipeline = PY_EACH.replace("    config:", "    timeout: 1\n    config:")
    proj = project(pipeline, {**_data(24), "mods.py": DIES, "hang": ""})
    out = proj.cli("build", "--no-progress", "-j", "1", code=1).output
    assert "1 of 24 item(s) failed; the other 23 are kept" in out, out
    assert "First: item f05.txt: timed out after 1 s" in out, out
    _logged(proj)
    proj.path("hang").unlink()
    proj.cli("build", "--no-progress", "-j", "1")
    assert _logged(proj) == ["f05.txt"]


def test_adjacent_items_that_kill_their_workers_fail_alone(project: Callable[..., Proj]) -> None:
    # f04 kills its worker; f05, never started, runs in a task of its own and kills that
    # worker too, at its first item, as f06 does in the next: three bad items in a row
    # are three failures, and the others still run
    proj = project(PY_EACH, {**_data(24), "mods.py": DIES, "die-all": ""})
    out = proj.cli("build", "--no-progress", "-j", "1", code=1).output
    assert "3 of 24 item(s) failed; the other 21 are kept" in out, out
    assert "not run (" not in out, out
    assert "First: item f04.txt: the worker process exited unexpectedly" in out, out
    _logged(proj)
    proj.path("die-all").unlink()
    proj.cli("build", "--no-progress", "-j", "1")
    assert sorted(_logged(proj)) == ["f04.txt", "f05.txt", "f06.txt"]


def test_items_that_kill_every_worker_leave_the_rest_not_run(project: Callable[..., Proj]) -> None:
    # from f04 on every item kills its worker: after FIRST_DEATHS tasks of never-started
    # items end at their first item in a row, the rule is the cause and the rest is not run
    proj = project(PY_EACH, {**_data(24), "mods.py": DIES, "die-every": ""})
    out = proj.cli("build", "--no-progress", "-j", "1", code=1).output
    assert "not run (the next build runs them)" in out, out
    assert len(_logged(proj)) < 24  # not every item was tried, a worker death each
    proj.path("die-every").unlink()
    proj.cli("build", "--no-progress", "-j", "1")
    assert sorted(_logged(proj)) == [f"f{i:02d}.txt" for i in range(4, 25)]
