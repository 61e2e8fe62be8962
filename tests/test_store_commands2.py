"""The store commands as an adversarial user meets them: a ``--cache-dir`` naming a folder
of the user's, ``cache gc --dry-run`` telling the truth, a store another user owns, and
``clean`` of outputs the store cannot bring back."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj

from pipemake.api import cache_verify, open_project
from pipemake.errors import StoreError
from pipemake.lock import BuildLock
from pipemake.store import Store, not_a_store

#: the file that marks a store (its name is what the error tells users to create)
MARKER = "PIPEMAKE-STORE"

TWO = """
name: t
stages:
  - id: up
    type: shell
    config:
      cmd: "echo x >> runs/up.count; tr a-z A-Z < {inputs.a} > {outputs.o}"
      inputs: {a: data/a.txt}
      outputs: {o: build/up.txt}
  - id: d
    type: shell
    config:
      cmd: "echo x >> runs/d.count; mkdir -p {outputs.d} && cp {inputs.x} {outputs.d}/x.txt && echo more > {outputs.d}/m.txt"
      inputs: {x: "{up.o}"}
      outputs: {d: build/dir}
"""
FILES = {"data/a.txt": "hello\n"}


@pytest.fixture
def two(project: Callable[..., Proj]) -> Proj:
    return project(TWO, FILES)


def _photos(where: Path) -> dict[str, bytes]:
    """A user's folder laid out like a store's top level, but not one."""
    files = {"objects/ab/cd.jpg": b"mine", "objects/holiday.jpg": b"mine2", "roots": b"mine3"}
    for rel, data in files.items():
        (where / rel).parent.mkdir(parents=True, exist_ok=True)
        (where / rel).write_bytes(data)
    return files


def _untouched(where: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (where / rel).is_file() and (where / rel).read_bytes() == data, rel
    found = sorted(str(p.relative_to(where)) for p in where.rglob("*") if p.is_file())
    assert found == sorted(files), found


# 1. a --cache-dir naming a folder of the user's ---------------------------------------------
@pytest.mark.parametrize("how", ["option", "env"])
def test_a_cache_dir_naming_a_users_folder_is_refused_and_nothing_in_it_is_touched(
    two: Proj, tmp_path: Path, how: str
) -> None:
    photos = tmp_path / "photos"
    files = _photos(photos)
    opt = ["--cache-dir", str(photos)] if how == "option" else []
    env = {"PIPEMAKE_CACHE_DIR": str(photos)} if how == "env" else None
    told = "--cache-dir" if how == "option" else "PIPEMAKE_CACHE_DIR"
    for cmd in (["build"], ["cache", "verify", "--repair"],
                ["cache", "gc", "--keep-days", "0", "--grace", "0"], ["status"]):  # fmt: skip
        r = two.cli(*cmd, *opt, code=2, env=env)
        assert str(photos) in r.output and told in r.output, r.output
        assert "not a pipemake store" in r.output and "new or empty folder" in r.output
        assert TRACEBACK not in r.output
    _untouched(photos, files)
    assert not two.exists("build") and two.runs("up") == 0


def test_a_cache_dir_naming_an_input_folder_is_refused(two: Proj) -> None:
    r = two.cli("build", "--cache-dir", "data", code=2)
    assert "not a pipemake store" in r.output and "'a.txt'" in r.output
    two.cli("cache", "verify", "--repair", "--cache-dir", "data", code=2)
    assert sorted(os.listdir(two.path("data"))) == ["a.txt"]


def test_a_cache_dir_naming_a_file_is_refused(two: Proj) -> None:
    r = two.cli("build", "--cache-dir", "data/a.txt", code=2)
    assert "data/a.txt" in r.output and "is not a folder" in r.output
    assert two.read("data/a.txt") == "hello\n" and not two.exists("build")


def test_a_remembered_store_now_a_users_folder_is_refused_naming_where_it_is_remembered(
    two: Proj, tmp_path: Path
) -> None:
    store = tmp_path / "cache"
    two.cli("build", "--cache-dir", str(store))
    shutil.rmtree(store)
    files = _photos(store)
    r = two.cli("build", code=2)
    assert str(store) in r.output and "remembered in" in r.output and "store.json" in r.output
    two.cli("cache", "verify", "--repair", code=2)
    _untouched(store, files)


def test_a_new_or_empty_folder_becomes_a_store_marked_as_one(two: Proj, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".gitkeep").touch()  # a folder made for the store, kept in git
    two.cli("build", "--cache-dir", str(empty))
    assert (empty / MARKER).is_file() and (empty / "actions.db").is_file()
    two.cli("build", "--cache-dir", str(tmp_path / "new" / "store"))
    assert (tmp_path / "new" / "store" / MARKER).is_file()
    # the default store in the workspace: marked, used again, verified and collected
    two.cli("build", "--cache-dir", str(two.path(".pipemake/store")))
    assert two.path(".pipemake/store/" + MARKER).is_file()
    shutil.rmtree(two.path("build"))
    assert "0 ran, 2 restored" in two.cli("build").output
    two.cli("cache", "verify")
    two.cli("cache", "gc", "--keep-days", "0", "--grace", "0")


@pytest.mark.parametrize("where", ["default", "told"])
def test_a_store_made_before_the_marker_is_recognised_by_its_layout(
    two: Proj, tmp_path: Path, where: str
) -> None:
    """Users upgrading keep their stores: an unmarked store laid out as pipemake lays one
    out is used, verified and collected, and marked at its next write."""
    store = two.path(".pipemake/store") if where == "default" else tmp_path / "cache"
    opt = ["--cache-dir", str(store)] if where == "told" else []
    two.cli("build", *opt)
    (store / MARKER).unlink()
    assert sorted(os.listdir(store)) == ["actions.db", "objects", "roots"]
    shutil.rmtree(two.path("build"))
    assert "0 ran, 2 restored" in two.cli("build", *opt).output
    assert (store / MARKER).is_file()
    (store / MARKER).unlink()
    assert "store OK" in two.cli("cache", "verify", "--repair", *opt).output
    (store / MARKER).unlink()
    two.cli("cache", "gc", *opt)
    assert two.runs("up") == 1


def test_the_store_itself_refuses_to_write_into_a_folder_not_a_store(tmp_path: Path) -> None:
    """Below the command line too: a Store opened on a user's folder writes nothing there,
    and an empty marker file made by hand is what makes it one."""
    photos = tmp_path / "photos"
    files = _photos(photos)
    store = Store(photos)
    with pytest.raises(StoreError, match="not a pipemake store"):
        list(store.rows())
    store.close()
    _untouched(photos, files)
    (photos / MARKER).touch()
    store = Store(photos)
    assert list(store.rows()) == []
    store.close()


def test_what_counts_as_a_store_made_by_an_older_pipemake(tmp_path: Path) -> None:
    """Known by layout: an SQLite ``actions.db`` beside ``objects``/``roots`` folders, or
    objects alone named as objects are; any other name, a file ``roots``, an
    ``actions.db`` that is not SQLite, or a file in ``objects`` not named as an object is
    a folder of the user's."""
    digest = "ab" + "c" * 30

    def folder(name: str, files: dict[str, bytes]) -> Path:
        where = tmp_path / name
        for rel, data in files.items():
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).write_bytes(data)
        return where

    sqlite_head = b"SQLite format 3\0" + b"\0" * 84
    stores = {
        "db": {"actions.db": sqlite_head, "roots/x.json": b"{}", f"objects/ab/{digest[2:]}": b""},
        "objects": {f"objects/ab/{digest[2:]}": b"x", "objects/ab/.tmp-1-2-x": b""},
        "marked": {MARKER: b"", "holiday.jpg": b"mine"},
        "kept": {".gitkeep": b""},
    }
    users = {
        "roots-file": {"actions.db": sqlite_head, "roots": b"mine"},
        "not-sqlite": {"actions.db": b"my notes", "objects/ab/cd.jpg": b"x"},
        "jpg": {"objects/ab/cd.jpg": b"x"},
        "other": {"actions.db": sqlite_head, "notes.txt": b"x"},
    }
    for name, files in stores.items():
        assert not_a_store(folder(name, files)) is None, name
    for name, files in users.items():
        assert "not a pipemake store" in str(not_a_store(folder(name, files))), name


