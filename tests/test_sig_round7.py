"""Signals and folder metadata, seventh round: a second Ctrl-C ends a stalled ``pull`` or
``push`` at once; a restored or swapped output folder keeps its group and ACLs; a
read-only directory output's old copy is removed from ``.pipemake/tmp``; Ctrl-C at
start-up."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from _remote_fixtures import CREDENTIALS, local_objects
from conftest import TRACEBACK, Proj, wait_for

from pipemake import remotefs

#: one stage whose output is a folder of 300 small files: as many objects
MANY = """
name: many
stages:
  - id: many
    type: shell
    config:
      cmd: "mkdir -p {outputs.o}; for i in $(seq 300); do echo $i > {outputs.o}/$i.txt; done"
      outputs: {o: build/many}
"""

#: imported by a ``pipemake pull``/``push`` subprocess (on its PYTHONPATH): the first read
#: or write of an object stalls for good, in the pool thread doing it (as a network read
#: that never answers would), after noting ``PM_STALLED``; a write first leaves half its
#: bytes in a temporary, as a push killed mid-write would
STALL = """
import os, tempfile, time
from pipemake import remotefs

def _stall():
    open(os.environ["PM_STALLED"], "a").close()
    while True:
        time.sleep(1)

_read = remotefs.RemoteFiles._read_local
_put = remotefs.RemoteFiles._put_local

def _read_local(self, path, limit):
    if "/objects/" in path:
        _stall()
    return _read(self, path, limit)

def _put_local(self, path, data, replace):
    if "/objects/" in path:
        folder = os.path.dirname(path)
        self._make_folders(folder)
        fd, _tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        os.write(fd, (data if isinstance(data, bytes) else b"x" * 10)[:2])
        os.close(fd)
        _stall()
    return _put(self, path, data, replace)

