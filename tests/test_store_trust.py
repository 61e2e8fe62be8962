"""The store is untrusted input (a shared ``--cache-dir``, a CI cache another job wrote).

Each test tampers with a store a real build wrote, as a writer of a shared cache could, and
shows that the worst outcome is a miss (the stage runs again): no file outside the store is
deleted, overwritten or granted anything, nothing hangs, nothing ends in a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHAIN_STAGES, TRACEBACK, Proj, shell_foreach, wait_for

from pipemake.hashing import hash_bytes
from pipemake.store import Store
from pipemake.trust import entry_problem, is_digest, safe_mode, safe_relpath

UPPER = b"HELLO\nWORLD\n"


def _store(p: Proj) -> Path:
    return p.path(".pipemake/store")


def _object(p: Proj, data: bytes) -> Path:
    d = hash_bytes(data)
    return _store(p) / "objects" / d[:2] / d[2:]


def _rows(p: Proj) -> dict[str, dict]:
    con = sqlite3.connect(_store(p) / "actions.db")
    rows = {k: json.loads(e) for k, e in con.execute("SELECT key, entry FROM actions")}
    con.close()
    return rows


def _key_of(p: Proj, stage: str) -> str:
    keys = [k for k, e in _rows(p).items() if e.get("stage") == stage]
    assert len(keys) == 1
    return keys[0]


def _set_entry(p: Proj, key: str, entry: object) -> None:
    text = entry if isinstance(entry, str | bytes) else json.dumps(entry)
    con = sqlite3.connect(_store(p) / "actions.db", isolation_level=None)
    con.execute("UPDATE actions SET entry=? WHERE key=?", (text, key))
    con.close()


def _victim(tmp_path: Path, name: str = "victim.txt") -> Path:
    """A read-only file outside the store and the project that nothing may touch."""
    victim = tmp_path / "outside" / name
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("precious\n")
    victim.chmod(0o444)
    return victim


def _clean(result: object) -> None:
    output = getattr(result, "output", None) or (result.stdout + result.stderr)  # type: ignore[attr-defined]
    assert TRACEBACK not in output, output


# finding 1: a store entry names any file --------------------------------------------------
@pytest.mark.parametrize(
    "bad", ["VICTIM", "", "ab/tmp", "ab\0" + "0" * 29, hash_bytes(UPPER).upper(), "abc123"]
)
def test_a_hash_that_is_not_a_digest_is_a_miss_never_a_path(
    chain: Proj, tmp_path: Path, bad: str
) -> None:
    victim = _victim(tmp_path)
    bad = bad.replace("VICTIM", "xx" + str(victim))  # objects/xx + an absolute path
    chain.cli("build")
    key = _key_of(chain, "upper")
    entry = _rows(chain)[key]
    entry["outputs"]["out"]["hash"] = bad
    _set_entry(chain, key, entry)
    os.remove(chain.path("build/upper.txt"))
    _clean(chain.cli("build"))
    assert victim.read_text() == "precious\n"
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert chain.runs("upper") == 2  # a miss: it ran again


def test_a_directory_entry_naming_a_file_outside_is_refused(chain: Proj, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    chain.cli("build")
    key = _key_of(chain, "report")
    entry = _rows(chain)[key]
    entry["outputs"]["dir"]["entries"][0][1] = "xx" + str(victim)
    _set_entry(chain, key, entry)
    r = chain.cli("cache", "verify", code=1)
    assert "damaged entry" in r.output and "not a digest" in r.output
    shutil.rmtree(chain.path("build/report"))
    _clean(chain.cli("build"))
    assert victim.read_text() == "precious\n"
    assert chain.read("build/report/n.txt") == "2\n"
    assert chain.runs("report") == 2


@pytest.mark.parametrize(
    "relpath",
    [
        "/abs.txt",
        "../up.txt",
        "a/../../up.txt",
        "a//b.txt",
        "./a.txt",
        "a/",
        "nul\0.txt",
        "\ud800.txt",
    ],  # fmt: skip
)
def test_manifest_paths_that_leave_the_output_are_a_miss(
    chain: Proj, tmp_path: Path, relpath: str
) -> None:
    chain.cli("build")
    key = _key_of(chain, "report")
    entry = _rows(chain)[key]
    entry["outputs"]["dir"]["entries"].append([relpath, hash_bytes(b"2\n"), 2, 0o644])
    _set_entry(chain, key, entry)
    shutil.rmtree(chain.path("build/report"))
    _clean(chain.cli("build"))
    assert chain.runs("report") == 2
    assert sorted(os.listdir(chain.path("build/report"))) == ["n.txt", "sub"]
    assert not (chain.root / "up.txt").exists() and not Path("/abs.txt").exists()


def test_a_manifest_listing_a_path_as_file_and_directory_is_a_miss(chain: Proj) -> None:
    chain.cli("build")
    key = _key_of(chain, "report")
    entry = _rows(chain)[key]
    entry["outputs"]["dir"]["entries"].append(["n.txt/x", hash_bytes(b"2\n"), 2, 0o644])
    _set_entry(chain, key, entry)
    shutil.rmtree(chain.path("build/report"))
    _clean(chain.cli("build"))
    assert chain.read("build/report/n.txt") == "2\n"
    assert chain.runs("report") == 2


# finding 6: modes -------------------------------------------------------------------------
def test_only_the_executable_bit_of_a_manifest_mode_travels(chain: Proj) -> None:
    chain.cli("build")
    rows = _rows(chain)
    upper, report = _key_of(chain, "upper"), _key_of(chain, "report")
    rows[upper]["outputs"]["out"]["mode"] = 0o6777  # setuid, setgid, world-writable
    for e in rows[report]["outputs"]["dir"]["entries"]:
        e[3] = 0o1666  # sticky, writable by all, not executable
    _set_entry(chain, upper, rows[upper])
    _set_entry(chain, report, rows[report])
    os.remove(chain.path("build/upper.txt"))
    shutil.rmtree(chain.path("build/report"))
    _clean(chain.cli("build"))
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)  # restored, not run
    assert stat.S_IMODE(os.stat(chain.path("build/upper.txt")).st_mode) == 0o755
    for rel in ("build/report/n.txt", "build/report/sub/side.txt"):
        assert stat.S_IMODE(os.stat(chain.path(rel)).st_mode) == 0o644
    assert "up to date" in chain.cli("dry-run").output  # and nothing restores it again


def test_safe_mode_keeps_the_executable_bit_only() -> None:
    assert safe_mode(0o4755) == 0o755
    assert safe_mode(0o7777) == 0o755
    assert safe_mode(0o1666) == 0o644
    assert safe_mode(0o100) == 0o755


# finding 10: objects that are not regular files ---------------------------------------------
@pytest.mark.slow
def test_a_fifo_object_is_a_miss_and_never_hangs(chain: Proj) -> None:
    chain.cli("build")
    obj = _object(chain, UPPER)
    obj.unlink()
    os.mkfifo(obj)
    os.remove(chain.path("build/upper.txt"))
    chain.sub("build", timeout=60)  # a hang is a TimeoutExpired, not a stuck suite
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert stat.S_ISREG(os.lstat(obj).st_mode)  # the stage ran and put a real object back
    assert "store OK" in chain.sub("cache", "verify", timeout=60).stdout


def test_an_object_linked_to_dev_zero_is_a_miss_and_never_read(chain: Proj) -> None:
    chain.cli("build")
    obj = _object(chain, UPPER)
    obj.unlink()
    obj.symlink_to("/dev/zero")
    os.remove(chain.path("build/upper.txt"))
    chain.sub("build", timeout=60)
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert not obj.is_symlink()


def test_an_object_linked_to_a_file_outside_never_harms_it(chain: Proj, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    chain.cli("build")
    obj = _object(chain, UPPER)
    obj.unlink()
    obj.symlink_to(victim)
    r = chain.cli("cache", "verify", code=1)
    assert victim.read_text() == "precious\n"
    os.remove(chain.path("build/upper.txt"))
    chain.cli("build")
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    _clean(chain.cli("cache", "gc", "--keep-days", "0", "--grace", "0"))
    assert victim.read_text() == "precious\n" and oct(victim.stat().st_mode)[-3:] == "444"
    assert r.exit_code == 1


def test_an_object_that_is_a_directory_is_a_miss(chain: Proj) -> None:
    chain.cli("build")
    obj = _object(chain, UPPER)
    obj.unlink()
    obj.mkdir()
    (obj / "inner").write_text("x")
    os.remove(chain.path("build/upper.txt"))
    _clean(chain.cli("build"))
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert obj.is_file()


def test_an_object_of_another_size_than_recorded_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = store.put_bytes(b"abc")
    assert not store.materialize(digest, str(tmp_path / "out"), 0o644, size=4)
    assert not (tmp_path / "out").exists()
    digest = store.put_bytes(b"abc")
    assert store.materialize(digest, str(tmp_path / "out"), 0o644, size=3)
    assert (tmp_path / "out").read_bytes() == b"abc"


# finding 5: links in the objects directory --------------------------------------------------
def test_a_fan_out_directory_linked_outside_is_never_followed(chain: Proj, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = [outside / ("0" * 30), outside / "notes.txt"]
    for v in victims:
        v.write_text("precious\n")
        v.chmod(0o444)
    chain.cli("build")
    (_store(chain) / "objects" / "zz").symlink_to(outside)
    r = chain.cli("cache", "verify", code=1)
    assert "objects/zz" in r.output and "symlink" in r.output
    _clean(chain.cli("cache", "info"))
    out = chain.cli("cache", "gc", "--keep-days", "0", "--grace", "0").output
    assert "objects/zz" in out
    assert [v.read_text() for v in victims] == ["precious\n"] * 2
    assert not (_store(chain) / "objects" / "zz").exists()
    assert "store OK" in chain.cli("cache", "verify").output


def test_an_object_read_through_a_linked_fan_out_directory_is_never_deleted(
    chain: Proj, tmp_path: Path
) -> None:
    chain.cli("build")
    obj = _object(chain, UPPER)
    outside = tmp_path / "outside"
    shutil.move(obj.parent, outside)  # the real fan-out directory now lies outside
    obj.parent.symlink_to(outside)
    moved = outside / obj.name
    moved.chmod(0o644)
    moved.write_bytes(b"corrupt")  # a "corrupt object" a naive restore would delete
    os.remove(chain.path("build/upper.txt"))
    _clean(chain.cli("build"))
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"
    assert moved.read_bytes() == b"corrupt"
    assert obj.parent.is_dir() and not obj.parent.is_symlink()  # a real one replaced it
    assert obj.read_bytes() == UPPER


def test_an_objects_directory_linked_outside_is_never_written_through(
    chain: Proj, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    chain.cli("build", "upper")
    shutil.rmtree(_store(chain) / "objects")
    (_store(chain) / "objects").symlink_to(outside)
    os.remove(chain.path("build/upper.txt"))
    _clean(chain.cli("build"))
    assert list(outside.iterdir()) == []
    assert chain.read("build/report/n.txt") == "2\n"


# finding 13: damaged rows and databases ---------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "not json {",
        b"\x80\x04binary",
        '{"outputs": {"out": {"kind": "file", "hash": "../x", "size": 1, "mode": 420}}}',
        '{"outputs": {"out": {"kind": "file", "hash": "%s", "size": -1, "mode": 420}}}'
        % ("a" * 32),
        '{"outputs": {"dir": {"kind": "dir", "hash": "%s", "entries": [["a", "b", 1, 1]]}}}'
        % ("a" * 32),
        '{"map": {"hash": "ab/../..", "kind": "json"}}',
        '{"metrics": [1]}',
    ],
)
def test_damaged_rows_are_reported_by_verify_and_survive_gc(chain: Proj, text: str) -> None:
    chain.cli("build")
    _set_entry(chain, _key_of(chain, "side"), text)
    r = chain.cli("cache", "verify", code=1)
    assert "damaged entry" in r.output
    _clean(chain.cli("cache", "info"))
    _clean(chain.cli("cache", "gc"))
    r = chain.cli("cache", "verify", "--repair")
    assert "damaged entry" in r.output and "repaired" in r.output
    assert "store OK" in chain.cli("cache", "verify").output
    os.remove(chain.path("build/side.txt"))
    _clean(chain.cli("build"))
    assert chain.read("build/side.txt") == "bee\none\n"
    assert chain.runs("side") == 2


def test_rows_with_odd_sqlite_types_never_crash_verify_or_gc(chain: Proj) -> None:
    chain.cli("build")
    con = sqlite3.connect(_store(chain) / "actions.db", isolation_level=None)
    con.execute("INSERT INTO actions VALUES (?, ?, ?, ?)", (b"\x00blob", "{}", "soon", 0))
    con.execute("UPDATE actions SET created='yesterday'")
    con.execute("UPDATE meta SET value='many' WHERE name='removals'")
    con.close()
    _clean(chain.cli("cache", "verify", code=1))
    _clean(chain.cli("cache", "gc", "--keep-days", "0", "--grace", "0"))
    _clean(chain.cli("build"))
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


def test_a_garbage_action_cache_is_a_clear_error_and_repairable(chain: Proj) -> None:
    chain.cli("build")
    db = _store(chain) / "actions.db"
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    db.write_bytes(b"this is not a database at all" * 100)
    os.remove(chain.path("build/upper.txt"))
    r = chain.cli("build", code=1)
    assert TRACEBACK not in r.output
    assert "actions.db" in r.output and "cache verify --repair" in r.output
    assert "only a cache" in r.output
    r = chain.cli("cache", "verify", code=1)
    assert "cache verify --repair" in r.output
    assert "deleted" in chain.cli("cache", "verify", "--repair").output
    chain.cli("build")
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"


# finding 9: gc beside builds and other workspaces -----------------------------------------
def test_gc_keeps_objects_a_running_build_wrote_but_has_not_committed(chain: Proj) -> None:
    chain.cli("build")
    store = Store(_store(chain))
    digest = store.put_bytes(b"written by a build that has not committed yet")
    store.close()
    chain.cli("cache", "gc", "--keep-days", "0")
    assert Store(_store(chain)).has_object(digest)
    chain.cli("cache", "gc", "--keep-days", "0", "--grace", "0")  # told no build runs
    assert not Store(_store(chain)).has_object(digest)
    assert "store OK" in chain.cli("cache", "verify").output


def test_gc_tolerates_names_vanishing_while_it_lists(
    chain: Proj, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipemake.objects as objects_mod

    chain.cli("build")
    tmp = _object(chain, UPPER).parent / ".tmp-1-2-x"
    tmp.write_text("half")
    real = objects_mod.list_dir

    def vanishing(fd: int) -> list[os.DirEntry[str]]:
        got = real(fd)
        tmp.unlink(missing_ok=True)  # renamed by its writer between listing and stat
        return got

    monkeypatch.setattr(objects_mod, "list_dir", vanishing)
    _clean(chain.cli("cache", "gc", "--keep-days", "0", "--grace", "0"))
    _clean(chain.cli("cache", "verify"))


WAITING = shell_foreach(
    "echo {item.name} >> runs/items.log; cp {inputs.src} {outputs.o}/{item.name};"
    " if [ {item.name} = b.txt ]; then touch runs/waiting;"
    " while [ ! -e runs/go ]; do sleep 0.02; done; fi"
)


@pytest.mark.slow
def test_gc_elsewhere_during_a_build_leaves_every_entry_its_objects(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """A build that has stored some items' objects and is still running while another
    workspace on the same store runs ``cache gc --keep-days 0``: the build commits entries
    whose objects are all there, and the next build restores instead of running."""
    files = {"data/a.txt": "a\n", "data/b.txt": "b\n", "data/c.txt": "c\n"}
    w1 = project(WAITING, files)
    w2 = project(SHARED.format(name="other"), name="other")
    env = {"PIPEMAKE_CACHE_DIR": str(tmp_path / "shared")}
    w2.cli("build", env=env)
    proc = w1.popen("build", "-j", "2", env=env)
    wait_for(lambda: w1.exists("runs/waiting"), 60, "the build to wait in item b")
    _clean(w2.cli("cache", "gc", "--keep-days", "0", env=env))
    w1.write("runs/go", "")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "store OK" in w1.cli("cache", "verify", env=env).output
    shutil.rmtree(w1.path("build/each"))
    w1.path("runs/items.log").unlink()
    w1.cli("build", env=env)
    assert not w1.exists("runs/items.log")  # restored, nothing ran
    assert w1.read("build/each/b.txt") == "b\n"


SHARED = """
name: {name}
stages:
  - id: s
    type: shell
    config:
      cmd: "echo x >> runs/s.count; echo {name} > {{outputs.o}}"
      outputs: {{o: build/o.txt}}