def test_verify_repair_never_resets_or_removes_in_a_folder_not_a_store(
    two: Proj, tmp_path: Path
) -> None:
    """Below the command line: ``verify --repair`` handed a user's folder that even holds
    a file named ``actions.db`` deletes nothing there (it does not reset it as a damaged
    action cache)."""
    photos = tmp_path / "photos"
    files = {**_photos(photos), "actions.db": b"my database"}
    (photos / "actions.db").write_bytes(files["actions.db"])
    project = open_project(two.root)
    project.store.close()
    project.store = Store(photos)
    with pytest.raises(StoreError, match="not a pipemake store"):
        cache_verify(project, repair=True)
    project.close()
    _untouched(photos, files)


# 2. cache gc --dry-run says what cache gc removes --------------------------------------------
def _counts(text: str) -> tuple[int, int]:
    m = re.search(r"remove[d]? (\d+) entries and (\d+) objects", text)
    assert m is not None, text
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("extra", [[], ["--max-size", "1"]])
def test_gc_dry_run_counts_what_gc_then_removes(two: Proj, extra: list[str]) -> None:
    for text in ("one\n", "two\n", "three\n"):
        two.write("data/a.txt", text)
        two.cli("build")
    args = ["cache", "gc", "--keep-days", "0", "--grace", "0", *extra]
    dry1 = _counts(two.cli(*args, "--dry-run").output)
    dry2 = _counts(two.cli(*args, "--dry-run").output)
    real = _counts(two.cli(*args).output)
    assert dry1 == dry2 == real and real[0] > 0, (dry1, dry2, real)
    assert _counts(two.cli(*args, "--dry-run").output) == (0, 0)
    assert "0 ran" in two.cli("build").output  # what this workspace needs stayed