remotefs.RemoteFiles._read_local = _read_local
remotefs.RemoteFiles._put_local = _put_local
"""


def _stalling_env(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    (tmp_path / "stall").mkdir(exist_ok=True)
    (tmp_path / "stall" / "sitecustomize.py").write_text(STALL)
    stalled = tmp_path / "stalled"
    return {**env, "PYTHONPATH": str(tmp_path / "stall"), "PM_STALLED": str(stalled)}, stalled


def _twice(proc: Any, ready: Callable[[], bool]) -> tuple[str, str]:
    """Ctrl-C once the batch is under way, and again a moment later; the output."""
    wait_for(ready, 60, "a stalled request")
    proc.send_signal(signal.SIGINT)
    threading.Event().wait(0.4)  # the first is handled before the second arrives
    assert proc.poll() is None, proc.communicate()  # the first waits for the batch
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)  # the stall never ends: only a forced exit ends it
    return out, err


def _objects_whole(folder: Path) -> list[Path]:
    """The object files under ``folder`` (temporaries left out), each checked to hash to
    its name."""
    found = [p for p in folder.glob("*/*") if p.is_file() and not p.name.startswith(".")]
    for p in found:
        assert xxhash.xxh3_128_hexdigest(p.read_bytes()) == p.parent.name + p.name, p
    return found


def test_second_ctrl_c_ends_a_pull_whose_batch_is_stalled(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """A pull's first batch of objects stalls; the first Ctrl-C waits for it, the second
    ends the pull at once: exit 130, one line saying what was fetched and that the batch
    was discarded, no traceback, no half-written object. A later pull fetches everything
    and a build then runs nothing."""
    env = {"PIPEMAKE_REMOTE": f"file://{tmp_path / 'remote'}", "PIPEMAKE_CACHE_KEY": "k"}
    project(MANY, name="first").cli("build", "--push", env=env)
    clone = project(MANY, name="clone")
    stall_env, stalled = _stalling_env(tmp_path, env)
    out, err = _twice(clone.popen("pull", env=stall_env), stalled.exists)
    assert clone.procs[0].returncode == 130, out + err
    assert TRACEBACK not in err and "Exception" not in err, err
    assert "interrupted by SIGINT again: stopped at once; fetched 0 entries" in err, err
    assert "the batch being fetched was discarded" in err, err
    assert "Run `pipemake pull` again to fetch the rest." in err, err
    store = clone.path(".pipemake/store")
    _objects_whole(store / "objects")
    clone.cli("cache", "verify")
    again = clone.sub("pull", env=env)
    assert "fetched 1 entries" in again.stdout, again.stdout
    assert "0 ran, 1 restored" in clone.cli("build", env=env).output
    assert clone.read("build/many/300.txt") == "300\n"
    assert len(local_objects(store)) == 300


def test_second_ctrl_c_ends_a_push_whose_upload_is_stalled(
    project: Callable[..., Proj], tmp_path: Path
) -> None:
    """A push's first object upload stalls half-written; two Ctrl-Cs end it at once
    (exit 130, what was pushed, no traceback). The remote holds no entry and no
    half-written object (a temporary at most); a later push completes it for a clone."""
    remote = tmp_path / "remote"
    env = {"PIPEMAKE_REMOTE": f"file://{remote}", "PIPEMAKE_CACHE_KEY": "k"}
    first = project(MANY, name="first")
    first.cli("build", env={"PIPEMAKE_CACHE_KEY": "k"})
    stall_env, stalled = _stalling_env(tmp_path, env)
    out, err = _twice(first.popen("push", env=stall_env), stalled.exists)
    assert first.procs[0].returncode == 130, out + err
    assert TRACEBACK not in err, err
    assert "interrupted by SIGINT again: stopped at once; pushed 0 entries" in err, err
    assert "Run `pipemake push` again to send the rest." in err, err
    assert not list((remote / "entries").rglob("*.json"))
    _objects_whole(remote / "objects")
    assert any(p.name.startswith(".tmp-") for p in (remote / "objects").rglob("*"))
    first.sub("push", env=env)
    assert len(_objects_whole(remote / "objects")) == 300
    clone = project(MANY, name="clone")
    assert "0 ran, 1 restored" in clone.cli("build", env=env).output


def test_first_ctrl_c_of_a_push_stops_before_any_entry_names_a_missing_object(
    project: Callable[..., Proj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while a push uploads objects: the uploads under way finish, no more start,
    no entry is written (its objects may not all be there), exit 130 saying what was
    pushed; the next push sends the rest."""
    remote = tmp_path / "remote"
    env = {"PIPEMAKE_REMOTE": f"file://{remote}", "PIPEMAKE_CACHE_KEY": "k"}
    first = project(MANY, name="first")
    first.cli("build", env={"PIPEMAKE_CACHE_KEY": "k"})
    real = remotefs.RemoteFiles._put_local
    sent: list[bool] = []

    def put_local(self: remotefs.RemoteFiles, path: str, data: Any, replace: bool) -> bool:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, path, data, replace)

    monkeypatch.setattr(remotefs.RemoteFiles, "_put_local", put_local)
    out = first.cli("push", code=130, env=env).output
    assert "interrupted by SIGINT: pushed 0 entries and " in out, out
    assert "nothing half-written was kept" in out and TRACEBACK not in out
    assert "Run `pipemake push` again to send the rest." in out
    assert not list((remote / "entries").rglob("*.json"))
    assert 0 < len(_objects_whole(remote / "objects")) < 300
    monkeypatch.setattr(remotefs.RemoteFiles, "_put_local", real)
    assert "pushed 1 entries" in first.cli("push", env=env).output
    clone = project(MANY, name="clone")
    assert "0 ran, 1 restored" in clone.cli("build", env=env).output


@pytest.fixture
def silent_s3() -> Iterator[tuple[str, threading.Event]]:
    """An S3 endpoint on 127.0.0.1 that takes every request and never answers (a stalled
    network read); its URL and an event set once a request has arrived."""
    pytest.importorskip("s3fs")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    got = threading.Event()
    held: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)
            conn.settimeout(5)
            try:
                if conn.recv(4096):
                    got.set()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", got
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        srv.close()


@pytest.mark.parametrize("command", ["pull", "push"])
def test_second_ctrl_c_ends_a_command_stalled_on_s3(
    project: Callable[..., Proj], silent_s3: tuple[str, threading.Event], command: str
) -> None:
    """An S3 server that never answers: the first Ctrl-C waits for the request under way,
    the second ends ``pull`` or ``push`` at once with exit 130 and no traceback."""
    endpoint, got = silent_s3
    proj = project(MANY)
    if command == "push":
        proj.cli("build", env={"PIPEMAKE_CACHE_KEY": ""})
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "10",
           "PIPEMAKE_REMOTE": "s3://bucket/cache", "PIPEMAKE_CACHE_KEY": ""}  # fmt: skip
    out, err = _twice(proj.popen(command, env=env), got.is_set)
    assert proj.procs[0].returncode == 130, out + err
    assert TRACEBACK not in err, err
    assert "stopped at once" in err and "s3://bucket/cache" in err, err


