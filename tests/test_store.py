"""The store: objects verified before they are restored, a corrupt object is a miss (never a
wrong output), rows are JSON only (a tampered row cannot run code), workspace edits never
reach the store."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from conftest import CHAIN_STAGES, TRACEBACK, Proj

from pipemake.hashing import hash_bytes

UPPER = b"HELLO\nWORLD\n"


def _object(p: Proj, data: bytes) -> Path:
    d = hash_bytes(data)
    path = p.path(".pipemake/store/objects") / d[:2] / d[2:]
    assert path.is_file(), f"no object for {data!r}"
    return path


def _flip_byte(path: Path) -> None:
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))


def _actions(p: Proj) -> sqlite3.Connection:
    return sqlite3.connect(p.path(".pipemake/store/actions.db"), isolation_level=None)


def _key_of(p: Proj, stage: str) -> str:
    con = _actions(p)
    rows = [(k, json.loads(e)) for k, e in con.execute("SELECT key, entry FROM actions")]
    con.close()
    keys = [k for k, e in rows if e.get("stage") == stage]
    assert len(keys) == 1, rows
    return keys[0]


def _set_entry(p: Proj, key: str, text: str) -> None:
    con = _actions(p)
    con.execute("UPDATE actions SET entry=? WHERE key=?", (text, key))
    con.close()


def test_objects_are_read_only(chain: Proj) -> None:
    chain.cli("build")
    obj = _object(chain, UPPER)
    assert not os.stat(obj).st_mode & 0o222


def test_corrupt_object_is_detected_on_restore_and_the_stage_reruns(chain: Proj) -> None:
    chain.cli("build")
    _flip_byte(_object(chain, UPPER))
    os.remove(chain.path("build/upper.txt"))
    r = chain.cli("build")
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert chain.runs("upper") == 2
    assert chain.run_counts() == {"upper": 2, "lines": 1, "side": 1, "report": 1}
    assert "corrupt" in r.output or "missing" in r.output
    assert "store OK" in chain.cli("cache", "verify").output


def test_corrupt_object_in_a_directory_output_is_never_placed(chain: Proj) -> None:
    chain.cli("build")
    _flip_byte(_object(chain, b"bee\none\n"))
    shutil.rmtree(chain.path("build/report"))
    chain.cli("build", "report")
    assert chain.read("build/report/sub/side.txt") == "bee\none\n"
    assert chain.read("build/report/n.txt") == "2\n"
    assert chain.runs("report") == 2


def test_cache_verify_reports_a_corrupt_object(chain: Proj) -> None:
    chain.cli("build")
    digest = hash_bytes(UPPER)
    _flip_byte(_object(chain, UPPER))
    r = chain.cli("cache", "verify", code=1)
    assert digest in r.output
    assert "OK" not in r.output
    # the build after it still gives the right bytes (the outputs in place are intact)
    chain.cli("build")
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"


def test_a_workspace_edit_in_place_does_not_reach_the_store(chain: Proj) -> None:
    chain.cli("build")
    os.remove(chain.path("build/upper.txt"))
    chain.cli("build")  # restored from the store: must be a copy, not a link
    with open(chain.path("build/upper.txt"), "r+b") as fh:
        fh.write(b"JELLO")
    assert _object(chain, UPPER).read_bytes() == UPPER
    assert "store OK" in chain.cli("cache", "verify").output
    chain.cli("build")
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert chain.runs("upper") == 1


def test_tampered_row_with_garbage_is_a_miss_not_a_crash(chain: Proj) -> None:
    chain.cli("build")
    _set_entry(chain, _key_of(chain, "side"), "\x80\x04garbage-not-json(")
    os.remove(chain.path("build/side.txt"))
    r = chain.cli("build")
    assert TRACEBACK not in r.output
    assert chain.read("build/side.txt") == "bee\none\n"
    assert chain.run_counts() == {"upper": 1, "lines": 1, "side": 2, "report": 1}


def test_tampered_row_with_a_pickle_is_never_unpickled(chain: Proj, tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    chain.cli("build")
    key = _key_of(chain, "side")
    con = _actions(chain)
    con.execute("UPDATE actions SET entry=? WHERE key=?", (pickle.dumps(Evil()), key))
    con.close()
    os.remove(chain.path("build/side.txt"))
    r = chain.cli("build")
    assert TRACEBACK not in r.output
    assert not marker.exists()
    assert chain.read("build/side.txt") == "bee\none\n"
    chain.cli("cache", "verify", code=None)
    chain.cli("cache", "info")
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        '"just a string"',
        '{"outputs": "nope"}',
        '{"outputs": {"out": 7}}',
        '{"outputs": {"out": {"kind": "file"}}}',
        "{}",
    ],
)
def test_tampered_row_of_the_wrong_shape_is_a_miss(chain: Proj, text: str) -> None:
    chain.cli("build", "upper")
    _set_entry(chain, _key_of(chain, "upper"), text)
    os.remove(chain.path("build/upper.txt"))
    r = chain.cli("build", "upper", code=None)
    assert TRACEBACK not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 0, r.output
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"


def test_manifest_path_escaping_the_output_is_refused(chain: Proj) -> None:
    chain.cli("build")
    key = _key_of(chain, "report")
    con = _actions(chain)
    (text,) = con.execute("SELECT entry FROM actions WHERE key=?", (key,)).fetchone()
    con.close()
    entry = json.loads(text)
    manifest = entry["outputs"]["dir"]
    n_hash = hash_bytes(b"2\n")
    manifest["entries"].append(["../../escaped.txt", n_hash, 2, 0o644])
    _set_entry(chain, key, json.dumps(entry))
    shutil.rmtree(chain.path("build/report"))
    r = chain.cli("build", code=None)
    assert TRACEBACK not in r.output
    assert not chain.path("escaped.txt").exists()
    assert not chain.path("build/escaped.txt").exists()
    assert not (chain.root.parent / "escaped.txt").exists()


def test_store_of_another_format_is_refused_with_a_message(chain: Proj) -> None:
    chain.cli("build")
    con = _actions(chain)
    con.execute("UPDATE meta SET value='999' WHERE name='format'")
    con.close()
    r = chain.cli("build", code=1)
    assert "format" in r.output and TRACEBACK not in r.output
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


def test_action_entries_hold_no_absolute_paths(chain: Proj) -> None:
    chain.cli("build")
    con = _actions(chain)
    texts = [e for (e,) in con.execute("SELECT entry FROM actions")]
    con.close()
    assert len(texts) == 4
    for text in texts:
        assert str(chain.root) not in text
        assert "/tmp" not in text and ".pipemake" not in text


def test_get_actions_parses_many_rows_and_isolates_damaged_ones(tmp_path) -> None:
    """Entries read in one go stay with their keys, even when a tampered row holds text
    that would shift the others (several JSON values, or none)."""
    from pipemake.store import Store

    store = Store(tmp_path / "store")
    good = {"outputs": {}, "values": {"n": 1}}
    store.put_actions([(f"k{i}", dict(good, values={"n": i})) for i in range(6)])
    rows = {"k1": '{"values": {"n": 9}}, {"values": {"n": 8}}', "k3": "", "k4": "[1"}
    for key, text in rows.items():
        store.db.execute("UPDATE actions SET entry=? WHERE key=?", (text, key))
    got = store.get_actions([f"k{i}" for i in range(7)])
    assert sorted(got) == ["k0", "k2", "k5"]
    assert {k: e["values"]["n"] for k, e in got.items()} == {"k0": 0, "k2": 2, "k5": 5}
    store.db.execute("UPDATE actions SET entry=? WHERE key=?", ("[1, 2", "k0"))
    store.db.execute("UPDATE actions SET entry=? WHERE key=?", ("3]", "k2"))
    got = store.get_actions([f"k{i}" for i in range(7)])
    assert sorted(got) == ["k5"]


def test_a_commit_that_fails_leaves_no_open_transaction(tmp_path: Path) -> None:
    """A COMMIT SQLite refuses without rolling back (here a deferred constraint; a full disk
    in the wild) is rolled back: the connection goes on working for the next write."""
    from pipemake.store import Store

    store = Store(tmp_path / "store")
    store.allow_foreign = True  # the trigger below is this test's own, standing for a full disk
    db = store.db
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE parent(y PRIMARY KEY)")
    db.execute("CREATE TABLE child(x REFERENCES parent(y) DEFERRABLE INITIALLY DEFERRED)")
    db.execute(
        "CREATE TRIGGER orphan AFTER INSERT ON actions BEGIN INSERT INTO child VALUES (1); END"
    )
    entry = {"stage": "s", "outputs": {}, "values": {}}
    with pytest.raises(sqlite3.IntegrityError):
        store.put_actions([("k1", entry)])
    assert not db.in_transaction
    db.execute("DROP TRIGGER orphan")
    store.put_actions([("k2", entry)])
    assert store.get_action("k2") is not None and store.get_action("k1") is None


def test_an_object_write_error_names_the_folder_in_the_store(tmp_path, monkeypatch) -> None:
    """Objects are written through folder descriptors, so the OS names only ``fb``: the
    error names the folder under the store instead, which the stage's message then says
    (without a traceback) with what to do."""
    import errno

    from pipemake.errors import os_failure
    from pipemake.objects import Objects
    from pipemake.store import Store

    def refuse(self, src, digest):
        raise PermissionError(errno.EPERM, "Operation not permitted", digest[:2])

    monkeypatch.setattr(Objects, "put_file", refuse)
    store = Store(tmp_path / "store")
    digest = "ab" * 16
    (tmp_path / "f").write_text("x")
    try:
        store.put_file(str(tmp_path / "f"), digest)
    except PermissionError as exc:
        assert exc.filename == str(tmp_path / "store" / "objects" / "ab")
        assert "make it writable" in str(os_failure(exc))
    else:
        raise AssertionError("the error was not raised")
