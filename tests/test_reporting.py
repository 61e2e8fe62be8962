"""Issue 14's reporting items: every figure and word pipemake prints is what happened.

A python stage's traceback starts at the user's code (summary, `pipemake log` and
`.pipemake/logs/STAGE.log`); no ETA without an honest estimate; a restore names the input
that changed back; a fresh checkout with a restored store says the store has the outputs;
item counts of failed, stopped and all-cached foreach stages; a running build is shown as
running; and the small things (tab errors, timeout retries, list headers, help texts).
"""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACEBACK, Proj, wait_for

from pipemake.eta import Estimator
from pipemake.events import Event
from pipemake.progress import ItemCounts, PlainView, log_lines, summary_lines

# tracebacks ------------------------------------------------------------------------------
STEPS = """
def helper(x):
    return 1 / x


def boom(ctx):
    ctx.log.info("about to fail")
    helper(0)


def each(ctx):
    if "bad" in ctx.inputs["src"].read_text():
        helper(0)
    (ctx.outputs["o"] / ctx.item.name).write_text("ok")
"""

PYTHON_STAGE = """
name: tb
stages:
  - id: p
    type: python
    config:
      function: report_steps:boom
      outputs: {o: build/o.txt}
"""


def _steps(p: Proj) -> None:
    p.write("report_steps.py", STEPS)  # a name of its own: tests share one interpreter


def _user_frames(text: str) -> None:
    """The user's frames, with the failing lines' text, and none of pipemake's."""
    assert TRACEBACK in text
    assert 'report_steps.py", line 8, in boom' in text and "helper(0)" in text
    assert 'report_steps.py", line 3, in helper' in text and "return 1 / x" in text
    assert "ZeroDivisionError: division by zero" in text
    assert "executors/worker.py" not in text and "rules/python.py" not in text


def test_a_python_stage_traceback_starts_at_the_users_code_everywhere(project) -> None:
    p = project(PYTHON_STAGE)
    _steps(p)
    out = p.cli("build", "--executor", "inline", code=1).stderr
    summary = out[out.index("1 failed (p)") :]
    _user_frames(summary)
    assert "more line(s)" not in summary  # nothing cut: the user's frames fit in full
    shown = p.cli("log").stdout
    _user_frames(shown[shown.index("p: FAILED") : shown.index("1 failed (p)")])
    log = p.read(".pipemake/logs/p.log")
    assert log.startswith("about to fail\n")  # what the stage said, then how it ended
    _user_frames(log)


def test_the_traceback_reaches_the_log_from_a_worker_process_too(project) -> None:
    p = project(PYTHON_STAGE)
    _steps(p)
    p.cli("build", code=1)  # the local executor: the function runs in a worker process
    _user_frames(p.read(".pipemake/logs/p.log"))


def test_a_failed_item_counts_the_items_the_store_had(project) -> None:
    p = project(
        """
        name: fe
        stages:
          - id: p
            type: python
            foreach: src
            config:
              function: report_steps:each
              inputs: {src: data}
              outputs: {o: build/o}
        """,
        {f"data/f{i}.txt": f"{i}\n" for i in range(5)},
    )
    _steps(p)
    p.cli("build", "--executor", "inline")
    p.write("data/f3.txt", "bad\n")
    out = p.cli("build", "--executor", "inline", code=1).stderr
    assert (
        "1 of 5 item(s) failed; the other 4 are kept (4 from earlier builds) and do not run "
        "again. First: item f3.txt: ZeroDivisionError: division by zero"
    ) in out
    assert 'report_steps.py", line 13, in each' in out and "return 1 / x" in out
    log = p.read(".pipemake/logs/p.log")
    assert "item f3.txt FAILED: ZeroDivisionError" in log and "return 1 / x" in log
    # the run log's progress counts a failed item as done, and says that it failed
    shown = p.cli("log").output
    assert "p: 1/1 items (1 failed)" in shown, shown


