"""Read-only outputs and file modes, seventh round: ``clean`` removes an output its user
made read-only (or says what it could not remove, exit 1); a stage that protects its own
outputs (Snakemake's ``protected()``: ``chmod -R a-w``) builds, reruns and leaves nothing
in ``.pipemake/tmp``; foreach items that make read-only folders work as a whole-stage run
does; a file output's executable bit is part of being up to date (DVC's
``test_checkout_executable``)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACEBACK, Proj

from pipemake.executors import worker
from pipemake.folders import remove_path, unlock_tree
from pipemake.rule import RuleError

#: a stage whose folder output holds a read-only folder and file, and a read-only file
#: output; a second stage reads the folder
PROTECTED = """
name: ro
stages:
  - id: p
    type: shell
    config:
      cmd: "echo x >> runs/p.count; mkdir -p {outputs.d}/sub; cp {inputs.i} {outputs.d}/sub/f; PROTECT"
      inputs: {i: data/in}
      outputs: {d: build/d, f: build/f.txt}
  - id: q
    type: shell
    config:
      cmd: "cat {inputs.i}/sub/f > {outputs.o}"
      inputs: {i: "{p.d}"}
      outputs: {o: build/q.txt}
"""


def _pipeline(root: Path, protect: str) -> None:
    text = PROTECTED.replace("PROTECT", protect)
    (root / "pipemake.yaml").write_text(text.lstrip())
    (root / "data").mkdir(exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    (root / "data" / "in").write_text("v1\n")


def _tmp_left(root: Path) -> list[str]:
    tmp = root / ".pipemake" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def _write_bits(path: Path) -> int:
    return path.lstat().st_mode & 0o222


def _chmod_a_w(*paths: Path) -> None:
    for top in paths:
        for p in sorted([top, *top.rglob("*")], key=lambda p: -len(p.parts)):
            if not p.is_symlink():
                os.chmod(p, p.stat().st_mode & ~0o222)


# -- clean ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "protect",
    [
        "chmod 444 {outputs.d}/sub/f; chmod 555 {outputs.d}/sub; cp {inputs.i} {outputs.f}",
        "BY_HAND",
    ],
    ids=["by-the-stage", "by-hand"],
)
def test_clean_removes_an_output_its_user_made_read_only(
    plain_user: tuple[Path, Callable[..., Any]], protect: str
) -> None:
    """Snakemake's ``test_protected_symlink_output``: the stage (or the user, ``chmod -R
    a-w``) makes the output read-only; ``clean`` removes it, says so, exit 0, and status
    then says it is missing; a link inside the output to a read-only folder of the user's
    is removed as a link, the folder keeps its mode and files; the folder holding the
    outputs keeps its own mode. A build brings them back."""
    root, run = plain_user
    _pipeline(root, "cp {inputs.i} {outputs.f}" if protect == "BY_HAND" else protect)
    run("build", "--no-progress")
    out = root / "build" / "d"
    mine = root.parent / "mine"
    (mine / "deep").mkdir(parents=True)
    (mine / "deep" / "keep.txt").write_text("mine\n")
    if protect == "BY_HAND":
        _chmod_a_w(out, root / "build" / "f.txt")
    else:
        assert not _write_bits(out / "sub")
    os.chmod(out / "sub", 0o755)
    (out / "sub" / "link").symlink_to(mine)
    uid = (root / "pipemake.yaml").stat().st_uid  # the user pipemake runs as
    for p in [mine, *mine.rglob("*")]:
        os.lchown(p, uid, uid)  # theirs: a link followed could change it
    _chmod_a_w(out / "sub", mine)
    mine_modes = {p: p.lstat().st_mode for p in [mine, *mine.rglob("*")]}
    build_mode = (root / "build").stat().st_mode
    done = run("clean", "p", "--yes")
    assert TRACEBACK not in done.stdout + done.stderr
    assert "removed build/d" in done.stdout and "removed build/f.txt" in done.stdout
    assert not os.path.lexists(out) and not os.path.lexists(root / "build" / "f.txt")
    assert (root / "build" / "q.txt").exists()  # another stage's output: not named
    assert (root / "build").stat().st_mode == build_mode
    assert {p: p.lstat().st_mode for p in [mine, *mine.rglob("*")]} == mine_modes
    assert (mine / "deep" / "keep.txt").read_text() == "mine\n"
    assert "p: stale" in run("status").stdout
    run("build", "--no-progress")
    assert (out / "sub" / "f").read_text() == "v1\n"
    run("status", "--check")


def test_clean_that_cannot_remove_an_output_says_what_and_exits_1(
    plain_user: tuple[Path, Callable[..., Any]],
) -> None:
    """The folder holding an output is read-only: ``clean`` cannot remove it, never says
    "removed" for it, exits 1 naming it, the folder and what to do, and touches nothing
    in it (the output stays whole and up to date); what it could remove it says it did."""
    root, run = plain_user
    _pipeline(root, "cp {inputs.i} {outputs.f}")
    text = (root / "pipemake.yaml").read_text().replace("build/f.txt", "top.txt")
    (root / "pipemake.yaml").write_text(text)
    run("build", "--no-progress")
    out = root / "build" / "d"
    _chmod_a_w(out)
    os.chmod(root / "build", 0o555)
    done = run("clean", "p", "--yes", code=1)
    said = done.stdout + done.stderr
    assert TRACEBACK not in said
    assert "removed build/d" not in said
    assert "could not remove build/d" in said and "chmod u+w build" in said
    assert "removed top.txt" in said and not (root / "top.txt").exists()
    assert (out / "sub" / "f").read_text() == "v1\n"
    assert not _write_bits(out) and not _write_bits(out / "sub")  # nothing unlocked
    assert "p: stale" in run("status").stdout  # top.txt is gone, build/d is not
    os.chmod(root / "build", 0o755)
    run("clean", "p", "--yes")
    assert not out.exists()


# -- a stage that protects its outputs ----------------------------------------------------


def test_a_stage_that_protects_its_outputs_builds_reruns_and_leaves_no_staging(
    plain_user: tuple[Path, Callable[..., Any]],
) -> None:
    """``chmod -R a-w {outputs.d} {outputs.f}`` in the command (``protected()``): the
    first build places the outputs read-only, as the stage left them; an input change
    reruns it with the new content, a switch back restores; nothing is ever left in
    ``.pipemake/tmp``."""
    root, run = plain_user
    _pipeline(root, "cp {inputs.i} {outputs.f}; chmod -R a-w {outputs.d} {outputs.f}")
    out = root / "build" / "d"
    first = run("build", "--no-progress")
    assert "cannot use" not in first.stderr
    assert (out / "sub" / "f").read_text() == "v1\n"
    assert not _write_bits(out) and not _write_bits(out / "sub")
    assert _tmp_left(root) == []
    (root / "data" / "in").write_text("v2\n")
    run("build", "--no-progress")
    assert (out / "sub" / "f").read_text() == "v2\n" and (
        root / "build" / "q.txt"
    ).read_text() == "v2\n"
    assert not _write_bits(out)
    assert _tmp_left(root) == []
    (root / "data" / "in").write_text("v1\n")
    assert "2 restored" in run("build", "--no-progress").stderr
    assert (out / "sub" / "f").read_text() == "v1\n"
    assert _tmp_left(root) == []
    run("status", "--check")


def test_a_failed_stage_with_read_only_staging_leaves_none_and_says_so_truly(
    plain_user: tuple[Path, Callable[..., Any]],
) -> None:
    """A command that makes its staging folder read-only and then fails: the stage fails
    with its own error (no hint about who owns pipemake's files), and its staging folder,
    said to be removed, is removed."""
    root, run = plain_user
    _pipeline(root, "chmod -R a-w {outputs.d}; echo wrote {outputs.d} >&2; exit 3")
    done = run("build", "--no-progress", code=1)
    assert TRACEBACK not in done.stderr
    assert "removed when the stage failed" in done.stderr
    assert "run pipemake as the user" not in done.stderr
    assert _tmp_left(root) == []


# -- foreach items making read-only folders -----------------------------------------------


FOREACH = """
name: fro
stages:
  - id: e
    type: shell
    foreach: src
    config:
      cmd: "CMD"
      inputs: {src: data/src}
      outputs: {o: build/e}
  - id: all
    type: shell
    config:
      cmd: "ls {inputs.d} > {outputs.o}"
      inputs: {d: "{e.o}"}
      outputs: {o: build/all.txt}
"""


@pytest.mark.parametrize(
    ("cmd", "names"),
    [
        (
            "mkdir -p {outputs.o}/{item.stem}; cp {inputs.src} {outputs.o}/{item.stem}/x; "
            "chmod 555 {outputs.o}/{item.stem}",
            ["f1", "f1/x", "f3", "f3/x"],
        ),
        ("cp {inputs.src} {outputs.o}/{item.name}; chmod a-w {outputs.o}", ["f1.txt", "f3.txt"]),
    ],
    ids=["item-folder", "output-folder"],
)
def test_foreach_items_that_make_read_only_folders_build_as_a_whole_stage_does(
    plain_user: tuple[Path, Callable[..., Any]], cmd: str, names: list[str]
) -> None:
    """Each item makes a read-only folder (its own, or the output folder itself): every
    item builds (no PermissionError, no traceback), a removed input's part of the output
    goes, the downstream stage sees the rest, and nothing is left in ``.pipemake/tmp``."""
    root, run = plain_user
    (root / "pipemake.yaml").write_text(FOREACH.replace("CMD", cmd).lstrip())
    (root / "data" / "src").mkdir(parents=True)
    for i in (1, 2, 3):
        (root / "data" / "src" / f"f{i}.txt").write_text(f"s{i}\n")
    first = run("build", "--no-progress")
    assert TRACEBACK not in first.stderr and "PermissionError" not in first.stderr
    (root / "data" / "src" / "f2.txt").unlink()
    again = run("build", "--no-progress")
    assert TRACEBACK not in again.stderr
    out = root / "build" / "e"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == names
    assert (root / "build" / "all.txt").read_text().split() == [n for n in names if "/" not in n]
    assert _tmp_left(root) == []
    run("status", "--check")


def test_an_item_file_pipemake_cannot_move_fails_the_item_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file an item wrote that stays unmovable once its folders are writable (made
    immutable, another user's) fails the item with a sentence saying so and what to do,
    never a PermissionError traceback or a hint about who owns pipemake's files."""
    top = tmp_path / "work"
    top.mkdir()
    (top / "f").write_text("x")

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", src)

    monkeypatch.setattr(worker.os, "rename", refuse)
    with pytest.raises(RuleError, match=r"cannot take f from the work folder \(Operation not"):
        worker._move_out(str(top), "f", str(tmp_path / "to"))


# -- removing pipemake's own folders: never through a link ------------------------------


def test_unlock_tree_opens_folders_inside_only_never_through_a_link(tmp_path: Path) -> None:
    """What :func:`remove_path` does to a tree a plain removal leaves: every folder under
    it (and it) gets its owner's rights; a folder a link inside leads to, and the link,
    keep their modes; files keep theirs."""
    top = tmp_path / "out"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (top / "a" / "link").symlink_to(outside)
    for p in [outside / "deep", outside, top / "a" / "b" / "f", top / "a" / "b", top / "a", top]:
        os.chmod(p, 0o444 if p.is_file() else 0o555)
    unlock_tree(str(top))
    for p in [top, top / "a", top / "a" / "b"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o755, p
    assert stat.S_IMODE((top / "a" / "b" / "f").stat().st_mode) == 0o444
    assert stat.S_IMODE(outside.stat().st_mode) == 0o555
    assert stat.S_IMODE((outside / "deep").stat().st_mode) == 0o555
    assert remove_path(top) is None and not top.exists()
    assert (outside / "deep").is_dir()
    os.chmod(outside, 0o755)


# -- a file output's executable bit ---------------------------------------------------------

XBIT = """
name: xbit
vars: {mode: "-x"}
stages:
  - id: gen
    type: shell
    config:
      cmd: "echo x >> runs/gen.count; printf '#!/bin/sh\\necho ran\\n' > {outputs.s}; chmod a{vars.mode} {outputs.s}"
      outputs: {s: build/script.sh}
"""


def _executable(p: Path) -> bool:
    return bool(p.stat().st_mode & 0o111)


def test_switching_back_restores_a_file_outputs_mode_without_rerunning(
    project: Callable[..., Proj],
) -> None:
    """DVC's ``test_checkout_executable``: built ``-x``, then ``+x`` (``-S``), then ``-x``
    again: the last is the first build's entry, whose bytes are in place but whose mode is
    not: dry-run says restore, status stale (``--check`` exit 1), the build sets the mode
    (the same file, not rewritten, the stage not run) and is then up to date."""
    proj = project(XBIT)
    script = proj.path("build/script.sh")
    proj.cli("build")
    assert not _executable(script)
    proj.cli("build", "-S", "vars.mode=+x")
    assert _executable(script) and proj.runs("gen") == 2
    assert "gen: restore:" in proj.cli("dry-run").output  # (why: the param, back)
    assert "gen: stale" in proj.cli("status", "--check", code=1).output
    inode = script.stat().st_ino
    proj.cli("build")
    assert not _executable(script) and script.stat().st_ino == inode
    assert proj.runs("gen") == 2
    proj.cli("status", "--check")


@pytest.mark.parametrize("link", [False, True], ids=["copied", "linked"])
def test_a_hand_chmod_of_a_file_output_is_seen_and_undone(
    project: Callable[..., Proj], link: bool
) -> None:
    """``chmod +x`` by hand on a file output: dry-run says it would be restored (mode
    changed; status stale, saying so), the build gives it back its recorded mode without
    running the stage: the same file; an output hard-linked to its store object
    (``--link``) is replaced by a new one, never chmodded through the link."""
    proj = project(XBIT)
    script = proj.path("build/script.sh")
    extra = ["--link"] if link else []
    proj.cli("build", *extra)
    before = script.stat()
    os.chmod(script, before.st_mode | 0o111)
    assert (script.stat().st_nlink > 1) is link  # linked: the store's object itself
    assert "gen: restore: output build/script.sh mode changed" in proj.cli("dry-run").output
    said = proj.cli("status", "--check", code=1).output
    assert "gen: stale (output build/script.sh mode changed)" in said
    proj.cli("build", *extra)
    assert not _executable(script) and proj.runs("gen") == 1
    assert (script.stat().st_ino == before.st_ino) is not link
    proj.cli("status", "--check")
