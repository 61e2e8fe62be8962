"""Two habits of DVC and Make users (round 7): a ``shell`` stage's ``cmd`` written as a list
of commands (DVC's ``cmd: [a, b]``: run in order, each on its own, the first failure stops
the stage), and ``build TARGET`` while a stage the target does not need lacks a source
input (``make main.o`` with ``kbd.c`` missing: the target builds, the other is a warning)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj

# -- cmd as a list ---------------------------------------------------------------------------

LIST = """
name: t
stages:
  - id: m
    type: shell
    config:
      cmd:
        - "echo one >> runs/order.txt; mkdir -p {outputs.o}"
        - "echo two >> runs/order.txt; cd {outputs.o}; X=set; export Y=set"
        - "echo three >> runs/order.txt; pwd > {outputs.o}/pwd; echo \\"[$X][$Y]\\" > {outputs.o}/vars"
      outputs: {o: build/o}
"""


def test_a_list_cmd_runs_its_commands_in_order_each_on_its_own(project) -> None:
    p = project(LIST)
    p.cli("build", "--no-progress")
    assert p.read("runs/order.txt").split() == ["one", "two", "three"]
    # neither the cd nor the variables of the second command reach the third
    assert p.read("build/o/pwd").strip() == os.path.realpath(p.root)
    assert p.read("build/o/vars") == "[][]\n"
    p.cli("build", "--no-progress")
    assert p.read("runs/order.txt").split() == ["one", "two", "three"]  # up to date


FAILING = """
name: t
stages:
  - id: m
    type: shell
    config:
      cmd:
        - "echo foo > {outputs.o}"
        - "echo before; exit 3"
        - "echo baz > runs/after.txt"
      outputs: {o: build/foo}