def test_pipemake_log_shows_a_long_error_whole_and_points_up_not_at_itself() -> None:
    error = "\n".join(["RuntimeError: deep"] + [f"  frame {i}" for i in range(60)])
    events = [
        {"event": "run_started", "stage": None, "time": 1.0, "run": "r", "stages": ["a"]},
        {"event": "stage_failed", "stage": "a", "time": 2.0, "error": error},
        {"event": "run_finished", "stage": None, "time": 3.0, "ran": [], "restored": [],
         "up_to_date": [], "failed": {"a": error}, "skipped": {}, "duration": 2.0},
    ]  # fmt: skip
    text = "\n".join(log_lines(events))
    assert "frame 59" in text and "frame 0" in text  # the whole error, once
    assert "more line(s) in the stage's FAILED lines above" in text
    assert "in `pipemake log`" not in text


# ETA ---------------------------------------------------------------------------------------
def _clock(at: list[float]) -> Estimator:
    eta = Estimator(clock=lambda: at[0])
    eta(Event("run_started", None, {"stages": ["new", "old"], "deps": {"old": ["new"]},
                                    "expected": {"new": None, "old": 4.0}}, at[0]))  # fmt: skip
    return eta


def test_no_eta_for_a_stage_never_built_nor_for_the_build_waiting_on_it() -> None:
    at = [100.0]
    eta = _clock(at)
    assert eta.stage_left("new") is None and eta.remaining() is None
    eta(Event("stage_started", "new", {}, at[0]))
    at[0] += 3
    assert eta.stage_eta("new") is None and eta.remaining() is None
    eta(Event("stage_finished", "new", {"duration": 3.0}, at[0]))
    assert eta.remaining() == pytest.approx(4.0)  # what is left is known


def test_a_slow_start_is_not_taken_for_the_pace_of_the_items() -> None:
    at = [100.0]
    eta = _clock(at)
    eta(Event("stage_started", "new", {}, at[0]))
    at[0] += 10  # loading a model: 10 s before the first step
    eta(Event("progress", "new", {"done": 8, "total": 250}, at[0]))
    assert eta.stage_eta("new") is None  # 8 of 250: no honest pace yet (not 5 minutes)
    at[0] += 1
    eta(Event("progress", "new", {"done": 18, "total": 250}, at[0]))
    assert eta.stage_eta("new") == pytest.approx(0.1 * 232)  # 10 steps a second since then


def test_plain_lines_show_no_eta_while_a_stage_left_was_never_built() -> None:
    out = io.StringIO()
    at = [1000.0]
    view = PlainView(out, clock=lambda: at[0])
    for kind, stage, data in [
        ("run_started", None, {"stages": ["a", "b"], "deps": {"b": ["a"]},
                               "expected": {"a": 2.0, "b": None}}),
        ("stage_started", "a", {"reasons": ["input x changed"]}),
        ("stage_finished", "a", {"duration": 2.0}),
        ("stage_started", "b", {"reasons": ["never built"]}),
        ("stage_finished", "b", {"duration": 1.0}),
    ]:  # fmt: skip
        view(Event(kind, stage, data, at[0]))
    text = out.getvalue()
    assert "a: done in 2.0s  [1/2]\n" in text and "ETA" not in text


# reasons ----------------------------------------------------------------------------------
FOREACH = """
name: q
stages:
  - id: clean
    type: shell
    foreach: {input: text, pattern: "*.txt"}
    config:
      cmd: "tr a-z A-Z < {inputs.text} > {outputs.words}/{item.name}"
      inputs: {text: data}
      outputs: {words: build/clean}
  - id: single
    type: shell
    config:
      cmd: "cat {inputs.one} > {outputs.o}"
      inputs: {one: data/c.txt}
      outputs: {o: build/single.txt}
"""
POEMS = {"data/a.txt": "tyger\n", "data/b.txt": "daffodils\n", "data/c.txt": "ozymandias\n"}


def _dry(p: Proj, *args: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in p.cli(*args, "dry-run").stdout.splitlines())


def test_undoing_an_edit_names_the_input_not_the_output(project) -> None:
    p = project(FOREACH, POEMS)
    p.cli("build", "--executor", "inline")
    p.write("data/c.txt", "edited\n")
    p.cli("build", "--executor", "inline")
    p.write("data/c.txt", "ozymandias\n")  # undone: both stages were built with this before
    rows = _dry(p)
    assert rows["clean"] == (
        "restore: 1 of 3 items changed (first: data/c.txt: content changed); "
        "cached from an earlier build"
    )
    assert rows["single"] == "restore: input data/c.txt changed; cached from an earlier build"
    out = p.cli("build", "--executor", "inline").stderr
    assert "clean: restored from the store (1 of 3 items changed" in out
    assert "output build/" not in out
    assert p.read("build/single.txt") == "ozymandias\n"


