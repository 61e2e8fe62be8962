"""The stat cache: an unchanged tree is not read again (``Hasher.reads`` counts reads)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from pipemake.fshash import Hasher
from pipemake.hashing import hash_bytes
from pipemake.state import WorkspaceState

FILES = {f"data/{n}.txt": f"file {n}\n" for n in "abcde"} | {"data/sub/f.txt": "deep\n"}
PAST = time.time() - 3600


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Six files with mtimes an hour old, so a hash taken now is trusted later."""
    for rel, text in FILES.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.utime(p, (PAST, PAST))
    return tmp_path


def _hash(root: Path) -> tuple[list, int]:
    """Hash ``data`` with a fresh Hasher over a freshly opened state; persist the stat rows."""
    state = WorkspaceState(root / ".pipemake" / "state.db")
    try:
        h = Hasher(str(root), state)
        entries = h.tree("data")
        h.flush()
        return entries, h.reads
    finally:
        state.close()


def test_first_hash_reads_every_file(tree: Path) -> None:
    entries, reads = _hash(tree)
    assert reads == len(FILES)
    assert {e[0]: e[1] for e in entries} == {
        rel.removeprefix("data/"): hash_bytes(text.encode()) for rel, text in FILES.items()
    }


def test_unchanged_tree_is_not_read_again(tree: Path) -> None:
    first, _ = _hash(tree)
    again, reads = _hash(tree)
    assert reads == 0
    assert again == first


def test_a_touched_file_is_read_again_and_keeps_its_hash(tree: Path) -> None:
    first, _ = _hash(tree)
    os.utime(tree / "data/b.txt", (PAST + 5, PAST + 5))
    again, reads = _hash(tree)
    assert reads == 1
    assert again == first


def test_a_changed_file_is_read_again(tree: Path) -> None:
    first, _ = _hash(tree)
    p = tree / "data/sub/f.txt"
    p.write_text("DEEP\n")  # same size and inode; only the mtime tells
    os.utime(p, (PAST + 1, PAST + 1))
    again, reads = _hash(tree)
    assert reads == 1
    assert dict((e[0], e[1]) for e in again)["sub/f.txt"] == hash_bytes(b"DEEP\n")


def test_a_copied_tree_is_rehashed_not_trusted(tree: Path) -> None:
    _hash(tree)
    shutil.move(tree / "data", tree / "orig")
    shutil.copytree(tree / "orig", tree / "data")  # copy2: same sizes and mtimes, new inodes
    for rel in FILES:
        assert os.stat(tree / rel).st_mtime_ns == os.stat(tree / "orig" / rel[5:]).st_mtime_ns
    _, reads = _hash(tree)
    assert reads == len(FILES)


def test_a_file_written_just_now_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/new.txt").write_text("fresh\n")
    _, reads = _hash(tmp_path)
    assert reads == 1
    # hashed within the timestamp granularity of its last write: read again next time
    _, reads = _hash(tmp_path)
    assert reads == 1


def test_one_hasher_reads_a_file_once(tree: Path) -> None:
    h = Hasher(str(tree), None)
    h.tree("data")
    h.tree("data")
    h.info("data/a.txt")
    assert h.reads == len(FILES)


def test_info_kinds(tree: Path) -> None:
    h = Hasher(str(tree), None)
    assert h.info("data/a.txt").kind == "file"
    assert h.info("data").kind == "dir"
    assert h.info("data/nope").kind == "missing"
    assert h.info("data/a.txt").hash == hash_bytes(b"file a\n")


def test_an_added_and_a_removed_file_change_the_tree(tree: Path) -> None:
    first, _ = _hash(tree)
    (tree / "data/sub/new.txt").write_text("new\n")
    os.utime(tree / "data/sub/new.txt", (PAST, PAST))
    again, reads = _hash(tree)
    assert reads == 1
    assert [e[0] for e in again] == sorted([e[0] for e in first] + ["sub/new.txt"])
    (tree / "data/a.txt").unlink()
    last, reads = _hash(tree)
    assert reads == 0
    assert "a.txt" not in [e[0] for e in last] and len(last) == len(first)


def test_a_settled_tree_is_answered_from_its_row(tree: Path) -> None:
    """Once no file is racy, an unchanged walk reuses the stored tree: same hash and entries,
    decoded only when asked for, and no per-file stat rows are consulted."""
    first, _ = _hash(tree)
    state = WorkspaceState(tree / ".pipemake" / "state.db")
    try:
        state.stats.stat_rows = None  # type: ignore[assignment]  # any per-file lookup would fail
        state.stats.stat_row = None  # type: ignore[assignment]
        info = Hasher(str(tree), state).tree_info("data")
        assert info.entries == first
    finally:
        state.close()