"""


def test_gc_from_one_workspace_keeps_another_workspaces_entries(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    a = project(SHARED.format(name="alpha"), name="a")
    b = project(SHARED.format(name="beta"), name="b")
    env = {"PIPEMAKE_CACHE_DIR": str(tmp_path / "shared")}
    a.cli("build", env=env)
    b.cli("build", env=env)
    a.cli("cache", "gc", "--keep-days", "0", "--grace", "0", env=env)
    os.remove(b.path("build/o.txt"))
    b.cli("build", env=env)
    assert b.runs("s") == 1  # restored from the shared store: its entry was kept
    assert b.read("build/o.txt") == "beta\n"
    # a workspace that is gone releases its roots
    b.path("pipemake.yaml").unlink()
    a.cli("cache", "gc", "--keep-days", "0", "--grace", "0", env=env)
    info = a.cli("cache", "info", env=env).output
    assert "entries: 1" in info


@pytest.mark.slow
def test_damaged_roots_records_are_ignored_and_reported(chain: Proj) -> None:
    chain.cli("build")
    roots = _store(chain) / "roots"
    own = sorted(roots.iterdir())
    assert len(own) == 1
    (roots / ("a" * 32 + ".json")).write_text("{nope")
    os.mkfifo(roots / ("b" * 32 + ".json"))
    (roots / ("c" * 32 + ".json")).symlink_to("/dev/zero")
    r = chain.sub("cache", "verify", code=1, timeout=60)
    assert "roots/" + "a" * 32 in r.stdout
    chain.sub("cache", "gc", "--keep-days", "0", "--grace", "0", timeout=60)
    assert sorted(roots.iterdir()) == own  # the damaged ones are gone, as names only
    assert "store OK" in chain.sub("cache", "verify", timeout=60).stdout


# the checks themselves -------------------------------------------------------------------
def test_digest_and_path_checks() -> None:
    assert is_digest(hash_bytes(b"x"))
    for bad in ("", "ab/tmp", "A" * 32, "a" * 31, "a" * 33, "a" * 31 + "\0", None, 7):
        assert not is_digest(bad)
    assert safe_relpath("a/b.txt") and safe_relpath("..x") and safe_relpath("a b")
    for bad in ("", ".", "..", "/a", "a/../b", "a//b", "a/", "a\0b", "\ud800"):
        assert not safe_relpath(bad)
    assert entry_problem({"outputs": {}, "values": {}}) is None
    assert "not a digest" in (entry_problem({"map": {"hash": "x", "kind": "json"}}) or "")


@pytest.mark.parametrize("n", [3, 100])  # one item's few files; a big directory output
def test_manifest_checks_agree_for_small_and_big_directories(n: int) -> None:
    def manifest(last: list) -> dict:
        entries = [[f"f{i:03d}", hash_bytes(b"%d" % i), 1, 0o644] for i in range(n)]
        return {"kind": "dir", "hash": "a" * 32, "entries": [*entries, last]}

    ok = manifest(["z/y", "b" * 32, 0, 0o4755])
    assert entry_problem({"outputs": {"d": ok}}) is None
    assert ok["entries"][-1][3] == 0o755  # narrowed to the executable bit
    for bad in (["../z", "b" * 32, 0, 0o644], ["f000", "b" * 32, 0, 0o644],
                ["f001/x", "b" * 32, 0, 0o644], ["z", "B" * 32, 0, 0o644],
                ["z", "b" * 32, -1, 0o644], ["z", "b" * 32, 0, "0644"], ["z", "b" * 32, 0],
                ["z\0", "b" * 32, 0, 0o644], ["z", "b" * 32, True, 0o644]):  # fmt: skip
        assert entry_problem({"outputs": {"d": manifest(bad)}}) is not None, bad


@pytest.mark.parametrize("how", ["symlink", "hard link"])
@pytest.mark.parametrize("name", ["actions.db", "actions.db-wal", "actions.db-shm"])
def test_action_cache_files_linked_outside_are_never_written_through(
    chain: Proj, tmp_path: Path, name: str, how: str
) -> None:
    chain.cli("build")
    victim = tmp_path / "outside" / "empty.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"")  # writable and empty: SQLite would happily make it a database
    path = _store(chain) / name
    path.unlink(missing_ok=True)
    if how == "symlink":
        path.symlink_to(victim)
    else:  # another name for the victim: the store takes a copy of its own, then goes on
        os.link(victim, path)
        chain.cli("build")
        assert victim.read_bytes() == b""
        assert not path.exists() or os.stat(path).st_nlink == 1  # (SQLite may remove it)
        return
    r = chain.cli("build", code=1)
    assert name in r.output and "cache verify --repair" in r.output, r.output
    assert TRACEBACK not in r.output
    chain.cli("cache", "verify", "--repair")
    assert victim.read_bytes() == b"" and not path.is_symlink()
    chain.cli("build")
    assert chain.read("build/upper.txt") == "HELLO\nWORLD\n"


def test_a_store_whose_objects_directory_is_removed_meanwhile_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = store.put_bytes(b"one")
    shutil.rmtree(tmp_path / "store" / "objects")
    assert not store.has_object(digest)
    assert store.put_bytes(b"one") == digest  # written anew into a new objects directory
    assert store.read_bytes(digest) == b"one"
    assert Store(tmp_path / "store").read_bytes(digest) == b"one"


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_an_input_that_is_a_device_or_fifo_fails_its_stage_and_never_hangs(
    project, special: str
) -> None:
    """A device never ends and a FIFO waits for a writer: such an input (named by the
    pipeline, or by a computed value a shared store could tamper with) fails its stage at
    once, named, instead of hashing forever or waiting."""
    p = project(
        "stages:\n  - id: a\n    type: shell\n"
        f"    config: {{cmd: 'echo x > {{outputs.o}}', inputs: {{i: {special}}}, "
        "outputs: {o: out.txt}}\n"
    )
    if special == "fifo":
        os.mkfifo(p.path("fifo"))
    done = p.sub("build", code=1, timeout=60)
    assert "is not a regular file or a folder (a device, FIFO or socket)" in done.stderr
    assert "Traceback" not in done.stderr and not p.exists("out.txt")


TWO = """
stages:
  - id: a
    type: shell
    config: {cmd: "echo A > {outputs.o}", outputs: {o: build/a.txt}}
  - id: b
    type: shell
    config: {cmd: "echo B > {outputs.o}", outputs: {o: build/b.txt}}
