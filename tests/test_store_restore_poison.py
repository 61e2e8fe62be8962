"""Restoring outputs from a poisoned store (a shared ``--cache-dir`` or a remote that anyone
may write): a corrupt object, a lying size, a lying tree hash or a name the file system
refuses is a miss (the stage runs), never a failed build, and the workspace output stays as
it was until a complete restore is ready.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, shell_foreach

from pipemake.fshash import Hasher
from pipemake.hashing import hash_bytes, tree_hash
from pipemake.store import Store
from pipemake.workspace import Workspace

#: one stage writing a directory of 200 files: its restore runs on several threads
GEN = """
stages:
  - id: gen
    type: shell
    config:
      cmd: "echo x >> runs/gen.count; mkdir -p {outputs.d} && for i in $(seq 1 200); do echo file $i > {outputs.d}/f$i.txt; done"
      outputs: {d: build/gen}
"""
#: a directory output of unique bytes (``n.txt``, ``sub/side.txt``) and a stage reading it;
#: ``report`` fails while a file ``stop`` exists (not an input: its key stays the same)
REPORT = """
stages:
  - id: report
    type: shell
    config:
      cmd: >-
        echo x >> runs/report.count; test ! -e stop && mkdir -p {outputs.dir}/sub &&
        echo hello > {outputs.dir}/n.txt && echo side > {outputs.dir}/sub/side.txt
      outputs: {dir: build/report}
  - id: final
    type: shell
    config:
      cmd: "echo x >> runs/final.count; cat {inputs.r}/n.txt > {outputs.f}"
      inputs: {r: "{report.dir}"}
      outputs: {f: build/final.txt}
