"""Findings of the third acceptance round on values, links and what is printed:

1. a ``python`` (or ``custom``) foreach stage's items' returned values are gathered into
   the per-item mapping ``{stage.NAME}`` (was: "returned no value"), restored from the store
   as they were, and rerun downstream only when they change;
2. an input that leads through a symlink into its stage's own output, or into an output of
   a stage after it, is refused before anything runs (was: ``self/self/…`` for ever);
3. ``pipemake log`` names every failed item with its message;
4. a name with a newline is shown escaped on one line (``dry-run``, the build's lines).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

import pytest
from conftest import TRACEBACK, Proj, shell_foreach

from pipemake import eventshape, foreach
from pipemake.progress import log_lines, visible
from pipemake.rules.python import PythonRule

# 1. a python foreach stage's values ---------------------------------------------------------
MAP_REDUCE = """
name: t
stages:
  - id: map
    type: python
    foreach: src
    config: {function: "mods:per", inputs: {src: data}, outputs: {out: build/map}}
  - id: reduce
    type: python
    config: {function: "mods:red", outputs: {o: build/n.json}, params: {n: "{map.n}"}}
  - id: viaenv
    type: shell
    config:
      cmd: 'echo x >> runs/viaenv.count; echo "$N" > {outputs.o}'
      env: {N: "{map.n}"}
      outputs: {o: build/env.txt}
"""
MODS = """
import json
from pathlib import Path


def per(ctx):
    with open("runs/map.count", "a") as f:
        f.write("x\\n")
    (Path(ctx.outputs["out"]) / ctx.item.name).write_bytes(b"")
    return {"n": len(Path(ctx.inputs["src"]).read_bytes())}


def red(ctx):
    with open("runs/reduce.count", "a") as f:
        f.write("x\\n")
    Path(ctx.outputs["o"]).write_text(json.dumps(ctx.params["n"]))
"""
FILES = {"mods.py": MODS, "data/a.txt": "x", "data/b.txt": "xx"}


def _values(p: Proj) -> tuple[dict[str, int], dict[str, int]]:
    return json.loads(p.read("build/n.json")), json.loads(p.read("build/env.txt"))


def test_a_python_foreach_stages_item_values_are_gathered_per_item(
    project: Callable[..., Proj],
) -> None:
    p = project(MAP_REDUCE, FILES)
    out = p.cli("build", "--no-progress").output
    assert "returned no value" not in out and TRACEBACK not in out, out
    assert _values(p) == ({"a.txt": 1, "b.txt": 2}, {"a.txt": 1, "b.txt": 2})
    # the same length: that item runs, its value is the same, nothing downstream reruns
    p.write("data/a.txt", "y")
    p.cli("build", "--no-progress")
    assert (p.runs("map"), p.runs("reduce"), p.runs("viaenv")) == (3, 1, 1)
    # a new length: both read the new mapping, in relpath order whichever item ran
    p.write("data/a.txt", "yyy")
    p.cli("build", "--no-progress")
    assert (p.runs("reduce"), p.runs("viaenv")) == (2, 2)
    assert p.read("build/env.txt") == '{"a.txt": 3, "b.txt": 2}\n'
    # everything from the store: the same values, nothing runs
    for path in ("build/map", "build/n.json", "build/env.txt"):
        target = p.path(path)
        (os.remove if target.is_file() else __import__("shutil").rmtree)(target)
    out = p.cli("build", "--no-progress").output
    assert "0 ran, 3 restored" in out, out
    assert p.read("build/env.txt") == '{"a.txt": 3, "b.txt": 2}\n'
    assert (p.runs("reduce"), p.runs("viaenv")) == (2, 2)


def test_a_wrong_value_name_of_a_python_foreach_stage_says_what_its_items_returned(
    project: Callable[..., Proj],
) -> None:
    p = project(MAP_REDUCE.replace('"{map.n}"}}', '"{map.m}"}}'), FILES)
    p.cli("validate")  # not known before the items run
    out = p.cli("build", "-k", "--no-progress", code=1).output
    said = "{map.m}: stage 'map' returned no value 'm' (its items returned: n)"
    assert said in out and TRACEBACK not in out, out
    assert p.read("build/env.txt") == '{"a.txt": 1, "b.txt": 2}\n'


def test_a_stage_entry_from_before_values_were_gathered_is_not_reused(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written while a python foreach stage's values were dropped: its items are
    reused, its values gathered from them; no item runs again."""
    p = project(MAP_REDUCE.split("  - id: reduce")[0], FILES)
    with monkeypatch.context() as m:
        m.setattr(PythonRule, "open_values", False)  # as before: nothing gathered
        p.cli("build", "--no-progress")
    p.pipeline(MAP_REDUCE)
    out = p.cli("build", "--no-progress").output
    assert "2 ran" in out and p.runs("map") == 2, out  # reduce and viaenv, no item
    assert _values(p) == ({"a.txt": 1, "b.txt": 2}, {"a.txt": 1, "b.txt": 2})