# -- read-only directory outputs ---------------------------------------------------------

#: one stage writing a folder of a few files (and a sub-folder) from ``data/a.txt``
FOLDER = """
name: ro
stages:
  - id: d
    type: shell
    config:
      cmd: "mkdir -p {outputs.d}/sub && cp {inputs.a} {outputs.d}/a.txt && echo kept > {outputs.d}/k.txt && cp {inputs.a} {outputs.d}/sub/b.txt"
      inputs: {a: data/a.txt}
      outputs: {d: build/d}
"""


def _tmp_left(root: Path) -> list[str]:
    tmp = root / ".pipemake" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def _no_write_bits(path: Path) -> bool:
    return all(not (p.lstat().st_mode & 0o222) for p in [path, *path.rglob("*")] if p.is_dir())


def _read_only(out: Path, top: bool) -> None:
    for p in [*out.rglob("*"), *([out] if top else [])]:
        os.chmod(p, p.stat().st_mode & ~0o222)


@pytest.mark.parametrize("top", [True, False], ids=["chmod-R", "inner-folders"])
def test_a_read_only_directory_output_updated_by_swap_leaves_nothing_in_tmp(
    plain_user: tuple[Path, Callable[..., Any]], top: bool
) -> None:
    """The user makes a built folder read-only (``chmod -R a-w``, or only what is inside
    it), an input changes, the stage reruns: the new output is in place with its folders
    as read-only as before, and the old copy is gone from ``.pipemake/tmp``. Switching
    the input back restores the first output from the store: the same, and the file
    kept unchanged keeps its read-only mode."""
    root, run = plain_user
    (root / "pipemake.yaml").write_text(FOLDER.lstrip())
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("one\n")
    run("build", "--no-progress")
    out = root / "build" / "d"
    _read_only(out, top)
    modes = {p: p.stat().st_mode for p in [out, out / "sub"]}
    (root / "data" / "a.txt").write_text("two\n")
    run("build", "--no-progress")
    assert (out / "a.txt").read_text() == "two\n" and (out / "sub" / "b.txt").read_text() == "two\n"
    assert _tmp_left(root) == []
    assert [p for p in root.joinpath("build").iterdir() if p.name != "d"] == []
    assert {p: p.stat().st_mode for p in modes} == modes
    _read_only(out, top)
    (root / "data" / "a.txt").write_text("one\n")
    assert "1 restored" in run("build", "--no-progress").stderr
    assert (out / "a.txt").read_text() == "one\n"
    assert _tmp_left(root) == []
    assert {p: p.stat().st_mode for p in modes} == modes
    assert not (out / "k.txt").stat().st_mode & 0o222  # kept as it was: still read-only
    run("status", "--check")


def test_a_read_only_leftover_of_a_killed_build_is_swept_and_nothing_outside_changes(
    plain_user: tuple[Path, Callable[..., Any]],
) -> None:
    """A killed build left an old read-only copy in ``.pipemake/tmp`` holding a link to a
    read-only folder of the user's: the next build removes the copy, and the user's
    folder keeps its mode and its files."""
    root, run = plain_user
    (root / "pipemake.yaml").write_text(FOLDER.lstrip())
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("one\n")
    run("build", "--no-progress")
    mine = root.parent / "mine"
    (mine / "deep").mkdir(parents=True)
    (mine / "deep" / "f.txt").write_text("mine\n")
    left = root / ".pipemake" / "tmp" / "trash-0123456789"
    (left / "sub").mkdir(parents=True)
    (left / "sub" / "x.txt").write_text("old\n")
    (left / "link").symlink_to(mine)
    uid = (root / "pipemake.yaml").stat().st_uid
    os.lchown(mine, uid, uid)
    for p in [left, *left.rglob("*"), mine, *mine.rglob("*")]:
        if not p.is_symlink():
            os.lchown(p, uid, uid)
    for p in sorted([left, *left.rglob("*"), mine, *mine.rglob("*")], reverse=True):
        if not p.is_symlink():
            os.chmod(p, p.stat().st_mode & ~0o222)
    (root / "data" / "a.txt").write_text("two\n")
    run("build", "--no-progress")
    assert _tmp_left(root) == []
    assert (mine / "deep" / "f.txt").read_text() == "mine\n"
    assert _no_write_bits(mine)


