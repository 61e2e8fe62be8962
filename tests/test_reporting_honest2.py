"""A second acceptance review of what pipemake reports: every figure and word is what happened.

A python stage's traceback ends, wherever it is shown, with the line that raised and the
exception (a long one is cut in the middle, never at its end); a retry's wait for a job slot
is queue time, not run time; a stage's explicit ``retries: 0`` wins over ``--retries``;
``build -n`` (and ``run --dry-run``) plans with the build's own options; a running build's
duration is its time so far; an interrupted stage is said to be interrupted, not failed;
and ``status`` after a restore in place says it was restored, not that it ran.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from conftest import TRACEBACK, Proj, counted, wait_for

from pipemake.decide import explain
from pipemake.events import Event
from pipemake.progress import ERROR_LINES, PlainView, summary_lines

# tracebacks ------------------------------------------------------------------------------
STEPS = """
def parse(line):
    return int(line.split(",")[1])  # RAISING_LINE


def load(rows):
    return [parse(r) for r in rows]


def step(ctx):
    rows = load(["a,1", "b,x"])
    ctx.outputs["o"].write_text(str(sum(rows)))
"""


def test_the_summary_and_the_failed_line_end_with_the_raising_line(project) -> None:
    p = project(
        """
        name: tb
        stages:
          - id: p
            type: python
            config: {function: "honest2_steps:step", outputs: {o: build/o.txt}}
        """,
        {"honest2_steps.py": STEPS},  # a name of its own: tests share one interpreter
    )
    out = p.cli("build", "--executor", "inline", "--no-progress", code=1).stderr
    failed_line, summary = out[: out.index("1 failed (p)")], out[out.index("1 failed (p)") :]
    for shown in (failed_line, summary):  # the plain FAILED line carries it too
        assert TRACEBACK in shown
        assert "in parse" in shown and "RAISING_LINE" in shown
        exception = "ValueError: invalid literal for int() with base 10: 'x'"
        assert shown.rindex(exception) > shown.index("RAISING_LINE")  # it ends the traceback
        assert "more line(s)" not in shown  # four frames fit whole


def _failed(error: str) -> list[str]:
    return summary_lines(
        Event(
            "run_finished",
            None,
            {
                "ran": [],
                "restored": [],
                "up_to_date": [],
                "failed": {"x": error},
                "skipped": {},
                "duration": 1.0,
            },
        )  # fmt: skip
    )


def _deep_traceback(frames: int) -> list[str]:
    lines = ["RecursionError: too deep", "Traceback (most recent call last):"]
    for i in range(frames):
        lines += [f'  File "/p/steps/s.py", line {i + 10}, in f{i}', f"    call_{i}()"]
    return [*lines, '  File "/p/steps/s.py", line 3, in leaf', "    raise RecursionError('x')",
            "RecursionError: too deep"]  # fmt: skip


def test_a_long_traceback_is_cut_in_the_middle_keeping_the_last_frames() -> None:
    error = _deep_traceback(60)
    text = "\n".join(_failed("\n".join(error)))
    lines = text.splitlines()
    assert lines[1] == "  FAILED x: RecursionError: too deep"
    assert lines[2].strip() == "Traceback (most recent call last):"  # its header kept
    assert lines[-1].strip() == "RecursionError: too deep"  # the exception, last
    assert "raise RecursionError('x')" in text and "in f59" in text  # the raising frames
    assert "in f0\n" not in text + "\n"  # the first frames are the ones left out
    note = next(line for line in lines if "more line(s)" in line)
    left_out = int(note.split("…")[1].split()[0])
    shown = len(lines) - 2 - 1  # the counts line, the FAILED line, the note
    assert left_out + shown == len(error) - 1  # every line after the first: shown or counted
    assert "in `pipemake log`" in note
    assert len(lines) - 2 <= ERROR_LINES + 1
    # the tail starts at a frame, not in the middle of one
    after = lines[lines.index(note) + 1].strip()
    assert after.startswith("File ")


def test_the_plain_failed_line_is_cut_the_same_way() -> None:
    out: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            out.append(text)

        def flush(self) -> None:
            pass

    view = PlainView(Sink(), clock=lambda: 0.0)  # type: ignore[arg-type]
    error = "\n".join(_deep_traceback(60))
    view(Event("stage_failed", "x", {"error": error}, 0.0))
    text = "".join(out)
    assert "x: FAILED: RecursionError: too deep" in text
    assert text.rstrip().endswith("RecursionError: too deep")
    assert "raise RecursionError('x')" in text and "more line(s) in `pipemake log`" in text


# durations -------------------------------------------------------------------------------
def test_a_retrys_wait_for_a_job_slot_is_not_its_run_time(project) -> None:
    p = project(
        """
        name: q
        stages:
          - id: flaky
            type: shell
            retries: 1
            retry_backoff: 0.05
            config:
              cmd: "if [ -e tried ]; then echo ok > {outputs.o}; else touch tried; exit 1; fi"
              outputs: {o: build/f.txt}
          - id: other
            type: shell
            config: {cmd: "sleep 2; echo ok > {outputs.o}", outputs: {o: build/s.txt}}
        """
    )
    p.cli("build", "-j", "1", "--no-progress")
    events = [json.loads(line) for line in p.cli("log", "--json").stdout.splitlines()]
    done = {e["stage"]: e for e in events if e.get("event") == "stage_finished"}
    order = [e["stage"] for e in events if e.get("event") == "task_started"]
    assert order == ["flaky", "other", "flaky"]  # the retry waited for other's slot
    flaky, other = done["flaky"], done["other"]
    assert flaky["attempts"] == 2
    # other ran while flaky's retry waited: that wait is flaky's queue time, not its run time
    assert flaky["duration"] < other["duration"]
    assert flaky["queued"] > flaky["duration"]  # the wait is said, as queue time
    row = next(r for r in json.loads(p.cli("status", "--json").stdout)["stages"]
               if r["stage"] == "flaky")  # fmt: skip
    assert row["last_duration"] == flaky["duration"]


def test_an_explicit_retries_0_wins_over_the_builds_retries(project) -> None:
    p = project(
        f"""
        name: r
        stages:
          - id: none_set
            type: shell
            retry_backoff: 0
            config: {{cmd: "{counted("none_set", "exit 1")}", outputs: {{o: build/a.txt}}}}
          - id: zero
            type: shell
            retries: 0
            config: {{cmd: "{counted("zero", "exit 1")}", outputs: {{o: build/b.txt}}}}
        """
    )
    p.cli("build", "-k", "--retries", "2", "--no-progress", code=1)
    assert p.runs("zero") == 1  # retries: 0 said so
    assert p.runs("none_set") == 3  # it set none: --retries 2 applies


def _waiting_build(project) -> Proj:
    return project(
        """
        name: w
        stages:
          - id: a
            type: shell
            config:
              cmd: "touch started; while [ ! -e go ]; do sleep 0.05; done; echo a > {outputs.o}"
              outputs: {o: build/a.txt}
        """
    )


def test_a_running_builds_duration_is_its_time_so_far(project, tmp_path: Path) -> None:
    p = _waiting_build(project)
    proc = p.popen("build", "--no-progress", log=tmp_path / "log")
    wait_for(lambda: p.exists("started") or proc.poll() is not None, what="the stage to start")
    started = json.loads(p.cli("status", "--pipeline-id", "-1", "--json").stdout)["started"]
    wait_for(lambda: time.time() - started > 1.0, what="a second of the build")
    asked = time.time()
    info = json.loads(p.cli("status", "--pipeline-id", "-1", "--json").stdout)
    runs = json.loads(p.cli("list", "--runs", "--json").stdout)
    text = p.cli("status", "--pipeline-id", "-1").stdout
    p.write("go", "")
    assert proc.wait(30) == 0
    assert info["state"] == "running"
    assert info["duration"] >= asked - started  # until now, not until its last event
    assert runs[-1]["result"] == "running" and runs[-1]["duration"] >= asked - started
    assert float(text.split("running for ")[1].split("s")[0]) >= 1.0


# words -----------------------------------------------------------------------------------
def test_an_interrupted_stage_is_said_interrupted_not_failed(project, tmp_path: Path) -> None:
    p = _waiting_build(project)
    proc = p.popen("build", "--no-progress", "--grace", "0", log=tmp_path / "log")
    wait_for(lambda: p.exists("started") or proc.poll() is not None, what="the stage to start")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    status = p.cli("status").stdout
    assert (
        "a: interrupted" in status
        and "(the last run was interrupted)" not in status
        and "failed" not in status
    )
    assert p.cli("dry-run").stdout.strip() == "a: run: the last run was interrupted"
    p.write("go", "")
    out = p.cli("build", "--no-progress").stderr
    assert "a: running (the last run was interrupted)" in out and "failed" not in out


def test_a_change_since_an_interrupted_run_names_that_run() -> None:
    old = {"rule": "shell", "params": {"cmd": "a"}, "inputs": {}}
    new = {"rule": "shell", "params": {"cmd": "b"}, "inputs": {}}
    assert [str(r) for r in explain(old, old, old, interrupted=True)] == [
        "the last run was interrupted"
    ]
    said = [str(r) for r in explain(old, new, old, interrupted=True)]
    assert said and all(r.endswith("since the interrupted run") for r in said)
    assert [str(r) for r in explain(old, old, old)] == ["the last run failed"]


def test_status_after_a_restore_in_place_says_restored(project) -> None:
    p = project(
        f"""
        name: s
        stages:
          - id: a
            type: shell
            config: {{cmd: "{counted("a", "echo a > {outputs.o}")}", outputs: {{o: build/a.txt}}}}
        """
    )
    p.cli("build", "--no-progress")
    ran = json.loads(p.cli("status", "--json").stdout)["stages"][0]
    assert ran["last_restored"] is False
    (p.root / "build/a.txt").unlink()
    assert "a: restored from the store" in p.cli("build", "--no-progress").stderr
    assert p.runs("a") == 1
    row = json.loads(p.cli("status", "--json").stdout)["stages"][0]
    assert row["last_restored"] is True and row["last_duration"] == ran["last_duration"]
    assert "[last: restored from the store; it ran in" in p.cli("status").stdout
    p.cli("build", "--no-progress")  # up to date: still the restore's record
    assert "[last: restored from the store; it ran in" in p.cli("status").stdout
    p.cli("build", "-B", "--no-progress")  # it runs here again: said so
    assert p.runs("a") == 2
    assert json.loads(p.cli("status", "--json").stdout)["stages"][0]["last_restored"] is False


# build -n --------------------------------------------------------------------------------
CHAIN = f"""
name: n
vars: {{n: 1}}
stages:
  - id: a
    type: shell
    config: {{cmd: "{counted("a", "echo {vars.n} > {outputs.o}")}", outputs: {{o: build/a.txt}}}}
  - id: b
    type: shell
    config:
      cmd: "{counted("b", "cat {inputs.i} > {outputs.o}")}"
      inputs: {{i: "{{a.o}}"}}
      outputs: {{o: build/b.txt}}