CUSTOM = """
from pathlib import Path


class Count:
    def __init__(self, stage_id, config):
        self.config = config

    def validate_config(self):
        return True

    def execute(self, inputs):
        src = Path(self.config["input_file"])
        out = Path(self.config["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / src.name).write_text("seen")
        return {"n": len(src.read_bytes())}
"""


def test_a_custom_foreach_stages_item_values_are_gathered_too(
    project: Callable[..., Proj],
) -> None:
    p = project(
        """
        name: t
        stages:
          - id: map
            type: custom
            foreach: input_file
            config: {executor: "ex:Count", input_file: data, output_dir: build/map}
          - id: viaenv
            type: shell
            config: {cmd: 'echo "$N" > {outputs.o}', env: {N: "{map.n}"},
                     outputs: {o: build/env.txt}}
        """,
        {"ex.py": CUSTOM, "data/a.txt": "x", "data/b.txt": "xx"},
    )
    p.cli("build", "--no-progress")
    assert json.loads(p.read("build/env.txt")) == {"a.txt": 1, "b.txt": 2}


# 2. an input that leads into an output --------------------------------------------------------
LINKED = """
name: t
stages:
  - id: up
    type: shell
    foreach: src
    config:
      cmd: "echo x >> runs/up.count; cp {inputs.src} {outputs.out}/{item.name}"
      inputs: {src: data}
      outputs: {out: build/up}
  - id: z
    type: shell
    config:
      cmd: "ls {inputs.u} > {outputs.o}"
      inputs: {u: "{up.out}"}
      outputs: {o: build/z/z.txt}
"""


@pytest.mark.parametrize(
    ("link", "to", "said"),
    [
        ("data/self", "../build/up", "data/self is a symlink to build/up, the output 'out' of this stage"),
        ("data/deep/b", "../../build", "data/deep/b is a symlink to build, which holds build/up, the output 'out' of this stage"),
        ("data/z.txt", "../build/z/z.txt", "data/z.txt is a symlink to build/z/z.txt, the output 'o' of stage 'z', which runs after this one"),
        ("data/zdir", "../build/z", "data/zdir is a symlink to build/z, which holds build/z/z.txt, the output 'o' of stage 'z'"),
        ("data/top", "..", "data/top is a symlink to the project folder, which holds build/up"),
    ],
)  # fmt: skip
def test_an_input_leading_into_its_own_or_a_later_stages_output_is_refused(
    project: Callable[..., Proj], link: str, to: str, said: str
) -> None:
    p = project(LINKED, {"data/a.txt": "a\n", "data/deep/c.txt": "c\n"})
    p.cli("build", "--no-progress")
    before = sorted(os.listdir(p.path("build/up")))
    os.symlink(to, p.path(link))
    for command in (["validate"], ["dry-run"], ["build", "--no-progress"]):
        out = p.cli(*command, code=2).output
        assert "pipemake.yaml:3: stage 'up': input 'src' (data): " + said in out, out
        assert "remove the link or point it outside the outputs" in out
        assert TRACEBACK not in out
    assert p.runs("up") == 2 and sorted(os.listdir(p.path("build/up"))) == before
    os.remove(p.path(link))
    assert "0 ran" in p.cli("build", "--no-progress").output