"""
EACH = shell_foreach(
    "echo {item.name} >> runs/items.log; tr a-z A-Z < {inputs.src} > {outputs.o}/{item.name}"
)
EACH_FILES = {f"data/f{i}.txt": f"item {i}\n" for i in range(1, 201)}
HONEST = {"n.txt": b"hello\n", "sub/side.txt": b"side\n"}


def _store(p: Proj) -> Path:
    return p.path(".pipemake/store")


def _object(store: Path, data: bytes) -> Path:
    d = hash_bytes(data)
    return store / "objects" / d[:2] / d[2:]


def _corrupt(obj: Path, data: bytes) -> None:
    """Overwrite an object with other bytes of the same size, as a writer of the store can."""
    obj.chmod(0o644)
    obj.write_bytes(data)


def _rewrite_rows(
    store: Path, pick: Callable[[dict], bool], change: Callable[[dict], object]
) -> int:
    """What a writer of a shared store can do: ``change(entry)`` every entry that ``pick``
    chooses, in place (its signature dropped); how many were changed."""
    db = sqlite3.connect(store / "actions.db")
    n = 0
    for key, text in db.execute("SELECT key, entry FROM actions").fetchall():
        entry = json.loads(text)
        if pick(entry):
            change(entry)
            entry.pop("signature", None)
            db.execute("UPDATE actions SET entry=? WHERE key=?", (json.dumps(entry), key))
            n += 1
    db.commit()
    db.close()
    assert n, "no entry was rewritten"
    return n


def _rewrite(store: Path, stage: str, change: Callable[[dict], object]) -> int:
    return _rewrite_rows(store, lambda e: e.get("stage") == stage, change)


def _set_entries(rows: list[list]) -> Callable[[dict], None]:
    """Make the ``dir`` output's entries ``rows`` with a tree hash that agrees with them
    (a careful writer: only what the rows say is wrong)."""

    def change(entry: dict) -> None:
        rows.sort()
        entry["outputs"]["dir"].update(entries=rows, hash=tree_hash(rows))

    return change


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _no_thread_error(out: str) -> None:
    assert "SQLite objects created in a thread" not in out, out
    assert TRACEBACK not in out, out


# finding 1: a bad object in a threaded restore -------------------------------------------
@pytest.mark.parametrize("variant", ["dir", "link", "keyed", "foreach"])
def test_one_corrupt_object_in_a_big_directory_restore_is_a_miss(
    project: Callable[..., Proj], variant: str
) -> None:
    foreach = variant == "foreach"
    p = project(EACH, EACH_FILES) if foreach else project(GEN)
    env = {"PIPEMAKE_CACHE_KEY": "team-secret"} if variant == "keyed" else None
    flags = ["--link"] if variant == "link" else []
    p.cli("build", *flags, env=env)
    _corrupt(_object(_store(p), b"ITEM 100\n" if foreach else b"file 100\n"), b"EVIL 100\n")
    shutil.rmtree(p.path("build"))
    out = p.cli("build", *flags, env=env).output
    _no_thread_error(out)
    assert "running" in out, out
    built = _files(p.path("build/each" if foreach else "build/gen"))
    assert len(built) == 200 and b"EVIL" not in b"".join(built.values())
    if foreach:
        ran = p.read("runs/items.log").split()
        assert sorted(ran[:200]) == sorted(f"f{i}.txt" for i in range(1, 201))
        assert ran[200:] == ["f100.txt"]
    else:
        assert p.runs("gen") == 2
    assert "up to date" in p.cli("build", *flags, env=env).output


@pytest.mark.parametrize("bad", ["symlink", "fifo"])
def test_a_bad_name_in_the_store_is_replaced_by_a_remote_fetch_on_threads(
    project: Callable[..., Proj], tmp_path: Path, bad: str
) -> None:
    """A fresh workspace whose shared store holds a link or a FIFO where an object belongs:
    the objects come from the remote on several threads, the bad name is replaced (as a
    name in the store, never followed) and the build restores."""
    remote = f"file://{tmp_path / 'remote'}"
    first = project(GEN, name="first")
    first.cli("build", "--remote", remote, "--push")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o444)
    cache = tmp_path / "shared"
    obj = _object(cache, b"file 7\n")
    obj.parent.mkdir(parents=True)
    if bad == "symlink":
        obj.symlink_to(victim)
    else:
        os.mkfifo(obj)
    second = project(GEN, name="second")
    out = second.cli("build", "--remote", remote, "--cache-dir", str(cache)).output
    _no_thread_error(out)
    assert "gen: restored" in out and second.runs("gen") == 0, out
    assert second.read("build/gen/f7.txt") == "file 7\n"
    assert victim.read_text() == "precious\n" and obj.is_file() and not obj.is_symlink()


@pytest.mark.parametrize("bad", ["corrupt", "size", "long-name", "tree-hash"])
def test_a_sync_that_cannot_complete_leaves_the_output_as_it_was(tmp_path: Path, bad: str) -> None:
    """``sync_dir`` makes every file it needs from the store before it changes the output:
    one bad object (found on a worker thread, its removal counted on the store's own), a
    lying size, a refused name or a lying tree hash leaves the output exactly as it was."""
    store = Store(tmp_path / "store")
    before = store.removals()  # the action cache opened here, on this thread
    want = {f"f{i:03d}.txt": f"file {i}\n".encode() for i in range(200)}
    entries = [[rel, store.put_bytes(data), len(data), 0o644] for rel, data in sorted(want.items())]
    out = tmp_path / "out"
    out.mkdir()
    for rel in ("f001.txt", "f002.txt", "old.txt"):  # one right, one different, one stale
        (out / rel).write_bytes(want[rel] if rel == "f001.txt" else b"old\n")
    if bad == "corrupt":
        _corrupt(_object(tmp_path / "store", want["f150.txt"]), b"EVIL 150\n")
    elif bad == "size":
        entries[150][2] = 4
    elif bad == "long-name":
        entries[150][0] = "y" * 300
    manifest = {"kind": "dir", "hash": tree_hash(sorted(entries)), "entries": sorted(entries)}
    if bad == "tree-hash":
        entries[150][1] = store.put_bytes(b"EVIL 150\n")
    was = _files(out)
    ws = Workspace(tmp_path)
    assert not ws.sync_dir(manifest, "out", store, Hasher(str(tmp_path)))
    assert _files(out) == was
    assert not ws.restore(manifest, "out", store, "t")
    assert _files(out) == was
    assert (store.removals() != before) == (bad == "corrupt")
    assert not ws.tmp.exists() or not any(ws.tmp.iterdir())


# finding 2: sizes recorded inside a directory manifest -----------------------------------
@pytest.mark.parametrize("size", [5, 2**62])
def test_a_directory_entry_that_lies_about_a_size_is_a_miss(
    project: Callable[..., Proj], size: int
) -> None:
    p = project(REPORT)
    p.cli("build")
    rows = [["n.txt", hash_bytes(b"hello\n"), size, 0o644],
            ["sub/side.txt", hash_bytes(b"side\n"), 5, 0o644]]  # fmt: skip
    _rewrite(_store(p), "report", _set_entries(rows))
    shutil.rmtree(p.path("build"))
    out = p.cli("build").output
    assert "report: running" in out and p.runs("report") == 2, out
    assert _files(p.path("build/report")) == HONEST
    assert _object(_store(p), b"hello\n").is_file()  # the object is not at fault: kept


def test_a_huge_object_named_by_a_directory_entry_is_never_copied(
    project: Callable[..., Proj],
) -> None:
    """An object a directory entry names, replaced by a 256 MiB sparse file: refused by its
    size before a byte is copied (the build runs with a 16 MiB limit on the size of any
    file it writes), and, as it does not hash to its name, removed from the store: the
    stage's run stores the right bytes under that name again."""
    p = project(REPORT)
    p.cli("build")
    obj = _object(_store(p), b"side\n")
    obj.chmod(0o644)
    os.truncate(obj, 256 << 20)
    shutil.rmtree(p.path("build"))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))

    done = subprocess.run(
        p.argv("build"), capture_output=True, text=True, timeout=120, preexec_fn=limit
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "report: running" in done.stderr, done.stderr
    assert _files(p.path("build/report")) == HONEST
    assert obj.read_bytes() == b"side\n"


# finding 3: a directory hash that is not the tree hash of its entries --------------------
@pytest.mark.parametrize("workspace", ["missing", "edited"])
def test_a_directory_hash_that_is_not_its_tree_hash_is_a_miss(
    project: Callable[..., Proj], workspace: str
) -> None:
    """A writer swaps a file of a directory output for other bytes and keeps the recorded
    tree hash, so downstream keys would not change: the lie is a miss, the stage runs and
    every stage downstream sees what the workspace holds."""
    p = project(REPORT)
    p.cli("build")
    evil = Store(_store(p)).put_bytes(b"EVIL DATA\n")

    def swap(entry: dict) -> None:
        entry["outputs"]["dir"]["entries"][0][1:3] = [evil, 10]

    _rewrite(_store(p), "report", swap)
    if workspace == "missing":
        shutil.rmtree(p.path("build"))
    else:
        p.write("build/report/n.txt", "edited\n")
    out = p.cli("build").output
    assert "report: running" in out and p.runs("report") == 2, out
    assert _files(p.path("build/report")) == HONEST
    assert p.read("build/final.txt") == "hello\n"
    assert "up to date" in p.cli("build").output


# finding 4: a name the file system refuses ----------------------------------------------
@pytest.mark.parametrize("name", ["y" * 300, "/".join(["d" * 200] * 25) + "/f"])
def test_a_name_the_file_system_refuses_is_a_miss_and_the_output_stays(
    project: Callable[..., Proj], name: str
) -> None:
    """An entry naming a file too long for the file system (or a path past the system's
    limit): a miss, every build, and the workspace output is left as it was, never half
    replaced. While the stage fails, the old output stays whole; once it runs, it is its."""
    p = project(REPORT)
    p.cli("build")
    h = hash_bytes(b"hello\n")
    _rewrite(_store(p), "report", _set_entries([["ok.txt", h, 6, 0o644], [name, h, 6, 0o644]]))
    p.write("build/report/n.txt", "edited\n")  # the output differs: a restore is due
    was = _files(p.path("build/report"))
    p.write("stop", "")
    out = p.cli("build", code=1).output
    assert "FAILED report" in out and TRACEBACK not in out, out
    assert _files(p.path("build/report")) == was
    p.path("stop").unlink()
    out = p.cli("build").output
    assert "report: running" in out, out
    assert _files(p.path("build/report")) == HONEST
    assert "up to date" in p.cli("build").output


@pytest.mark.parametrize("bad", ["long-name", "size"])
def test_a_cached_item_whose_entry_cannot_be_restored_runs_again(
    project: Callable[..., Proj], tmp_path: Path, bad: str
) -> None:
    """A foreach item whose entry in a shared store names a file the file system refuses,
    or records another size than its object's: in another workspace that item runs again,
    the others come from the store."""
    cache = str(tmp_path / "shared")
    files = {f"data/f{i}.txt": f"item {i}\n" for i in range(1, 4)}
    project(EACH, files, name="first").cli("build", "--cache-dir", cache)

    def change(entry: dict) -> None:
        rows = entry["outputs"]["o"]["entries"]
        if bad == "long-name":
            rows[0][0] = "y" * 300
        else:
            rows[0][2] = 3
        entry["outputs"]["o"]["hash"] = tree_hash(rows)

    def f2(entry: dict) -> bool:
        return "stage" not in entry and entry["outputs"]["o"]["entries"][0][0] == "f2.txt"

    _rewrite_rows(Path(cache), f2, change)
    p = project(EACH, {**files, "data/f1.txt": "item one\n"}, name="second")
    out = p.cli("build", "--cache-dir", cache).output  # f1 is new; f2 and f3 are stored
    assert TRACEBACK not in out, out
    assert sorted(p.read("runs/items.log").split()) == ["f1.txt", "f2.txt"], out
    assert _files(p.path("build/each")) == {
        "f1.txt": b"ITEM ONE\n", "f2.txt": b"ITEM 2\n", "f3.txt": b"ITEM 3\n"
    }  # fmt: skip
    assert "up to date" in p.cli("build", "--cache-dir", cache).output


def test_a_remote_entry_with_a_name_too_long_is_a_miss(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    first = project(REPORT, name="first")
    first.cli("build", "--remote", f"file://{remote}", "--push")
    changed = 0
    for doc_path in remote.glob("entries/*/*.json"):
        doc = json.loads(doc_path.read_text())
        entry = json.loads(doc["entry"])
        if entry.get("stage") != "report":
            continue
        rows = entry["outputs"]["dir"]["entries"]
        rows[0][0] = "x" * 300
        rows.sort()
        entry["outputs"]["dir"]["hash"] = tree_hash(rows)
        doc.update(entry=json.dumps(entry), sig=None)
        doc_path.chmod(0o644)
        doc_path.write_text(json.dumps(doc))
        changed += 1
    assert changed == 1
    second = project(REPORT, name="second")
    for _ in range(2):  # a miss every time the store gives that entry; never a failure
        out = second.cli("build", "--remote", f"file://{remote}").output
        assert TRACEBACK not in out, out
        assert _files(second.path("build/report")) == HONEST
    assert second.runs("report") == 1