def test_a_fresh_checkout_with_a_restored_store_says_the_store_has_the_outputs(
    project, tmp_path: Path
) -> None:
    store = str(tmp_path / "ci-cache")
    first = project(FOREACH, POEMS, name="first")
    first.cli("--cache-dir", store, "build", "--executor", "inline")
    fresh = project(FOREACH, POEMS, name="fresh")  # a new clone: no .pipemake, no outputs
    rows = _dry(fresh, "--cache-dir", store)
    want = "outputs missing; not built in this workspace, the store has them"
    assert rows == {"clean": f"restore: {want}", "single": f"restore: {want}"}
    status = fresh.cli("--cache-dir", store, "status").stdout
    assert f"clean: stale ({want})" in status and "never built" not in status
    out = fresh.cli("--cache-dir", store, "build", "--executor", "inline").stderr
    assert "0 ran, 2 restored, 0 up to date" in out and "ETA" not in out
    status = fresh.cli("--cache-dir", store, "status").stdout  # nothing ran in this workspace
    assert "clean: up to date  [last: restored from the store; it ran in " in status
    assert json.loads(fresh.cli("--cache-dir", store, "status", "--json").stdout)["stages"][0][
        "last_restored"
    ]


def test_a_failed_run_undone_is_up_to_date_and_says_the_last_run_failed(project) -> None:
    p = project(FOREACH, POEMS)
    p.cli("build", "--executor", "inline")
    good = p.read("pipemake.yaml")
    p.edit("pipemake.yaml", 'cmd: "cat {inputs.one}', 'cmd: "exit 3; cat {inputs.one}')
    p.cli("build", "--executor", "inline", code=1)
    assert "single: failed" in p.cli("status").stdout
    p.write("pipemake.yaml", good)  # undone: the store's build is the workspace's again
    status = p.cli("status").stdout
    assert (
        "single: up to date (its last run failed, with inputs, params or code changed back since)"
        in status
    )


def test_a_foreach_stage_whose_items_are_all_in_the_store_is_restored_not_run(
    project,
) -> None:
    p = project(FOREACH, POEMS)
    p.cli("build", "--executor", "inline")
    p.write("data/a.txt", "edited\n")
    p.cli("build", "--executor", "inline")  # a' b c
    p.write("data/b.txt", "edited too\n")
    p.cli("build", "--executor", "inline")  # a' b' c
    p.write("data/a.txt", "tyger\n")  # a b' c: every item built before, never together
    status = p.cli("status").stdout
    assert (
        "clean: stale (1 of 3 items changed (first: data/a.txt: content changed); "
        "all 3 items are in the store (none runs))"
    ) in status
    rows = _dry(p)
    assert rows["clean"].startswith("restore: 1 of 3 items changed")  # as the build will say
    p.write("data/c.txt", "edited\n")  # so that single waits on nothing but its own input
    assert _dry(p)["clean"].startswith("run: 1 of 3 items changed (first: data/c.txt")
    p.write("data/c.txt", "ozymandias\n")
    out = p.cli("build", "--executor", "inline").stderr
    assert "clean: running" not in out and "clean: done" not in out
    assert (
        "clean: restored from the store (3 items; 1 of 3 items changed (first: data/a.txt: "
        "content changed); all 3 items are in the store (none runs))"
    ) in out
    assert "0 ran, 1 restored, 1 up to date" in out
    kinds = [e["event"] for e in _events(p) if e.get("stage") == "clean"]
    assert kinds == ["stage_restored"]  # the event log says the same
    assert p.read("build/clean/a.txt") == "TYGER\n"
    (last,) = [r for r in json.loads(p.cli("list", "--runs", "--json").stdout)][-1:]
    assert (last["ran"], last["restored"]) == (0, 1)