"""


def test_the_first_failing_command_stops_the_stage_and_is_named(project) -> None:
    p = project(FAILING)
    out = p.cli("build", "--no-progress", code=1).output
    assert "command 2 of 3 (cmd[1]) exited with code 3" in out, out
    assert "the 1 after it did not run" in out
    assert "$ echo before; exit 3" in out and "before" in out
    assert not p.exists("runs/after.txt")
    assert not p.exists("build/foo")  # the stage failed: nothing moved into place
    assert TRACEBACK not in out
    # a command not found, in the middle: the same (DVC's test with failed_command)
    p.edit("pipemake.yaml", "exit 3", "failed_command_xyz")
    out = p.cli("build", "--no-progress", code=1).output
    assert "command 2 of 3 (cmd[1]) exited with code 127" in out, out
    assert not p.exists("runs/after.txt")


def test_a_foreach_stage_runs_the_list_per_item(project) -> None:
    p = project(
        """
        name: t
        stages:
          - id: each
            type: shell
            foreach: src
            config:
              cmd:
                - "echo {item.name} >> runs/seen.txt; X=1"
                - "tr a-z A-Z < {inputs.src} > {outputs.o}/{item.name}; echo \\"[$X]\\" >> {outputs.o}/{item.name}"
              inputs: {src: data}
              outputs: {o: build/each}
        """,
        {"data/a.txt": "aa\n", "data/b c.txt": "bb\n"},
    )
    p.cli("build", "--no-progress")
    assert p.read("build/each/a.txt") == "AA\n[]\n"
    assert p.read("build/each/b c.txt") == "BB\n[]\n"
    assert sorted(p.read("runs/seen.txt").split("\n")[:-1]) == ["a.txt", "b c.txt"]
    p.edit("pipemake.yaml", "X=1", "X=1; test {item.stem} != a")
    out = p.cli("build", "--no-progress", code=1).output
    assert "command 1 of 2 (cmd[0]) exited with code 1" in out, out
    assert "a.txt" in out


#: a computed value that is a shell program in every way a value can be one
NASTY = "x; touch PWNED && echo $(touch PWNED2) `touch PWNED3` \"'{outputs.o}'\" \\ *"


def test_values_in_a_list_cmd_stay_data_quoted_where_they_stand(project) -> None:
    p = project(
        """
        name: t
        stages:
          - id: up
            type: python
            config:
              function: "steps:up"
              inputs: {v: data/v.json}
          - id: s
            type: shell
            config:
              cmd:
                - "mkdir -p {outputs.o}"
                - "echo {up.v} > {outputs.o}/plain"
                - "echo \\"{up.v}\\" > {outputs.o}/double; echo '{up.v}' > {outputs.o}/single"
              inputs: {f: "data/a $(touch PWNED4).txt"}
              outputs: {o: build/o}
        """,
        {
            "steps.py": "import json, pathlib\ndef up(ctx):\n"
            "    return json.loads(pathlib.Path('data/v.json').read_text())\n",
            "data/v.json": json.dumps({"v": NASTY}),
            "data/a $(touch PWNED4).txt": "x",
        },
    )
    p.cli("build", "--no-progress")
    assert not list(p.root.rglob("PWNED*")), "a value ran as shell code"
    for name in ("plain", "double", "single"):
        assert p.read(f"build/o/{name}") == NASTY + "\n", name


@pytest.mark.parametrize(
    ("cmd", "said"),
    [
        ("[]", "'cmd' is an empty list: give one command or a list of commands"),
        ('["echo a", 3]', "cmd[1] must be a string (a shell command), got a number 3"),
        ('["echo a", {inputs.x}]', "YAML read the unquoted {inputs.x} as a mapping"),
        ('["echo a", {x: 1}]', "cmd[1] must be a string (a shell command), got a mapping"),
        ('["echo a", ""]', "cmd[1] is empty"),
        ('["echo a", null]', "cmd[1] is empty"),
        ('["echo a", ["b"]]', "cmd[1] must be a string (a shell command), got a list"),
        ('["echo a", "echo `{outputs.o}`"]', "cmd[1]: {outputs.o} in cmd stands inside backquotes"),
        ('["echo a", "echo {outputs.nope}"]', "{outputs.nope}: no output named 'nope'"),
    ],
)
def test_a_bad_list_cmd_is_exit_2_at_validate(project, cmd: str, said: str) -> None:
    p = project(f"""
    name: t
    stages:
      - id: s
        type: shell
        config:
          cmd: {cmd}
          outputs: {{o: build/x.txt}}
    """)
    for command in (["validate"], ["build", "--no-progress"]):
        out = p.cli(*command, code=2).output
        assert "pipemake.yaml:6: stage 's': " in out, out
        assert said in out, out
        assert TRACEBACK not in out
    assert not p.exists("build")


def test_list_cmd_keys(project) -> None:
    """A one-element list keys as its string; a list of two is not the joined string;
    changing one element reruns, and dry-run names the element."""
    p = project(
        """
        name: t
        stages:
          - id: s
            type: shell
            config:
              cmd: "echo x >> runs/s.count; echo a > {outputs.o}"
              outputs: {o: build/x.txt}
        """
    )
    p.cli("build", "--no-progress")
    p.edit("pipemake.yaml", 'cmd: "echo x', 'cmd: ["echo x')
    p.edit("pipemake.yaml", '{outputs.o}"', '{outputs.o}"]')
    assert p.cli("dry-run").output.strip() == "s: up to date"
    p.cli("build", "--no-progress")
    assert p.runs("s") == 1
    p.edit("pipemake.yaml", "s.count; echo", 's.count", "echo')
    out = p.cli("dry-run").output
    assert out.startswith("s: run: param cmd"), out
    p.cli("build", "--no-progress")
    assert p.runs("s") == 2 and p.read("build/x.txt") == "a\n"
    p.edit("pipemake.yaml", "echo a >", "echo b >")
    out = p.cli("dry-run").output
    assert "param cmd[1] " in out and "echo a" in out and "echo b" in out, out
    status = p.cli("status").output
    assert "cmd[1]" in status, status
    p.cli("graph")
    p.cli("validate")


# -- a missing source input of a stage the targets do not need --------------------------------

OBJECTS = """
name: k
stages:
  - id: main_o
    type: shell
    config:
      cmd: "echo x >> runs/main_o.count; cat {inputs.c} > {outputs.o}"
      inputs: {c: data/main.c}
      outputs: {o: build/main.o}
  - id: kbd_o
    type: shell
    config:
      cmd: "echo x >> runs/kbd_o.count; cat {inputs.c} > {outputs.o}"
      inputs: {c: data/kbd.c}
      outputs: {o: build/kbd.o}
  - id: edit
    type: shell
    config:
      cmd: "echo x >> runs/edit.count; cat {inputs.a} {inputs.b} > {outputs.o}"
      inputs: {a: "{main_o.o}", b: "{kbd_o.o}"}
      outputs: {o: build/edit}
