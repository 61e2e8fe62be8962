"""Workspace writes never follow a link out of an output (issue 13, finding 2).

Every scenario goes through real builds: an output that was a symlink to its stage's input,
a symlink a person or a stage left inside a directory output, an output path replaced by a
symlink, a symlinked parent folder. After each, every file outside the output paths is
byte-identical to what it was, and the outputs are real files and directories.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Proj, shell_foreach

from pipemake.folders import remove_path
from pipemake.fshash import Hasher
from pipemake.hashing import tree_hash
from pipemake.store import Store
from pipemake.workspace import Workspace


def snapshot(top: Path) -> dict[str, object]:
    """Every entry under ``top``, links not followed: a file's bytes and mode, a link's
    target, a directory as such."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = "dir"
            else:
                out[rel] = (Path(full).read_bytes(), os.stat(full).st_mode)
    return out


def real_tree(path: Path) -> dict[str, bytes]:
    """The files of an output directory, asserting that nothing in it is a symlink."""
    assert path.is_dir() and not path.is_symlink(), f"{path} is not a real directory"
    files = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            assert not os.path.islink(full), f"{full} is a symlink"
            if name in filenames:
                files[os.path.relpath(full, path)] = Path(full).read_bytes()
    return files


def one_stage(cmd: str, inputs: str = "{d: d}", out: str = "build/o") -> str:
    quoted = "'" + cmd.replace("'", "''") + "'"
    return f"""
        name: t
        stages:
          - id: s
            type: shell
            config:
              cmd: {quoted}
              inputs: {inputs}
              outputs: {{o: {out}}}
        """


LINK = "ln -s $PWD/{inputs.d} {outputs.o}"
COPY = "mkdir -p {outputs.o} && cp {inputs.d}/* {outputs.o}/"
RENAMED = (
    "mkdir -p {outputs.o} && for f in {inputs.d}/*; do cp $f {outputs.o}/c-$(basename $f); done"
)
SOURCES = {"d/x.txt": "one\n", "d/y.txt": "two\n", "keep/k.txt": "kept\n"}


@pytest.mark.parametrize("copy", [COPY, RENAMED], ids=["same-names", "other-names"])
@pytest.mark.parametrize("first", ["link", "copy"])
def test_an_output_linked_to_its_input_never_costs_the_input(
    project: Callable[..., Proj], copy: str, first: str
) -> None:
    """A version of a stage that made its output a symlink to its input dir, then a copying
    version, back and forth (runs, then restores): the input stays as it was and the output
    is always a real directory."""
    p = project(one_stage(LINK), SOURCES)
    inputs = snapshot(p.path("d"))
    link, copying = one_stage(LINK), one_stage(copy)
    versions = [link, copying] * 2 if first == "link" else [copying, link] * 2
    for n, version in enumerate(versions):
        p.pipeline(version)
        r = p.cli("build")
        assert ("1 ran" in r.output) == (n < 2), r.output
        assert snapshot(p.path("d")) == inputs
        got = real_tree(p.path("build/o"))
        if version is link or copy is COPY:
            assert got == {"x.txt": b"one\n", "y.txt": b"two\n"}
        else:
            assert got == {"c-x.txt": b"one\n", "c-y.txt": b"two\n"}
        p.cli("status", "--check")
    assert p.read("keep/k.txt") == "kept\n"


TWO_VERSIONS = (
    "mkdir -p {outputs.o}/sub && echo V > {outputs.o}/sub/f.txt && echo V > {outputs.o}/V.txt"
)


