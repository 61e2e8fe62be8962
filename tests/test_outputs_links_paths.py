"""Symlinks a stage writes into its outputs, project folders whose names are not UTF-8, a
store inside a stage's input, and --lock-timeout values that say no duration."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import TRACEBACK, Proj

import pipemake
from pipemake import api
from pipemake.errors import BuildFailed
from pipemake.rule import Context, Input, Item, Output, Rule

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
    report = proj.sub("report", "-o", str(tmp_path / "r.html"))
    assert TRACEBACK not in report.stderr
    (tmp_path / "r.html").read_bytes().decode("utf-8")
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
        assert TRACEBACK not in out, out
        if cache in ("data", "."):  # a folder of the user's files: never a store
            assert "is not empty and is not a pipemake store" in out, out
        else:
            assert "stage 'c'" in out, out
            assert f"input 'd' (data) {words}" in out and "outside every input" in out, out
    assert not proj.exists("build")
    assert not proj.exists("data/cache") and not proj.exists("data/deep")


def test_an_input_inside_the_store_is_refused(project: Callable[..., Proj]) -> None:
    """A stage reading a folder inside the store (its ``objects``) is refused the same way."""
    files = {"store/objects/a": "a\n", "store/PIPEMAKE-STORE": ""}
    proj = project(COUNT.replace("{d: data}", "{d: store/objects}"), files)
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


# -- symlinks a stage writes into its outputs -----------------------------------------------


def _one(cmd: str, outputs: str = "{d: build/d}", inputs: str = "{a: data/a.txt}") -> str:
    return f"""
stages:
  - id: g
    type: shell
    config:
      cmd: "{cmd}"
      inputs: {inputs}
      outputs: {outputs}