def test_a_rewrite_hidden_behind_the_same_mtime_is_found_while_racy(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    p = tmp_path / "data/x.txt"
    p.write_text("one\n")
    mtime = os.stat(p).st_mtime_ns
    _hash(tmp_path)  # hashed within a second of the write: the tree row is racy
    p.write_text("two\n")  # same size and inode
    os.utime(p, ns=(mtime, mtime))  # and the very same mtime
    again, reads = _hash(tmp_path)
    assert reads == 1
    assert again[0][1] == hash_bytes(b"two\n")


@pytest.mark.parametrize("column, value", [("data", b"garbage"), ("data", "text"), ("racy", 1),
                                           ("hash", "0" * 32), ("sig", "x")])  # fmt: skip
def test_a_damaged_tree_row_is_no_row(tree: Path, column: str, value: str) -> None:
    """A row that is not what was written is ignored: the tree is hashed file by file
    (from the per-file stat rows), never answered from it, never a crash."""
    import sqlite3

    first, _ = _hash(tree)
    db = sqlite3.connect(tree / ".pipemake" / "state.db")
    with db:
        db.execute(f"UPDATE trees SET {column}=?", (value,))
    db.close()
    (tree / "data/c.txt").write_text("file C\n")
    os.utime(tree / "data/c.txt", (PAST + 9, PAST + 9))
    again, reads = _hash(tree)
    assert dict((e[0], e[1]) for e in again)["c.txt"] == hash_bytes(b"file C\n")
    assert [e[0] for e in again] == [e[0] for e in first]


def test_a_rewrite_that_restores_size_and_mtime_is_read_again(tree: Path) -> None:
    """``cp -p`` onto an existing file keeps its inode, size and mtime; the ctime (which no
    tool can set) still tells."""
    first, _ = _hash(tree)
    p = tree / "data/d.txt"
    st = os.stat(p)
    time.sleep(0.01)
    p.write_text("FILE d\n")  # same size, same inode
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the very same mtime
    assert os.stat(p).st_mtime_ns == st.st_mtime_ns and os.stat(p).st_ino == st.st_ino
    again, reads = _hash(tree)
    assert reads == 1
    assert dict((e[0], e[1]) for e in again)["d.txt"] == hash_bytes(b"FILE d\n")

    def single() -> tuple[str, int]:  # the per-file stat cache, as for a file input
        state = WorkspaceState(tree / ".pipemake" / "state.db")
        try:
            h = Hasher(str(tree), state)
            digest = h.info("data/e.txt").hash
            h.flush()
            return digest, h.reads
        finally:
            state.close()

    e = tree / "data/e.txt"
    assert single()[1] == 1 and single()[1] == 0  # hashed once, then trusted
    st = os.stat(e)
    e.write_text("FILE e\n")
    os.utime(e, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert single() == (hash_bytes(b"FILE e\n"), 1)


@pytest.mark.parametrize("racy", [True, False])
def test_a_file_racy_at_the_last_walk_is_read_again_when_another_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, racy: bool
) -> None:
    """On a filesystem whose timestamps are too coarse to show a rewrite, only the hash of
    a file written well before it was hashed can be trusted: when another file of the tree
    changes, a file that was racy at the last walk is read again even though its stat row
    did not move; one that was settled is not."""
    from pipemake import fshash, walk

    for n in "abc":
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / f"data/{n}.txt").write_text(f"file {n}\n")
        if n != "a" or not racy:  # only a.txt may be racy
            os.utime(tmp_path / f"data/{n}.txt", (PAST, PAST))
    _hash(tmp_path)
    stale = {r[0]: r for r in walk.walk(str(tmp_path / "data"))}
    (tmp_path / "data/a.txt").write_text("FILE a\n")  # same size
    (tmp_path / "data/c.txt").write_text("other, longer\n")  # this one shows

    def coarse(base: str, left: list | None = None) -> list:  # a.txt's rewrite: unseen
        return [stale["a.txt"] if r[0] == "a.txt" else r for r in walk.walk(base, left)]

    monkeypatch.setattr(fshash, "walk", coarse)
    again, reads = _hash(tmp_path)
    got = {e[0]: e[1] for e in again}
    assert got["c.txt"] == hash_bytes(b"other, longer\n")
    assert got["b.txt"] == hash_bytes(b"file b\n")  # settled and unchanged: not read
    if racy:
        assert reads == 2 and got["a.txt"] == hash_bytes(b"FILE a\n")
    else:  # settled: trusted, as the stat cache must (the rewrite kept every stat field)
        assert reads == 1 and got["a.txt"] == hash_bytes(b"file a\n")


def test_a_file_removed_and_another_added_reads_only_the_new_one(tree: Path) -> None:
    """Same count, shifted rows: the files between are still known by their stat rows."""
    first, _ = _hash(tree)
    (tree / "data/a.txt").unlink()
    (tree / "data/z.txt").write_text("new\n")
    os.utime(tree / "data/z.txt", (PAST, PAST))
    again, reads = _hash(tree)
    assert reads == 1
    assert [e[0] for e in again] == sorted([e[0] for e in first if e[0] != "a.txt"] + ["z.txt"])