# -- folder group, mode and ACLs on restore ---------------------------------------------


def _spare_gid() -> int:
    """A group the current user may give a folder, other than its own (skips if none)."""
    if os.geteuid() == 0:
        return 100 if os.getegid() != 100 else 101
    others = [g for g in os.getgroups() if g != os.getegid()]
    if not others:
        pytest.skip("the user belongs to no second group")
    return others[0]


def _store_and_manifest(tmp_path: Path, files: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    from pipemake.hashing import tree_hash
    from pipemake.store import Store

    store = Store(tmp_path / "store")
    entries = [
        [rel, store.put_bytes(t.encode()), len(t), 0o644] for rel, t in sorted(files.items())
    ]
    return store, {"kind": "dir", "hash": tree_hash(entries), "entries": entries}


FILES = {"a.txt": "a\n", "sub/b.txt": "b\n", "sub/deep/c.txt": "c\n"}


def _old_output(tmp_path: Path, rel: str, gid: int) -> Path:
    out = tmp_path / rel
    for name, text in {"old.txt": "old\n", "sub/x.txt": "x\n"}.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    os.chown(out, -1, gid)
    os.chown(out / "sub", -1, gid)
    out.chmod(0o2770)
    (out / "sub").chmod(0o2750)
    return out


@pytest.mark.parametrize("other_disk", [False, True], ids=["rename", "copy-beside"])
def test_restore_keeps_the_old_folders_mode_and_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_disk: bool
) -> None:
    """``restore()`` over an output folder shared through a group (``chgrp``, ``g+s``):
    the restored folder and its sub-folder keep their mode and group, and the files it
    gets take the group as files made there would; also where the output lies on another
    filesystem than the staging area (the copy made beside it)."""
    from pipemake import workspace
    from pipemake.workspace import Workspace

    gid = _spare_gid()
    out = _old_output(tmp_path, "team/out", gid)
    store, manifest = _store_and_manifest(tmp_path, FILES)
    if other_disk:
        monkeypatch.setattr(workspace, "_same_dev", lambda a, b: False)
    assert Workspace(tmp_path).restore(manifest, "team/out", store, "t")
    got = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert got == set(FILES)
    assert (os.stat(out).st_gid, stat_mode(out)) == (gid, 0o2770)
    assert (os.stat(out / "sub").st_gid, stat_mode(out / "sub")) == (gid, 0o2750)
    assert os.stat(out / "a.txt").st_gid == gid  # made in a set-group-ID folder
    assert os.stat(out / "sub/deep").st_gid == gid
    assert _tmp_left(tmp_path) == []


def stat_mode(path: Path) -> int:
    import stat

    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("how", ["restore", "sync"])
def test_an_output_new_in_a_shared_folder_takes_what_a_new_folder_gets_there(
    tmp_path: Path, how: str
) -> None:
    """No output folder yet, in a team folder of group ``data`` with ``g+s``: the restored
    output, its sub-folders and its files take the team folder's group, and its folders
    the set-group-ID bit, as ``mkdir`` there would give them; its mode is what the umask
    gives."""
    from pipemake.fshash import Hasher
    from pipemake.workspace import Workspace

    gid = _spare_gid()
    team = tmp_path / "team"
    team.mkdir()
    os.chown(team, -1, gid)
    team.chmod(0o2775)
    store, manifest = _store_and_manifest(tmp_path, FILES)
    ws = Workspace(tmp_path)
    if how == "restore":
        assert ws.restore(manifest, "team/out", store, "t")
    else:
        assert ws.sync_dir(manifest, "team/out", store, Hasher(str(tmp_path)))
    out = team / "out"
    (team / "by_mkdir").mkdir()
    assert stat_mode(out) == stat_mode(team / "by_mkdir")
    for p in [out, out / "sub", out / "sub/deep"]:
        assert os.stat(p).st_gid == gid and stat_mode(p) & 0o2000, p
    for rel in FILES:
        assert os.stat(out / rel).st_gid == gid, rel