@pytest.mark.parametrize("where", ["ext", "sub", "1.txt"])
def test_a_symlink_a_person_left_inside_an_output_is_replaced_not_followed(
    project: Callable[..., Proj], tmp_path: Path, where: str
) -> None:
    """An output directory holding ``ext -> /outside/dir`` (or ``sub``, a name the manifest
    has files under, or ``1.txt -> /outside/f.txt``, a file it lists), then restoring an
    older version: the outside folder is untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("mine\n")
    (outside / "other.txt").write_text("also mine\n")
    before = snapshot(outside)
    p = project(one_stage(TWO_VERSIONS.replace("V", "1"), inputs="{}"))
    p.cli("build")
    p.pipeline(one_stage(TWO_VERSIONS.replace("V", "2"), inputs="{}"))
    p.cli("build")
    if where == "sub":
        remove_path(p.path("build/o/sub"))
    target = outside / "f.txt" if where == "1.txt" else outside  # a file the manifest lists
    os.symlink(target, p.path(f"build/o/{where}"))
    p.pipeline(one_stage(TWO_VERSIONS.replace("V", "1"), inputs="{}"))
    assert "1 restored" in p.cli("build").output
    assert snapshot(outside) == before
    assert real_tree(p.path("build/o")) == {"sub/f.txt": b"1\n", "1.txt": b"1\n"}


def test_a_symlink_a_stage_made_inside_its_output_is_not_followed_by_a_restore(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """A stage version that links a folder outside into its output, then another version
    restored over it: the folder outside keeps every file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("precious\n")
    before = snapshot(outside)
    linking = one_stage(f"mkdir -p {{outputs.o}} && ln -s {outside} {{outputs.o}}/ext", "{}")
    plain = one_stage("mkdir -p {outputs.o} && echo p > {outputs.o}/p.txt", "{}")
    p = project(plain)
    for version in (plain, linking, plain, linking, plain):
        p.pipeline(version)
        p.cli("build")
        assert snapshot(outside) == before
    assert real_tree(p.path("build/o")) == {"p.txt": b"p\n"}


@pytest.mark.parametrize("same", [True, False], ids=["same-content", "other-content"])
def test_an_output_path_replaced_by_a_symlink_becomes_a_real_directory(
    project: Callable[..., Proj], tmp_path: Path, same: bool
) -> None:
    """The output path itself replaced by a symlink to a folder outside: the next build
    restores a real directory and leaves the folder as it was (even when it holds exactly
    the output's files, or files the output does not list)."""
    p = project(one_stage("mkdir -p {outputs.o} && echo o > {outputs.o}/o.txt", "{}"))
    p.cli("build")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("o\n" if same else "not o\n")
    if not same:
        (outside / "extra.txt").write_text("extra\n")
    before = snapshot(outside)
    remove_path(p.path("build/o"))
    os.symlink(outside, p.path("build/o"))
    p.cli("status", "--check", code=1)
    assert "1 restored" in p.cli("build").output
    assert snapshot(outside) == before
    assert real_tree(p.path("build/o")) == {"o.txt": b"o\n"}
    p.cli("status", "--check")