"""


def _rewrite(store: Path, stage: str, change: Callable[[dict, dict], object]) -> dict:
    """What a writer of a shared store can do: ``change(entry, entries by stage)`` the
    entry of ``stage`` in place (its signature dropped); the rewritten entry."""
    db = sqlite3.connect(store / "actions.db")
    rows = {
        json.loads(e)["stage"]: (k, json.loads(e))
        for k, e in db.execute("SELECT key, entry FROM actions")
    }
    key, entry = rows[stage]
    change(entry, {sid: e for sid, (_k, e) in rows.items()})
    entry.pop("signature", None)
    db.execute("UPDATE actions SET entry=? WHERE key=?", (json.dumps(entry), key))
    db.commit()
    db.close()
    return entry


def _redirect(store: Path, victim: str, source: str) -> None:
    """Make stage ``victim``'s entry name the (valid, present) output object of ``source``."""
    _rewrite(store, victim, lambda entry, rows: entry.update(outputs=rows[source]["outputs"]))


def test_with_a_cache_key_a_rewritten_shared_entry_is_a_miss(project, tmp_path: Path) -> None:
    """PIPEMAKE_CACHE_KEY signs the entries a build commits to its store too: an entry a
    writer of the shared cache rewrote (without the key) is ignored, said once, and the
    stage runs; the signed ones restore."""
    key = {"PIPEMAKE_CACHE_KEY": "team-secret"}
    cache = tmp_path / "shared"
    p = project(TWO)
    p.cli("build", "--cache-dir", str(cache), env=key)
    _redirect(cache, "a", "b")
    shutil.rmtree(p.path("build"))
    out = p.cli("build", env=key).output
    assert p.read("build/a.txt") == "A\n" and p.read("build/b.txt") == "B\n"
    assert "ignored 1 entry of the store" in out and "not signed with PIPEMAKE_CACHE_KEY" in out
    assert "b: restored" in out and "a: running" in out
    shutil.rmtree(p.path("build"))
    again = p.cli("build", env=key).output  # a's entry is signed again now
    assert "2 restored" in again and "ignored" not in again


