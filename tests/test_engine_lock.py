"""One build at a time per workspace; a shared cache directory used by two workspaces at once
(issue 2, behaviour 10). Real processes: the lock holder is another process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import CHAIN, CHAIN_FILES, CHAIN_STAGES, Proj, wait_for


def _hold_lock(p: Proj, log: Path) -> subprocess.Popen[str]:
    """Start a build that holds the lock until the file ``go`` exists."""
    proc = p.popen("build", log=log)
    wait_for(
        lambda: p.exists("runs/slow.started") or proc.poll() is not None,
        what="the first build to start its slow stage",
    )
    assert proc.poll() is None, log.read_text()
    return proc


@pytest.mark.slow
def test_second_build_waits_for_the_lock_naming_the_holder(slow: Proj, tmp_path: Path) -> None:
    first = _hold_lock(slow, tmp_path / "first.log")
    second_log = tmp_path / "second.log"
    second = slow.popen("build", log=second_log)
    wait_for(
        lambda: "lock" in second_log.read_text() or second.poll() is not None,
        what="the second build to say it waits",
    )
    assert second.poll() is None, second_log.read_text()
    text = second_log.read_text()
    assert "waiting" in text and str(first.pid) in text
    slow.write("go", "")
    assert first.wait(20) == 0
    assert second.wait(20) == 0, second_log.read_text()
    # never a stage run twice for the same key
    assert slow.run_counts() == {"first": 1, "slow": 1, "last": 1}


@pytest.mark.slow
def test_lock_timeout_gives_up_with_exit_1(slow: Proj, tmp_path: Path) -> None:
    first = _hold_lock(slow, tmp_path / "first.log")
    r = slow.cli("build", "--lock-timeout", "0.5", code=1)
    assert str(first.pid) in r.output
    assert "Traceback" not in r.output
    slow.write("go", "")
    assert first.wait(20) == 0
    assert slow.run_counts() == {"first": 1, "slow": 1, "last": 1}


def test_bad_lock_timeout_is_a_usage_error(chain: Proj) -> None:
    chain.cli("build", "--lock-timeout", "soon", code=2)


def test_readers_do_not_wait_for_the_lock(slow: Proj, tmp_path: Path) -> None:
    first = _hold_lock(slow, tmp_path / "first.log")
    slow.cli("dry-run")
    slow.cli("status")
    slow.cli("validate")
    slow.write("go", "")
    assert first.wait(20) == 0


def test_lock_of_a_killed_build_is_taken_over(slow: Proj, tmp_path: Path) -> None:
    first = _hold_lock(slow, tmp_path / "first.log")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    slow.write("go", "")
    slow.cli("build", "--lock-timeout", "10")
    assert slow.read("build/last/done.txt") == "done\none\n"


def test_lock_file_left_by_a_dead_process_is_taken_over(chain: Proj) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = chain.path(".pipemake/lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(
        json.dumps(
            {"pid": dead.pid, "host": socket.gethostname(), "since": 0, "command": "pipemake build"}
        )
    )
    chain.cli("build", "--lock-timeout", "2")
    assert chain.run_counts() == dict.fromkeys(CHAIN_STAGES, 1)


@pytest.mark.slow
def test_two_workspaces_share_one_cache_dir_at_once(project, tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    wide = CHAIN.replace("name: chain", "name: wide")
    a = project(wide, CHAIN_FILES, name="a")
    b = project(wide, CHAIN_FILES, name="b")
    procs = [
        p.popen("build", "-j", "2", "--cache-dir", str(cache), log=tmp_path / f"{i}.log")
        for i, p in enumerate((a, b))
    ]
    for i, proc in enumerate(procs):
        assert proc.wait(60) == 0, (tmp_path / f"{i}.log").read_text()
    for p in (a, b):
        assert p.read("build/report/sub/side.txt") == "bee\none\n"
        assert p.read("build/upper.txt") == "HELLO\nWORLD\n"
    out = a.cli("--cache-dir", str(cache), "cache", "verify").output
    assert "OK" in out
    # a third checkout finds everything in the shared cache
    c = project(wide, CHAIN_FILES, name="c")
    r = c.cli("build", "--cache-dir", str(cache))
    assert c.run_counts() == {}
    assert "4 restored" in r.output
    assert c.read("build/report/n.txt") == "2\n"