"""

MISSING = "pipemake.yaml:9: stage 'kbd_o': input 'c': data/kbd.c does not exist"


def warned(out: str, target: str) -> bool:
    """Whether ``out`` says, on one line, that kbd_o's missing source was left out."""
    lines = [line for line in out.splitlines() if line.startswith("warning:")]
    return (
        len(lines) == 1
        and MISSING in lines[0]
        and f"not needed for {target}, so left out" in lines[0]
    )


@pytest.fixture
def objects(project: Callable[..., Proj]) -> Proj:
    return project(OBJECTS, {"data/main.c": "main\n", "data/kbd.c": "kbd\n"})


def test_a_target_builds_while_a_stage_it_does_not_need_lacks_a_source(objects: Proj) -> None:
    os.remove(objects.path("data/kbd.c"))
    for target in ("main_o", "build/main.o"):
        out = objects.cli("dry-run", target).output
        assert warned(out, target), out
        assert "main_o: run: never built" in out
    out = objects.cli("build", "--no-progress", "main_o").output
    assert warned(out, "main_o") and out.count("warning:") == 1, out
    assert objects.read("build/main.o") == "main\n"
    assert objects.run_counts() == {"main_o": 1}
    out = objects.cli("status", "main_o").output
    assert warned(out, "main_o") and "main_o: up to date" in out, out
    assert "kbd_o" not in "".join(x for x in out.splitlines() if not x.startswith("warning:"))
    # everything, validate, and a target that needs the stage: exit 2, nothing runs
    for args in (
        ["build", "--no-progress"],
        ["build", "--no-progress", "-k"],
        ["build", "--no-progress", "edit"],
        ["build", "--no-progress", "main_o", "kbd_o"],
        ["dry-run"],
        ["dry-run", "edit"],
        ["status"],
        ["validate"],
    ):
        out = objects.cli(*args, code=2).output
        assert MISSING in out, (args, out)
        assert "warning:" not in out and TRACEBACK not in out
    assert objects.run_counts() == {"main_o": 1}
    objects.write("data/kbd.c", "kbd\n")
    objects.cli("build", "--no-progress")
    assert objects.run_counts() == {"main_o": 1, "kbd_o": 1, "edit": 1}


def test_other_problems_of_an_unrelated_stage_stay_errors(objects: Proj) -> None:
    os.remove(objects.path("data/kbd.c"))
    objects.edit(
        "pipemake.yaml",
        "      inputs: {c: data/kbd.c}",
        "      inputs: {c: data/kbd.c}\n      bogus: 1",
    )
    out = objects.cli("build", "--no-progress", "main_o", code=2).output
    assert "bogus" in out and "warning:" not in out, out
    assert objects.run_counts() == {}
    objects.edit("pipemake.yaml", "      bogus: 1\n", "")
    objects.edit("pipemake.yaml", "{o: build/kbd.o}", "{o: build/main.o}")
    out = objects.cli("build", "--no-progress", "main_o", code=2).output
    assert "build/main.o" in out, out
    assert objects.run_counts() == {}


