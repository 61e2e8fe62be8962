"""``build --fsync`` (env ``PIPEMAKE_FSYNC``): every store object, its directory entry and
every entry commit are flushed to disk before they count; without it, nothing is."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable

import pytest
from conftest import Proj

from pipemake import store as store_mod

ONE = """
name: t
stages:
  - id: a
    type: shell
    config:
      cmd: "tr a-z A-Z < {inputs.i} > {outputs.o}"
      inputs: {i: in.txt}
      outputs: {o: build/a.txt}
"""


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """What was fsync-ed (files and directories)."""
    seen: dict[str, list] = {"fsync": []}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        seen["fsync"].append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.parametrize("how", ["flag", "env", "off"])
def test_fsync_flushes_objects_their_directories_and_commits(
    project: Callable[..., Proj], synced: dict[str, list], how: str
) -> None:
    proj = project(ONE, {"in.txt": "hello\n"})
    args = ["--fsync"] if how == "flag" else []
    env = {"PIPEMAKE_FSYNC": "1"} if how == "env" else None
    proj.cli("build", *args, env=env)
    assert proj.read("build/a.txt") == "HELLO\n"
    objects = str(proj.path(".pipemake/store/objects"))
    flushed = [p for p in synced["fsync"] if p.startswith(objects)]
    if how == "off":
        assert flushed == []
        return
    # the object's bytes, under its temporary name, before the rename to its own
    assert any(os.path.basename(p).startswith(".tmp-") for p in flushed), flushed
    assert any(os.path.isdir(p) for p in flushed), flushed  # then its fan-out directory
    db = sqlite3.connect(proj.path(".pipemake/store/actions.db"))
    assert db.execute("SELECT count(*) FROM actions").fetchone()[0] >= 1
    db.close()


def test_entry_commits_are_synchronous_full_while_fsync_is_on(tmp_path) -> None:
    s = store_mod.Store(tmp_path / "store")
    s.put_action("k", {"outputs": {}})
    assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    s.set_fsync(True)
    assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s.set_fsync(False)
    assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 1
    s.close()
    fresh = store_mod.Store(tmp_path / "store", fsync=True)
    assert fresh.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    fresh.close()