def test_a_restore_that_contradicts_the_lock_is_said(project, tmp_path: Path) -> None:
    """Without a key the shared cache is trusted (README, "Trust"), but ``pipemake.lock``,
    committed with the project, names the outputs each key made: a restore that names
    others is said, with how to run the stage instead."""
    cache = tmp_path / "shared"
    p = project(TWO)
    p.cli("build", "--cache-dir", str(cache))
    assert p.exists("pipemake.lock")
    _redirect(cache, "a", "b")
    shutil.rmtree(p.path("build"))
    out = p.cli("build").output
    assert "are not the ones pipemake.lock records for the same key" in out
    assert "--force-stage a" in out


@pytest.mark.parametrize("recorded", [5, 13, 10**19])
def test_an_entry_recording_another_size_than_its_object_is_a_miss(
    project, tmp_path: Path, recorded: int
) -> None:
    """The object is right, the entry lies about its size: a miss (the stage runs), and the
    object, which is not at fault, stays in the store."""
    cache = tmp_path / "shared"
    p = project(TWO)
    p.cli("build", "--cache-dir", str(cache))
    entry = _rewrite(cache, "a", lambda e, _rows: e["outputs"]["o"].update(size=recorded))
    obj = cache / "objects" / entry["outputs"]["o"]["hash"][:2] / entry["outputs"]["o"]["hash"][2:]
    assert obj.is_file()
    shutil.rmtree(p.path("build"))
    out = p.cli("build").output
    assert "a: running" in out and "b: restored" in out, out
    assert p.read("build/a.txt") == "A\n"
    assert obj.is_file()


