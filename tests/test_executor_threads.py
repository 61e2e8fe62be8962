"""The local executor's thread path: tasks of a rule that only starts subprocesses
(``shell``) run in threads of the build process, with the guarantees of a worker process:
the -j cap, timeouts that end the command's process tree (SIGKILL for one that ignores
SIGTERM), the task's own environment without touching ``os.environ``, retries, progress and
log lines, and a stop signal that keeps finished items. (kill -9 of the build ending its
commands is in test_engine_interrupt.py.)"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proj, alive, shell_foreach, wait_for

from pipemake import api
from pipemake.events import Bus, Event
from pipemake.executors import local


def _files(n: int) -> dict[str, str]:
    return {f"data/f{i}.txt": f"file {i}\n" for i in range(n)}


def _events(proj: Proj, **kwargs: Any) -> list[Event]:
    seen: list[Event] = []
    bus = Bus()
    bus.subscribe(seen.append)
    project = api.open_project(proj.root)
    try:
        api.build(project, bus=bus, **kwargs)
    finally:
        project.close()
    return seen


def test_commands_start_from_the_build_process_which_stays_as_it_was(
    project: Callable[..., Proj],
) -> None:
    proj = project(
        """
    name: t
    stages:
      - id: one
        type: shell
        config: {cmd: "echo $PPID $TAG > {outputs.o}", outputs: {o: build/one.txt}, env: {TAG: x}}
      - id: each
        type: shell
        foreach: src
        config:
          cmd: "echo $PPID > {outputs.o}/{item.name}"
          inputs: {src: data}
          outputs: {o: build/each}
    """,
        _files(3),
    )
    cwd, env = os.getcwd(), dict(os.environ)
    proj.cli("build", "-j", "2")
    me = str(os.getpid())
    # no worker process in between; the relative paths worked without changing directory
    assert proj.read("build/one.txt").split() == [me, "x"]
    assert {proj.read(f"build/each/f{i}.txt").strip() for i in range(3)} == {me}
    assert os.getcwd() == cwd
    assert dict(os.environ) == env  # the stage's env went to the command only
    proj.cli("cache", "verify")


@pytest.mark.parametrize(("jobs", "small"), [(2, 8), (3, 8), (3, 0)])
@pytest.mark.slow
def test_jobs_cap_the_commands_running_at_once(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch, jobs: int, small: int
) -> None:
    # batches of one item each; with small=0 every batch counts as big, and those beyond
    # ITEM_THREADS go to worker processes
    monkeypatch.setattr(local, "SMALL_BATCH", small)
    cmd = (
        "touch runs/active/{item.stem}; ls runs/active | wc -l >> runs/seen; echo $PPID >> "
        "runs/parents; sleep 0.3; rm runs/active/{item.stem}; cp {inputs.src} {outputs.o}/"
    )
    proj = project(shell_foreach(cmd), _files(9))
    proj.path("runs/active").mkdir()
    proj.cli("build", "-j", str(jobs))
    seen = [int(n) for n in proj.read("runs/seen").split()]
    assert len(seen) == 9
    assert 2 <= max(seen) <= jobs  # side by side, never more than -j
    assert sorted(os.listdir(proj.path("build/each"))) == [f"f{i}.txt" for i in range(9)]
    parents = set(proj.read("runs/parents").split())
    assert str(os.getpid()) in parents
    if jobs > local.ITEM_THREADS and small == 0:
        assert len(parents) > 1  # a worker process ran some
    else:
        assert parents == {str(os.getpid())}


@pytest.mark.slow
def test_timeout_ends_the_whole_process_tree_of_an_item(project: Callable[..., Proj]) -> None:
    cmd = "sleep 60 & echo $! > runs/bg.pid; echo $$ > runs/sh.pid; wait"
    proj = project(shell_foreach(cmd, "        timeout: 0.5\n"), _files(1))
    result = proj.cli("build", code=1)
    assert "timed out after 0.5 s" in result.output
    for name in ("sh", "bg"):
        pid = int(proj.read(f"runs/{name}.pid"))
        wait_for(lambda pid=pid: not alive(pid), what=f"the {name} process to end")
    assert not proj.exists("build/each")


@pytest.mark.slow
def test_timeout_kills_a_command_that_ignores_sigterm(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "KILL_AFTER_TERM", 0.2)
    proj = project(
        """
    name: t
    stages:
      - id: stubborn
        type: shell
        timeout: 0.3
        config:
          cmd: "trap '' TERM; echo $$ > runs/sh.pid; sleep 60; echo > {outputs.o}"
          outputs: {o: build/out.txt}
    """
    )
    results: list[Any] = []
    build = threading.Thread(target=lambda: results.append(proj.cli("build", code=None)))
    build.daemon = True
    build.start()
    build.join(60)
    assert not build.is_alive(), "the build hung on a command that ignores SIGTERM"
    assert results[0].exit_code == 1
    assert "timed out after 0.3 s" in results[0].output
    pid = int(proj.read("runs/sh.pid"))
    wait_for(lambda: not alive(pid), what="the command to end")


@pytest.mark.slow
def test_each_task_gets_its_cards_and_env(project: Callable[..., Proj]) -> None:
    proj = project(
        """
    name: t
    stages:
      - id: gpu
        type: shell
        foreach: src
        resources: {gpu: 1}
        config:
          cmd: "sleep 0.1; echo $CUDA_VISIBLE_DEVICES $TAG > {outputs.o}/{item.name}"
          inputs: {src: data}
          outputs: {o: build/gpu}
          env: {TAG: "{item.stem}"}
      - id: cpu
        type: shell
        foreach: src
        config:
          cmd: "sleep 0.1; echo [$CUDA_VISIBLE_DEVICES] $TAG > {outputs.o}/{item.name}"
          inputs: {src: data}
          outputs: {o: build/cpu}
    """,
        _files(4),
    )
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    proj.cli("build", "-j", "3", "--resources", "gpu=2")
    for i in range(4):
        card, tag = proj.read(f"build/gpu/f{i}.txt").split()
        assert card in {"0", "1"} and tag == f"f{i}"
        assert proj.read(f"build/cpu/f{i}.txt").strip() == "[]"  # no card asked: none seen
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before


def test_failed_items_are_retried_and_report_progress_and_output(
    project: Callable[..., Proj],
) -> None:
    cmd = (
        "echo x >> runs/{item.stem}.count; echo said {item.stem}; "
        "test $(wc -l < runs/{item.stem}.count) -ge 2 && cp {inputs.src} {outputs.o}/"
    )
    extra = "        retries: 1\n        retry_backoff: 0.01\n"
    proj = project(shell_foreach(cmd, extra), _files(3))
    events = _events(proj, jobs=2)
    assert proj.run_counts() == {"f0": 2, "f1": 2, "f2": 2}
    assert [e.data["items"] for e in events if e.kind == "stage_retried"]
    said = {e.data["text"] for e in events if e.kind == "log" and e.stage == "each"}
    assert {"said f0", "said f1", "said f2"} <= said
    progress = [e.data for e in events if e.kind == "progress" and e.stage == "each"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 3
    assert [e.stage for e in events if e.kind == "stage_finished"] == ["each"]
    assert sorted(os.listdir(proj.path("build/each"))) == ["f0.txt", "f1.txt", "f2.txt"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_stop_signal_ends_the_running_item_and_a_rebuild_runs_only_the_rest(
    project: Callable[..., Proj], tmp_path: Path, sig: int, code: int
) -> None:
    cmd = (
        "echo x >> runs/{item.stem}.count; echo $$ > runs/{item.stem}.pid; "
        "if [ {item.stem} = f2 ]; then touch runs/f2.started; "
        "while [ ! -e go ]; do sleep 0.02; done; fi; cp {inputs.src} {outputs.o}/"
    )
    proj = project(shell_foreach(cmd), _files(4))
    log = tmp_path / "log"
    proc = proj.popen("build", "-j", "1", "--grace", "0.3", "--no-progress", log=log)
    wait_for(lambda: proj.exists("runs/f2.started") or proc.poll() is not None, what="item f2")
    proc.send_signal(sig)
    assert proc.wait(30) == code, log.read_text()
    pid = int(proj.read("runs/f2.pid"))
    wait_for(lambda: not alive(pid), what="the running item's command to end")
    assert proj.run_counts() == {"f0": 1, "f1": 1, "f2": 1}
    assert not proj.exists("build/each")
    proj.write("go", "")
    proj.cli("build", "-j", "1")
    assert proj.run_counts() == {"f0": 1, "f1": 1, "f2": 2, "f3": 1}
    assert sorted(os.listdir(proj.path("build/each"))) == [f"f{i}.txt" for i in range(4)]


@pytest.mark.slow
def test_a_stray_process_holding_the_output_open_does_not_hang_the_build(
    project: Callable[..., Proj], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a grandchild that leaves the command's process group keeps its output pipe open: the
    # task is given up as stopped instead of waiting for it
    monkeypatch.setattr(local, "KILL_AFTER_TERM", 0.2)
    monkeypatch.setattr(local, "GIVE_UP_AFTER_KILL", 0.2)
    proj = project(
        """
    name: t
    stages:
      - id: leaky
        type: shell
        timeout: 0.3
        config:
          cmd: "setsid sleep 60 & echo $! > runs/stray.pid; sleep 60; echo > {outputs.o}"
          outputs: {o: build/out.txt}
    """
    )
    results: list[Any] = []
    build = threading.Thread(target=lambda: results.append(proj.cli("build", code=None)))
    build.daemon = True
    build.start()
    try:
        build.join(60)
        assert not build.is_alive(), "the build hung on a stray process"
        assert results[0].exit_code == 1
        assert "timed out after 0.3 s" in results[0].output
    finally:
        os.kill(int(proj.read("runs/stray.pid")), signal.SIGKILL)