"""


def _settled(proj: Proj, *options: str) -> None:
    """A second build runs and restores nothing, and status says up to date."""
    out = proj.cli("build", "--no-progress", *options).output
    assert "0 ran, 0 restored" in out, out
    proj.cli("status", "--check")


def test_a_relative_link_to_a_source_file_counts_from_the_output(
    project: Callable[..., Proj],
) -> None:
    """``ln -s ../../data/a.txt {outputs.d}/a.txt`` (a dataset's usual idiom): stored by
    what it leads to from ``build/d``, kept as the stage made it, up to date right after,
    and a rebuild restores nothing and deletes nothing."""
    cmd = "mkdir -p {outputs.d} && echo made > {outputs.d}/made.txt && ln -s ../../data/a.txt {outputs.d}/a.txt"
    proj = project(_one(cmd), {"data/a.txt": "raw\n"})
    proj.cli("build", "--no-progress")
    assert os.readlink(proj.path("build/d/a.txt")) == "../../data/a.txt"
    _settled(proj)
    assert sorted(os.listdir(proj.path("build/d"))) == ["a.txt", "made.txt"]
    assert proj.read("build/d/a.txt") == "raw\n"
    os.remove(proj.path("build/d/a.txt"))  # restored as the content it led to
    assert "1 restored" in proj.cli("build", "--no-progress").output
    assert not os.path.islink(proj.path("build/d/a.txt"))
    assert proj.read("build/d/a.txt") == "raw\n"


def test_link_mode_never_takes_the_users_file_a_link_leads_to(
    project: Callable[..., Proj],
) -> None:
    """With ``--link`` the file a staged link leads to (the user's source) is copied into
    the store, never hard-linked there nor made read-only."""
    cmd = "mkdir -p {outputs.d} && ln -s ../../data/a.txt {outputs.d}/a.txt"
    proj = project(_one(cmd), {"data/a.txt": "raw\n"})
    proj.cli("build", "--no-progress", "--link")
    st = os.stat(proj.path("data/a.txt"))
    assert st.st_nlink == 1 and st.st_mode & 0o200
    _settled(proj, "--link")
    proj.write("data/a.txt", "edited\n")  # still the user's own, writable file
    proj.cli("build", "--no-progress", "--link")
    assert proj.read("build/d/a.txt") == "edited\n"


def test_a_relative_link_to_a_folder(project: Callable[..., Proj]) -> None:
    cmd = "mkdir -p {outputs.d} && ln -s ../../data {outputs.d}/src"
    proj = project(_one(cmd, inputs="{a: data}"), {"data/a.txt": "A\n", "data/s/b.txt": "B\n"})
    proj.cli("build", "--no-progress")
    _settled(proj)
    shutil.rmtree(proj.path("build"))
    proj.cli("build", "--no-progress")
    assert proj.read("build/d/src/s/b.txt") == "B\n" and not os.path.islink(
        proj.path("build/d/src")
    )
    assert proj.read("data/s/b.txt") == "B\n"


def test_a_file_output_that_is_a_relative_link(project: Callable[..., Proj]) -> None:
    """``ln -s ../data/a.txt {outputs.o}`` for ``build/o.txt``: the output is a copy of
    ``data/a.txt`` (an output path holds pipemake's own files), and settles."""
    proj = project(
        _one("ln -s ../data/a.txt {outputs.o}", "{o: build/o.txt}"), {"data/a.txt": "x\n"}
    )
    proj.cli("build", "--no-progress")
    assert not os.path.islink(proj.path("build/o.txt")) and proj.read("build/o.txt") == "x\n"
    _settled(proj)


def test_a_link_to_another_output_of_the_same_stage(project: Callable[..., Proj]) -> None:
    cmd = "mkdir -p {outputs.d} && echo sib > {outputs.o} && ln -s ../o.txt {outputs.d}/o"
    proj = project(_one(cmd, "{d: build/d, o: build/o.txt}"), {"data/a.txt": "x\n"})
    proj.cli("build", "--no-progress")
    assert proj.read("build/d/o") == "sib\n"
    _settled(proj)


@pytest.mark.parametrize(
    ("cmd", "outputs", "link"),
    [
        ("mkdir -p {outputs.d} && ln -s ../nowhere.txt {outputs.d}/x", "{d: build/d}", "build/d/x"),
        ("ln -s ../nowhere.txt {outputs.o}", "{o: build/o.txt}", "build/o.txt"),
    ],
)
def test_a_link_that_leads_nowhere_from_the_output_fails_the_stage(
    project: Callable[..., Proj], cmd: str, outputs: str, link: str
) -> None:
    proj = project(_one(cmd, outputs), {"data/a.txt": "x\n"})
    out = proj.cli("build", "--no-progress", code=1).output
    assert f"{link} is a symlink to ../nowhere.txt, which leads nowhere" in out, out
    assert "copy the file in" in out and TRACEBACK not in out
    assert not proj.exists("build")


def test_links_out_of_the_project_are_followed_and_nothing_outside_is_written(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Absolute links and relative ones climbing out of the project are the stage's own
    data: their bytes are stored; a second workspace restores them as plain files; a
    restore over an output holding such a link replaces the link, never writes through it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    cmd = (
        "mkdir -p {outputs.d} && echo in > {outputs.d}/f.txt && ln -s f.txt {outputs.d}/rel && "
        f"ln -s {victim} {{outputs.d}}/abs && ln -s ../../../victim.txt {{outputs.d}}/esc"
    )
    cache = str(tmp_path / "cache")
    a = project(_one(cmd), {"data/a.txt": "x\n"}, name="A")
    b = project(_one(cmd), {"data/a.txt": "x\n"}, name="B")
    a.cli("build", "--no-progress", "--cache-dir", cache)
    assert a.read("build/d/esc") == "precious\n"
    _settled(a)
    out = b.cli("build", "--no-progress", "--cache-dir", cache).output
    assert "0 ran, 1 restored" in out, out
    for name in ("abs", "esc"):
        assert not os.path.islink(b.path(f"build/d/{name}"))
        assert b.read(f"build/d/{name}") == "precious\n"
    a.write("build/d/f.txt", "edited\n")  # the output changed: restored whole
    assert "1 restored" in a.cli("build", "--no-progress").output
    assert not os.path.islink(a.path("build/d/abs")) and a.read("build/d/f.txt") == "in\n"
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644


def test_a_foreach_item_writing_a_relative_link(project: Callable[..., Proj]) -> None:
    yaml_text = """
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "mkdir -p {outputs.o}/{item.stem} && ln -s ../../../{inputs.src} {outputs.o}/{item.stem}/{item.name}"
      inputs: {src: data}
      outputs: {o: build/each}
"""
    proj = project(yaml_text, {"data/a.txt": "A\n", "data/b.txt": "B\n"})
    proj.cli("build", "--no-progress")
    assert proj.read("build/each/a/a.txt") == "A\n" and proj.read("build/each/b/b.txt") == "B\n"
    _settled(proj)


def test_an_output_file_name_that_is_not_utf8_is_named_at_its_final_path(
    project: Callable[..., Proj],
) -> None:
    """The message names ``build/d/caf\\xe9.txt``, where the user looks, not the staging
    folder the stage wrote it in."""
    cmd = r"mkdir -p {outputs.d} && echo x > {outputs.d}/l.txt && ln -s l.txt {outputs.d}/$(printf 'caf\\351').txt"
    proj = project(_one(cmd), {"data/a.txt": "x\n"})
    out = proj.cli("build", "--no-progress", code=1).output
    assert "the file name build/d/caf\\xe9.txt is not valid UTF-8" in out, out
    assert ".pipemake/tmp" not in out


@pytest.mark.parametrize(
    "links",
    [
        "ln -s .. {outputs.d}/up",
        "mkdir {outputs.d}/a {outputs.d}/b && ln -s ../b {outputs.d}/a/x && ln -s ../a {outputs.d}/b/y",
        "ln -s ../.. {outputs.d}/root",
    ],
)
def test_linked_folders_that_lead_back_fail_the_stage(
    project: Callable[..., Proj], links: str
) -> None:
    """A folder link in an output that leads back to where it is, alone or through another
    (``a/x -> ../b``, ``b/y -> ../a``), is a loop: the stage fails naming it, never walks
    for ever."""
    proj = project(_one(f"mkdir -p {{outputs.d}} && {links}"), {"data/a.txt": "x\n"})
    out = proj.sub("build", "--no-progress", code=1, timeout=60)
    text = out.stdout + out.stderr
    assert "(a loop); remove it" in text and "build/d/" in text, text
    assert TRACEBACK not in text


def test_a_link_through_the_outputs_folder_on_the_first_build(
    project: Callable[..., Proj],
) -> None:
    """``../../build/d/made.txt`` from ``build/d`` names a file of the output itself through
    ``build``, which the first build has not made yet: it is found all the same."""
    cmd = "mkdir -p {outputs.d} && echo m > {outputs.d}/made.txt && ln -s ../../build/d/made.txt {outputs.d}/x"
    proj = project(_one(cmd), {"data/a.txt": "x\n"})
    proj.cli("build", "--no-progress")
    assert proj.read("build/d/x") == "m\n"
    _settled(proj)


class _LinkPairs(Rule):
    """A batch rule (two items at a time) whose item ``bad.txt`` writes a link that leads
    nowhere."""

    name = "link_pairs"
    inputs: ClassVar = {"input_dir": Input(kind="dir")}
    outputs: ClassVar = {"output_dir": Output(kind="dir")}
    batch_size = 2

    def run_item(self, ctx: Context, item: Item) -> None:
        out = ctx.outputs["output_dir"] / item.name
        if item.name == "bad.txt":
            out.symlink_to("../nowhere.txt")
        else:
            out.write_text(Path(ctx.inputs["input_dir"]).read_text())


def test_a_batch_rules_link_that_leads_nowhere_fails_its_items_without_a_traceback(
    project: Callable[..., Proj],
) -> None:
    pipemake.register_rule("link_pairs", _LinkPairs)
    proj = project(
        """
    name: pairs
    stages:
      - id: up
        type: link_pairs
        foreach: input_dir
        config: {input_dir: data, output_dir: build/up}
    """,
        {"data/a.txt": "a\n", "data/bad.txt": "b\n"},
    )
    with api.project_of(proj.root, None) as p:
        with pytest.raises(BuildFailed) as failed:
            api.build(p, executor="inline")
    text = str(failed.value) + proj.read(".pipemake/logs/up.log")
    assert "leads nowhere" in text and TRACEBACK not in text, text
