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
    assert "Run `pipemake push` again to send the rest." in out and TRACEBACK not in out
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
