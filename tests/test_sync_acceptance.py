"""Acceptance for how a directory output is updated: a few changed files of a large output
go in place (cost follows the change), anything else is rebuilt beside and swapped in; the
swapped-in folder keeps the old one's mode and group; and the lock's temporaries have a
name no person writes, so a user's ``.pipemake.lock-*`` backups are never swept."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Proj, shell_foreach

import pipemake.workspace as workspace
from pipemake.fshash import Hasher
from pipemake.hashing import tree_hash
from pipemake.store import Store
from pipemake.workspace import Workspace


def _output(tmp_path: Path, files: dict[str, str]) -> tuple[Workspace, Store]:
    """A workspace whose ``out`` folder holds ``files``, and an empty store."""
    for rel, text in files.items():
        p = tmp_path / "out" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o644)
    return Workspace(tmp_path), Store(tmp_path / "store")


def _manifest(store: Store, files: dict[str, str]) -> dict:
    entries = [
        [rel, store.put_bytes(t.encode()), len(t), 0o644] for rel, t in sorted(files.items())
    ]
    return {"kind": "dir", "hash": tree_hash(entries), "entries": entries}


def _big() -> dict[str, str]:
    return {f"d{i % 4}/f{i:04d}.txt": f"item {i}\n" for i in range(400)}


def test_a_one_file_change_to_a_large_output_is_made_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _big()
    files["gone/only.txt"] = "removed by the update\n"
    ws, store = _output(tmp_path, files)
    out = tmp_path / "out"
    folder, kept = os.stat(out).st_ino, os.stat(out / "d1/f0001.txt")
    want = dict(files)
    del want["gone/only.txt"]
    want["d0/f0000.txt"] = "changed\n"
    want["d3/new.txt"] = "added\n"

    def no_walk(*_a: object) -> None:  # the in-place path never walks the whole output
        raise AssertionError("the whole output was walked again")

    monkeypatch.setattr(workspace, "walk", no_walk)
    assert ws.sync_dir(_manifest(store, want), "out", store, Hasher(str(tmp_path)))
    assert os.stat(out).st_ino == folder  # the same folder: updated in place, not swapped
    after = os.stat(out / "d1/f0001.txt")
    assert (after.st_ino, after.st_ctime_ns) == (kept.st_ino, kept.st_ctime_ns)  # untouched
    got = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert got == want
    assert not (out / "gone").exists()  # the folder its removal emptied went too


@pytest.mark.parametrize("size", [6, 400])
def test_an_update_of_much_of_the_output_is_swapped_in_whole(tmp_path: Path, size: int) -> None:
    files = {f"f{i:04d}.txt": f"item {i}\n" for i in range(size)}
    ws, store = _output(tmp_path, files)
    out = tmp_path / "out"
    folder = os.stat(out).st_ino
    want = {rel: f"v2 {t}" for rel, t in files.items()}  # a switch back: every file differs
    assert ws.sync_dir(_manifest(store, want), "out", store, Hasher(str(tmp_path)))
    assert os.stat(out).st_ino != folder  # a new folder, swapped in in one step
    assert {p.name: p.read_text() for p in out.iterdir()} == want


def _other_gid() -> int | None:
    """A group the current user may give a folder, other than its own; None if none."""
    if os.geteuid() == 0:
        return 100 if os.getegid() != 100 else 101
    others = [g for g in os.getgroups() if g != os.getegid()]
    return others[0] if others else None


def test_a_swapped_in_folder_keeps_the_old_ones_mode_and_group(tmp_path: Path) -> None:
    files = {"a.txt": "a\n", "sub/b.txt": "b\n", "sub/deep/c.txt": "c\n"}
    ws, store = _output(tmp_path, files)
    out = tmp_path / "out"
    gid = _other_gid()
    if gid is not None:
        os.chown(out, -1, gid)
        os.chown(out / "sub", -1, gid)
    out.chmod(0o2770)
    (out / "sub").chmod(0o2750)
    (out / "sub/deep").chmod(0o700)
    folder = os.stat(out).st_ino
    want = {rel: f"new {t}" for rel, t in files.items()}
    assert ws.sync_dir(_manifest(store, want), "out", store, Hasher(str(tmp_path)))
    assert os.stat(out).st_ino != folder  # the swap path
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o2770
    assert stat.S_IMODE(os.stat(out / "sub").st_mode) == 0o2750
    assert stat.S_IMODE(os.stat(out / "sub/deep").st_mode) == 0o700
    if gid is not None:
        assert os.stat(out).st_gid == gid
        assert os.stat(out / "sub").st_gid == gid
    assert (out / "sub/deep/c.txt").read_text() == "new c\n"


def test_a_shared_foreach_output_stays_shared_after_one_item_changes(
    project: Callable[..., Proj],
) -> None:
    cmd = "cp {inputs.src} {outputs.o}/{item.name}"
    proj = project(shell_foreach(cmd), {f"data/{n}.txt": f"{n}\n" for n in "abc"})
    proj.cli("build", "--no-progress")
    out = proj.path("build/each")
    gid = _other_gid()
    if gid is not None:
        os.chown(out, -1, gid)
    out.chmod(0o2770)
    proj.write("data/b.txt", "b2\n")
    proj.cli("build", "--no-progress")
    assert (out / "b.txt").read_text() == "b2\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o2770
    if gid is not None:
        assert os.stat(out).st_gid == gid


LOCKED = """
name: w
vars: {salt: "1"}
stages:
  - id: w
    type: shell
    config: {cmd: "echo {vars.salt} > {outputs.o}", outputs: {o: build/out.txt}}