def test_a_file_output_replaced_by_a_symlink_becomes_a_real_file(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    p = project(one_stage("echo o > {outputs.o}", "{}", out="build/o.txt"))
    p.cli("build")
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    p.path("build/o.txt").unlink()
    os.symlink(outside, p.path("build/o.txt"))
    assert "1 restored" in p.cli("build").output
    assert outside.read_text() == "mine\n"
    assert not p.path("build/o.txt").is_symlink()
    assert p.read("build/o.txt") == "o\n"


def test_a_symlinked_parent_folder_is_the_users_layout(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """``build -> /elsewhere``: outputs land at /elsewhere/o (written through the parent,
    as Make and DVC do), restores and clean work there, and nothing else in /elsewhere or
    the link itself is touched."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep\n")
    p = project(one_stage("mkdir -p {outputs.o} && echo 1 > {outputs.o}/v.txt", "{}"))
    os.symlink(elsewhere, p.path("build"))
    p.cli("build")
    assert (elsewhere / "o" / "v.txt").read_text() == "1\n"
    p.pipeline(one_stage("mkdir -p {outputs.o} && echo 2 > {outputs.o}/w.txt", "{}"))
    p.cli("build")
    p.pipeline(one_stage("mkdir -p {outputs.o} && echo 1 > {outputs.o}/v.txt", "{}"))
    assert "1 restored" in p.cli("build").output
    assert real_tree(elsewhere / "o") == {"v.txt": b"1\n"}
    p.cli("clean")
    assert p.path("build").is_symlink()
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"]
    assert (elsewhere / "keep.txt").read_text() == "keep\n"


def test_a_foreach_item_output_linking_outside_moves_nothing_out(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """Each item links a folder outside into its output dir: the stage's output gets copies,
    and the folder keeps its files, on a first build and on a partial rebuild."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    before = snapshot(outside)
    cmd = f"cp {{inputs.src}} {{outputs.o}}/ && ln -s {outside} {{outputs.o}}/l-{{item.stem}}"
    p = project(shell_foreach(cmd), {"data/a.txt": "a\n", "data/b.txt": "b\n"})
    p.cli("build")
    assert snapshot(outside) == before
    p.write("data/c.txt", "c\n")
    p.cli("build")
    assert snapshot(outside) == before
    got = real_tree(p.path("build/each"))
    assert got["l-a/secret.txt"] == got["l-c/secret.txt"] == b"secret\n"
    assert got["c.txt"] == b"c\n"


# the pieces, directly -------------------------------------------------------------------
def test_remove_path_removes_links_as_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("f\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    os.symlink(outside, tree / "sub" / "ext")
    os.symlink(outside / "f.txt", tree / "file-link")
    os.symlink(outside, tmp_path / "top-link")
    remove_path(tmp_path / "top-link")
    remove_path(tree)
    assert not os.path.lexists(tmp_path / "top-link")
    assert not tree.exists()
    assert (outside / "f.txt").read_text() == "f\n"


def test_sync_takes_a_move_reached_through_a_link_from_the_store(tmp_path: Path) -> None:
    """A staged file whose path crosses a symlink (to a file outside the staging area) is
    never moved: the store's copy is placed instead."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("A\n")
    ws = Workspace(tmp_path)
    staged = ws.staging("t")
    os.symlink(outside, staged / "ext")
    store = Store(tmp_path / "store")
    entries = [["ext/a.txt", store.put_bytes(b"A\n"), 2, 0o644]]
    manifest = {"kind": "dir", "hash": tree_hash(entries), "entries": entries}
    moves = {"ext/a.txt": str(staged / "ext" / "a.txt")}
    assert ws.sync_dir(manifest, "out", store, Hasher(str(tmp_path)), moves)
    assert (outside / "a.txt").read_text() == "A\n"
    assert real_tree(tmp_path / "out") == {"ext/a.txt": b"A\n"}


def _other_filesystem(tmp_path: Path) -> Path:
    """A fresh folder on another filesystem than ``tmp_path`` (skips where there is none)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    return Path(tempfile.mkdtemp(dir=shm, prefix="pipemake-test-"))


@pytest.mark.parametrize("foreach", [False, True])
def test_a_symlinked_parent_on_another_filesystem_builds_and_restores(
    project: Callable[..., Proj], tmp_path: Path, foreach: bool
) -> None:
    """``build -> /other/disk`` (a common layout for big data): outputs are copied across
    instead of renamed, with the same results, and no temporary file is left there."""
    elsewhere = _other_filesystem(tmp_path)
    try:
        files = {"data/a.txt": "a\n", "data/b.txt": "b\n"}
        if foreach:
            p = project(
                shell_foreach("mkdir -p {outputs.o}/s && cp {inputs.src} {outputs.o}/s/"), files
            )
            out = elsewhere / "each"
        else:
            p = project(
                one_stage("mkdir -p {outputs.o} && cat {inputs.d}/* > {outputs.o}/all"),
                {k.replace("data", "d"): v for k, v in files.items()},
            )
            out = elsewhere / "o"
        os.symlink(elsewhere, p.path("build"))
        p.cli("build")
        first = real_tree(out)
        src = "data" if foreach else "d"
        p.write(f"{src}/c.txt", "c\n")
        p.cli("build")  # a foreach stage: one item, synced in
        assert real_tree(out) != first
        p.path(f"{src}/c.txt").unlink()
        assert "1 restored" in p.cli("build").output
        assert real_tree(out) == first
        assert sorted(os.listdir(elsewhere)) == [out.name]
        p.cli("status", "--check")
    finally:
        remove_path(elsewhere)


def test_a_symlink_loop_put_in_an_output_is_replaced_not_a_traceback(
    project: Callable[..., Proj],
) -> None:
    p = project(one_stage("mkdir -p {outputs.o} && echo o > {outputs.o}/o.txt", "{}"))
    p.cli("build")
    os.symlink(".", p.path("build/o/loop"))
    r = p.cli("status")
    assert "changed" in r.output
    assert "1 restored" in p.cli("build").output
    assert real_tree(p.path("build/o")) == {"o.txt": b"o\n"}