PICKS = """
stages:
  - id: pick
    type: python
    config:
      function: "trust_picks:pick"
      inputs: {src: data/in.txt}
      outputs: {o: build/pick.txt}
  - id: use
    type: shell
    config:
      cmd: "cat {inputs.i} > {outputs.o}"
      inputs: {i: "{pick.best}"}
      outputs: {o: build/use.txt}
"""
PICKS_MODULE = """
from pathlib import Path


def pick(ctx):
    Path(ctx.outputs["o"]).write_text("picked\\n")
    return {"best": "data/in.txt"}
"""


@pytest.mark.parametrize("where", ["absolute", "relative", "symlink", "workspace"])
def test_a_computed_value_never_leads_a_stage_to_a_file_outside_the_project(
    project, tmp_path: Path, where: str
) -> None:
    """A computed value in a shared store, rewritten to name the user's secret, would make
    the next stage read it (and a push send it on): a path a value gives must lie inside
    the project (or a path the pipeline names), by its text and through any symlink of the
    user's on the way, and not in ``.pipemake``; else the stage fails, saying so, and the
    secret goes nowhere."""
    files = {"data/in.txt": "public\n", "trust_picks.py": PICKS_MODULE}
    cache = tmp_path / "shared"
    first = project(PICKS, files, name="first")
    first.cli("build", "--cache-dir", str(cache))
    assert first.read("build/use.txt") == "public\n"
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's secret\n")
    value = {"absolute": str(secret), "relative": "../secret.txt",
             "symlink": "data/mine/secret.txt", "workspace": ".pipemake/secret.txt"}[where]  # fmt: skip
    _rewrite(cache, "pick", lambda e, _rows: e["values"].update(best=value))
    second = project(PICKS, files, name="second")
    second.path("data/mine").symlink_to(tmp_path)  # a folder of the user's, linked in
    if where == "workspace":
        second.cli("validate")
        second.path(".pipemake").mkdir(exist_ok=True)
        shutil.copy(secret, second.path(".pipemake/secret.txt"))
    r = second.cli("build", "--cache-dir", str(cache), code=1)
    assert "pick: restored" in r.output
    assert f"input 'i' is {os.path.normpath(value)}" in r.output
    assert "outside the project or a path the pipeline names" in r.output
    assert "comes from a computed value ({pick.best})" in r.output and TRACEBACK not in r.output
    assert not second.exists("build/use.txt")
    stored = b"".join(f.read_bytes() for f in cache.rglob("*") if f.is_file())
    assert b"the user's secret" not in stored