"""


def test_a_users_lock_backups_are_never_swept(project: Callable[..., Proj]) -> None:
    proj = project(LOCKED)
    proj.sub("build", "--no-progress")
    hour_ago = time.time() - 3600
    mine = [".pipemake.lock-20261204", ".pipemake.lock-backup_1", ".pipemake.lock-abcd1234"]
    for name in mine:
        os.utime(proj.write(name, f"{name}\n"), (hour_ago, hour_ago))
    # what a killed build of pipemake's own leaves: swept
    os.utime(proj.write(".pipemake.lock~tmp-abcd1234", "{}\n"), (hour_ago, hour_ago))
    proj.edit("pipemake.yaml", 'salt: "1"', 'salt: "2"')
    proj.sub("build", "--no-progress")
    assert proj.read("build/out.txt") == "2\n"
    for name in mine:
        assert proj.read(name) == f"{name}\n"
    assert not proj.exists(".pipemake.lock~tmp-abcd1234")
    left = [n for n in os.listdir(proj.root) if n.startswith(".pipemake.lock~")]
    assert left == []  # the new lock's own temporary went in by rename


def test_a_foreach_over_an_empty_folder_makes_its_empty_output(
    project: Callable[..., Proj],
) -> None:
    # the downstream stage lists the folder: it must be there, empty, fresh and restored
    pipe = """
name: e
stages:
  - id: each
    type: shell
    foreach: src
    config: {cmd: "cp {inputs.src} {outputs.d}/{item.name}", inputs: {src: data/items},
             outputs: {d: build/each}}
  - id: count
    type: shell
    config: {cmd: "ls {inputs.d} | wc -l > {outputs.o}", inputs: {d: "{each.d}"},
             outputs: {o: build/n.txt}}
"""
    proj = project(pipe, {})
    proj.path("data/items").mkdir(parents=True)
    proj.cli("build")
    assert proj.path("build/each").is_dir() and not any(proj.path("build/each").iterdir())
    assert proj.read("build/n.txt").strip() == "0"
    proj.path("build/each").rmdir()
    proj.cli("build")
    assert proj.path("build/each").is_dir()
