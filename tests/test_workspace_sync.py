"""``Workspace.sync_dir``: a directory output made exactly its manifest, whatever stands in
the way (a directory where a file belongs, files the manifest does not list)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipemake.fshash import Hasher
from pipemake.hashing import hash_bytes, tree_hash
from pipemake.store import Store
from pipemake.workspace import Workspace


@pytest.mark.parametrize("moved", [True, False])
def test_sync_replaces_directories_where_files_belong(tmp_path: Path, moved: bool) -> None:
    out = tmp_path / "out"
    (out / "a.txt").mkdir(parents=True)  # an empty directory
    (out / "b.txt").mkdir()
    (out / "b.txt" / "x").write_text("not listed\n")  # a directory of an unlisted file
    (out / "c.txt").write_text("old\n")
    (out / "keep.txt").write_text("keep\n")
    store = Store(tmp_path / "store")
    want = {"a.txt": b"A\n", "b.txt": b"B\n", "c.txt": b"C\n", "keep.txt": b"keep\n"}
    entries = [[rel, store.put_bytes(data), len(data), 0o644] for rel, data in sorted(want.items())]
    manifest = {"kind": "dir", "hash": tree_hash(entries), "entries": entries}
    moves: dict[str, str] = {}
    ws = Workspace(tmp_path)
    if moved:  # staged by a task, as a foreach stage's new items are
        staged = ws.staging("t")
        for rel in ("a.txt", "b.txt"):
            (staged / rel).write_bytes(want[rel])
            moves[rel] = str(staged / rel)
    assert ws.sync_dir(manifest, "out", store, Hasher(str(tmp_path)), moves)
    if moved:  # moved in, not copied from the store
        assert not any(staged.iterdir())
    got = {p.name: p.read_bytes() for p in out.iterdir()}
    assert got == want
    assert {e[0]: e[1] for e in Hasher(str(tmp_path)).tree("out")} == {
        rel: hash_bytes(data) for rel, data in want.items()
    }