def test_gc_dry_run_on_a_shared_store_counts_what_gc_then_removes(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    store = str(tmp_path / "cache")
    a, b = project(TWO, FILES, name="a"), project(TWO, {"data/a.txt": "bee\n"}, name="b")
    for p in (a, b):
        for text in ("one\n", "two\n"):
            p.write("data/a.txt", text + p.root.name)
            p.cli("build", "--cache-dir", store)
    args = ["cache", "gc", "--keep-days", "0", "--grace", "0"]
    dry = _counts(a.cli(*args, "--dry-run").output)
    assert dry == _counts(a.cli(*args).output) and dry[0] > 0
    assert "0 ran" in b.cli("build").output  # b's current entries were never counted


def test_removals_count_only_what_this_call_removed(tmp_path: Path) -> None:
    """Two gc on one store at once each say what they removed, not both the same."""
    store = Store(tmp_path / "s")
    digest = store.put_bytes(b"payload")
    store.put_action("k" * 64, {"outputs": {}, "values": {}})
    assert store.delete_actions(["k" * 64, "x" * 64]) == 1
    assert store.delete_actions(["k" * 64]) == 0
    later = time.time() + 60
    assert store.remove_object(digest, older_than=later) is True
    assert store.remove_object(digest, older_than=later) is False
    store.close()


# 3. a store another user owns -----------------------------------------------------------------
def _says_read_only(text: str, store: Path) -> None:
    assert str(store) in text and "read-only for this user" in text, text
    assert "not damaged" in text and "--cache-dir" in text, text
    assert "delete it" not in text and "--repair" not in text and "damaged or not" not in text
    assert TRACEBACK not in text


def test_a_store_this_user_may_not_write_is_named_read_only_not_damaged(
    two: Proj, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "cache"
    two.cli("build", "--cache-dir", str(store))
    shutil.rmtree(two.path("build"))
    real = os.access

    def access(path: object, mode: int, *a: object, **k: object) -> bool:
        inside = str(path) == str(store) or str(path).startswith(str(store) + os.sep)
        return False if inside and mode & os.W_OK else real(path, mode, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    for cmd in (["build"], ["cache", "verify", "--repair"], ["cache", "gc"]):
        r = two.cli(*cmd, code=1)
        _says_read_only(r.output, store)
    assert "stale" in two.cli("status").output  # reading it still works
    r = two.cli("cache", "verify")  # checked as it is
    assert "read-only for this user" in r.output and "store OK" in r.output, r.output


def test_sqlite_refusing_to_write_the_store_is_named_read_only(
    two: Proj, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "cache"
    two.cli("build", "--cache-dir", str(store))

    def refuse(self: Store) -> None:
        exc = sqlite3.OperationalError("attempt to write a readonly database")
        exc.sqlite_errorcode = 8  # type: ignore[attr-defined]
        raise exc

    monkeypatch.setattr(Store, "_open", refuse)
    _says_read_only(two.cli("cache", "verify", "--repair", code=1).output, store)
    assert (store / "actions.db").is_file()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's own tmp folder is root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="pm-other-user-"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to act as another user",
)
def test_a_store_owned_by_another_user_is_named_with_its_owner(shared_tmp: Path) -> None:
    store = shared_tmp / "cache"
    mine = shared_tmp / "p"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "a.txt").write_text("hello\n")
    (mine / "pipemake.yaml").write_text(TWO.replace("echo x >> runs/up.count; ", "")
                                        .replace("echo x >> runs/d.count; ", ""))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PIPEMAKE_CACHE_DIR"}
    env["HOME"] = "/tmp"
    cmd = [sys.executable, "-m", "pipemake", "-C", str(mine)]
    subprocess.run([*cmd, "build", "--cache-dir", str(store)], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    shutil.rmtree(mine / "build")
    shutil.rmtree(mine / ".pipemake")
    subprocess.run(["chown", "-R", "65534:65534", str(mine)], check=True)
    before = sorted(str(p) for p in store.rglob("*"))
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    for sub in (["build"], ["cache", "verify", "--repair"]):
        r = subprocess.run([*nobody, *cmd, *sub, "--cache-dir", str(store)], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 1, r.stdout + r.stderr
        _says_read_only(r.stderr, store)
        assert "owner root" in r.stderr, r.stderr
    r = subprocess.run([*nobody, *cmd, "cache", "verify", "--cache-dir", str(store)], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "store OK" in r.stdout, r.stdout + r.stderr
    assert sorted(str(p) for p in store.rglob("*")) == before


# 4. clean keeps what it cannot bring back -----------------------------------------------------
def test_clean_keeps_an_output_edited_by_hand_and_removes_the_others(two: Proj) -> None:
    two.cli("build")
    two.write("build/up.txt", "hand edited, hours of work\n")
    r = two.cli("clean", code=1)
    assert "removed build/dir" in r.output
    assert "kept build/up.txt" in r.output and "--yes build/up.txt" in r.output
    assert two.read("build/up.txt") == "hand edited, hours of work\n"
    assert not two.exists("build/dir")
    r = two.cli("clean", "up", code=1)
    assert two.read("build/up.txt") == "hand edited, hours of work\n"
    two.cli("clean", "--force", "up")
    assert not two.exists("build/up.txt")
    assert "0 ran, 2 restored" in two.cli("build").output


def test_clean_keeps_an_output_folder_a_file_was_added_to(two: Proj) -> None:
    two.cli("build")
    two.write("build/dir/NOTES.txt", "my notes\n")
    r = two.cli("clean", "d", code=1)
    assert "kept build/dir" in r.output
    assert two.read("build/dir/NOTES.txt") == "my notes\n"
    two.cli("clean", "--yes", "d")
    assert not two.exists("build/dir")


def test_clean_removes_outputs_the_store_holds(two: Proj) -> None:
    two.cli("build")
    r = two.cli("clean")
    assert "removed build/up.txt" in r.output and "removed build/dir" in r.output
    assert not two.exists("build/up.txt") and not two.exists("build/dir")
    assert "0 ran, 2 restored" in two.cli("build").output
    assert two.run_counts() == {"d": 1, "up": 1}


def test_clean_removes_an_output_an_older_build_placed_after_a_failed_one(two: Proj) -> None:
    """The last build of ``up`` failed, leaving the output of the one before: the store
    holds that one (under the older key), so clean removes it."""
    two.cli("build")
    two.edit("pipemake.yaml", "tr a-z A-Z <", "exit 3; tr a-z A-Z <")
    two.cli("build", code=1)
    assert two.read("build/up.txt") == "HELLO\n"
    two.cli("clean", "up")
    assert not two.exists("build/up.txt")


def test_clean_of_a_never_built_output_put_there_by_hand_is_kept(two: Proj) -> None:
    two.write("build/up.txt", "made by hand\n")
    two.cli("clean", code=1)
    assert two.read("build/up.txt") == "made by hand\n"


# commit waits for a running build -------------------------------------------------------------
def test_commit_waits_for_a_running_build_and_gives_up_after_lock_timeout(two: Proj) -> None:
    two.cli("build")
    lock = BuildLock(two.path(".pipemake/lock"))
    lock.acquire()
    try:
        r = two.cli("commit", "--lock-timeout", "0.3", code=1)
        assert "gave up after 0.3 s" in r.output
        timer = threading.Timer(0.5, lock.release)
        timer.start()
        r = two.cli("commit")
        timer.join()
    finally:
        lock.release()
    assert "waiting for the build lock" in r.output and "up to date" in r.output