def test_a_foreach_restore_whose_items_left_the_store_runs_them_and_says_so(
    project, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipemake.foreach import ForeachRun
    from pipemake.manifest import digests

    p = project(FOREACH, POEMS)
    for path, text in [(None, None), ("data/a.txt", "edited\n"), ("data/b.txt", "edited too\n")]:
        if path:
            p.write(path, text)
        p.cli("build", "--executor", "inline")
    p.write("data/a.txt", "tyger\n")  # every item of clean is in the store: a restore
    assert _dry(p)["clean"].startswith("restore: ")
    begin = ForeachRun.begin

    def begin_then_lose(self: ForeachRun, ctx: Any, stage: Any, check_lost: bool = False) -> Any:
        tasks = begin(self, ctx, stage, check_lost)
        for d in digests(self.cached["a.txt"]):  # a `cache gc` beside the build, say
            obj = ctx.store.object_path(d)
            obj.parent.chmod(0o755)
            obj.unlink()
        return tasks

    monkeypatch.setattr(ForeachRun, "begin", begin_then_lose)
    out = p.cli("build", "--executor", "inline").stderr
    assert "clean: running (store object missing or corrupt)" in out
    assert "1 ran, 0 restored, 1 up to date" in out
    kinds = [e["event"] for e in _events(p) if e.get("stage") == "clean"]
    assert "stage_started" in kinds and "stage_restored" not in kinds
    assert p.read("build/clean/a.txt") == "TYGER\n"


# a stopped build, a running build ---------------------------------------------------------
SLOW_ITEMS = """
name: s
stages:
  - id: slow
    type: shell
    foreach: {input: d, pattern: "*.txt"}
    config:
      cmd: "while [ ! -e go ] && [ -e {inputs.d}.hold ]; do sleep 0.05; done; cp {inputs.d} {outputs.o}/{item.name}"
      inputs: {d: data}
      outputs: {o: build/o}
  - id: after
    type: shell
    config:
      cmd: "ls {inputs.o} > {outputs.r}"
      inputs: {o: "{slow.o}"}
      outputs: {r: build/r.txt}
"""


def _slow(project: Any) -> Proj:
    files = {f"data/f{i:02d}.txt": f"{i}\n" for i in range(12)}
    files.update({f"data/f{i:02d}.txt.hold": "" for i in range(6, 12)})  # these wait for go
    return project(SLOW_ITEMS, files)


def _events(p: Proj) -> list[dict[str, Any]]:
    logs = sorted(f for f in p.path(".pipemake/runs").glob("*.jsonl") if f.name != "index.jsonl")
    return [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]


def _progress(p: Proj) -> int:
    try:
        done = [e["done"] for e in _events(p) if e["event"] == "progress"]
    except (OSError, IndexError, ValueError):
        return 0
    return done[-1] if done else 0


def test_an_interrupt_says_how_many_items_are_kept(project, tmp_path: Path) -> None:
    p = _slow(project)
    log = tmp_path / "log"
    proc = p.popen("build", "--no-progress", "--grace", "0", log=log)
    wait_for(lambda: _progress(p) >= 6 or proc.poll() is not None, what="six items done")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130, log.read_text()
    out = log.read_text()
    kept = _progress(p)
    assert f"not run: slow ({kept} of 12 items done and kept), after" in out
    assert "finished stages and items are kept" in out
    assert f"not run: slow ({kept} of 12 items done and kept), after" in p.cli("log").stdout
    assert f"{12 - kept} of 12 items to run" in p.cli("dry-run").stdout  # what was kept
    status = p.cli("status").stdout
    assert "slow: stale (" in status and "never built" not in status.splitlines()[0]


def test_status_and_list_runs_show_a_build_that_is_running(project, tmp_path: Path) -> None:
    p = _slow(project)
    proc = p.popen("build", "--no-progress", log=tmp_path / "log")
    wait_for(lambda: _progress(p) >= 6 or proc.poll() is not None, what="the build to run")
    assert proc.poll() is None
    status = p.cli("status").stdout
    assert status.startswith("a build is running (run ")
    assert "slow: running (in the build running now)" in status
    assert "up to date" not in status
    assert json.loads(p.cli("status", "--json").stdout)["building"]["stages"]["slow"] == "running"
    assert p.cli("list", "--runs", "--no-header").stdout.split()[4] == "running"
    assert "state:    running" in p.cli("status", "--pipeline-id", "-1").stdout
    p.write("go", "")
    assert proc.wait(30) == 0
    assert p.cli("list", "--runs", "--no-header").stdout.split()[4] == "ok"
    assert "building" not in p.cli("status").stdout.splitlines()[0]
    assert json.loads(p.cli("status", "--json").stdout)["building"] is None


def test_a_failed_stage_line_has_no_eta() -> None:
    out = io.StringIO()
    view = PlainView(out, clock=lambda: 1000.0)
    view(Event("run_started", None, {"stages": ["a", "b"], "deps": {"b": ["a"]},
                                     "expected": {"a": 2.0, "b": 9.0}}, 1000.0))  # fmt: skip
    view(Event("stage_started", "a", {"reasons": []}, 1000.0))
    view(Event("stage_failed", "a", {"error": "boom"}, 1000.0))
    assert "a: FAILED: boom  [1/2]\n" in out.getvalue()  # b is skipped, not 9 s away


def test_a_forced_stage_counts_its_items_from_its_progress() -> None:
    items = ItemCounts()
    items(Event("stage_started", "s", {"reasons": ["forced"], "items": None}, 0))
    items(Event("progress", "s", {"done": 3, "total": 27, "unit": "items"}, 1))
    assert items.kept("s") == "3 of 27 items done and kept"


def test_item_counts_follow_the_events() -> None:
    items = ItemCounts()
    items(Event("stage_started", "s", {"items": {"total": 30, "run": 20, "cached": 10}}, 0))
    items(Event("progress", "s", {"done": 5, "total": 20, "unit": "items"}, 1))
    finished = Event("run_finished", None, {"ran": [], "restored": [], "up_to_date": [],
                                            "failed": {}, "skipped": {"s": "interrupted"},
                                            "interrupted": 2, "duration": 1.0}, 2)  # fmt: skip
    lines = summary_lines(finished, items)
    assert "  not run: s (15 of 30 items done and kept)" in lines


# small things -----------------------------------------------------------------------------
def test_a_tab_in_the_yaml_is_named_with_its_line_and_column(project) -> None:
    p = project("name: t\nstages:\n  - id: a\n    type: shell\n    config:\n\tcmd: echo\n")
    out = p.cli("validate", code=2).output
    assert "pipemake.yaml:6: malformed YAML: a tab character (line 6, column 1)" in out
    assert "YAML indents with spaces only" in out and TRACEBACK not in out


@pytest.mark.slow
def test_a_timed_out_stage_is_retried_when_retries_are_set(project) -> None:
    p = project(
        """
        name: t
        stages:
          - id: flaky
            type: shell
            timeout: 1
            retries: 1
            retry_backoff: 0
            config:
              cmd: "if [ -e runs/tried ]; then echo ok > {outputs.o}; else touch runs/tried; sleep 30; fi"
              outputs: {o: build/o.txt}
        """
    )
    out = p.cli("build").stderr  # the local executor ends the timed-out command's tree
    assert "flaky: attempt 2 of 2" in out and "after: timed out after 1 s" in out
    assert p.read("build/o.txt") == "ok\n"


def test_list_prints_a_header_unless_told_not_to(chain: Proj) -> None:
    lines = chain.cli("list").stdout.splitlines()
    assert lines[0] == "STAGE\tRULE\tOUTPUTS" and lines[1].split("\t")[:2] == ["upper", "shell"]
    assert chain.cli("list", "--no-header").stdout.splitlines()[0].startswith("upper\tshell\t")
    chain.cli("build", "--executor", "inline")
    runs = chain.cli("list", "--runs").stdout.splitlines()
    assert runs[0].split() == ["RUN", "STARTED", "DURATION", "RESULT", "STAGES"]
    assert len(chain.cli("list", "--runs", "--no-header").stdout.splitlines()) == 1


def test_status_json_has_help_text(chain: Proj) -> None:
    text = chain.cli("status", "--help").stdout
    assert "--json" in text and "Print it as JSON" in text


def test_the_model_home_message_says_what_chose_the_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipemake.rules._rembg import home_source, missing_model_message

    for var in ("U2NET_HOME", "REMBG_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert "(default; set U2NET_HOME or REMBG_HOME" in missing_model_message("m", ["x"], "~/.r")
    monkeypatch.setenv("REMBG_HOME", str(tmp_path))
    assert home_source() == "set by REMBG_HOME"
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    assert home_source() == "set by U2NET_HOME"
