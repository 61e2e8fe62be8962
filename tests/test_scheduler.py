"""Scheduling (issue 3): resource budgets, GPU ids, the pick rule, retries, timeouts,
keep-going, and a graceful stop on a real subprocess build."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from conftest import Proj, wait_for

from pipemake import api
from pipemake.dag import Graph
from pipemake.events import Bus, Event
from pipemake.progress import describe
from pipemake.scheduler import backoff_delay, priorities


def _events(proj: Proj, **kwargs: object) -> tuple[list[Event], object]:
    seen: list[Event] = []
    bus = Bus()
    bus.subscribe(seen.append)
    error = None
    with api.project_of(proj.root, None) as project:
        try:
            api.build(project, bus=bus, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the caller looks at it
            error = exc
    return seen, error


def _stages(n: int, resources: str, cmd: str = "sleep 0.3") -> str:
    body = "name: r\nstages:\n"
    for i in range(n):
        body += f"""  - id: s{i}
    type: shell
    resources: {resources}
    config:
      cmd: "{cmd}; echo $CUDA_VISIBLE_DEVICES > {{outputs.o}}"
      outputs: {{o: build/s{i}.txt}}
"""
    return body


@pytest.mark.slow
def test_never_over_budget(project: Callable[..., Proj]) -> None:
    proj = project(_stages(5, "{tok: 1}"))
    events, error = _events(proj, jobs=5, resources={"tok": 2})
    assert error is None
    running = peak = 0
    for e in events:
        if e.kind == "task_started":
            running += 1
            peak = max(peak, running)
        elif e.kind == "task_finished":
            running -= 1
    assert peak == 2  # the budget, not -j 5


def test_gpu_ids_are_given_out_one_card_each(project: Callable[..., Proj]) -> None:
    yaml = (
        _stages(2, "{gpu: 1}", cmd="sleep 0.4")
        + """  - id: cpu
    type: shell
    config:
      cmd: "echo \\"[$CUDA_VISIBLE_DEVICES]\\" > {outputs.o}"
      outputs: {o: build/cpu.txt}
"""
    )
    proj = project(yaml)
    events, error = _events(proj, jobs=3, resources={"gpu": 2})
    assert error is None
    seen = {proj.read("build/s0.txt").strip(), proj.read("build/s1.txt").strip()}
    assert seen == {"0", "1"}
    assert proj.read("build/cpu.txt").strip() == "[]"  # no card for a stage that asked none


def test_request_over_budget_is_a_pipeline_error(project: Callable[..., Proj]) -> None:
    proj = project(_stages(1, "{gpu: 2}"))
    result = proj.cli("build", "--resources", "gpu=1", code=2)
    assert "s0" in result.output and "gpu=2" in result.output
    assert not proj.exists("build/s0.txt")


def test_longest_path_first() -> None:
    g = Graph({"a": [], "b": ["a"], "c": ["b"], "x": []})
    rank = priorities(g, ["a", "b", "c", "x"], {"x": 2.5})
    assert rank["a"] == 3.0 and rank["x"] == 2.5 and rank["c"] == 1.0
    rank = priorities(g, ["a", "b", "c", "x"], {"x": 5.0})
    assert rank["x"] > rank["a"]


def test_ready_stages_start_by_critical_path(project: Callable[..., Proj]) -> None:
    proj = project("""
    name: order
    stages:
      - id: short
        type: shell
        config: {cmd: "echo > {outputs.o}", outputs: {o: build/short}}
      - id: a
        type: shell
        config: {cmd: "echo > {outputs.o}", outputs: {o: build/a}}
      - id: b
        type: shell
        config: {cmd: "cat {inputs.i} > {outputs.o}", inputs: {i: "{a.o}"}, outputs: {o: build/b}}
    """)
    events, error = _events(proj, jobs=1)
    assert error is None
    started = [e.stage for e in events if e.kind == "stage_started"]
    assert started.index("a") < started.index("short")


def test_backoff_grows_and_is_capped() -> None:
    assert 1.0 <= backoff_delay(1.0, 1) <= 1.5
    assert 4.0 <= backoff_delay(1.0, 3) <= 6.0
    assert backoff_delay(1.0, 30) <= 450.0


FLAKY = """
name: flaky
stages:
  - id: flaky
    type: shell
    retries: {retries}
    retry_backoff: 0.01
    config:
      cmd: "echo x >> runs/flaky.count; test $(wc -l < runs/flaky.count) -ge 3 && echo ok > {{outputs.o}}"
      outputs: {{o: build/flaky.txt}}
