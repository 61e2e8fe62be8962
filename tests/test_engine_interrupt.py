"""Crashes and signals, through real processes (issue 2, behaviour 9, and exit codes 130/143):
nothing half-written is ever recorded or placed; building again finishes the job."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import TRACEBACK, Proj, alive, wait_for

from pipemake import open_project


def _entry_stages(p: Proj) -> set[str]:
    project = open_project(p.root)
    try:
        return {entry.get("stage") for _key, entry in project.store.actions()}
    finally:
        project.close()


def _start_and_wait(p: Proj, log: Path, *args: str):
    proc = p.popen("build", *args, log=log)
    wait_for(
        lambda: p.exists("runs/slow.started") or proc.poll() is not None,
        what="the slow stage to start",
    )
    assert proc.poll() is None, log.read_text()
    return proc, int(p.read("runs/slow.pid"))


@pytest.mark.slow
def test_kill_9_mid_stage_leaves_nothing_half_written(slow: Proj, tmp_path: Path) -> None:
    proc, shell_pid = _start_and_wait(slow, tmp_path / "log")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    # the stage's command dies with pipemake instead of running on unsupervised
    wait_for(lambda: not alive(shell_pid), what="the stage's command to end")
    assert not slow.exists("build/slow")
    assert _entry_stages(slow) == {"first"}
    dry = slow.cli("dry-run").stdout
    assert "first: up to date" in dry
    assert "slow: run" in dry
    # building again finishes the job, without redoing what was done
    slow.write("go", "")
    slow.cli("build")
    assert slow.run_counts() == {"first": 1, "slow": 2, "last": 1}
    assert slow.read("build/slow/done.txt") == "done\none\n"
    assert slow.read("build/last/part.txt") == "partial\n"
    assert not list(slow.path("build").glob("**/*.tmp*"))


@pytest.mark.slow
def test_kill_9_during_a_rerun_keeps_the_old_output_or_none(slow: Proj, tmp_path: Path) -> None:
    slow.write("go", "")
    slow.cli("build")
    os.remove(slow.path("go"))
    os.remove(slow.path("runs/slow.started"))
    proc, shell_pid = _start_and_wait(slow, tmp_path / "log", "--force-stage", "slow")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not alive(shell_pid), what="the stage's command to end")
    if slow.exists("build/slow"):
        assert sorted(os.listdir(slow.path("build/slow"))) == ["done.txt", "part.txt"]
        assert slow.read("build/slow/done.txt") == "done\none\n"
    slow.write("go", "")
    slow.cli("build")
    assert slow.runs("slow") == 2  # the complete entry from the first build is used
    assert slow.read("build/slow/done.txt") == "done\none\n"
    slow.cli("cache", "verify")


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
@pytest.mark.slow
def test_signal_stops_the_build_and_keeps_finished_stages(
    slow: Proj, tmp_path: Path, sig: int, code: int
) -> None:
    log = tmp_path / "log"
    proc, shell_pid = _start_and_wait(slow, log)
    proc.send_signal(sig)
    # a first signal may give running stages a grace period; a second one ends them now
    wait_for(
        lambda: proc.poll() is not None or "stopping" in log.read_text(),
        what="pipemake to take the signal",
    )
    proc.send_signal(sig)
    assert proc.wait(20) == code, log.read_text()
    out = log.read_text()
    assert TRACEBACK not in out
    assert "interrupt" in out.lower()
    assert "did not finish: slow;" in out  # the last word names what the signal ended
    wait_for(lambda: not alive(shell_pid), what="the stage's command to end")
    assert not slow.exists("build/slow") and not slow.exists("build/last")
    assert slow.read("build/first.txt") == "one\n"
    assert _entry_stages(slow) == {"first"}
    assert slow.run_counts() == {"first": 1, "slow": 1}
    slow.write("go", "")
    slow.cli("build")
    assert slow.run_counts() == {"first": 1, "slow": 2, "last": 1}
    assert slow.read("build/last/done.txt") == "done\none\n"


@pytest.mark.slow
def test_a_stage_let_finish_after_one_signal_is_kept_and_said_so(
    slow: Proj, tmp_path: Path
) -> None:
    """One Ctrl-C: nothing new starts, the running stage finishes within its grace and is
    kept; the last word says it was let finish, not that it was stopped."""
    log = tmp_path / "log"
    proc, _ = _start_and_wait(slow, log)
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping" in log.read_text(), what="pipemake to take the signal")
    slow.write("go", "")
    assert proc.wait(20) == 130, log.read_text()
    out = log.read_text()
    assert "stages already running were let finish" in out
    assert "did not finish" not in out
    assert _entry_stages(slow) == {"first", "slow"}
    slow.cli("build")
    assert slow.run_counts() == {"first": 1, "slow": 1, "last": 1}


EACH = r"""
name: each
stages:
  - id: each
    type: shell
    foreach: src
    config:
      cmd: "if [ {item.name} = c.txt ]; then touch runs/c.started; while [ ! -e go ]; do sleep 0.05; done; fi; cp {inputs.src} {outputs.d}/{item.name}"
      inputs: {src: data}
      outputs: {d: build/each}
"""


@pytest.mark.slow
def test_a_foreach_stage_stopped_between_its_items_did_not_finish(project, tmp_path: Path) -> None:
    """One Ctrl-C while item c runs: c finishes in its grace, the items after it never
    start; the stage is named as not finished (not 'let finish'), its done items kept."""
    p = project(EACH, {f"data/{n}.txt": n for n in "abcdef"})
    log = tmp_path / "log"
    proc = p.popen("build", "-j", "1", log=log)
    wait_for(lambda: p.exists("runs/c.started") or proc.poll() is not None, what="item c")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping" in log.read_text(), what="pipemake to take the signal")
    p.write("go", "")
    assert proc.wait(20) == 130, log.read_text()
    out = log.read_text()
    assert "did not finish: each;" in out and "let finish" not in out
    assert "3 of 6 items done and kept" in out
    assert sorted(f.name for f in p.path("build").glob("*")) == []  # no half stage placed


def test_a_stopped_build_without_a_checkpoint_says_its_store_is_thrown_away() -> None:
    """``run --no-checkpoint``: what finished is not kept, and neither line says it is."""
    from pipemake.errors import Interrupted
    from pipemake.events import Event
    from pipemake.progress import ItemCounts, summary_lines

    stopped = Interrupted(signal.SIGINT, ["each"])
    assert "finished stages are kept" in stopped.format()
    stopped.kept = False
    assert "store is thrown away (--no-checkpoint)" in stopped.format()
    assert "kept" not in stopped.format()
    items = ItemCounts()
    items(Event("progress", "each", {"done": 3, "total": 6}))
    items.keeps = False
    data = {"ran": [], "restored": [], "up_to_date": [], "skipped": {"each": "stopped"},
            "interrupted": int(signal.SIGINT), "duration": 1.0}  # fmt: skip
    text = "\n".join(summary_lines(Event("run_finished", None, data), items))
    assert "store is thrown away" in text and "kept" not in text