def _acl(gid: int) -> bytes:
    """A POSIX access (or default) ACL in the kernel's xattr form: owner rwx, owning group
    r-x, group ``gid`` rwx, mask rwx, others none."""
    import struct

    entries = [(0x01, 7, 0xFFFFFFFF), (0x04, 5, 0xFFFFFFFF), (0x08, 7, gid),
               (0x10, 7, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]  # fmt: skip
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.mark.parametrize("how", ["restore", "sync", "copy-beside"])
def test_a_restored_or_swapped_output_folder_keeps_its_acls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """An output folder (and its sub-folder) with POSIX ACLs (``setfacl -m g:data:rwx``
    and a default ACL): after a restore, a swap, or a restore on another filesystem, the
    folders hold the same ACLs (skipped where the file system has none)."""
    from pipemake import workspace
    from pipemake.fshash import Hasher
    from pipemake.workspace import Workspace

    gid = _spare_gid()
    out = _old_output(tmp_path, "out", gid)
    out.chmod(0o770)
    names = ("system.posix_acl_access", "system.posix_acl_default")
    try:
        for p in (out, out / "sub"):
            for name in names:
                os.setxattr(p, name, _acl(gid))
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs here: {exc}")
    want = {p: {n: os.getxattr(p, n) for n in names} for p in (out, out / "sub")}
    store, manifest = _store_and_manifest(tmp_path, FILES)
    ws = Workspace(tmp_path)
    folder = os.stat(out).st_ino
    if how == "sync":
        assert ws.sync_dir(manifest, "out", store, Hasher(str(tmp_path)))
    else:
        if how == "copy-beside":
            monkeypatch.setattr(workspace, "_same_dev", lambda a, b: False)
        assert ws.restore(manifest, "out", store, "t")
    assert os.stat(out).st_ino != folder
    assert {p: {n: os.getxattr(p, n) for n in names} for p in (out, out / "sub")} == want


# -- Ctrl-C at start-up ------------------------------------------------------------------


def _startup_runs(delays_ms: list[int], tmp_path: Path) -> list[tuple[int, int, str]]:
    """Start the ``pipemake`` console script (``status`` in an empty folder) once per delay
    and send it SIGINT that many milliseconds after the spawn: (delay, exit status,
    stderr) of each."""
    import shutil
    import subprocess
    import sys
    import time

    script = Path(sys.executable).parent / "pipemake"
    if not script.exists():
        found = shutil.which("pipemake")
        if found is None:
            pytest.skip("no pipemake console script installed")
        script = Path(found)
    out = []
    for delay in delays_ms:
        proc = subprocess.Popen(
            [str(script), "status"], cwd=tmp_path, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(delay / 1000)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        out.append((delay, proc.returncode, err))
    return out


#: how Python's start-up says it ignored an exception and went on
_SWALLOWED = (
    "Exception ignored in", "Failed checking if argv[0] is an import path entry",
    "Error processing line",
)  # fmt: skip


def _where(err: str) -> str:
    """The file a start-up traceback was raised in (its last frame)."""
    files = [line.split('"')[1] for line in err.splitlines() if line.strip().startswith('File "')]
    return files[-1] if files else "?"


def test_ctrl_c_at_start_up_ends_with_130_and_a_traceback_only_before_pipemake_runs(
    tmp_path: Path,
) -> None:
    """SIGINT 0-50 ms after the console script is spawned: every run ends as interrupted
    (130, or killed by SIGINT before Python could say anything) or had already finished;
    a traceback, where one is printed, was raised before pipemake's handler was installed
    (in Python's own start-up, ``site``, or the import system finding the package: the
    package and ``pipemake.entry`` import nothing before the handler but built-in
    modules), never in pipemake's engine or CLI. The counts are printed (no timing is
    asserted)."""
    runs = _startup_runs([d for d in range(0, 51, 5) for _ in range(2)], tmp_path)
    counts: dict[str, int] = {}
    for delay, code, err in runs:
        if "Fatal Python error: init_" in err or "failed to set __main__.__loader__" in err:
            # Python's own start-up (streams, site, setting up the script as __main__)
            assert code == 1, (delay, code, err)
            what = "python start-up"
        elif code == 2 and "KeyboardInterrupt" in err and "interrupted" not in err:
            # Python's own default handler raised it where Python's start-up catches and
            # prints it (a .pth line, an import-lock callback, checking argv[0]), before
            # pipemake's handler existed: the command went on and finished
            assert "pipemake/" not in err.split("error:")[0], err
            assert err.startswith(_SWALLOWED), err
            what = "swallowed by python start-up"
        elif TRACEBACK in err:
            what = _where(err)
            assert code in (130, -signal.SIGINT), (delay, code, err)
            assert "pipemake/cli.py" not in err and "pipemake/api.py" not in err, err
        else:
            assert code in (130, -signal.SIGINT, 2), (delay, code, err)
            assert code != 130 or err.strip().endswith("interrupted"), err
            what = {130: "interrupted, 130", 2: "finished first"}.get(code, "killed, silent")
        counts[what] = counts.get(what, 0) + 1
    print(f"\n{len(runs)} start-ups: {counts}")


def test_a_link_in_the_old_output_lends_no_folder_metadata_from_outside(tmp_path: Path) -> None:
    """The old output's ``sub`` is a link to a folder elsewhere (mode 0701, its ``deep``
    0711, another group): the restored output's real ``sub`` and ``sub/deep`` take
    nothing of them, and the folder elsewhere is left as it was."""
    from pipemake.workspace import Workspace

    gid = _spare_gid()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "deep").mkdir()
    os.chown(elsewhere, -1, gid)
    os.chown(elsewhere / "deep", -1, gid)
    elsewhere.chmod(0o701)
    (elsewhere / "deep").chmod(0o711)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    store, manifest = _store_and_manifest(tmp_path, FILES)
    assert Workspace(tmp_path).restore(manifest, "out", store, "t")
    assert not (out / "sub").is_symlink()
    assert stat_mode(out / "sub") != 0o701 and os.stat(out / "sub").st_gid != gid
    deep = out / "sub" / "deep"
    assert stat_mode(deep) != 0o711 and os.stat(deep).st_gid != gid
    assert (stat_mode(elsewhere), os.stat(elsewhere).st_gid) == (0o701, gid)
    assert list(elsewhere.iterdir()) == [elsewhere / "deep"]


#: a folder of 300 files of which only ``1.txt`` follows ``data/a.txt``
BIG_FOLDER = """
name: ro
stages:
  - id: d
    type: shell
    config:
      cmd: "mkdir -p {outputs.d}/s && for i in $(seq 2 300); do echo $i > {outputs.d}/s/$i.txt; done && cp {inputs.a} {outputs.d}/s/1.txt"
      inputs: {a: data/a.txt}
      outputs: {d: build/d}
"""


def test_a_read_only_large_output_that_changes_little_is_swapped_not_edited_in_place(
    plain_user: tuple[Path, Callable[..., Any]],
) -> None:
    """A large directory output made read-only, restored to a version that differs in one
    file (which would go in place, one rename into a read-only folder): the output is
    assembled beside and swapped in instead, its folders stay read-only, and nothing is
    left in ``.pipemake/tmp``."""
    root, run = plain_user
    (root / "pipemake.yaml").write_text(BIG_FOLDER.lstrip())
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_text("one\n")
    run("build", "--no-progress")
    (root / "data" / "a.txt").write_text("two\n")
    run("build", "--no-progress")
    out = root / "build" / "d"
    _read_only(out, True)
    modes = {p: p.stat().st_mode for p in [out, out / "s"]}
    (root / "data" / "a.txt").write_text("one\n")
    assert "1 restored" in run("build", "--no-progress").stderr
    assert (out / "s" / "1.txt").read_text() == "one\n"
    assert len(list((out / "s").iterdir())) == 300
    assert {p: p.stat().st_mode for p in modes} == modes
    assert _tmp_left(root) == []
    run("status", "--check")


def test_a_file_output_restored_into_a_shared_folder_takes_its_group(tmp_path: Path) -> None:
    """A file output restored into a team folder with ``g+s``: it takes the folder's group,
    as a file made there would."""
    from pipemake.workspace import Workspace

    gid = _spare_gid()
    team = tmp_path / "team"
    team.mkdir()
    os.chown(team, -1, gid)
    team.chmod(0o2775)
    store, _ = _store_and_manifest(tmp_path, {})
    digest = store.put_bytes(b"hello\n")
    manifest = {"kind": "file", "hash": digest, "size": 6, "mode": 0o644}
    assert Workspace(tmp_path).restore(manifest, "team/o.txt", store, "t")
    assert (team / "o.txt").read_text() == "hello\n"
    assert os.stat(team / "o.txt").st_gid == gid