def test_an_input_folder_that_is_itself_a_link_into_the_output_is_refused(
    project: Callable[..., Proj],
) -> None:
    p = project(LINKED.replace("src: data}", "src: data/in}"), {"data/x.txt": "x\n"})
    os.makedirs(p.path("build/up"))
    os.symlink("../build/up", p.path("data/in"))
    out = p.cli("build", "--no-progress", code=2).output
    assert "input 'src' (data/in): data/in is a symlink to build/up, the output 'out'" in out
    assert p.runs("up") == 0


def test_links_elsewhere_in_an_input_are_still_followed(project: Callable[..., Proj]) -> None:
    p = project(LINKED, {"data/a.txt": "a\n", "other/o.txt": "o\n", "build/side.txt": "s\n"})
    os.symlink("../other", p.path("data/other"))
    os.symlink("../build/side.txt", p.path("data/side.txt"))  # in build/, in no output
    p.cli("build", "--no-progress")
    assert sorted(os.listdir(p.path("build/up"))) == ["a.txt", "o.txt", "side.txt"]
    assert re.search(r"\bo\.txt\b", p.read("build/z/z.txt"))


# 3. every failed item in `pipemake log` ---------------------------------------------------------
FAILING = (
    'if grep -q BAD {inputs.src}; then echo "oops-$(cat {inputs.src})" >&2; exit 7; fi; '
    "cp {inputs.src} {outputs.o}/{item.name}"
)


def _failing(project: Callable[..., Proj], bad: list[int]) -> Proj:
    files = {f"data/f{i:03}.txt": f"v{i}\n" for i in range(1, 31)}
    files.update({f"data/f{i:03}.txt": f"BAD{i:03}\n" for i in bad})
    return project(shell_foreach(FAILING), files)


def test_log_names_every_failed_item_with_its_message(project: Callable[..., Proj]) -> None:
    p = _failing(project, [3, 15, 29])
    out = p.cli("build", "-j", "2", "--no-progress", code=1).output
    log = p.cli("log").output
    for i in (3, 15, 29):
        said = f"each: item f{i:03}.txt FAILED: command exited with code 7"
        assert said in out, out  # as it happens, one line naming it
        at = log.index(said)  # and in the run's log, with its output after it
        assert f"oops-BAD{i:03}" in log[at : at + 400], log
    assert "more failed item" not in log
    assert TRACEBACK not in log
    # quiet leaves out the commands' lines, not which items failed
    quiet = p.cli("log", "-q").output
    assert "item f029.txt FAILED" in quiet and "each| oops" not in quiet, quiet