"""


def test_build_n_plans_with_force_and_force_stage(project) -> None:
    p = project(CHAIN)
    p.cli("build", "--no-progress")
    assert p.cli("build", "-n", "-B").stdout.splitlines() == ["a: run: forced", "b: run: forced"]
    assert p.cli("dry-run", "-B").stdout.splitlines() == ["a: run: forced", "b: run: forced"]
    forced = p.cli("build", "-n", "--force-stage", "a").stdout.splitlines()
    assert forced == ["a: run: forced", "b: maybe: upstream a will run"]
    assert p.cli("build", "-n", "--force-stage", "build/b.txt").stdout.splitlines() == [
        "a: up to date", "b: run: forced"
    ]  # fmt: skip
    assert p.cli("build", "-n", "-S", "vars.n=2").stdout.startswith("a: run: vars.n 1 → 2")
    out = p.cli("build", "-n", "--force-stage", "nope", code=2).output
    assert "--force-stage" in out and "nope" in out
    assert p.run_counts() == {"a": 1, "b": 1}  # nothing ran


def test_build_n_refuses_what_the_build_would_refuse(project) -> None:
    p = project(CHAIN)
    assert "--resources" in p.cli("build", "-n", "--resources", "gpu=x", code=2).output
    assert "--executor" in p.cli("build", "-n", "--executor", "nope", code=2).output
    assert "--scheduler" in p.cli("build", "-n", "--scheduler", "tcp://x:1", code=2).output
    assert p.cli("build", "-n", "-j", "4", "-k", "--retries", "1").stdout.startswith(
        "a: run: never built"
    )
    assert p.run_counts() == {}


def test_build_n_and_run_dry_run_read_the_store_they_are_given(project, tmp_path: Path) -> None:
    store = tmp_path / "store"
    one = project(CHAIN, name="one")
    one.cli("build", "--cache-dir", str(store), "--no-progress")
    two = project(CHAIN, name="two")  # a fresh checkout
    assert two.cli("build", "-n").stdout.startswith("a: run: never built")
    planned = two.cli("build", "-n", "--cache-dir", str(store)).stdout.splitlines()
    assert planned[0].startswith("a: restore: ")
    by_run = two.cli("run", "--dry-run", "--checkpoint-dir", str(store)).stdout.splitlines()
    assert by_run == planned
    scratch = two.cli("run", "--dry-run", "--no-checkpoint", "--checkpoint-dir", str(store))
    assert scratch.stdout.splitlines() == ["a: run: forced", "b: run: forced"]
    done = two.cli("build", "--cache-dir", str(store), "--no-progress").stderr
    assert "a: restored from the store" in done  # as planned
    assert two.run_counts() == {}