"""


def test_retries_until_it_passes(project: Callable[..., Proj]) -> None:
    proj = project(FLAKY.format(retries=2))
    events, error = _events(proj)
    assert error is None
    assert proj.runs("flaky") == 3
    assert [e.data["attempt"] for e in events if e.kind == "stage_retried"] == [2, 3]
    assert [e.stage for e in events if e.kind == "stage_finished"] == ["flaky"]
    proj.cli("build")
    assert proj.runs("flaky") == 3  # recorded once, as done


def test_retries_run_out(project: Callable[..., Proj]) -> None:
    proj = project(FLAKY.format(retries=1))
    proj.cli("build", code=1)
    assert proj.runs("flaky") == 2


def test_a_stage_that_needed_retries_says_how_much_of_its_time_was_waiting(
    project: Callable[..., Proj],
) -> None:
    """Its duration counts the waits between attempts: the line that reports it, and
    ``status`` after it, say which attempt finished and how long it waited, and the
    waiting is what the backoff asked for."""
    proj = project(FLAKY.format(retries=2).replace("retry_backoff: 0.01", "retry_backoff: 0.2"))
    events, error = _events(proj)
    assert error is None
    waits = [e.data["delay"] for e in events if e.kind == "stage_retried"]
    done = next(e for e in events if e.kind == "stage_finished")
    assert done.data["attempts"] == 3
    assert done.data["retry_wait"] == pytest.approx(sum(waits), abs=1e-3)
    assert done.data["duration"] >= sum(waits)
    assert "of it waiting to retry" in describe(done)
    assert ", 3 attempts, " in proj.cli("status").output
    proj.cli("build")
    assert ", 3 attempts, " in proj.cli("status").output  # nothing ran: the last run stands
    proj.write("runs/flaky.count", "x\nx\n")  # the next attempt is the third line
    proj.cli("build", "--force")  # one attempt now: no word of retries
    assert "attempts" not in proj.cli("status").output


def test_global_retries_apply_to_stages_without_their_own(project: Callable[..., Proj]) -> None:
    proj = project(FLAKY.format(retries=0).replace("    retries: 0\n", ""))  # it sets none
    proj.cli("build", "--retries", "2", code=0)
    assert proj.runs("flaky") == 3


@pytest.mark.slow
def test_timeout_ends_the_stage(project: Callable[..., Proj]) -> None:
    proj = project("""
    name: slow
    stages:
      - id: slow
        type: shell
        timeout: 0.5
        config: {cmd: "sleep 30 && echo > {outputs.o}", outputs: {o: build/slow.txt}}
    """)
    result = proj.cli("build", code=1)
    assert "timed out after 0.5 s" in result.output
    assert not proj.exists("build/slow.txt")


def test_keep_going_summary(project: Callable[..., Proj]) -> None:
    proj = project("""
    name: kg
    stages:
      - id: bad
        type: shell
        config: {cmd: "echo boom >&2; exit 3", outputs: {o: build/bad.txt}}
      - id: after
        type: shell
        config: {cmd: "cp {inputs.i} {outputs.o}", inputs: {i: "{bad.o}"}, outputs: {o: build/after}}
      - id: good
        type: shell
        config: {cmd: "sleep 0.3; echo > {outputs.o}", outputs: {o: build/good.txt}}
    """)
    events, error = _events(proj, keep_going=True)
    assert error is not None and getattr(error, "exit_code", None) == 1
    done = [e for e in events if e.kind == "run_finished"][0].data
    assert list(done["failed"]) == ["bad"] and "boom" in done["failed"]["bad"]
    assert done["skipped"] == {"after": "upstream bad failed"}
    assert done["ran"] == ["good"]
    assert proj.exists("build/good.txt")


SLOW = """
name: stop
stages:
  - id: slow
    type: shell
    config:
      cmd: "touch runs/started; sleep {sleep}; echo done > {{outputs.o}}"
      outputs: {{o: build/slow.txt}}
  - id: later
    type: shell
    config:
      cmd: "cp {{inputs.i}} {{outputs.o}}"
      inputs: {{i: "{{slow.o}}"}}
      outputs: {{o: build/later.txt}}
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_stop_lets_running_stages_finish_within_grace(
    project: Callable[..., Proj], sig: int, code: int
) -> None:
    proj = project(SLOW.format(sleep=1))
    proc = proj.popen("build", "--grace", "20", "--no-progress")
    wait_for(lambda: proj.exists("runs/started"), what="the stage to start")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "pipemake build" in err  # says how to resume
    assert proj.read("build/slow.txt") == "done\n"  # finished within the grace period: kept
    assert not proj.exists("build/later.txt")  # no new stage started
    assert "slow: up to date" in proj.cli("dry-run").output


@pytest.mark.slow
def test_grace_over_or_second_signal_ends_at_once(project: Callable[..., Proj]) -> None:
    proj = project(SLOW.format(sleep=30))
    proc = proj.popen("build", "--grace", "60", "--no-progress")
    wait_for(lambda: proj.exists("runs/started"), what="the stage to start")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert not proj.exists("build/slow.txt")
    proj.write("pipemake.yaml", proj.read("pipemake.yaml").replace("sleep 30", "sleep 0"))
    proj.cli("build")
    assert proj.read("build/later.txt") == "done\n"