def test_log_says_how_many_more_items_failed_past_the_ones_it_names(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(foreach, "ITEM_FAILURES_SAID", 2)
    p = _failing(project, [3, 4, 15, 29])
    p.cli("build", "--no-progress", code=1)
    log = p.cli("log").output
    assert log.count("FAILED: command exited with code 7") == 2, log
    assert "… and 2 more failed item(s), each in .pipemake/logs/each.log" in log, log
    stage_log = p.read(".pipemake/logs/each.log")
    assert all(f"item f{i:03}.txt FAILED" in stage_log for i in (3, 4, 15, 29))


def test_an_old_run_log_line_with_an_item_of_another_type_is_read_without_it() -> None:
    line = {"event": "log", "stage": "a", "time": 1.0, "level": "error", "text": "x", "item": 3}
    shaped = eventshape.event(line)
    assert shaped is not None and "item" not in shaped
    assert log_lines([shaped]) and "a| x" in log_lines([shaped])[0]


# 4. a name with a newline stays on its line ------------------------------------------------------
NEWLINE_NAME = "0new\nline\x1b[31mRED.txt"


def test_a_name_with_a_newline_is_shown_escaped_on_its_line(project: Callable[..., Proj]) -> None:
    p = project(LINKED.replace("echo x >> runs/up.count; ", ""), {"data/a.txt": "a\n"})
    p.cli("build", "--no-progress")
    p.write(f"data/{NEWLINE_NAME}", "x")
    dry = p.cli("dry-run").output
    assert dry.splitlines() == [
        "up: run: 1 of 2 items changed (first: data/0new\\nlineRED.txt: new)",
        "z: maybe: upstream up will run",
    ], dry
    out = p.cli("build", "--no-progress").output
    lines = out.splitlines()
    assert all(line.startswith("[") for line in lines), out  # none split in two
    assert any("data/0new\\nline" in line for line in lines), out
    assert "\x1b" not in out
    log = p.cli("log").output
    assert all(line.startswith(("[", " ")) for line in log.splitlines()), log
    assert len(p.cli("status").output.splitlines()) == 2


def test_a_failed_item_with_a_newline_in_its_name_is_named_on_one_line(
    project: Callable[..., Proj],
) -> None:
    p = project(shell_foreach(FAILING), {"data/a.txt": "a\n", "data/b\nc.txt": "BAD\n"})
    out = p.cli("build", "--no-progress", code=1).output
    assert "each: item b\\nc.txt FAILED: command exited with code 7" in out, out
    assert "First: item b\\nc.txt: command exited with code 7" in out, out


def test_visible_keeps_newlines_unless_the_text_is_one_line() -> None:
    assert visible("a\nb\x1b[2Jc") == "a\nb\\x1b[2Jc"
    assert visible("a\nb\rc", oneline=True) == "a\\nb\\x0dc"


# what a foreach input leaves out is said ----------------------------------------------------------
def test_entries_that_hold_no_file_are_said_to_be_left_out_once(
    project: Callable[..., Proj],
) -> None:
    p = project(shell_foreach("cp {inputs.src} {outputs.o}/{item.name}"), {"data/a.txt": "a\n"})
    os.symlink("/nonexistent/x", p.path("data/dang.txt"))
    p.path("data/sub").mkdir()
    os.mkfifo(p.path("data/sub/f.fifo"))
    os.symlink("/dev/null", p.path("data/null.txt"))
    os.symlink("/nonexistent/y", p.path("data/.hidden"))  # no item anyway: not counted
    out = p.cli("build", "--no-progress").output
    said = (
        "each| 3 entries of input 'src' (data) hold no file and are left out of its items "
        "(first: data/dang.txt, a symlink that leads nowhere)"
    )
    assert said in out, out
    assert os.listdir(p.path("build/each")) == ["a.txt"]
    assert said in p.cli("log").output
    assert "left out" not in p.cli("build", "--no-progress").output  # said once


def test_a_foreach_pattern_that_matches_no_file_is_said(project: Callable[..., Proj]) -> None:
    p = project(
        shell_foreach("cp {inputs.src} {outputs.o}/{item.name}").replace(
            "foreach: src", 'foreach: {input: src, pattern: "*.png"}'
        ),
        {"data/a.txt": "a\n"},
    )
    out = p.cli("build", "--no-progress").output
    assert "each| foreach pattern '*.png' matches no file of input 'src' (data)" in out, out
    p.write("data/b.png", "b")
    assert "matches no file" not in p.cli("build", "--no-progress").output


def test_open_values_are_gathered_by_every_name_any_item_returned_in_relpath_order() -> None:
    per_item = {"b.txt": {"n": 2}, "a.txt": {"n": 1, "extra": [1]}, "c.txt": {}}
    assert PythonRule().gather({}, per_item) == {
        "extra": {"a.txt": [1], "b.txt": None, "c.txt": None},
        "n": {"a.txt": 1, "b.txt": 2, "c.txt": None},
    }
    assert list(PythonRule().gather({}, per_item)["n"]) == ["a.txt", "b.txt", "c.txt"]
    assert PythonRule().gather({}, {"a.txt": {}}) == {}