def test_a_glob_matching_nothing_elsewhere_is_a_warning_too(project) -> None:
    p = project(
        OBJECTS.replace(
            "      inputs: {c: data/kbd.c}\n      outputs: {o: build/kbd.o}",
            '      inputs: {c: "data/kbd/*.c"}\n      outputs: {o: build/kbd}',
        )
        .replace("  - id: kbd_o\n", "  - id: kbd_o\n    foreach: c\n")
        .replace(
            'cat {inputs.c} > {outputs.o}"\n      inputs: {c: "data/kbd',
            'cat {inputs.c} > {outputs.o}/{item.name}"\n      inputs: {c: "data/kbd',
        ),
        {"data/main.c": "main\n", "data/kbd/readme": "x"},
    )
    out = p.cli("build", "--no-progress", "main_o").output
    assert "stage 'kbd_o': input 'c': no file matches data/kbd/*.c; not needed" in out, out
    assert p.cli("validate", code=2).output.count("no file matches data/kbd/*.c") == 1
    p.write("data/kbd/k.c", "k\n")
    p.cli("build", "--no-progress", "kbd_o")
    assert p.read("build/kbd/k.c") == "k\n"


def test_the_plan_cache_keeps_no_scoped_answer(objects: Proj) -> None:
    """A plan cached by a full build is checked again on each load, by each command's own
    targets; a load that let a missing source pass is not cached."""
    objects.cli("build", "--no-progress")
    objects.cli("build", "--no-progress")  # the first made .pipemake after loading
    assert objects.exists(".pipemake/plan.json")
    os.remove(objects.path("data/kbd.c"))
    out = objects.cli("build", "--no-progress", "main_o").output
    assert warned(out, "main_o")
    objects.cli("build", "--no-progress", code=2)
    objects.cli("validate", code=2)
    assert warned(objects.cli("dry-run", "main_o").output, "main_o")
    os.remove(objects.path(".pipemake/plan.json"))
    objects.cli("dry-run", "main_o")
    assert not objects.exists(".pipemake/plan.json")
    objects.cli("status", code=2)
    objects.write("data/kbd.c", "kbd\n")
    assert "warning" not in objects.cli("build", "--no-progress", "main_o").output


def _age(p: Proj) -> None:
    """Move the workspace's files (``.pipemake``'s too) into the past, so that a no-op
    build trusts their stat."""
    past = time.time() - 30
    for dirpath, _dirnames, filenames in os.walk(p.root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (past, past))


def test_the_noop_snapshot_keeps_no_scoped_answer(objects: Proj) -> None:
    """A build that let a missing source pass writes no no-op snapshot (each says the
    warning again), and a snapshot of one command never answers another."""
    objects.sub("build", "--no-progress")
    _age(objects)
    objects.sub("build", "--no-progress")
    assert objects.exists(".pipemake/uptodate.json")  # a plain no-op: a snapshot
    os.remove(objects.path("data/kbd.c"))
    out = objects.sub("build", "--no-progress", code=2)
    assert MISSING in out.stderr and "warning" not in out.stderr
    for _ in range(3):
        out = objects.sub("build", "--no-progress", "main_o")
        assert warned(out.stderr, "main_o"), out.stderr
        assert "main_o: up to date" in out.stderr
        assert not objects.exists(".pipemake/uptodate.json")
        _age(objects)
    objects.sub("build", "--no-progress", code=2)
    assert objects.run_counts() == {"main_o": 1, "kbd_o": 1, "edit": 1}


def test_commit_and_clean_of_a_target_go_on_while_a_stage_it_does_not_need_lacks_a_source(
    objects: Proj,
) -> None:
    """``commit TARGET`` and ``clean TARGET`` need only that stage, as the build does: an
    unrelated stage's missing source input is a warning; without targets, exit 2."""
    objects.cli("build", "--no-progress", "main_o")
    os.remove(objects.path("data/kbd.c"))
    objects.write("build/main.o", "edited\n")
    out = objects.cli("commit", "main_o").output
    assert warned(out, "main_o") and "accepted build/main.o" in out, out
    assert objects.cli("commit", code=2).output.count(MISSING) == 1
    out = objects.cli("clean", "--yes", "main_o").output
    assert warned(out, "main_o") and "removed build/main.o" in out, out
    assert not objects.exists("build/main.o")
    assert MISSING in objects.cli("clean", "--yes", code=2).output