def test_a_fifo_inside_a_folder_is_left_out_and_never_waited_on(project) -> None:
    """A FIFO (or socket) inside an input or output folder holds no file: hashing the
    folder leaves it out instead of waiting for a writer for ever (build and status)."""
    p = project(
        shell_foreach("cp {inputs.src} {outputs.o}/{item.name}"),
        {"data/a.txt": "a\n", "data/b.txt": "b\n"},
    )
    os.mkfifo(p.path("data/pipe"))
    p.sub("build", timeout=60)
    assert sorted(os.listdir(p.path("build/each"))) == ["a.txt", "b.txt"]
    os.mkfifo(p.path("build/each/pipe"))
    assert "up to date" in p.sub("status", timeout=60).stdout
    assert "0 ran" in p.sub("build", timeout=60).stderr


def test_values_that_contradict_the_lock_are_said(project, tmp_path: Path) -> None:
    """Without a key the shared store is trusted, values too; but a value that is not the
    one the committed lock records for the same key is said, with how to run the stage."""
    files = {"data/in.txt": "public\n", "data/other.txt": "other\n", "trust_picks.py": PICKS_MODULE}
    cache = tmp_path / "shared"
    p = project(PICKS, files)
    p.cli("build", "--cache-dir", str(cache))
    _rewrite(cache, "pick", lambda e, _rows: e["values"].update(best="data/other.txt"))
    p.path("build/use.txt").unlink()
    out = p.cli("build").output
    assert "pick: " in out and "(its computed values) are not the ones pipemake.lock" in out
    assert "used all the same" in out and "--force-stage pick" in out


def test_a_project_copied_with_hard_links_builds_with_a_store_of_its_own(
    chain: Proj, tmp_path: Path
) -> None:
    """``cp -al`` (a quick copy of a big project): the copy's action cache is another name
    for the original's file; the first build gives it a file of its own and goes on, and
    the original's store is never written by the copy."""
    chain.cli("build")
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(chain.root), str(copy)], check=True)
    before = (_store(chain) / "actions.db").read_bytes()
    other = Proj(copy)
    assert "0 ran" in other.cli("build").output
    for db in (".pipemake/state.db", ".pipemake/store/actions.db"):  # files of its own now
        assert os.stat(copy / db).st_nlink == 1 and os.stat(chain.path(db)).st_nlink == 1
    other.path("data/a.txt").unlink()  # (writing it in place would change the original's too)
    other.write("data/a.txt", "changed\n")
    other.cli("build")
    assert (_store(chain) / "actions.db").read_bytes() == before
    assert "0 ran" in chain.cli("build").output


#: PICKS whose pick reads an index file of ``data`` and names the file it lists
LINKED = PICKS.replace("trust_picks", "trust_linked").replace(
    "{src: data/in.txt}", "{index: data/index.txt}"
)
LINKED_MODULE = """
from pathlib import Path


def pick(ctx):
    Path(ctx.outputs["o"]).write_text("picked\\n")
    return {"best": "data/" + Path(ctx.inputs["index"]).read_text().strip()}
"""


def test_a_value_may_name_another_file_of_a_linked_folder_the_pipeline_reads(
    project, tmp_path: Path
) -> None:
    """``data`` links to a big disk and the pipeline reads ``data/index.txt``: a value naming
    another file of ``data`` is the pipeline's own data, not a path leading elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / "index.txt").write_text("x.txt\n")
    (disk / "x.txt").write_text("big data\n")
    p = project(LINKED, {"trust_linked.py": LINKED_MODULE})
    p.path("data").symlink_to(disk)
    p.cli("build")
    assert p.read("build/use.txt") == "big data\n"
